// dca/coproc/coprocessor.hpp — the coprocessor of differentiable cache augmentation.
//
// A coprocessor is a transformer of the decoder's architecture (initialised from its weights by
// default) that reads the frozen decoder's key/value cache up to an insertion point t together
// with N_L trainable soft tokens, and in one forward pass produces N_L latent embeddings. The
// decoder then reads the latents as input embeddings after slot t and predicts the N_A ahead
// tokens; only the coprocessor is trained, through the frozen decoder. See docs/coprocessor.md.
//
// Training runs the paper's computation in structured form (no (T + K·(N_L+N_A))² mask), with the
// rows laid out by AugmentationLayout (coproc/layout.hpp):
//   1. the decoder over the tokens, as constants                      → per-layer K/V [B·T, ·]
//   2. the coprocessor over K·B groups of N_L soft tokens, group (b, j) attending to sequence b's
//      cache rows 0..t_j plus its own soft tokens                      → latents z [K·B·N_L, d]
//   3. the frozen decoder over K·B groups [z_j, x[t_j+1 .. t_j+N_A−1]], each attending to the same
//      cache prefix plus causally within the group                    → ahead-token losses
// coproc/dense_reference.hpp computes the same loss as the paper writes it — one extended
// sequence per batch row with a boolean attention mask — and the tests hold the two equal.
#pragma once

#include "dca/autodiff/ops/activation.hpp"
#include "dca/autodiff/ops/embedding.hpp"
#include "dca/autodiff/ops/reduce.hpp"
#include "dca/autodiff/ops/softmax.hpp"
#include "dca/cache/kv_cache.hpp"
#include "dca/coproc/config.hpp"
#include "dca/coproc/layout.hpp"
#include "dca/coproc/objective.hpp"
#include "dca/coproc/plan.hpp"
#include "dca/nn/decoder.hpp"
#include "dca/train/parameter_table.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace dca {

/// The loss of one augmented batch and its per-position breakdown.
template <Scalar T>
struct AugmentedLoss {
  Var<T> loss;                       // the objective: Σ_n w_n · (mean over groups of the n-th ahead loss)
  std::vector<double> per_position;  // mean cross-entropy of the n-th ahead token, n = 1..N_A
};

/// What step 1 leaves for steps 2 and 3: the decoder's keys and values over the tokens as one
/// constant cache per layer (rows i of sequence b at position i), its last-layer residual stream
/// (what the last-layer ablation reads) and, when asked for, its logits [B·T, V] (what a gated
/// coprocessor mixes with).
template <Scalar T>
struct TokenPass {
  std::vector<ConstantKV<T>> cache;
  Var<T> residual;
  Var<T> logits;
};

/// A gated coprocessor's latents and gates from one pass over its soft tokens.
template <Scalar T>
struct GatedLatents {
  Var<T> latents;  // z [G·N_L, d]
  Var<T> gates;    // g [G, 1] in (0, 1): the augmented prediction's weight in the mixture
};

/// Explicit attention masks for the coprocessor's soft tokens, replacing their groups: the dense
/// formulation's (coproc/dense_reference.hpp). Empty: the structured groups.
struct SoftTokenMasks {
  std::span<const std::uint8_t> mask;         // [G·N_L, cache + G·N_L], full-attention layers
  std::span<const std::uint8_t> window_mask;  // the same with the sliding window folded in
};

/// The latent count of a coprocessor that takes it at run time, from CoprocessorConfig::n_latents
/// (as Eigen's Dynamic): one instantiation serves every count, so a program that reads N_L from its
/// command line compiles the coprocessor once instead of once per count (coproc/dispatch.hpp).
inline constexpr index_t dynamic_latents = 0;

/// A coprocessor writing NumLatents latents, or CoprocessorConfig::n_latents of them for
/// NumLatents = dynamic_latents; trained with the ahead-token objective `Objective`.
template <Scalar T, index_t NumLatents, AheadObjective Objective = UniformAhead>
class Coprocessor {
  static_assert(NumLatents >= 1 || NumLatents == dynamic_latents,
                "a coprocessor writes at least one latent (or dynamic_latents: as many as its config says)");

 public:

