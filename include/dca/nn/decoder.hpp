// dca/nn/decoder.hpp — a decoder-only language model assembled from a DecoderConfig:
// token embeddings (× √d for Gemma-2) + learned positions (GPT-2) → blocks → final norm → output
// head (tied or untied) → optional final logit soft-capping. Every parameter carries its Hugging
// Face name, so checkpoints move in and out of transformers unchanged (dca/io/hf.hpp).
//
// The forward pass takes token ids *or* input embeddings (the coprocessor feeds latents), explicit
// position ids, and — for caches and the coprocessor — explicit attention groups and per-layer
// constant keys/values. Rows are flattened: a batch of B sequences of T tokens is N = B·T rows.
#pragma once

#include "dca/autodiff/ops/activation.hpp"
#include "dca/autodiff/ops/cross_entropy.hpp"
#include "dca/autodiff/ops/embedding.hpp"
#include "dca/nn/block.hpp"

#include <cmath>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dca {

/// One forward call's inputs. Either `ids` or `embeddings` is set.
template <Scalar T>
struct DecoderInput {
  std::span<const index_t> ids;             // [N] token ids
  Var<T> embeddings;                        // [N,d] input embeddings, used when ids is empty (Hugging
                                            // Face semantics: Gemma-2's √d scale still applies)
  index_t batch = 1;                        // N rows = `batch` sequences of N/batch rows (default groups, positions)
  std::span<const index_t> positions;       // [N] position ids; empty: 0..T−1 within each sequence
  std::span<const AttentionGroup> groups;   // explicit attention groups; empty: one causal group per sequence
  AttentionRule rule = AttentionRule::causal;
  std::span<const ConstantKV<T>> layer_caches;  // one constant key/value segment per layer, or empty
  std::span<const Var<T>> active_keys;      // per layer, active keys [P, Hkv·D] placed before the rows' own
  std::span<const Var<T>> active_values;    // (cache slots computed on this tape), or empty
  std::span<const index_t> key_positions;   // [P + N] positions of those keys and the rows' own; empty: positions
  bool keep_keys_values = false;            // return every layer's keys/values (what a cache stores)
  bool compute_logits = true;               // false: skip the output head (callers reading hidden states only)
  // Explicit attention masks [N, cache + N] (1 = visible) replacing groups and rule — `mask` for
  // full-attention layers, `window_mask` for sliding-window layers (the window must be encoded in
  // it). Used by dense reference computations; the structured paths use groups.
  std::span<const std::uint8_t> mask, window_mask;
};

/// What a forward call returns: the residual stream after the last block (`residual`), the final
/// hidden states after the final norm (`hidden`), logits, and, if asked for, each layer's keys and
/// values [N, Hkv·D] after rotary.
template <Scalar T>
struct DecoderOutput {
  Var<T> residual;
  Var<T> hidden;
  Var<T> logits;
  std::vector<Var<T>> keys, values;

  /// The kept keys and values as the constant cache of a later forward pass: one segment per
  /// layer, all N rows, at `positions` [N]. The segments read the values in place, and so does
  /// the backward pass: keep `positions` alive until it is done (e.g. `tape.copy` them).
  std::vector<ConstantKV<T>> constant_cache(std::span<const index_t> positions) const {
    std::vector<ConstantKV<T>> layers;
    for (std::size_t l = 0; l < keys.size(); ++l) {
      if (keys[l].rows() != static_cast<index_t>(positions.size()))
        detail::fail<ShapeError>("DecoderOutput::constant_cache: layer ", l, " kept ", keys[l].rows(), " rows but ",
                                 positions.size(), " positions were given");
      layers.push_back({keys[l].value(), values[l].value(), positions});
    }
    return layers;
  }
};

/// Tag for a decoder whose weights are about to be overwritten, as by a checkpoint load: no random
/// weights are drawn, which for a large model takes longer than loading it.
struct UninitializedWeights {};
inline constexpr UninitializedWeights uninitialized_weights{};

template <Scalar T>
class Decoder {
 public:
  /// A decoder with freshly initialised weights (deterministic for a given seed).
  explicit Decoder(DecoderConfig config, std::uint64_t seed = 0) : Decoder(std::move(config), uninitialized_weights) {
    init(seed);
  }

