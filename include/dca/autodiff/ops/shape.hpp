// dca/autodiff/ops/shape.hpp — slicing, concatenation, reshaping and transposition of matrices.
// Each result is a copy (tape values own their memory); backward adds the output adjoint back to
// the elements it was copied from.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <cstring>
#include <initializer_list>
#include <new>
#include <span>

namespace dca {

namespace detail {

inline void check_slice_range(const char* op, const char* what, index_t begin, index_t count, index_t extent,
                              const Shape& x_shape) {
  if (begin < 0 || count < 0 || begin > extent - count)
    fail<ShapeError>(op, ": ", what, " [", begin, ",", begin + count, ") (begin ", begin, ", count ", count,
                     ") are outside x ", x_shape);
}

// The shared tape of concatenated parts; parts from different tapes (or none at all) are rejected
// with the index of the offending part.
template <Scalar T>
Tape<T>* concat_tape(const char* op, std::span<const Var<T>> parts) {
  if (parts.empty()) fail<ShapeError>(op, ": no parts to concatenate");
  Tape<T>* tape = &parts[0].tape();
  for (std::size_t i = 0; i < parts.size(); ++i)
    if (&parts[i].tape() != tape) fail<UsageError>(op, ": part ", i, " belongs to another tape than part 0");
  return tape;
}

// The parts' operands in the arena, for a backward closure.
template <Scalar T>
const Operand<T>* concat_operands(Tape<T>& tape, std::span<const Var<T>> parts) {
  auto* operands = tape.template allocate<Operand<T>>(static_cast<index_t>(parts.size()));
  for (std::size_t i = 0; i < parts.size(); ++i) new (operands + i) Operand<T>(parts[i].operand());
  return operands;
}

}  // namespace detail

/// x:[R,C] -> [count,C]: rows [begin, begin+count) of x.
template <Scalar T>
Var<T> slice_rows(const Var<T>& x, index_t begin, index_t count) {
  detail::check_slice_range("slice_rows", "rows", begin, count, x.rows(), x.shape());
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("slice_rows", count, x.cols(), {x});
  y.mutable_matrix() = x.matrix().middleRows(begin, count);
  tape.record(y, [x = x.operand(), y = y.operand(), begin] {
    if (x.active()) x.adj().middleRows(begin, y.rows) += y.adj();
  });
  return y;
}

/// x:[R,C] -> [R,count]: columns [begin, begin+count) of x.
template <Scalar T>
Var<T> slice_cols(const Var<T>& x, index_t begin, index_t count) {
  detail::check_slice_range("slice_cols", "columns", begin, count, x.cols(), x.shape());
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("slice_cols", x.rows(), count, {x});
  y.mutable_matrix() = x.matrix().middleCols(begin, count);
  tape.record(y, [x = x.operand(), y = y.operand(), begin] {
    if (x.active()) x.adj().middleCols(begin, y.cols) += y.adj();
  });
  return y;
}

/// parts:[R_i,C] -> [ΣR_i,C]: the parts stacked top to bottom. The result is active if any part
/// is; only active parts receive gradient. All parts must be on the same tape.
template <Scalar T>
Var<T> concat_rows(std::span<const Var<T>> parts) {
  Tape<T>* tape = detail::concat_tape("concat_rows", parts);
  const index_t cols = parts[0].cols();
  index_t rows = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].cols() != cols)
      detail::fail<ShapeError>("concat_rows: part ", i, " is ", parts[i].shape(), " but part 0 is ", parts[0].shape(),
                               " (column counts must agree)");
    rows += parts[i].rows();
  }
  Var<T> y = tape->make_result("concat_rows", rows, cols, parts);
  auto Y = y.mutable_matrix();
  index_t offset = 0;
  for (const Var<T>& part : parts) {
    Y.middleRows(offset, part.rows()) = part.matrix();
    offset += part.rows();
  }
  tape->record(y, [operands = detail::concat_operands(*tape, parts), n_parts = parts.size(), y = y.operand()] {
    index_t offset = 0;
    for (std::size_t i = 0; i < n_parts; ++i) {
      const Operand<T>& part = operands[i];
      if (part.active()) part.adj() += y.adj().middleRows(offset, part.rows);
      offset += part.rows;
    }
  });
  return y;
}