  /// A coprocessor for `decoder`: same architecture, initialised from its weights (or randomly).
  Coprocessor(const Decoder<T>& decoder, CoprocessorConfig config = {}, Objective objective = {})
      : config_(with_latent_count(config)), objective_(std::move(objective)), model_(decoder) {
    if (!config_.init_from_decoder) model_.init(config_.seed + 1);
    model_.unfreeze();
    if (config_.lora_rank > 0)
      model_.add_lora(config_.lora_rank,
                      config_.lora_alpha > 0 ? config_.lora_alpha : static_cast<double>(config_.lora_rank),
                      config_.seed + 2);
    const index_t d = decoder.config().hidden_size;
    Rng rng(config_.seed);
    Tensor<T> soft(Shape{n_latents(), d});
    for (index_t i = 0; i < soft.numel(); ++i) soft[i] = static_cast<T>(config_.soft_token_std * rng.normal());
    soft_tokens_ = Parameter<T>("coprocessor.soft_tokens", std::move(soft));
    if (config_.latent_form == LatentForm::residual || config_.latent_form == LatentForm::token_mixture)
      projection_ = Parameter<T>("coprocessor.latent_projection.weight", Tensor<T>(Shape{d, d}));  // zero: no correction
    if (config_.gated) {  // zero: g = ½ at every point
      gate_weight_ = Parameter<T>("coprocessor.gate.weight", Tensor<T>(Shape{1, d}));
      gate_bias_ = Parameter<T>("coprocessor.gate.bias", Tensor<T>(Shape{1, 1}));
    }
  }

  const CoprocessorConfig& config() const { return config_; }
  /// N_L: the latents written per insertion.
  index_t n_latents() const { return config_.n_latents; }

  /// Changes the horizon N_A of the loss, e.g. to evaluate a coprocessor trained with N_A = 16 on
  /// the n-th token for n up to 32 (paper, Table 1). No weight depends on N_A.
  void set_n_ahead(index_t n_ahead) {
    CoprocessorConfig changed = config_;
    changed.n_ahead = n_ahead;
    config_ = with_latent_count(changed);
  }
  Decoder<T>& model() { return model_; }
  Parameter<T>& soft_tokens() { return soft_tokens_; }
  const Objective& objective() const { return objective_; }

  /// The trainable parameters: the coprocessor model's unfrozen ones, the latent projection
  /// (residual and token-mixture forms), the gate (gated) and the soft tokens. A pause-token
  /// baseline trains only its soft tokens.
  std::vector<Parameter<T>*> parameters() {
    std::vector<Parameter<T>*> out;
    if (config_.source == LatentSource::coprocessor) {
      for (Parameter<T>* p : model_.parameters())
        if (!p->frozen()) out.push_back(p);
      if (!projection_.value().empty()) out.push_back(&projection_);
      if (config_.gated) out.insert(out.end(), {&gate_weight_, &gate_bias_});
    }
    out.push_back(&soft_tokens_);
    return out;
  }

  /// The trainable parameters in two groups: "model", the coprocessor transformer's weights
  /// (copied from the decoder by default), and "new", the parameters initialised here — the soft
  /// tokens, the zero-initialised projection of the residual and token-mixture forms, the gate and
  /// LoRA's zero-initialised B matrices — at `new_lr_multiplier` times the learning rate (LoRA+ and
  /// prompt tuning give such parameters 10–30×). Empty groups are left out.
  std::vector<ParameterGroup<T>> parameter_groups(double new_lr_multiplier = 1.0) {
    ParameterGroup<T> model{"model", {}, 1.0, {}}, fresh{"new", {}, new_lr_multiplier, {}};
    for (Parameter<T>* p : parameters()) {
      const bool is_new = p == &soft_tokens_ || p == &projection_ || p == &gate_weight_ || p == &gate_bias_ ||
                          is_lora_b(p->name());
      (is_new ? fresh : model).parameters.push_back(p);
    }
    std::vector<ParameterGroup<T>> groups;
    for (ParameterGroup<T>* g : {&model, &fresh})
      if (!g->parameters.empty()) groups.push_back(std::move(*g));
    return groups;
  }

  // ---- latents --------------------------------------------------------------------------------

