// dca/nn/norm.hpp — the normalisation layer of a decoder: LayerNorm, RMSNorm or Gemma's (1+w)
// RMSNorm, chosen by the config.
#pragma once

#include "dca/autodiff/ops/norm.hpp"
#include "dca/nn/config.hpp"

#include <string>

namespace dca {

template <Scalar T>
class Norm {
 public:
  Norm() = default;
  /// Parameters "<name>.weight" [d] and, for LayerNorm, "<name>.bias" [d].
  Norm(const std::string& name, index_t dim, NormKind kind, double eps)
      : weight_(name + ".weight", Tensor<T>(Shape{dim})), kind_(kind), eps_(eps) {
    if (kind == NormKind::layer_norm) bias_ = Parameter<T>(name + ".bias", Tensor<T>(Shape{dim}));
    init();
  }

  /// x:[N,d] -> [N,d]
  Var<T> operator()(Tape<T>& tape, const Var<T>& x) {
    switch (kind_) {
      case NormKind::layer_norm: return layer_norm(x, tape.param(weight_), tape.param(bias_), eps_);
      case NormKind::rms_norm: return rms_norm(x, tape.param(weight_), eps_, RmsWeight::plain);
      case NormKind::rms_norm_one_plus: return rms_norm(x, tape.param(weight_), eps_, RmsWeight::one_plus);
    }
    detail::fail<UsageError>("Norm: unknown kind");
  }

  /// The identity gain: w = 1 (w = 0 for the 1+w form), bias 0.
  void init() {
    weight_.value().fill(kind_ == NormKind::rms_norm_one_plus ? T(0) : T(1));
    if (kind_ == NormKind::layer_norm) bias_.value().fill(T(0));
  }

  void collect(std::vector<Parameter<T>*>& out) {
    out.push_back(&weight_);
    if (kind_ == NormKind::layer_norm) out.push_back(&bias_);
  }

 private:
  Parameter<T> weight_;
  Parameter<T> bias_;
  NormKind kind_ = NormKind::rms_norm;
  double eps_ = 1e-6;
};

}  // namespace dca
