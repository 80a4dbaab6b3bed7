// dca/coproc/coprocessor.hpp — the coprocessor of differentiable cache augmentation.
//
// A coprocessor is a transformer of the decoder's architecture (initialised from its weights by
// default) that reads the frozen decoder's key/value cache up to an insertion point t together
// with N_L trainable soft tokens, and in one forward pass produces N_L latent embeddings. The
// decoder then reads the latents as input embeddings after slot t and predicts the N_A ahead
// tokens; only the coprocessor is trained, through the frozen decoder. See docs/coprocessor.md.
//
// Training runs the paper's computation in structured form (no (T + K·(N_L+N_A))² mask):
//   1. the decoder over the tokens, as constants                      → per-layer K/V [B·T, ·]
//   2. the coprocessor over K·B groups of N_L soft tokens, group (b, j) attending to sequence b's
//      cache rows 0..t_j plus its own soft tokens                      → latents z [K·B·N_L, d]
//   3. the frozen decoder over K·B groups [z_j, x[t_j+1 .. t_j+N_A−1]], each attending to the same
//      cache prefix plus causally within the group                    → ahead-token losses
// `dense_reference_loss` computes the same loss as the paper writes it — one extended sequence per
// batch row with a boolean attention mask — and the tests hold the two equal.
#pragma once

#include "dca/cache/kv_cache.hpp"
#include "dca/coproc/objective.hpp"
#include "dca/coproc/plan.hpp"
#include "dca/nn/decoder.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace dca {

/// What a latent is (the paper leaves it open; see docs/coprocessor.md for the study).
enum class LatentForm {
  residual,      // default: the insertion token's embedding + (coprocessor output)·Wᵀ, W starting at zero
  normed,        // the coprocessor's final hidden state after its final norm
  final_hidden,  // the coprocessor's last residual-stream state, before the final norm (paper-literal reading)
};

/// What the coprocessor reads of the decoder.
enum class CoprocessorInput {
  kv_cache,    // default: layer l attends to the decoder's layer-l cache
  last_layer,  // ablation: the decoder's last-layer activations, concatenated before the soft tokens
};

/// Where the latents come from.
enum class LatentSource {
  coprocessor,  // default
  pause,        // baseline: the soft tokens themselves, input-independent ("pause tokens")
};

struct CoprocessorConfig {
  index_t n_ahead = 16;                     // N_A: ahead tokens predicted after the latents (paper: 16)
  LatentForm latent_form = LatentForm::residual;
  LatentPositions positions = LatentPositions::at_insertion_point;  // decoder-side positions of latents
  AttentionRule soft_token_rule = AttentionRule::causal;  // among the soft tokens (paper silent)
  CoprocessorInput input = CoprocessorInput::kv_cache;
  LatentSource source = LatentSource::coprocessor;
  bool init_from_decoder = true;            // false: fresh random weights (the paper's ablation)
  index_t lora_rank = 0;                    // 0: full fine-tuning; r > 0: LoRA adapters of rank r on the
                                            // attention and MLP projections, everything else frozen
  double lora_alpha = 0;                    // LoRA scale α/r; 0: α = r (scale 1)
  double soft_token_std = 0.02;             // soft tokens ~ N(0, std²)
  std::uint64_t seed = 0;                   // soft tokens, random init

  void validate() const {
    if (n_ahead < 1) detail::fail<RangeError>("CoprocessorConfig: n_ahead must be ≥ 1, got ", n_ahead);
    if (lora_rank < 0) detail::fail<RangeError>("CoprocessorConfig: lora_rank must be ≥ 0, got ", lora_rank);
    if (!(soft_token_std >= 0)) detail::fail<RangeError>("CoprocessorConfig: soft_token_std must be ≥ 0, got ", soft_token_std);
  }
};