  /// The latents for one insertion after the last slot of `prefix` (inference): z [N_L, d].
  /// `insertion_token` is the token at that slot (the residual form starts from its embedding).
  /// Needs the kv_cache input: a cache keeps keys and values, not the last-layer activations.
  Var<T> latents(Tape<T>& tape, Decoder<T>& decoder, const KVPrefix<T>& prefix, index_t insertion_token) {
    check_decoder(decoder, false);
    check_ungated("Coprocessor::latents");
    if (prefix.size() < 1) detail::fail<UsageError>("Coprocessor::latents: the cache prefix is empty");
    if (config_.input != CoprocessorInput::kv_cache)
      detail::fail<UsageError>(
          "Coprocessor::latents: a last-layer coprocessor reads activations a cache does not keep; "
          "pass the tokens instead");
    const auto queries =
        LatentQueries::after(n_latents(), prefix.size(), prefix.position(prefix.size() - 1), insertion_token);
    return latents(tape, decoder, prefix.layers(), queries, {});
  }

  /// The latents for one insertion after `tokens` (inference), running the decoder over them first:
  /// z [N_L, d]. Works for either input, and is how the last-layer ablation runs at inference.
  Var<T> latents(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> tokens) {
    check_decoder(decoder, false);
    check_ungated("Coprocessor::latents");
    if (tokens.empty()) detail::fail<UsageError>("Coprocessor::latents: no tokens to read");
    const auto n = static_cast<index_t>(tokens.size());
    const TokenPass<T> read = read_tokens(tape, decoder, tokens, 1);
    return latents(tape, decoder, read.cache, LatentQueries::after(n_latents(), n, n - 1, tokens.back()), read.residual);
  }

  /// Step 2 of the loss, and what both inference forms run: the latents z [G·N_L, d] of `queries`
  /// against the per-layer constant `cache` — the coprocessor (or the pause tokens) over the soft
  /// tokens, then the latent form. `decoder_residual` is the decoder's last-layer residual stream
  /// over the cache rows, which the last-layer input reads instead of the cache.
  Var<T> latents(Tape<T>& tape, Decoder<T>& decoder, std::span<const ConstantKV<T>> cache, const LatentQueries& queries,
                 const Var<T>& decoder_residual, const SoftTokenMasks& masks = {}) {
    if (config_.source == LatentSource::pause) return repeated_soft_tokens(tape, queries.size());
    return latent_form(tape, decoder, output(tape, cache, queries, decoder_residual, masks), queries);
  }

  /// A gated coprocessor's latents and gates at the groups of `queries`, both read from one pass of
  /// the coprocessor (CoprocessorConfig::gated). UsageError unless the coprocessor is gated.
  GatedLatents<T> gated_latents(Tape<T>& tape, Decoder<T>& decoder, std::span<const ConstantKV<T>> cache,
                                const LatentQueries& queries, const Var<T>& decoder_residual) {
    if (!config_.gated) detail::fail<UsageError>("Coprocessor::gated_latents: the coprocessor is not gated");
    const Var<T> h = output(tape, cache, queries, decoder_residual, {});
    return {latent_form(tape, decoder, h, queries), sigmoid(gate_logits(tape, h))};
  }

  /// What each latent would write as text: the coprocessor's head over its normed output at the
  /// soft tokens of `queries`, logits [G·N_L, V] — the distribution the token-mixture form mixes the
  /// embedding table with, for any latent form. A probe of what latents say, and the target of the
  /// supervised diagnostic (experiment/chain_probe.hpp). UsageError for pause tokens (no coprocessor).
  Var<T> written_logits(Tape<T>& tape, std::span<const ConstantKV<T>> cache, const LatentQueries& queries,
                        const Var<T>& decoder_residual) {
    if (config_.source == LatentSource::pause)
      detail::fail<UsageError>("Coprocessor::written_logits: pause tokens are not computed by a coprocessor");
    return model_.head(tape, read(tape, cache, queries, decoder_residual, {}, true));
  }

