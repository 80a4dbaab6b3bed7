// dca/nn/block.hpp — one pre-norm transformer block:
//   h   = x + post_attn_norm(attention(attn_norm(x)))
//   out = h + post_mlp_norm(mlp(mlp_norm(h)))
// where the post-norms exist only in Gemma-2 (config.post_norms). Names follow each
// architecture's Hugging Face checkpoints (nn/names.hpp).
#pragma once

#include "dca/nn/attention.hpp"
#include "dca/nn/mlp.hpp"
#include "dca/nn/norm.hpp"

#include <string>

namespace dca {

template <Scalar T>
class Block {
 public:
  /// The block's output [N,d] and its attention keys/values [N, Hkv·D] (after rotary).
  struct Output {
    Var<T> x, keys, values;
  };

  Block() = default;
  Block(const DecoderConfig& config, index_t layer) : post_norms_(config.post_norms) {
    const HfNames& names = hf_names(config.architecture);
    const std::string prefix = std::string(names.layers) + "." + std::to_string(layer);
    const auto norm = [&](const char* name) {
      return Norm<T>(hf_child(prefix, name), config.hidden_size, config.norm, config.norm_eps);
    };
    attn_norm_ = norm(names.attention_norm);
    attention_ = SelfAttention<T>(config, hf_child(prefix, names.attention), layer);
    mlp_norm_ = norm(names.mlp_norm);
    mlp_ = Mlp<T>(config, hf_child(prefix, names.mlp));
    if (post_norms_) {
      post_attn_norm_ = norm(names.post_attention_norm);
      post_mlp_norm_ = norm(names.post_mlp_norm);
    }
  }

  /// x:[N,d] -> [N,d]
  Output operator()(Tape<T>& tape, const Var<T>& x, const AttentionContext<T>& context) {
    auto attended = attention_(tape, attn_norm_(tape, x), context);
    Var<T> a = attended.y;
    if (post_norms_) a = post_attn_norm_(tape, a);
    const Var<T> h = add(x, a);
    Var<T> m = mlp_(tape, mlp_norm_(tape, h));
    if (post_norms_) m = post_mlp_norm_(tape, m);
    return {add(h, m), attended.keys, attended.values};
  }

  void init(Rng& rng, double std, double residual_std) {
    attention_.init(rng, std, residual_std);
    mlp_.init(rng, std, residual_std);
    for (Norm<T>* n : {&attn_norm_, &post_attn_norm_, &mlp_norm_, &post_mlp_norm_}) n->init();
  }

  /// Parameters in Hugging Face order within the block.
  void collect(std::vector<Parameter<T>*>& out) {
    attn_norm_.collect(out);
    attention_.collect(out);
    if (post_norms_) post_attn_norm_.collect(out);
    mlp_norm_.collect(out);
    mlp_.collect(out);
    if (post_norms_) post_mlp_norm_.collect(out);
  }

  SelfAttention<T>& attention() { return attention_; }

  /// Adds LoRA adapters to the attention and MLP projections.
  void add_lora(index_t rank, double alpha, Rng& rng) {
    attention_.add_lora(rank, alpha, rng);
    mlp_.add_lora(rank, alpha, rng);
  }

 private:
  Norm<T> attn_norm_, post_attn_norm_, mlp_norm_, post_mlp_norm_;
  SelfAttention<T> attention_;
  Mlp<T> mlp_;
  bool post_norms_ = false;
};

}  // namespace dca