  /// A decoder whose embeddings and projections are zero (norms the identity, biases zero) until
  /// init() or a load sets them.
  Decoder(DecoderConfig config, UninitializedWeights) : config_(std::move(config)) {
    config_.validate();
    const index_t d = config_.hidden_size;
    const HfNames& names = hf_names(config_.architecture);
    embed_ = Parameter<T>(names.token_embedding, Tensor<T>(Shape{config_.vocab_size, d}));
    if (config_.positions == PositionKind::learned)
      position_embed_ = Parameter<T>(names.position_embedding, Tensor<T>(Shape{config_.max_positions, d}));
    blocks_.reserve(static_cast<std::size_t>(config_.n_layers));
    for (index_t l = 0; l < config_.n_layers; ++l) blocks_.emplace_back(config_, l);
    final_norm_ = Norm<T>(names.final_norm, d, config_.norm, config_.norm_eps);
    if (!config_.tie_embeddings) head_ = Parameter<T>(names.head, Tensor<T>(Shape{config_.vocab_size, d}));
  }

  const DecoderConfig& config() const { return config_; }

  /// Re-initialises every weight: normal(0, init_std) for embeddings and projections, with the
  /// projections that write into the residual stream scaled by 1/sqrt(2·n_layers) (GPT-2); norms
  /// start as the identity and biases at zero. The padding row of the token embedding, if the
  /// config has one, starts at zero, as transformers' _init_weights leaves an nn.Embedding's
  /// padding_idx row.
  void init(std::uint64_t seed) {
    Rng rng(seed);
    const double std = config_.init_std;
    const double residual_std = std / std::sqrt(2.0 * static_cast<double>(config_.n_layers));
    fill_normal(embed_, rng, std);
    if (const auto pad = config_.padding_row()) embed_.value().matrix().row(*pad).setZero();
    if (has_position_embed()) fill_normal(position_embed_, rng, std);
    for (Block<T>& b : blocks_) b.init(rng, std, residual_std);
    final_norm_.init();
    if (has_head()) fill_normal(head_, rng, std);
  }

  // ---- parameters ------------------------------------------------------------------------------

  /// Every parameter, in Hugging Face order (embeddings, blocks, final norm, head). The pointers
  /// stay valid until the decoder is moved or destroyed.
  std::vector<Parameter<T>*> parameters() {
    std::vector<Parameter<T>*> out{&embed_};
    if (has_position_embed()) out.push_back(&position_embed_);
    for (Block<T>& b : blocks_) b.collect(out);
    final_norm_.collect(out);
    if (has_head()) out.push_back(&head_);
    return out;
  }
  /// The parameter with this Hugging Face name; throws RangeError listing a few valid names.
  Parameter<T>& parameter(std::string_view name) {
    for (Parameter<T>* p : parameters())
      if (p->name() == name) return *p;
    detail::fail<RangeError>("Decoder: no parameter named '", name, "' in this ", config_.architecture,
                             " decoder (e.g. '", embed_.name(), "', '", parameters()[1]->name(), "')");
  }
  /// Number of scalar weights (a tied head counts once).
  index_t parameter_count() {
    index_t n = 0;
    for (Parameter<T>* p : parameters()) n += p->numel();
    return n;
  }
  /// Freezes every parameter: the decoder becomes a constant that still passes gradients to its
  /// inputs (the frozen decoder of cache augmentation).
  void freeze() { set_frozen(true); }
  /// Low-rank adaptation: freezes every weight, then adds trainable LoRA adapters of rank `rank`
  /// (scale α/rank) to every attention and MLP projection. B starts at zero: the model is
  /// unchanged until trained.
  void add_lora(index_t rank, double alpha, std::uint64_t seed) {
    freeze();
    Rng rng(seed);
    for (Block<T>& b : blocks_) b.add_lora(rank, alpha, rng);
  }
  void unfreeze() { set_frozen(false); }
  void zero_grad() {
    for (Parameter<T>* p : parameters()) p->zero_grad();
  }