  /// Residual latents z [N_L, d] computed after `from_token` but inserted after `to_token` (late,
  /// asynchronous latents): their base embedding moves to the token they follow; the correction,
  /// computed from the older prefix, stays. Other latent forms have no base and are returned as they are.
  Var<T> rebase_latents(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& z, index_t from_token,
                        index_t to_token) const {
    if (config_.latent_form != LatentForm::residual || from_token == to_token) return z;
    const index_t to[] = {to_token}, from[] = {from_token};
    return add(z, sub(decoder.embed(tape, to), decoder.embed(tape, from)));  // [N_L,d] + [1,d]
  }

  // ---- training -------------------------------------------------------------------------------

  /// The structured training loss of a batch: ids [B·T], augmented at `plan`'s points.
  AugmentedLoss<T> loss(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> ids,
                        const AugmentationPlan& plan) {
    check_decoder(decoder, true);
    check_plan(ids, plan);
    const TokenPass<T> tokens = read_tokens(tape, decoder, ids, plan.batch, config_.gated);  // 1.
    if (!config_.gated) return loss_given_tokens(tape, decoder, ids, plan, tokens);
    // 2. and 3., the gate read from the same coprocessor output as the latents
    const AugmentationLayout layout =
        AugmentationLayout::of(plan, ids, n_latents(), config_.positions, config_.oracle_lookahead);
    const Var<T> h = output(tape, tokens.cache, layout.latents, tokens.residual, {});
    const Var<T> z = latent_form(tape, decoder, h, layout.latents);
    return mixture_score(ahead_logits(tape, decoder, z, tokens.cache, layout), layout, gate_logits(tape, h),
                         frozen_target_probabilities(tokens.logits, ids, plan, layout));
  }

  /// Steps 2 and 3 of the loss of `plan` over ids, given step 1's pass over them (`read_tokens`,
  /// possibly on another tape: only its constant cache is read). What each part of a batch split
  /// into parts computes (coproc/trainer.hpp's coprocessor_step), so it needs what `splittable`
  /// says: the cache input and no gate (both read step 1's values as tape values).
  AugmentedLoss<T> loss_given_tokens(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> ids,
                                     const AugmentationPlan& plan, const TokenPass<T>& tokens) {
    check_decoder(decoder, true);
    check_plan(ids, plan);
    if (config_.gated)
      detail::fail<UsageError>("Coprocessor::loss_given_tokens: a gated coprocessor mixes with step 1's logits; use loss()");
    if (config_.input == CoprocessorInput::last_layer && tokens.residual.valid() && &tokens.residual.tape() != &tape)
      detail::fail<UsageError>("Coprocessor::loss_given_tokens: a last-layer coprocessor reads step 1's activations "
                               "as values of their own tape; compute the loss on that tape");
    const AugmentationLayout layout =
        AugmentationLayout::of(plan, ids, n_latents(), config_.positions, config_.oracle_lookahead);
    const Var<T> z = latents(tape, decoder, tokens.cache, layout.latents, tokens.residual);  // 2.
    return ahead_loss(tape, decoder, z, tokens.cache, layout);                               // 3.
  }

  /// Whether the loss can be computed in parts on separate tapes (loss_given_tokens): the cache
  /// input, no gate.
  bool splittable() const { return !config_.gated && config_.input == CoprocessorInput::kv_cache; }

  /// Step 1: the frozen decoder over ids [B·T] (B sequences), as constants, keeping every layer's
  /// keys and values; its logits [B·T, V] only with `logits` (a gated coprocessor's mixture).
  static TokenPass<T> read_tokens(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> ids, index_t batch,
                                  bool logits = false) {
    DecoderInput<T> in;
    in.ids = ids;
    in.batch = batch;
    in.keep_keys_values = true;
    in.compute_logits = logits;
    const DecoderOutput<T> out = decoder.forward(tape, in);
    const auto rows = static_cast<index_t>(ids.size()), seq_len = rows / batch;
    index_t* positions = tape.template allocate<index_t>(rows);  // read by the backward pass: on the tape
    for (index_t i = 0; i < rows; ++i) positions[i] = i % seq_len;
    return {out.constant_cache({positions, static_cast<std::size_t>(rows)}), out.residual, out.logits};
  }