/// parts:[R_i,C] -> [ΣR_i,C]; see the span overload.
template <Scalar T>
Var<T> concat_rows(std::initializer_list<Var<T>> parts) {
  return concat_rows(std::span<const Var<T>>(parts.begin(), parts.size()));
}

/// parts:[R,C_i] -> [R,ΣC_i]: the parts side by side, left to right. The result is active if any
/// part is; only active parts receive gradient. All parts must be on the same tape.
template <Scalar T>
Var<T> concat_cols(std::span<const Var<T>> parts) {
  Tape<T>* tape = detail::concat_tape("concat_cols", parts);
  const index_t rows = parts[0].rows();
  index_t cols = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].rows() != rows)
      detail::fail<ShapeError>("concat_cols: part ", i, " is ", parts[i].shape(), " but part 0 is ", parts[0].shape(),
                               " (row counts must agree)");
    cols += parts[i].cols();
  }
  Var<T> y = tape->make_result("concat_cols", rows, cols, parts);
  auto Y = y.mutable_matrix();
  index_t offset = 0;
  for (const Var<T>& part : parts) {
    Y.middleCols(offset, part.cols()) = part.matrix();
    offset += part.cols();
  }
  tape->record(y, [operands = detail::concat_operands(*tape, parts), n_parts = parts.size(), y = y.operand()] {
    index_t offset = 0;
    for (std::size_t i = 0; i < n_parts; ++i) {
      const Operand<T>& part = operands[i];
      if (part.active()) part.adj() += y.adj().middleCols(offset, part.cols);
      offset += part.cols;
    }
  });
  return y;
}

/// parts:[R,C_i] -> [R,ΣC_i]; see the span overload.
template <Scalar T>
Var<T> concat_cols(std::initializer_list<Var<T>> parts) {
  return concat_cols(std::span<const Var<T>>(parts.begin(), parts.size()));
}

/// x:[R,C] -> [rows,cols] with rows·cols = R·C: the same elements in the same row-major order.
template <Scalar T>
Var<T> reshape(const Var<T>& x, index_t rows, index_t cols) {
  if (rows < 0 || cols < 0 || rows * cols != x.numel())
    detail::fail<ShapeError>("reshape: cannot reshape x ", x.shape(), " (", x.numel(), " elements) to [", rows, ",",
                             cols, "]", rows < 0 || cols < 0 ? " (negative extent)" : "");
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("reshape", rows, cols, {x});
  if (x.numel() > 0)
    std::memcpy(y.mutable_data(), x.value().data(), sizeof(T) * static_cast<std::size_t>(x.numel()));
  tape.record(y, [x = x.operand(), y = y.operand()] {
    // Row-major storage makes the reshape a flat copy, so its adjoint is a flat sum.
    if (x.active()) MatrixMap<T>(x.adjoint, 1, x.numel()) += ConstMatrixMap<T>(y.adjoint, 1, y.numel());
  });
  return y;
}

/// x:[R,C] -> [C,R]
template <Scalar T>
Var<T> transpose(const Var<T>& x) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("transpose", x.cols(), x.rows(), {x});
  y.mutable_matrix().noalias() = x.matrix().transpose();
  tape.record(y, [x = x.operand(), y = y.operand()] {
    if (x.active()) x.adj().noalias() += y.adj().transpose();
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_SHAPE_INSTANCES(kind, T) \
  kind Var<T> slice_rows(const Var<T>&, index_t, index_t); \
  kind Var<T> slice_cols(const Var<T>&, index_t, index_t); \
  kind Var<T> concat_rows(std::span<const Var<T>>); \
  kind Var<T> concat_cols(std::span<const Var<T>>); \
  kind Var<T> reshape(const Var<T>&, index_t, index_t); \
  kind Var<T> transpose(const Var<T>&);
DCA_EXTERN_INSTANCES(DCA_SHAPE_INSTANCES)

}  // namespace dca