/// The loss of one augmented batch and its per-position breakdown.
template <Scalar T>
struct AugmentedLoss {
  Var<T> loss;                        // the objective: Σ_n w_n · (mean over groups of the n-th ahead loss)
  std::vector<double> per_position;   // mean cross-entropy of the n-th ahead token, n = 1..N_A
};

template <Scalar T, index_t NumLatents, AheadObjective Objective = UniformAhead>
class Coprocessor {
  static_assert(NumLatents >= 1, "a coprocessor writes at least one latent");

 public:
  static constexpr index_t n_latents = NumLatents;

  /// A coprocessor for `decoder`: same architecture, initialised from its weights (or randomly).
  Coprocessor(const Decoder<T>& decoder, CoprocessorConfig config = {}, Objective objective = {})
      : config_(validated(config)), objective_(std::move(objective)), model_(decoder) {
    if (!config_.init_from_decoder) model_.init(config_.seed + 1);
    model_.unfreeze();
    if (config_.lora_rank > 0)
      model_.add_lora(config_.lora_rank, config_.lora_alpha > 0 ? config_.lora_alpha : static_cast<double>(config_.lora_rank),
                      config_.seed + 2);
    const index_t d = decoder.config().hidden_size;
    Rng rng(config_.seed);
    Tensor<T> soft(Shape{NumLatents, d});
    for (index_t i = 0; i < soft.numel(); ++i) soft[i] = static_cast<T>(config_.soft_token_std * rng.normal());
    soft_tokens_ = Parameter<T>("coprocessor.soft_tokens", std::move(soft));
    if (config_.latent_form == LatentForm::residual)
      projection_ = Parameter<T>("coprocessor.latent_projection.weight", Tensor<T>(Shape{d, d}));  // zero: z = e(x_t)
  }

  const CoprocessorConfig& config() const { return config_; }

  /// Changes the horizon N_A of the loss, e.g. to evaluate a coprocessor trained with N_A = 16 on
  /// the n-th token for n up to 32 (paper, Table 1). No weight depends on N_A.
  void set_n_ahead(index_t n_ahead) {
    CoprocessorConfig changed = config_;
    changed.n_ahead = n_ahead;
    config_ = validated(changed);
  }
  Decoder<T>& model() { return model_; }
  Parameter<T>& soft_tokens() { return soft_tokens_; }
  const Objective& objective() const { return objective_; }

  /// The trainable parameters: the coprocessor model's unfrozen ones, the soft tokens, and the
  /// latent projection (residual form). A pause-token baseline trains only its soft tokens.
  std::vector<Parameter<T>*> parameters() {
    std::vector<Parameter<T>*> out;
    if (config_.source == LatentSource::coprocessor) {
      for (Parameter<T>* p : model_.parameters())
        if (!p->frozen()) out.push_back(p);
      if (!projection_.value().empty()) out.push_back(&projection_);
    }
    out.push_back(&soft_tokens_);
    return out;
  }

  /// The latents for one insertion after the last slot of `prefix` (inference): z [N_L, d].
  /// `insertion_token` is the token at that slot (the residual form starts from its embedding).
  /// Needs the kv_cache input: a cache keeps keys and values, not the last-layer activations.
  Var<T> latents(Tape<T>& tape, Decoder<T>& decoder, const KVPrefix<T>& prefix, index_t insertion_token) {
    check_decoder(decoder, false);
    if (prefix.size() < 1) detail::fail<UsageError>("Coprocessor::latents: the cache prefix is empty");
    if (config_.input != CoprocessorInput::kv_cache)
      detail::fail<UsageError>("Coprocessor::latents: a last-layer coprocessor reads activations a cache does not keep; "
                               "pass the tokens instead");
    std::vector<ConstantKV<T>> caches;
    for (index_t l = 0; l < prefix.n_layers(); ++l) caches.push_back(prefix.layer(l));
    const AttentionGroup group{0, NumLatents, 0, NumLatents, 0, prefix.size()};
    const index_t t_position = prefix.position(prefix.size() - 1);
    const std::vector<index_t> tokens = {insertion_token};
    return compute_latents(tape, decoder, caches, std::span<const AttentionGroup>(&group, 1),
                           std::vector<index_t>{t_position}, tokens, {});
  }