  /// Step 3: the frozen decoder over every group's [z_g, ahead tokens] against its cache prefix,
  /// and the objective over the ahead tokens.
  AugmentedLoss<T> ahead_loss(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& z, std::span<const ConstantKV<T>> cache,
                              const AugmentationLayout& layout) {
    return score(ahead_logits(tape, decoder, z, cache, layout), layout);
  }

  /// The decoder's logits [G·R, V] over every group's [z_g, ahead tokens] against its cache prefix.
  Var<T> ahead_logits(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& z, std::span<const ConstantKV<T>> cache,
                      const AugmentationLayout& layout) {
    DecoderInput<T> in;
    in.embeddings = ahead_inputs(tape, decoder, z, layout.ahead_ids, layout.groups());
    in.positions = layout.ahead_positions;
    in.groups = layout.ahead_groups;
    in.layer_caches = cache;
    return decoder.forward(tape, in).logits;
  }

  /// The decoder's input rows of `groups` groups: [z_g (N_L rows), embeddings of the group's N_A−1
  /// ahead ids] for each group in order: [groups·R, d].
  Var<T> ahead_inputs(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& z, std::span<const index_t> ahead_ids,
                      index_t groups) const {
    const index_t inputs = config_.n_ahead - 1;
    if (inputs == 0) return z;
    const Var<T> tokens = decoder.embed(tape, ahead_ids);
    std::vector<Var<T>> parts;
    for (index_t g = 0; g < groups; ++g) {
      parts.push_back(slice_rows(z, g * n_latents(), n_latents()));
      parts.push_back(slice_rows(tokens, g * inputs, inputs));
    }
    return concat_rows(std::span<const Var<T>>(parts));
  }

  /// The objective over the logits [G·R, V] of the layout's group rows, in its order, and the
  /// per-position means.
  AugmentedLoss<T> score(const Var<T>& logits, const AugmentationLayout& layout) const {
    const std::vector<T> weights = target_weights(layout);
    AugmentedLoss<T> out;
    out.loss = cross_entropy(logits, layout.targets, CrossEntropyOptions{-100, Reduction::sum}, weights);
    out.per_position = per_position(cross_entropy_per_token(logits, layout.targets), layout);
    return out;
  }

  /// ShapeError unless `decoder` has the coprocessor's architecture; with `training`, UsageError
  /// naming the first decoder parameter that is not frozen.
  void check_decoder(Decoder<T>& decoder, bool training) {
    if (!training && config_.oracle_lookahead > 0)
      detail::fail<UsageError>("Coprocessor: an oracle coprocessor (oracle_lookahead = ", config_.oracle_lookahead,
                               ") reads tokens past the insertion point, which inference does not have");
    const auto& a = decoder.config();
    const auto& b = model_.config();
    if (a.n_layers != b.n_layers || a.hidden_size != b.hidden_size || a.n_kv_heads != b.n_kv_heads ||
        a.resolved_head_dim() != b.resolved_head_dim() || a.vocab_size != b.vocab_size)
      detail::fail<ShapeError>("Coprocessor: the decoder (", a.n_layers, " layers, d=", a.hidden_size, ", ",
                               a.n_kv_heads, " kv heads of ", a.resolved_head_dim(), ", vocabulary ", a.vocab_size,
                               ") does not match the coprocessor's architecture (", b.n_layers,
                               " layers, d=", b.hidden_size, ", ", b.n_kv_heads, " kv heads of ", b.resolved_head_dim(),
                               ", vocabulary ", b.vocab_size, ")");
    if (training)
      for (Parameter<T>* p : decoder.parameters())
        if (!p->frozen())
          detail::fail<UsageError>("Coprocessor: decoder parameter '", p->name(),
                                   "' is not frozen; the decoder must be frozen while the coprocessor trains "
                                   "(call decoder.freeze())");
  }

