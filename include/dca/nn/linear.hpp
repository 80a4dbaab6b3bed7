// dca/nn/linear.hpp — a linear layer y = x·Wᵀ + b with Hugging Face parameter names.
#pragma once

#include "dca/autodiff/ops/elementwise.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/core/random.hpp"
#include "dca/nn/config.hpp"

#include <string>

namespace dca {

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
    if (layout_ == WeightLayout::out_in)
      return has_bias() ? linear(x, tape.param(weight_), tape.param(bias_)) : linear(x, tape.param(weight_));
    return has_bias() ? matmul(x, tape.param(weight_), tape.param(bias_)) : matmul(x, tape.param(weight_));
  }

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
  }

 private:
  Parameter<T> weight_;
  Parameter<T> bias_;
  WeightLayout layout_ = WeightLayout::out_in;
  index_t in_ = 0, out_ = 0;
};

}  // namespace dca