  // ---- forward ---------------------------------------------------------------------------------

  /// The general forward pass; see DecoderInput.
  DecoderOutput<T> forward(Tape<T>& tape, const DecoderInput<T>& input) {
    if (input.ids.empty() == input.embeddings.empty())
      detail::fail<UsageError>("Decoder::forward: pass either token ids or input embeddings, not ",
                               input.ids.empty() ? "neither" : "both");
    const index_t n = input.ids.empty() ? input.embeddings.rows() : static_cast<index_t>(input.ids.size());
    check_input(input, n);
    const std::span<const index_t> positions = input.positions.empty() ? default_positions(tape, n, input.batch)
                                                                       : input.positions;
    check_positions(positions);

    Var<T> x = input.ids.empty() ? input.embeddings : embed(tape, input.ids);
    if (config_.scale_embeddings) x = scale(x, static_cast<T>(std::sqrt(static_cast<double>(config_.hidden_size))));
    if (has_position_embed()) x = add(x, embedding(tape.param(position_embed_), positions));

    AttentionContext<T> context;
    context.positions = positions;
    context.groups = input.groups.empty() ? default_groups(tape, n, input.batch) : input.groups;
    context.rule = input.rule;
    DecoderOutput<T> out;
    for (index_t l = 0; l < config_.n_layers; ++l) {
      const auto li = static_cast<std::size_t>(l);
      if (!input.layer_caches.empty()) context.cache = input.layer_caches[li];
      if (!input.active_keys.empty()) {
        context.prefix_keys = input.active_keys[li];
        context.prefix_values = input.active_values[li];
      }
      context.key_positions = input.key_positions;
      context.mask = input.mask;
      context.window_mask = input.window_mask;
      auto block = blocks_[static_cast<std::size_t>(l)](tape, x, context);
      x = block.x;
      if (input.keep_keys_values) {
        out.keys.push_back(block.keys);
        out.values.push_back(block.values);
      }
    }
    out.residual = x;
    out.hidden = final_norm_(tape, x);
    if (!input.compute_logits) return out;
    out.logits = head(tape, out.hidden);
    return out;
  }

  /// ids:[N] -> [N,d]: rows of the token embedding table, before Gemma-2's √d scale — what
  /// `DecoderInput::embeddings` takes to stand for these tokens. Lookups of the config's padding
  /// row (its pad_token_id, for Llama, Qwen2 and Gemma-2) add no gradient to the table, as
  /// transformers' nn.Embedding(padding_idx=pad_token_id); a tied head still does. Every token
  /// lookup goes through here — forward's ids, the coprocessor's ahead tokens and residual bases —
  /// so they all agree.
  Var<T> embed(Tape<T>& tape, std::span<const index_t> ids) {
    return embedding(tape.param(embed_), ids, config_.padding_row());
  }

  /// hidden:[N,d] -> logits [N,V]: the output head (tied or untied) and the final soft-cap. Any
  /// rows of width d may go in: final hidden states, or a coprocessor's latents.
  Var<T> head(Tape<T>& tape, const Var<T>& hidden) {
    if (hidden.cols() != config_.hidden_size)
      detail::fail<ShapeError>("Decoder::head: hidden states are ", hidden.shape(), ", expected [N,",
                               config_.hidden_size, "]");
    const Var<T> logits = linear(hidden, tape.param(has_head() ? head_ : embed_));
    return config_.final_softcap > 0 ? softcap(logits, static_cast<T>(config_.final_softcap)) : logits;
  }

  /// ids:[B·T] (B sequences of T tokens, positions 0..T−1) -> logits [B·T, V]
  Var<T> logits(Tape<T>& tape, std::span<const index_t> ids, index_t batch = 1) {
    DecoderInput<T> input;
    input.ids = ids;
    input.batch = batch;
    return forward(tape, input).logits;
  }

  /// Mean next-token cross-entropy: ids and targets [B·T]; targets equal to -100 are ignored.
  Var<T> loss(Tape<T>& tape, std::span<const index_t> ids, std::span<const index_t> targets, index_t batch = 1) {
    if (targets.size() != ids.size())
      detail::fail<ShapeError>("Decoder::loss: ", ids.size(), " ids but ", targets.size(), " targets");
    return cross_entropy(logits(tape, ids, batch), targets);
  }

