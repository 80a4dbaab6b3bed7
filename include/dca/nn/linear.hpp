// dca/nn/linear.hpp — a linear layer y = x·Wᵀ + b with Hugging Face parameter names.
#pragma once

#include "dca/autodiff/ops/elementwise.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/core/random.hpp"
#include "dca/nn/config.hpp"

#include <cmath>
#include <string>
#include <string_view>

namespace dca {

/// Whether a parameter name is a LoRA B matrix, as Linear::add_lora names them: the
/// zero-initialised half of an adapter.
inline bool is_lora_b(std::string_view name) { return name.ends_with(".lora_B.weight"); }

template <Scalar T>
class Linear {
 public:
  Linear() = default;
  /// `name` is the Hugging Face prefix ("model.layers.0.self_attn.q_proj"); the parameters are
  /// "<name>.weight" ([out, in], or [in, out] for GPT-2's Conv1D layout) and "<name>.bias" [out].
  Linear(const std::string& name, index_t in, index_t out, bool bias, WeightLayout layout = WeightLayout::out_in)
      : weight_(name + ".weight", Tensor<T>(layout == WeightLayout::out_in ? Shape{out, in} : Shape{in, out})),
        layout_(layout), in_(in), out_(out) {
    if (bias) bias_ = Parameter<T>(name + ".bias", Tensor<T>(Shape{out}));
  }

  /// x:[N,in] -> [N,out]
  Var<T> operator()(Tape<T>& tape, const Var<T>& x) {
    if (x.cols() != in_)
      detail::fail<ShapeError>(weight_.name(), ": input is ", x.shape(), ", expected [N,", in_, "]");
    Var<T> y;
    if (layout_ == WeightLayout::out_in)
      y = has_bias() ? linear(x, tape.param(weight_), tape.param(bias_)) : linear(x, tape.param(weight_));
    else
      y = has_bias() ? matmul(x, tape.param(weight_), tape.param(bias_)) : matmul(x, tape.param(weight_));
    if (!has_lora()) return y;
    // x·Aᵀ: [N, r], then ·Bᵀ: [N, out], scaled by α/r.
    return add(y, scale(linear(linear(x, tape.param(lora_a_)), tape.param(lora_b_)), static_cast<T>(lora_scale_)));
  }

  /// Adds a low-rank adapter (LoRA): y = x·Wᵀ + b + (α/r)·x·Aᵀ·Bᵀ with A [r, in] ~ U(−1/√in, 1/√in)
  /// and B [out, r] = 0, so the layer starts unchanged; W and b are frozen. Parameter names follow
  /// PEFT: "<name>.lora_A.weight", "<name>.lora_B.weight".
  void add_lora(index_t rank, double alpha, Rng& rng) {
    if (rank < 1) detail::fail<RangeError>(weight_.name(), ": LoRA rank must be ≥ 1, got ", rank);
    const std::string prefix = weight_.name().substr(0, weight_.name().size() - std::string(".weight").size());
    Tensor<T> a(Shape{rank, in_});
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
    for (index_t i = 0; i < a.numel(); ++i) a[i] = static_cast<T>(bound * (2 * rng.uniform() - 1));
    lora_a_ = Parameter<T>(prefix + ".lora_A.weight", std::move(a));
    lora_b_ = Parameter<T>(prefix + ".lora_B.weight", Tensor<T>(Shape{out_, rank}));
    lora_scale_ = alpha / static_cast<double>(rank);
    weight_.freeze();
    bias_.freeze();
  }
  bool has_lora() const { return !lora_a_.value().empty(); }

  /// Weights ~ N(0, std²), bias zero.
  void init(Rng& rng, double std) {
    for (index_t i = 0; i < weight_.numel(); ++i) weight_.value()[i] = static_cast<T>(std * rng.normal());
    if (has_bias()) bias_.value().fill(T(0));
  }

  bool has_bias() const { return !bias_.value().empty(); }
  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  Parameter<T>& weight() { return weight_; }
  Parameter<T>& bias() { return bias_; }
  void collect(std::vector<Parameter<T>*>& out) {
    out.push_back(&weight_);
    if (has_bias()) out.push_back(&bias_);
    if (has_lora()) {
      out.push_back(&lora_a_);
      out.push_back(&lora_b_);
    }
  }

 private:
  Parameter<T> weight_;
  Parameter<T> bias_;
  Parameter<T> lora_a_, lora_b_;  // empty unless add_lora was called
  double lora_scale_ = 0;
  WeightLayout layout_ = WeightLayout::out_in;
  index_t in_ = 0, out_ = 0;
};

}  // namespace dca