  /// The latents for one insertion after `tokens` (inference), running the decoder over them first:
  /// z [N_L, d]. Works for either input, and is how the last-layer ablation runs at inference.
  Var<T> latents(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> tokens) {
    check_decoder(decoder, false);
    if (tokens.empty()) detail::fail<UsageError>("Coprocessor::latents: no tokens to read");
    const auto n = static_cast<index_t>(tokens.size());
    DecoderInput<T> in;
    in.ids = tokens;
    in.keep_keys_values = true;
    in.compute_logits = false;
    const DecoderOutput<T> out = decoder.forward(tape, in);
    auto* positions = tape.template allocate<index_t>(n);
    for (index_t i = 0; i < n; ++i) positions[i] = i;
    std::vector<ConstantKV<T>> caches;
    for (std::size_t l = 0; l < out.keys.size(); ++l)
      caches.push_back({out.keys[l].value(), out.values[l].value(), std::span<const index_t>(positions, static_cast<std::size_t>(n))});
    const AttentionGroup group{0, NumLatents, 0, NumLatents, 0, n};
    return compute_latents(tape, decoder, caches, std::span<const AttentionGroup>(&group, 1), std::vector<index_t>{n - 1},
                           std::vector<index_t>{tokens.back()}, out.residual);
  }

  /// Residual latents z [N_L, d] computed after `from_token` but inserted after `to_token` (late,
  /// asynchronous latents): their base embedding moves to the token they follow; the correction,
  /// computed from the older prefix, stays. Other latent forms have no base and are left as they are.
  void rebase_latents(Tensor<T>& z, Decoder<T>& decoder, index_t from_token, index_t to_token) const {
    if (config_.latent_form != LatentForm::residual || from_token == to_token) return;
    const Tensor<T>& embeddings = decoder.token_embedding().value();
    for (index_t i = 0; i < z.rows(); ++i)
      for (index_t c = 0; c < z.cols(); ++c) z(i, c) += embeddings(to_token, c) - embeddings(from_token, c);
  }

  /// The structured training loss of a batch: ids [B·T], augmented at `plan`'s points.
  AugmentedLoss<T> loss(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> ids, const AugmentationPlan& plan) {
    check_decoder(decoder, true);
    check_plan(ids, plan);
    const index_t T_ = plan.seq_len, G = plan.groups(), R = rows_per_group();
    // 1. The decoder over the tokens: constants (frozen weights, constant inputs).
    DecoderInput<T> tokens_in;
    tokens_in.ids = ids;
    tokens_in.batch = plan.batch;
    tokens_in.keep_keys_values = true;
    tokens_in.compute_logits = false;
    const DecoderOutput<T> tokens_out = decoder.forward(tape, tokens_in);
    auto* token_positions = tape.template allocate<index_t>(plan.batch * T_);
    for (index_t i = 0; i < plan.batch * T_; ++i) token_positions[i] = i % T_;
    std::vector<ConstantKV<T>> caches;
    for (index_t l = 0; l < decoder.config().n_layers; ++l)
      caches.push_back({tokens_out.keys[static_cast<std::size_t>(l)].value(), tokens_out.values[static_cast<std::size_t>(l)].value(),
                        std::span<const index_t>(token_positions, static_cast<std::size_t>(plan.batch * T_))});

    // 2. The coprocessor: K·B groups of soft tokens against prefixes of the cache.
    std::vector<AttentionGroup> latent_groups;
    std::vector<index_t> t_positions, insertion_tokens;
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t j = 0; j < plan.points_per_sequence; ++j) {
        const index_t g = b * plan.points_per_sequence + j, t = plan.point(b, j);
        latent_groups.push_back({g * NumLatents, NumLatents, g * NumLatents, NumLatents, b * T_, t + 1});
        t_positions.push_back(t);
        insertion_tokens.push_back(ids[static_cast<std::size_t>(b * T_ + t)]);
      }
    const Var<T> z = compute_latents(tape, decoder, caches, latent_groups, t_positions, insertion_tokens, tokens_out.residual);