  std::vector<Block<T>>& blocks() { return blocks_; }
  /// The token embedding table [V, d] (also the output head when tied); `embed` reads it on a tape.
  Parameter<T>& token_embedding() { return embed_; }

 private:
  bool has_position_embed() const { return !position_embed_.value().empty(); }
  bool has_head() const { return !head_.value().empty(); }

  static void fill_normal(Parameter<T>& p, Rng& rng, double std) {
    for (index_t i = 0; i < p.numel(); ++i) p.value()[i] = static_cast<T>(std * rng.normal());
  }

  void set_frozen(bool frozen) {
    for (Parameter<T>* p : parameters()) p->set_frozen(frozen);
  }

  void check_input(const DecoderInput<T>& input, index_t n) const {
    if (!input.embeddings.empty() && input.embeddings.cols() != config_.hidden_size)
      detail::fail<ShapeError>("Decoder::forward: input embeddings are ", input.embeddings.shape(),
                               ", expected [N,", config_.hidden_size, "]");
    for (std::size_t i = 0; i < input.ids.size(); ++i)
      if (input.ids[i] < 0 || input.ids[i] >= config_.vocab_size)
        detail::fail<RangeError>("Decoder::forward: token id ", input.ids[i], " at position ", i,
                                 " is outside the vocabulary [0,", config_.vocab_size, ")");
    if (input.batch < 1 || n % input.batch != 0)
      detail::fail<ShapeError>("Decoder::forward: ", n, " rows do not split into ", input.batch, " sequences");
    if (!input.positions.empty() && static_cast<index_t>(input.positions.size()) != n)
      detail::fail<ShapeError>("Decoder::forward: ", input.positions.size(), " position ids for ", n, " rows");
    if (!input.layer_caches.empty() && static_cast<index_t>(input.layer_caches.size()) != config_.n_layers)
      detail::fail<ShapeError>("Decoder::forward: ", input.layer_caches.size(), " layer caches for ",
                               config_.n_layers, " layers");
    if ((!input.active_keys.empty() || !input.active_values.empty()) &&
        (static_cast<index_t>(input.active_keys.size()) != config_.n_layers ||
         static_cast<index_t>(input.active_values.size()) != config_.n_layers))
      detail::fail<ShapeError>("Decoder::forward: ", input.active_keys.size(), " active key and ",
                               input.active_values.size(), " active value segments for ", config_.n_layers, " layers");
  }

  void check_positions(std::span<const index_t> positions) const {
    for (std::size_t i = 0; i < positions.size(); ++i) {
      if (positions[i] < 0)
        detail::fail<RangeError>("Decoder::forward: position id ", positions[i], " at row ", i, " is negative");
      if (config_.positions == PositionKind::learned && positions[i] >= config_.max_positions)
        detail::fail<RangeError>("Decoder::forward: position id ", positions[i], " at row ", i, " exceeds the ",
                                 config_.max_positions, " learned positions of this model");
    }
  }

  static std::span<const index_t> default_positions(Tape<T>& tape, index_t n, index_t batch) {
    auto* p = tape.template allocate<index_t>(n);
    const index_t t = n / batch;
    for (index_t i = 0; i < n; ++i) p[i] = i % t;
    return {p, static_cast<std::size_t>(n)};
  }

  static std::span<const AttentionGroup> default_groups(Tape<T>& tape, index_t n, index_t batch) {
    auto* g = tape.template allocate<AttentionGroup>(batch);
    const index_t t = n / batch;
    for (index_t b = 0; b < batch; ++b) g[b] = AttentionGroup{b * t, t, b * t, t, 0, 0};
    return {g, static_cast<std::size_t>(batch)};
  }

  DecoderConfig config_;
  Parameter<T> embed_;
  Parameter<T> position_embed_;
  std::vector<Block<T>> blocks_;
  Norm<T> final_norm_;
  Parameter<T> head_;
};

}  // namespace dca
