// dca/nn/mlp.hpp — the decoder's feed-forward layer: plain act(x·W1)·W2 (GPT-2) or gated
// (act(x·Wg) ⊙ x·Wu)·Wd (SwiGLU in Llama, GeGLU in Gemma-2).
#pragma once

#include "dca/autodiff/ops/activation.hpp"
#include "dca/autodiff/ops/elementwise.hpp"
#include "dca/nn/linear.hpp"

#include <string>

namespace dca {

template <Scalar T>
class Mlp {
 public:
  Mlp() = default;
  Mlp(const DecoderConfig& config, const std::string& prefix)
      : activation_(config.activation), gated_(config.gated_mlp) {
    const index_t d = config.hidden_size, width = config.intermediate_size;
    const HfNames& names = hf_names(config.architecture);
    if (gated_) gate_ = Linear<T>(hf_child(prefix, names.mlp_gate), d, width, config.mlp_bias, names.layout);
    up_ = Linear<T>(hf_child(prefix, names.mlp_up), d, width, config.mlp_bias, names.layout);
    down_ = Linear<T>(hf_child(prefix, names.mlp_down), width, d, config.mlp_bias, names.layout);
  }

  /// x:[N,d] -> [N,d]
  Var<T> operator()(Tape<T>& tape, const Var<T>& x) {
    const Var<T> hidden = gated_ ? mul(activate(gate_(tape, x)), up_(tape, x)) : activate(up_(tape, x));
    return down_(tape, hidden);
  }

  /// Input projections ~ N(0, std²); the output projection with `residual_std`.
  void init(Rng& rng, double std, double residual_std) {
    if (gated_) gate_.init(rng, std);
    up_.init(rng, std);
    down_.init(rng, residual_std);
  }

  /// Adds LoRA adapters to every projection (see Linear::add_lora).
  void add_lora(index_t rank, double alpha, Rng& rng) {
    if (gated_) gate_.add_lora(rank, alpha, rng);
    up_.add_lora(rank, alpha, rng);
    down_.add_lora(rank, alpha, rng);
  }

  void collect(std::vector<Parameter<T>*>& out) {
    if (gated_) gate_.collect(out);
    up_.collect(out);
    down_.collect(out);
  }

 private:
  Var<T> activate(const Var<T>& x) const {
    switch (activation_) {
      case Activation::gelu_tanh: return gelu_tanh(x);
      case Activation::gelu_erf: return gelu_erf(x);
      case Activation::silu: return silu(x);
      case Activation::relu: return relu(x);
    }
    detail::fail<UsageError>("Mlp: unknown activation");
  }

  Linear<T> gate_, up_, down_;
  Activation activation_ = Activation::silu;
  bool gated_ = true;
};

}  // namespace dca