    // 3. The frozen decoder over [z_g, x[t+1 .. t+N_A−1]] per group, against the same prefixes.
    std::vector<index_t> ahead_ids, targets(static_cast<std::size_t>(G * R), -100), positions(static_cast<std::size_t>(G * R));
    std::vector<AttentionGroup> groups;
    const index_t n_ahead = config_.n_ahead;
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t j = 0; j < plan.points_per_sequence; ++j) {
        const index_t g = b * plan.points_per_sequence + j, t = plan.point(b, j), base = b * T_;
        for (index_t i = 1; i < n_ahead; ++i) ahead_ids.push_back(ids[static_cast<std::size_t>(base + t + i)]);
        fill_group_rows(g, t, std::span<const index_t>(ids).subspan(static_cast<std::size_t>(base)), positions, targets);
        groups.push_back({g * R, R, g * R, R, base, t + 1});
      }
    const Var<T> inputs = interleave(tape, decoder, z, ahead_ids, G);
    DecoderInput<T> ahead_in;
    ahead_in.embeddings = inputs;
    ahead_in.positions = positions;
    ahead_in.groups = groups;
    ahead_in.layer_caches = caches;
    const Var<T> logits = decoder.forward(tape, ahead_in).logits;
    return objective_loss(logits, targets, G);
  }

  /// The same loss computed as the paper writes it: per batch row, one extended sequence
  /// [x_0..x_{T−1}, group_1, ..., group_K] with a boolean attention mask (and the matching mask
  /// for the coprocessor's soft tokens). O((T + K·(N_L+N_A))²) per row: a test oracle.
  AugmentedLoss<T> dense_reference_loss(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> ids,
                                        const AugmentationPlan& plan) {
    check_decoder(decoder, true);
    check_plan(ids, plan);
    if (config_.input != CoprocessorInput::kv_cache)
      detail::fail<UsageError>("Coprocessor::dense_reference_loss: implemented for the kv_cache input only");
    const index_t T_ = plan.seq_len, K = plan.points_per_sequence, R = rows_per_group(), G = plan.groups();
    const index_t window = decoder.config().sliding_window;
    std::vector<Var<T>> all_logits;
    std::vector<index_t> all_targets;
    for (index_t b = 0; b < plan.batch; ++b) {
      const auto seq = std::span<const index_t>(ids).subspan(static_cast<std::size_t>(b * T_), static_cast<std::size_t>(T_));
      // Coprocessor: the decoder's K/V of this row as the cache segment; all K·N_L soft tokens as
      // one query block, group j seeing cache 0..t_j and its own soft tokens.
      DecoderInput<T> tokens_in;
      tokens_in.ids = seq;
      tokens_in.keep_keys_values = true;
      tokens_in.compute_logits = false;
      const auto tokens_out = decoder.forward(tape, tokens_in);
      std::vector<index_t> token_positions(static_cast<std::size_t>(T_));
      for (index_t i = 0; i < T_; ++i) token_positions[static_cast<std::size_t>(i)] = i;
      auto* kept_positions = tape.template allocate<index_t>(T_);
      std::copy(token_positions.begin(), token_positions.end(), kept_positions);
      std::vector<ConstantKV<T>> caches;
      for (std::size_t l = 0; l < tokens_out.keys.size(); ++l)
        caches.push_back({tokens_out.keys[l].value(), tokens_out.values[l].value(),
                          std::span<const index_t>(kept_positions, static_cast<std::size_t>(T_))});
      const index_t S = K * NumLatents;
      std::vector<std::uint8_t> soft_mask(static_cast<std::size_t>(S * (T_ + S)), 0), soft_window_mask;
      std::vector<index_t> soft_positions(static_cast<std::size_t>(S)), t_positions, insertion_tokens;
      for (index_t j = 0; j < K; ++j) {
        const index_t t = plan.point(b, j);
        t_positions.push_back(t);
        insertion_tokens.push_back(seq[static_cast<std::size_t>(t)]);
        for (index_t i = 0; i < NumLatents; ++i) {
          const index_t q = j * NumLatents + i;
          soft_positions[static_cast<std::size_t>(q)] = t + 1 + i;
          for (index_t c = 0; c <= t; ++c) soft_mask[static_cast<std::size_t>(q * (T_ + S) + c)] = 1;
          const index_t last = config_.soft_token_rule == AttentionRule::causal ? i : NumLatents - 1;
          for (index_t i2 = 0; i2 <= last; ++i2) soft_mask[static_cast<std::size_t>(q * (T_ + S) + T_ + j * NumLatents + i2)] = 1;
        }
      }
      soft_window_mask = apply_window(soft_mask, soft_positions, token_positions, soft_positions, T_ + S, window);
      const auto soft_groups = std::vector<AttentionGroup>{};
      const Var<T> z = compute_latents(tape, decoder, caches, soft_groups, t_positions, insertion_tokens, {},
                                       soft_positions, soft_mask, soft_window_mask);

      // Decoder: one sequence [tokens][group_1]...[group_K] with the paper's mask.
      const index_t N = T_ + K * R;
      std::vector<index_t> positions(static_cast<std::size_t>(N)), targets(static_cast<std::size_t>(N), -100);
      std::vector<std::uint8_t> mask(static_cast<std::size_t>(N * N), 0);
      for (index_t i = 0; i < T_; ++i) {
        positions[static_cast<std::size_t>(i)] = i;
        for (index_t c = 0; c <= i; ++c) mask[static_cast<std::size_t>(i * N + c)] = 1;
      }
      std::vector<index_t> ahead_ids;
      std::vector<index_t> group_positions(static_cast<std::size_t>(K * R)), group_targets(static_cast<std::size_t>(K * R), -100);
      for (index_t j = 0; j < K; ++j) {
        const index_t t = plan.point(b, j);
        for (index_t i = 1; i < config_.n_ahead; ++i) ahead_ids.push_back(seq[static_cast<std::size_t>(t + i)]);
        fill_group_rows(j, t, seq, group_positions, group_targets);
        for (index_t r = 0; r < R; ++r) {
          const index_t q = T_ + j * R + r;
          for (index_t c = 0; c <= t; ++c) mask[static_cast<std::size_t>(q * N + c)] = 1;
          for (index_t r2 = 0; r2 <= r; ++r2) mask[static_cast<std::size_t>(q * N + T_ + j * R + r2)] = 1;
        }
      }
      std::copy(group_positions.begin(), group_positions.end(), positions.begin() + T_);
      std::copy(group_targets.begin(), group_targets.end(), targets.begin() + T_);
      const auto window_mask = apply_window(mask, positions, {}, positions, N, window);
      const Var<T> token_rows = embedding(tape.param(decoder.token_embedding()), seq);
      const Var<T> group_rows = interleave(tape, decoder, z, ahead_ids, K);
      DecoderInput<T> in;
      in.embeddings = concat_rows({token_rows, group_rows});
      in.positions = positions;
      in.mask = mask;
      in.window_mask = window_mask;
      const Var<T> logits = decoder.forward(tape, in).logits;
      all_logits.push_back(slice_rows(logits, T_, K * R));
      all_targets.insert(all_targets.end(), group_targets.begin(), group_targets.end());
    }
    return objective_loss(concat_rows(std::span<const Var<T>>(all_logits)), all_targets, G);
  }

 private:
  static CoprocessorConfig validated(const CoprocessorConfig& config) {
    config.validate();
    return config;
  }

  index_t rows_per_group() const { return NumLatents + config_.n_ahead - 1; }

  // Positions and targets of group g's rows [z_1..z_NL, x_{t+1}..x_{t+N_A−1}] written at g·R.
  void fill_group_rows(index_t g, index_t t, std::span<const index_t> seq, std::vector<index_t>& positions,
                       std::vector<index_t>& targets) const {
    const index_t R = rows_per_group(), base = g * R;
    const bool shifted = config_.positions == LatentPositions::shifted;
    for (index_t i = 0; i < NumLatents; ++i)
      positions[static_cast<std::size_t>(base + i)] = shifted ? t + 1 + i : t;
    for (index_t i = 1; i < config_.n_ahead; ++i)
      positions[static_cast<std::size_t>(base + NumLatents - 1 + i)] = t + i + (shifted ? NumLatents : 0);
    // The last latent predicts x[t+1]; the ahead token x[t+i] predicts x[t+i+1].
    for (index_t i = 0; i < config_.n_ahead; ++i)
      targets[static_cast<std::size_t>(base + NumLatents - 1 + i)] = seq[static_cast<std::size_t>(t + 1 + i)];
  }

  // Dense masks for window layers: `mask` with keys farther back than the window hidden too.
  // Keys are the cache rows (`cache_positions`) then the active rows (`key_positions`).
  static std::vector<std::uint8_t> apply_window(const std::vector<std::uint8_t>& mask, std::span<const index_t> q_positions,
                                                std::span<const index_t> cache_positions, std::span<const index_t> key_positions,
                                                index_t n_keys, index_t window) {
    if (window <= 0) return {};
    std::vector<std::uint8_t> out = mask;
    for (std::size_t q = 0; q < q_positions.size(); ++q)
      for (index_t c = 0; c < n_keys; ++c) {
        const auto ci = static_cast<std::size_t>(c);
        const index_t key = ci < cache_positions.size() ? cache_positions[ci] : key_positions[ci - cache_positions.size()];
        if (q_positions[q] - key >= window) out[q * static_cast<std::size_t>(n_keys) + ci] = 0;
      }
    return out;
  }

  // Latents for groups of soft tokens: the coprocessor (or the pause tokens), then the latent form.
  Var<T> compute_latents(Tape<T>& tape, Decoder<T>& decoder, std::span<const ConstantKV<T>> caches,
                         std::span<const AttentionGroup> groups, const std::vector<index_t>& t_positions,
                         const std::vector<index_t>& insertion_tokens, const Var<T>& decoder_residual,
                         std::span<const index_t> explicit_positions = {}, std::span<const std::uint8_t> mask = {},
                         std::span<const std::uint8_t> window_mask = {}) {
    const index_t G = static_cast<index_t>(t_positions.size());
    std::vector<Var<T>> copies(static_cast<std::size_t>(G), tape.param(soft_tokens_));
    const Var<T> soft = G == 1 ? copies[0] : concat_rows(std::span<const Var<T>>(copies));
    if (config_.source == LatentSource::pause) return soft;

    Var<T> h;
    if (config_.input == CoprocessorInput::kv_cache) {
      std::vector<index_t> positions(explicit_positions.begin(), explicit_positions.end());
      if (positions.empty())
        for (index_t g = 0; g < G; ++g)
          for (index_t i = 0; i < NumLatents; ++i) positions.push_back(t_positions[static_cast<std::size_t>(g)] + 1 + i);
      auto* kept = tape.template allocate<index_t>(static_cast<index_t>(positions.size()));
      std::copy(positions.begin(), positions.end(), kept);
      DecoderInput<T> in;
      in.embeddings = soft;
      in.positions = {kept, positions.size()};
      in.groups = groups;
      in.rule = config_.soft_token_rule;
      in.layer_caches = caches;
      in.mask = mask;
      in.window_mask = window_mask;
      in.compute_logits = false;
      const DecoderOutput<T> out = model_.forward(tape, in);
      h = config_.latent_form == LatentForm::final_hidden ? out.residual : out.hidden;
    } else {
      h = last_layer_latents(tape, groups, t_positions, soft, decoder_residual);
    }
    if (config_.latent_form != LatentForm::residual) return h;
    std::vector<index_t> repeated;
    for (index_t token : insertion_tokens)
      for (index_t i = 0; i < NumLatents; ++i) repeated.push_back(token);
    const Var<T> base = embedding(tape.param(decoder.token_embedding()), repeated);
    return add(base, linear(h, tape.param(projection_)));
  }

  // The last-layer ablation: group g's input is the decoder's last-layer activations of its
  // prefix followed by the soft tokens, one causal sequence per group.
  Var<T> last_layer_latents(Tape<T>& tape, std::span<const AttentionGroup> groups, const std::vector<index_t>& t_positions,
                            const Var<T>& soft, const Var<T>& decoder_residual) {
    if (decoder_residual.empty())
      detail::fail<UsageError>("Coprocessor: the last_layer input needs the decoder's activations (training path, or latents from tokens)");
    std::vector<Var<T>> parts;
    std::vector<AttentionGroup> sequence_groups;
    std::vector<index_t> positions;
    const double scale = model_.config().scale_embeddings ? std::sqrt(static_cast<double>(model_.config().hidden_size)) : 1.0;
    const Var<T> activations = scale == 1.0 ? decoder_residual : dca::scale(decoder_residual, static_cast<T>(1.0 / scale));
    index_t row = 0;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const AttentionGroup& group = groups[g];
      const index_t n = group.cache_count + NumLatents;
      parts.push_back(slice_rows(activations, group.cache_begin, group.cache_count));
      parts.push_back(slice_rows(soft, static_cast<index_t>(g) * NumLatents, NumLatents));
      sequence_groups.push_back({row, n, row, n, 0, 0});
      for (index_t i = 0; i < group.cache_count; ++i) positions.push_back(i);
      for (index_t i = 0; i < NumLatents; ++i) positions.push_back(t_positions[g] + 1 + i);
      row += n;
    }
    auto* kept = tape.template allocate<index_t>(row);
    std::copy(positions.begin(), positions.end(), kept);
    auto* kept_groups = tape.template allocate<AttentionGroup>(static_cast<index_t>(sequence_groups.size()));
    std::copy(sequence_groups.begin(), sequence_groups.end(), kept_groups);
    DecoderInput<T> in;
    in.embeddings = concat_rows(std::span<const Var<T>>(parts));
    in.positions = {kept, static_cast<std::size_t>(row)};
    in.groups = {kept_groups, sequence_groups.size()};
    in.compute_logits = false;
    const DecoderOutput<T> out = model_.forward(tape, in);
    const Var<T> h = config_.latent_form == LatentForm::final_hidden ? out.residual : out.hidden;
    std::vector<Var<T>> latent_rows;
    for (const AttentionGroup& g : sequence_groups) latent_rows.push_back(slice_rows(h, g.q_begin + g.q_count - NumLatents, NumLatents));
    return concat_rows(std::span<const Var<T>>(latent_rows));
  }

  // [z_g rows, token embeddings of the group's ahead inputs] for every group, in group order.
  Var<T> interleave(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& z, const std::vector<index_t>& ahead_ids,
                    index_t groups) {
    const index_t inputs = config_.n_ahead - 1;
    if (inputs == 0) return z;
    const Var<T> tokens = embedding(tape.param(decoder.token_embedding()), ahead_ids);
    std::vector<Var<T>> parts;
    for (index_t g = 0; g < groups; ++g) {
      parts.push_back(slice_rows(z, g * NumLatents, NumLatents));
      parts.push_back(slice_rows(tokens, g * inputs, inputs));
    }
    return concat_rows(std::span<const Var<T>>(parts));
  }

  // The objective over the labelled rows, and the per-position means.
  AugmentedLoss<T> objective_loss(const Var<T>& logits, const std::vector<index_t>& targets, index_t groups) const {
    const index_t R = rows_per_group(), n_ahead = config_.n_ahead;
    const std::vector<double> w = objective_.weights(n_ahead);
    if (static_cast<index_t>(w.size()) != n_ahead)
      detail::fail<ShapeError>("Coprocessor: the objective gave ", w.size(), " weights for ", n_ahead, " ahead tokens");
    std::vector<T> weights(targets.size(), T(0));
    for (index_t g = 0; g < groups; ++g)
      for (index_t n = 0; n < n_ahead; ++n)
        weights[static_cast<std::size_t>(g * R + NumLatents - 1 + n)] = static_cast<T>(w[static_cast<std::size_t>(n)] / static_cast<double>(groups));
    AugmentedLoss<T> out;
    out.loss = cross_entropy(logits, targets, CrossEntropyOptions{-100, Reduction::sum}, weights);
    const Var<T> each = cross_entropy_per_token(logits, targets);
    out.per_position.assign(static_cast<std::size_t>(n_ahead), 0.0);
    for (index_t g = 0; g < groups; ++g)
      for (index_t n = 0; n < n_ahead; ++n)
        out.per_position[static_cast<std::size_t>(n)] += static_cast<double>(each.value()[g * R + NumLatents - 1 + n]) / static_cast<double>(groups);
    return out;
  }

  void check_decoder(Decoder<T>& decoder, bool training) {
    const auto& a = decoder.config();
    const auto& b = model_.config();
    if (a.n_layers != b.n_layers || a.hidden_size != b.hidden_size || a.n_kv_heads != b.n_kv_heads ||
        a.resolved_head_dim() != b.resolved_head_dim() || a.vocab_size != b.vocab_size)
      detail::fail<ShapeError>("Coprocessor: the decoder (", a.n_layers, " layers, d=", a.hidden_size, ", ", a.n_kv_heads,
                               " kv heads of ", a.resolved_head_dim(), ", vocabulary ", a.vocab_size,
                               ") does not match the coprocessor's architecture (", b.n_layers, " layers, d=",
                               b.hidden_size, ", ", b.n_kv_heads, " kv heads of ", b.resolved_head_dim(), ", vocabulary ",
                               b.vocab_size, ")");
    if (training)
      for (Parameter<T>* p : decoder.parameters())
        if (!p->frozen())
          detail::fail<UsageError>("Coprocessor: decoder parameter '", p->name(),
                                   "' is not frozen; the decoder must be frozen while the coprocessor trains "
                                   "(call decoder.freeze())");
  }

  void check_plan(std::span<const index_t> ids, const AugmentationPlan& plan) const {
    if (static_cast<index_t>(ids.size()) != plan.batch * plan.seq_len)
      detail::fail<ShapeError>("Coprocessor: ", ids.size(), " token ids for a plan of ", plan.batch, " sequences of ",
                               plan.seq_len);
    if (plan.n_ahead != config_.n_ahead)
      detail::fail<RangeError>("Coprocessor: the plan was made for N_A = ", plan.n_ahead, " but the coprocessor predicts ",
                               config_.n_ahead, " ahead tokens");
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t j = 0; j < plan.points_per_sequence; ++j)
        if (plan.point(b, j) < 0 || plan.point(b, j) + config_.n_ahead > plan.seq_len - 1)
          detail::fail<RangeError>("Coprocessor: augmentation point ", plan.point(b, j), " of sequence ", b,
                                   " leaves no room for ", config_.n_ahead, " ahead tokens in ", plan.seq_len);
  }

  CoprocessorConfig config_;
  Objective objective_;
  Decoder<T> model_;
  Parameter<T> soft_tokens_;
  Parameter<T> projection_;
};

}  // namespace dca
