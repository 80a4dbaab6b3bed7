// dca/autodiff/parameter.hpp — a named, persistent trainable tensor with its gradient buffer.
// Parameters live outside tapes; `Tape::param` puts one on a tape without copying it.
#pragma once

#include "dca/tensor/tensor.hpp"

#include <string>
#include <utility>

namespace dca {

template <Scalar T>
class Parameter {
 public:
  Parameter() = default;
  Parameter(std::string name, Tensor<T> value) : name_(std::move(name)), value_(std::move(value)) {}

  /// The parameter's name (Hugging Face naming for model parameters).
  const std::string& name() const { return name_; }
  Tensor<T>& value() { return value_; }
  const Tensor<T>& value() const { return value_; }
  const Shape& shape() const { return value_.shape(); }
  index_t numel() const { return value_.numel(); }

  /// d loss / d value, summed over every backward pass since the last `zero_grad()`.
  /// Empty until the parameter first takes part in a backward pass as an active value.
  const Tensor<T>& grad() const { return grad_; }
  bool has_grad() const { return !grad_.empty(); }
  /// The gradient for in-place edits (clipping, scaling); throws UsageError if there is none yet.
  Tensor<T>& mutable_grad() {
    if (!has_grad())
      detail::fail<UsageError>("Parameter '", name_, "' has no gradient yet (it has not taken part in a backward pass)");
    return grad_;
  }
  void zero_grad() { grad_.fill(T(0)); }

  /// A frozen parameter is a constant on every tape: it receives no gradient, and the ops that
  /// use it skip the GEMMs that would compute one. Gradients still flow through it to its inputs.
  bool frozen() const { return frozen_; }
  void set_frozen(bool frozen) { frozen_ = frozen; }
  void freeze() { frozen_ = true; }
  void unfreeze() { frozen_ = false; }

  /// The gradient buffer, allocated (zeroed) on first use. For tapes and optimizers.
  T* grad_buffer() {
    if (grad_.shape() != value_.shape() || grad_.empty()) grad_ = Tensor<T>(value_.shape());
    return grad_.data();
  }

 private:
  std::string name_;
  Tensor<T> value_;
  Tensor<T> grad_;
  bool frozen_ = false;
};

}  // namespace dca
