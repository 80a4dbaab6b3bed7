// dca/autodiff/ops/reduce.hpp — sums and means: over everything, over the rows of each column, or
// over the columns of each row. The sum of no elements is 0; a mean over no elements is undefined
// and throws ShapeError.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

namespace dca {

namespace detail {

// Throws if a mean would divide by zero elements.
template <Scalar T>
void check_mean_count(const char* op, const Var<T>& x, index_t count, const char* what) {
  if (count == 0) fail<ShapeError>(op, ": input is ", x.shape(), ", so there are no ", what, " to average over");
}

// y = weight · Σ x over every element -> [1,1]  (weight 1 for sum, 1/numel for mean)
template <Scalar T>
Var<T> reduce_all(const char* op, const Var<T>& x, T weight) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result(op, 1, 1, {x});
  y.mutable_data()[0] = weight * x.matrix().sum();
  tape.record(y, [x = x.operand(), y = y.operand(), weight] {
    if (x.active()) x.adj().array() += weight * y.adjoint[0];
  });
  return y;
}

// y = weight · Σ_i x(i, :) -> [1,C]  (each column reduced over its rows)
template <Scalar T>
Var<T> reduce_over_rows(const char* op, const Var<T>& x, T weight) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result(op, 1, x.cols(), {x});
  auto Y = y.mutable_matrix();
  // Row by row: contiguous, vectorised adds over the columns of row-major data.
  Y.setZero();
  const auto X = x.matrix();
  for (index_t i = 0; i < X.rows(); ++i) Y.row(0) += X.row(i);
  Y *= weight;
  tape.record(y, [x = x.operand(), y = y.operand(), weight] {
    if (x.active()) x.adj().rowwise() += weight * y.adj().row(0);
  });
  return y;
}

// y = weight · Σ_j x(:, j) -> [R,1]  (each row reduced over its columns)
template <Scalar T>
Var<T> reduce_over_cols(const char* op, const Var<T>& x, T weight) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result(op, x.rows(), 1, {x});
  const auto X = x.matrix();
  T* py = y.mutable_data();
  for (index_t i = 0; i < X.rows(); ++i) py[i] = weight * X.row(i).sum();
  tape.record(y, [x = x.operand(), y = y.operand(), weight] {
    if (!x.active()) return;
    auto dX = x.adj();
    for (index_t i = 0; i < x.rows; ++i) dX.row(i).array() += weight * y.adjoint[i];
  });
  return y;
}

}  // namespace detail

/// x:[R,C] -> Σ x [1,1]  (0 for an empty x)
template <Scalar T>
Var<T> sum(const Var<T>& x) {
  return detail::reduce_all("sum", x, T(1));
}

/// x:[R,C] -> Σ x / (R·C) [1,1]; throws ShapeError for an empty x
template <Scalar T>
Var<T> mean(const Var<T>& x) {
  detail::check_mean_count("mean", x, x.numel(), "elements");
  return detail::reduce_all("mean", x, T(1) / static_cast<T>(x.numel()));
}

/// x:[R,C] -> [1,C], each column summed over its rows (zeros if R = 0)
template <Scalar T>
Var<T> sum_over_rows(const Var<T>& x) {
  return detail::reduce_over_rows("sum_over_rows", x, T(1));
}

/// x:[R,C] -> [R,1], each row summed over its columns (zeros if C = 0)
template <Scalar T>
Var<T> sum_over_cols(const Var<T>& x) {
  return detail::reduce_over_cols("sum_over_cols", x, T(1));
}

/// x:[R,C] -> [1,C], each column averaged over its rows; throws ShapeError if R = 0
template <Scalar T>
Var<T> mean_over_rows(const Var<T>& x) {
  detail::check_mean_count("mean_over_rows", x, x.rows(), "rows");
  return detail::reduce_over_rows("mean_over_rows", x, T(1) / static_cast<T>(x.rows()));
}

/// x:[R,C] -> [R,1], each row averaged over its columns; throws ShapeError if C = 0
template <Scalar T>
Var<T> mean_over_cols(const Var<T>& x) {
  detail::check_mean_count("mean_over_cols", x, x.cols(), "columns");
  return detail::reduce_over_cols("mean_over_cols", x, T(1) / static_cast<T>(x.cols()));
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_REDUCE_INSTANCES(kind, T) \
  kind Var<T> detail::reduce_all(const char*, const Var<T>&, T); \
  kind Var<T> detail::reduce_over_rows(const char*, const Var<T>&, T); \
  kind Var<T> detail::reduce_over_cols(const char*, const Var<T>&, T);
DCA_EXTERN_INSTANCES(DCA_REDUCE_INSTANCES)

}  // namespace dca
