// dca/nn/attention.hpp — the self-attention layer of a decoder: projections, rotary positions,
// the fused attention op, and the output projection, with Hugging Face parameter names.
#pragma once

#include "dca/autodiff/ops/attention.hpp"
#include "dca/autodiff/ops/rope.hpp"
#include "dca/autodiff/ops/shape.hpp"
#include "dca/nn/linear.hpp"

#include <cstdint>
#include <span>
#include <string>

namespace dca {

/// What an attention layer sees besides its own rows, set by the decoder for each call.
template <Scalar T>
struct AttentionContext {
  std::span<const index_t> positions;      // [N] position ids of the rows (rotary, sliding window)
  std::span<const AttentionGroup> groups;  // which rows attend to which; empty: all rows, one sequence
  AttentionRule rule = AttentionRule::causal;
  ConstantKV<T> cache;                     // this layer's constant keys/values (after rotary), or empty
  Var<T> prefix_keys, prefix_values;       // active keys/values [P, Hkv·D] placed before the rows' own
                                           // (cache slots computed on this tape), or empty
  std::span<const index_t> key_positions;  // [P + N] positions of prefix and own keys; empty: `positions`
  // Explicit masks [N, cache + P + N] (1 = visible) replacing groups, rule and window: `mask` on
  // full-attention layers, `window_mask` on sliding-window layers. For dense reference passes.
  std::span<const std::uint8_t> mask, window_mask;
};

template <Scalar T>
class SelfAttention {
 public:
  /// y:[N,d] plus the layer's keys and values [N, Hkv·D] after rotary: what a KV cache stores.
  struct Output {
    Var<T> y, keys, values;
  };

  SelfAttention() = default;
  SelfAttention(const DecoderConfig& config, const std::string& prefix, index_t layer)
      : n_heads_(config.n_heads), n_kv_heads_(config.n_kv_heads), head_dim_(config.resolved_head_dim()),
        rotary_(config.positions == PositionKind::rotary), rope_theta_(config.rope_theta),
        rope_float32_(config.rope_float32_angles), scale_(config.query_scale), softcap_(config.attention_softcap),
        window_(config.layer_uses_window(layer) ? config.sliding_window : 0) {
    const index_t d = config.hidden_size, q_width = n_heads_ * head_dim_, kv_width = n_kv_heads_ * head_dim_;
    const HfNames& names = hf_names(config.architecture);
    if (names.fused_qkv != nullptr) {
      fused_ = Linear<T>(hf_child(prefix, names.fused_qkv), d, 3 * d, config.qkv_bias, names.layout);
    } else {
      q_ = Linear<T>(hf_child(prefix, names.query), d, q_width, config.qkv_bias, names.layout);
      k_ = Linear<T>(hf_child(prefix, names.key), d, kv_width, config.qkv_bias, names.layout);
      v_ = Linear<T>(hf_child(prefix, names.value), d, kv_width, config.qkv_bias, names.layout);
    }
    out_ = Linear<T>(hf_child(prefix, names.attention_output), q_width, d, config.out_bias, names.layout);
  }

  /// x:[N,d] -> y:[N,d], keys/values:[N, Hkv·D]
  Output operator()(Tape<T>& tape, const Var<T>& x, const AttentionContext<T>& context) {
    Var<T> q, k, v;
    if (fused() && fused_.has_lora()) {  // the adapter needs the whole [N, 3d] product
      const Var<T> qkv = fused_(tape, x);
      const index_t d = fused_.out_features() / 3;
      q = slice_cols(qkv, 0, d);
      k = slice_cols(qkv, d, d);
      v = slice_cols(qkv, 2 * d, d);
    } else if (fused()) {  // GPT-2: one [d, 3d] projection whose column blocks are q | k | v
      if (x.cols() != fused_.in_features())
        detail::fail<ShapeError>(fused_.weight().name(), ": input is ", x.shape(), ", expected [N,",
                                 fused_.in_features(), "]");
      // Each block is computed straight into its own value: no [N, 3d] product and no slice copies.
      const index_t d = fused_.out_features() / 3;
      const Var<T> w = tape.param(fused_.weight());
      if (fused_.has_bias()) {
        const Var<T> b = tape.param(fused_.bias());
        q = matmul_cols(x, w, b, 0, d);
        k = matmul_cols(x, w, b, d, d);
        v = matmul_cols(x, w, b, 2 * d, d);
      } else {
        q = matmul_cols(x, w, 0, d);
        k = matmul_cols(x, w, d, d);
        v = matmul_cols(x, w, 2 * d, d);
      }
    } else {
      q = q_(tape, x);
      k = k_(tape, x);
      v = v_(tape, x);
    }
    if (rotary_) {
      q = rope(q, context.positions, RopeConfig{n_heads_, rope_theta_, rope_float32_});
      k = rope(k, context.positions, RopeConfig{n_kv_heads_, rope_theta_, rope_float32_});
    }
    const Var<T> own_keys = k, own_values = v;
    if (!context.prefix_keys.empty()) {
      k = concat_rows({context.prefix_keys, k});
      v = concat_rows({context.prefix_values, v});
    }
    AttentionArgs<T> args;
    args.n_heads = n_heads_;
    args.n_kv_heads = n_kv_heads_;
    args.scale = scale_;
    args.softcap = softcap_;
    args.rule = context.rule;
    args.window = window_;
    args.groups = context.groups;
    args.q_positions = context.positions;
    args.k_positions = context.key_positions.empty() ? context.positions : context.key_positions;
    args.cache = context.cache;
    const auto mask = window_ > 0 ? context.window_mask : context.mask;
    if (!mask.empty()) {
      args.mask = mask;
      args.window = 0;
      args.groups = {};
    }
    const Var<T> attended = attention(q, k, v, args);
    return {out_(tape, attended), own_keys, own_values};
  }

  /// Projections ~ N(0, std²); the output projection, which feeds the residual stream, with
  /// `residual_std` (GPT-2's 1/sqrt(2·n_layers) scaling).
  void init(Rng& rng, double std, double residual_std) {
    for (Linear<T>* l : {&fused_, &q_, &k_, &v_})
      if (l->in_features() > 0) l->init(rng, std);
    out_.init(rng, residual_std);
  }

  void collect(std::vector<Parameter<T>*>& out) {
    for (Linear<T>* l : {&fused_, &q_, &k_, &v_, &out_})
      if (l->in_features() > 0) l->collect(out);
  }

  /// Adds LoRA adapters to every projection (see Linear::add_lora).
  void add_lora(index_t rank, double alpha, Rng& rng) {
    for (Linear<T>* l : {&fused_, &q_, &k_, &v_, &out_})
      if (l->in_features() > 0) l->add_lora(rank, alpha, rng);
  }

  index_t window() const { return window_; }

 private:
  bool fused() const { return fused_.in_features() > 0; }

  Linear<T> fused_, q_, k_, v_, out_;
  index_t n_heads_ = 1, n_kv_heads_ = 1, head_dim_ = 0;
  bool rotary_ = true;
  double rope_theta_ = 10000.0;
  bool rope_float32_ = false;
  double scale_ = 0, softcap_ = 0;
  index_t window_ = 0;
};

}  // namespace dca