  /// ShapeError or RangeError unless `plan` fits `ids` and the coprocessor's N_A.
  void check_plan(std::span<const index_t> ids, const AugmentationPlan& plan) const {
    if (static_cast<index_t>(ids.size()) != plan.batch * plan.seq_len)
      detail::fail<ShapeError>("Coprocessor: ", ids.size(), " token ids for a plan of ", plan.batch, " sequences of ",
                               plan.seq_len);
    if (plan.n_ahead != config_.n_ahead)
      detail::fail<RangeError>("Coprocessor: the plan was made for N_A = ", plan.n_ahead,
                               " but the coprocessor predicts ", config_.n_ahead, " ahead tokens");
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t j = 0; j < plan.points_per_sequence; ++j)
        if (plan.point(b, j) < 0 || plan.point(b, j) + config_.n_ahead > plan.seq_len - 1)
          detail::fail<RangeError>("Coprocessor: augmentation point ", plan.point(b, j), " of sequence ", b,
                                   " leaves no room for ", config_.n_ahead, " ahead tokens in ", plan.seq_len);
  }

 private:
  // The config with n_latents set: the type's count, which the config may repeat, or the config's
  // own for dynamic_latents.
  static CoprocessorConfig with_latent_count(CoprocessorConfig config) {
    config.validate();
    if constexpr (NumLatents == dynamic_latents) {
      if (config.n_latents < 1)
        detail::fail<RangeError>("Coprocessor<T, dynamic_latents>: CoprocessorConfig::n_latents = ", config.n_latents,
                                 "; a coprocessor with a run-time latent count needs it ≥ 1");
    } else {
      if (config.n_latents != 0 && config.n_latents != NumLatents)
        detail::fail<RangeError>("Coprocessor<T, ", NumLatents, ">: CoprocessorConfig::n_latents = ", config.n_latents,
                                 " differs from the type's ", NumLatents, " latents (leave it 0)");
      config.n_latents = NumLatents;
    }
    return config;
  }

  // The soft tokens once per group: [G·N_L, d].
  Var<T> repeated_soft_tokens(Tape<T>& tape, index_t groups) {
    std::vector<Var<T>> copies(static_cast<std::size_t>(groups), tape.param(soft_tokens_));
    return groups == 1 ? copies[0] : concat_rows(std::span<const Var<T>>(copies));
  }

  // The latents' form over the coprocessor's output h [G·N_L, d] (what `output` returns).
  Var<T> latent_form(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& h, const LatentQueries& queries) {
    if (config_.latent_form == LatentForm::token_mixture) {
      // [G·N_L, V]·[V, d]: the coprocessor's next-token distribution over the decoder's (frozen) table
      const Var<T> written = matmul(softmax(model_.head(tape, h)), tape.param(decoder.token_embedding()));
      return add(written, linear(h, tape.param(projection_)));
    }
    if (config_.latent_form != LatentForm::residual) return h;
    std::vector<index_t> bases;
    for (const index_t token : queries.tokens) bases.insert(bases.end(), n_latents(), token);
    return add(decoder.embed(tape, bases), linear(h, tape.param(projection_)));
  }

  // The output the latent form reads at the soft tokens of `queries`, [G·N_L, d]: normed, except
  // for the final_hidden form.
  Var<T> output(Tape<T>& tape, std::span<const ConstantKV<T>> cache, const LatentQueries& queries,
                const Var<T>& decoder_residual, const SoftTokenMasks& masks) {
    return read(tape, cache, queries, decoder_residual, masks, config_.latent_form != LatentForm::final_hidden);
  }

  // The coprocessor's output at the soft tokens of `queries`, [G·N_L, d]: after its final norm
  // (`normed`) or its last residual-stream state.
  Var<T> read(Tape<T>& tape, std::span<const ConstantKV<T>> cache, const LatentQueries& queries,
              const Var<T>& decoder_residual, const SoftTokenMasks& masks, bool normed) {
    const Var<T> soft = repeated_soft_tokens(tape, queries.size());
    return config_.input == CoprocessorInput::kv_cache ? read_cache(tape, soft, cache, queries, masks, normed)
                                                       : read_last_layer(tape, soft, queries, decoder_residual, normed);
  }

  // The kv_cache input: the coprocessor over the soft tokens, layer l attending to cache layer l.
  Var<T> read_cache(Tape<T>& tape, const Var<T>& soft, std::span<const ConstantKV<T>> cache,
                    const LatentQueries& queries, const SoftTokenMasks& masks, bool normed) {
    DecoderInput<T> in;
    in.embeddings = soft;
    in.positions = tape.copy(std::span<const index_t>(queries.soft_positions));
    if (masks.mask.empty()) in.groups = queries.groups;  // masks replace the groups
    in.rule = config_.soft_token_rule;
    in.layer_caches = cache;
    in.mask = masks.mask;
    in.window_mask = masks.window_mask;
    in.compute_logits = false;
    const DecoderOutput<T> out = model_.forward(tape, in);
    return normed ? out.hidden : out.residual;
  }

  // The last-layer ablation: group g's input is the decoder's last-layer activations of its
  // prefix followed by the soft tokens, one causal sequence per group.
  Var<T> read_last_layer(Tape<T>& tape, const Var<T>& soft, const LatentQueries& queries,
                         const Var<T>& decoder_residual, bool normed) {
    if (decoder_residual.empty())
      detail::fail<UsageError>(
          "Coprocessor: the last_layer input needs the decoder's activations (training path, or latents from tokens)");
    std::vector<Var<T>> parts;
    std::vector<AttentionGroup> sequence_groups;
    std::vector<index_t> positions;
    const double scale =
        model_.config().scale_embeddings ? std::sqrt(static_cast<double>(model_.config().hidden_size)) : 1.0;
    const Var<T> activations =
        scale == 1.0 ? decoder_residual : dca::scale(decoder_residual, static_cast<T>(1.0 / scale));
    index_t row = 0;
    for (index_t g = 0; g < queries.size(); ++g) {
      const AttentionGroup& group = queries.groups[static_cast<std::size_t>(g)];
      const index_t n = group.cache_count + n_latents();
      parts.push_back(slice_rows(activations, group.cache_begin, group.cache_count));
      parts.push_back(slice_rows(soft, g * n_latents(), n_latents()));
      sequence_groups.push_back({row, n, row, n, 0, 0});
      for (index_t i = 0; i < group.cache_count; ++i) positions.push_back(i);
      for (index_t i = 0; i < n_latents(); ++i)
        positions.push_back(queries.soft_positions[static_cast<std::size_t>(g * n_latents() + i)]);
      row += n;
    }
    DecoderInput<T> in;
    in.embeddings = concat_rows(std::span<const Var<T>>(parts));
    in.positions = tape.copy(std::span<const index_t>(positions));
    in.groups = tape.copy(std::span<const AttentionGroup>(sequence_groups));
    in.compute_logits = false;
    const DecoderOutput<T> out = model_.forward(tape, in);
    const Var<T> h = normed ? out.hidden : out.residual;
    std::vector<Var<T>> latent_rows;
    for (const AttentionGroup& g : sequence_groups)
      latent_rows.push_back(slice_rows(h, g.q_begin + g.q_count - n_latents(), n_latents()));
    return concat_rows(std::span<const Var<T>>(latent_rows));
  }

  // The objective's weight of every row of `layout` [G·R]: w_n / G at the rows predicting the n-th
  // ahead token, 0 elsewhere.
  std::vector<T> target_weights(const AugmentationLayout& layout) const {
    const index_t G = layout.groups(), n_ahead = config_.n_ahead;
    const std::vector<double> w = objective_.weights(n_ahead);
    if (static_cast<index_t>(w.size()) != n_ahead)
      detail::fail<ShapeError>("Coprocessor: the objective gave ", w.size(), " weights for ", n_ahead, " ahead tokens");
    std::vector<T> weights(layout.targets.size(), T(0));
    for (index_t g = 0; g < G; ++g)
      for (index_t n = 0; n < n_ahead; ++n)
        weights[static_cast<std::size_t>(layout.target_row(g, n))] =
            static_cast<T>(w[static_cast<std::size_t>(n)] / static_cast<double>(G));
    return weights;
  }

  // The mean over groups of each ahead position's loss, from per-row losses [G·R, 1].
  std::vector<double> per_position(const Var<T>& row_losses, const AugmentationLayout& layout) const {
    const index_t G = layout.groups(), n_ahead = config_.n_ahead;
    std::vector<double> out(static_cast<std::size_t>(n_ahead), 0.0);
    for (index_t g = 0; g < G; ++g)
      for (index_t n = 0; n < n_ahead; ++n)
        out[static_cast<std::size_t>(n)] +=
            static_cast<double>(row_losses.value()[layout.target_row(g, n)]) / static_cast<double>(G);
    return out;
  }

  // The gated objective: each target's negative log-likelihood under the mixture
  // g·p(x | latents) + (1 − g)·p_frozen(x), g = σ(gate logit of its group); `frozen` [G·R] holds
  // p_frozen of every row's target (1 at rows without one).
  AugmentedLoss<T> mixture_score(const Var<T>& logits, const AugmentationLayout& layout, const Var<T>& gate_logits,
                                 const std::vector<T>& frozen) const {
    Tape<T>& tape = logits.tape();
    const index_t rows = static_cast<index_t>(layout.targets.size()), R = layout.rows_per_group();
    std::vector<index_t> group_of_row(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) group_of_row[static_cast<std::size_t>(r)] = r / R;
    const Var<T> augmented = exp(scale(cross_entropy_per_token(logits, layout.targets), T(-1)));  // [G·R,1]
    const Var<T> p_frozen = tape.constant(TensorView<const T>(frozen.data(), Shape{rows, 1}));
    const Var<T> g = sigmoid(embedding(gate_logits, std::span<const index_t>(group_of_row)));       // [G·R,1]
    const Var<T> nll = scale(log(add(p_frozen, mul(g, sub(augmented, p_frozen)))), T(-1));
    const std::vector<T> weights = target_weights(layout);
    AugmentedLoss<T> out;
    out.loss = sum(mul(nll, tape.constant(TensorView<const T>(weights.data(), Shape{rows, 1}))));
    out.per_position = per_position(nll, layout);
    return out;
  }

  // The gate's logit of every group, w·h + b at its last soft token: [G, 1] from h [G·N_L, d].
  Var<T> gate_logits(Tape<T>& tape, const Var<T>& h) {
    std::vector<index_t> last(static_cast<std::size_t>(h.rows() / n_latents()));
    for (std::size_t g = 0; g < last.size(); ++g) last[g] = static_cast<index_t>(g + 1) * n_latents() - 1;
    return linear(embedding(h, std::span<const index_t>(last)), tape.param(gate_weight_), tape.param(gate_bias_));
  }

  // p_frozen of the target of every row of `layout` [G·R] from the decoder's logits over the
  // tokens ids [B·T] (constants, [B·T, V]): group (b, j)'s n-th ahead token x[t+n+1] is the next
  // token of row b·T + t + n.
  std::vector<T> frozen_target_probabilities(const Var<T>& token_logits, std::span<const index_t> ids,
                                             const AugmentationPlan& plan, const AugmentationLayout& layout) const {
    std::vector<index_t> next(ids.size(), -100);
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t i = 0; i + 1 < plan.seq_len; ++i)
        next[static_cast<std::size_t>(b * plan.seq_len + i)] = ids[static_cast<std::size_t>(b * plan.seq_len + i + 1)];
    const auto losses = cross_entropy_per_token(token_logits, std::span<const index_t>(next)).value();  // [B·T, 1]
    std::vector<T> out(layout.targets.size(), T(1));
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t j = 0; j < plan.points_per_sequence; ++j) {
        const index_t g = b * plan.points_per_sequence + j, t = plan.point(b, j);
        for (index_t n = 0; n < config_.n_ahead; ++n)
          out[static_cast<std::size_t>(layout.target_row(g, n))] = std::exp(-losses[b * plan.seq_len + t + n]);
      }
    return out;
  }

  void check_ungated(const char* who) const {
    if (config_.gated)
      detail::fail<UsageError>(who, ": a gated coprocessor's prediction is a mixture with the frozen decoder's, which "
                                    "single-insertion inference does not compute yet; evaluate it with loss, "
                                    "evaluate_ahead or score_chains_augmented");
  }

  CoprocessorConfig config_;
  Objective objective_;
  Decoder<T> model_;
  Parameter<T> soft_tokens_;
  Parameter<T> projection_;
  Parameter<T> gate_weight_, gate_bias_;  // gated only: [1, d] and [1, 1]
};

}  // namespace dca
