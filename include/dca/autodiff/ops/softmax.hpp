// dca/autodiff/ops/softmax.hpp — row-wise softmax and log-softmax with hand-written backwards.
// Both subtract each row's maximum before exponentiating, so large inputs (1000 + x) stay finite.
// Entries of −inf (masked out) get probability 0 (up to Eigen's exp, which for double returns
// ~5e-309 instead of 0 at −inf); a row that is entirely −inf has no defined softmax and gives NaN.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <cmath>

namespace dca {

/// x:[R,C] -> softmax of each row [R,C]
template <Scalar T>
Var<T> softmax(const Var<T>& x) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("softmax", x.rows(), x.cols(), {x});
  const auto X = x.matrix();
  auto Y = y.mutable_matrix();
  if (x.cols() > 0)  // maxCoeff of an empty row is undefined
    for (index_t i = 0; i < X.rows(); ++i) {
      const T row_max = X.row(i).maxCoeff();
      Y.row(i).array() = (X.row(i).array() - row_max).exp();
      Y.row(i) *= T(1) / Y.row(i).sum();
    }
  tape.record(y, [x = x.operand(), y = y.operand()] {
    if (!x.active()) return;
    // dx = y ⊙ (dy − ⟨dy, y⟩) per row: the Jacobian diag(y) − y·yᵀ applied without forming it.
    auto dX = x.adj();
    const auto dY = y.adj();
    const auto Y = y.val();
    for (index_t i = 0; i < Y.rows(); ++i) {
      const T dy_dot_y = dY.row(i).dot(Y.row(i));
      dX.row(i).array() += Y.row(i).array() * (dY.row(i).array() - dy_dot_y);
    }
  });
  return y;
}

/// x:[R,C] -> log-softmax of each row, x − max − log Σ exp(x − max) [R,C]
template <Scalar T>
Var<T> log_softmax(const Var<T>& x) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("log_softmax", x.rows(), x.cols(), {x});
  const auto X = x.matrix();
  auto Y = y.mutable_matrix();
  if (x.cols() > 0)  // maxCoeff of an empty row is undefined
    for (index_t i = 0; i < X.rows(); ++i) {
      const T row_max = X.row(i).maxCoeff();
      const T log_sum = std::log((X.row(i).array() - row_max).exp().sum());
      // (x − max) − log_sum, not x − (max + log_sum): the shift is exact, the sum would round.
      Y.row(i).array() = (X.row(i).array() - row_max) - log_sum;
    }
  tape.record(y, [x = x.operand(), y = y.operand()] {
    if (!x.active()) return;
    // dx = dy − softmax(x)·Σ dy per row, with softmax(x) = exp(y).
    auto dX = x.adj();
    const auto dY = y.adj();
    const auto Y = y.val();
    for (index_t i = 0; i < Y.rows(); ++i) {
      const T dy_sum = dY.row(i).sum();
      dX.row(i).array() += dY.row(i).array() - Y.row(i).array().exp() * dy_sum;
    }
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_SOFTMAX_INSTANCES(kind, T) \
  kind Var<T> softmax(const Var<T>&); \
  kind Var<T> log_softmax(const Var<T>&);
DCA_EXTERN_INSTANCES(DCA_SOFTMAX_INSTANCES)

}  // namespace dca
