// dca/autodiff/ops/elementwise.hpp — elementwise binary ops with 2-D broadcasting (add, sub, mul,
// div), affine ops with a scalar constant (scale, add_scalar) and the operators built on them.
//
// Broadcasting: each operand is the result shape [R,C], a row [1,C] (repeated for every row), a
// column [R,1] (repeated for every column) or a scalar [1,1]; either operand may be the broadcast
// one. Backward reduces the adjoint over the broadcast dimensions. Same-shape operands and the
// bias case (operands with equal column counts) run as vectorised Eigen array expressions; column
// and scalar broadcasts share a strided loop.
#pragma once

#include "dca/autodiff/parallel.hpp"
#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <cstdint>
#include <type_traits>

namespace dca {

namespace detail {

// Each kernel gives the value and the partial derivatives times the output adjoint dy. The
// functions are generic so that one definition serves Eigen array expressions (the vectorised
// paths) and plain scalars (the strided path).
struct AddKernel {
  static auto value(const auto& a, const auto& b) { return a + b; }
  static auto grad_a(const auto& dy, const auto&, const auto&, const auto&) { return dy; }
  static auto grad_b(const auto& dy, const auto&, const auto&, const auto&) { return dy; }
};

struct SubKernel {
  static auto value(const auto& a, const auto& b) { return a - b; }
  static auto grad_a(const auto& dy, const auto&, const auto&, const auto&) { return dy; }
  static auto grad_b(const auto& dy, const auto&, const auto&, const auto&) { return -dy; }
};

struct MulKernel {
  static auto value(const auto& a, const auto& b) { return a * b; }
  static auto grad_a(const auto& dy, const auto&, const auto& b, const auto&) { return dy * b; }
  static auto grad_b(const auto& dy, const auto& a, const auto&, const auto&) { return dy * a; }
};

struct DivKernel {
  static auto value(const auto& a, const auto& b) { return a / b; }
  static auto grad_a(const auto& dy, const auto&, const auto& b, const auto&) { return dy / b; }
  // d(a/b)/db = -a/b² = -y/b: reusing y avoids squaring b, which could overflow.
  static auto grad_b(const auto& dy, const auto&, const auto& b, const auto& y) { return -dy * y / b; }
};

// Elements per chunk when a same-shape op is split over threads (a multiple of every SIMD width, so
// the split never changes which elements take a vector path).
inline constexpr index_t elementwise_chunk = 4096;

// How the operands of a binary op line up with its result.
enum class BroadcastPath : std::uint8_t {
  same_shape,  // both operands are [R,C]
  rows,        // both have C columns; one (or both) is a row [1,C] repeated for every row
  strided,     // a column or scalar operand: element (i,j) read through row/column strides
};

// The result extent along one dimension, or -1 if the extents cannot broadcast.
inline index_t broadcast_extent(index_t a, index_t b) {
  if (a == b || b == 1) return a;
  if (a == 1) return b;
  return -1;
}

// Strides that map element (i,j) of the result onto an operand: 0 along a broadcast dimension.
inline index_t broadcast_row_stride(index_t rows, index_t cols) { return rows == 1 ? 0 : cols; }
inline index_t broadcast_col_stride(index_t cols) { return cols == 1 ? 0 : 1; }

// y = a ⊕ b with broadcasting, ⊕ given by Kernel.
template <class Kernel, Scalar T>
Var<T> broadcast_binary(const char* op, const Var<T>& a, const Var<T>& b) {
  const index_t rows = broadcast_extent(a.rows(), b.rows());
  const index_t cols = broadcast_extent(a.cols(), b.cols());
  if (rows < 0 || cols < 0)
    fail<ShapeError>(op, ": cannot broadcast a ", a.shape(), " with b ", b.shape(),
                     " (each dimension must be equal or 1)");
  const BroadcastPath path = a.rows() == b.rows() && a.cols() == b.cols() ? BroadcastPath::same_shape
                             : a.cols() == b.cols()                       ? BroadcastPath::rows
                                                                          : BroadcastPath::strided;

  Tape<T>& tape = a.tape();
  Var<T> y = tape.make_result(op, rows, cols, {a, b});
  const ConstMatrixMap<T> A = a.matrix();
  const ConstMatrixMap<T> B = b.matrix();
  MatrixMap<T> Y = y.mutable_matrix();
  if (path == BroadcastPath::same_shape) {
    parallel_chunks(y.numel(), elementwise_chunk, y.numel(), [&](index_t begin, index_t end) {
      flat_range(Y.data(), begin, end) = Kernel::value(flat_range(A.data(), begin, end), flat_range(B.data(), begin, end));
    });
  } else if (path == BroadcastPath::rows) {
    for (index_t i = 0; i < rows; ++i)
      Y.row(i).array() = Kernel::value(A.row(a.rows() == 1 ? 0 : i).array(), B.row(b.rows() == 1 ? 0 : i).array());
  } else {
    const T* pa = A.data();
    const T* pb = B.data();
    T* py = Y.data();
    const index_t a_rs = broadcast_row_stride(a.rows(), a.cols()), a_cs = broadcast_col_stride(a.cols());
    const index_t b_rs = broadcast_row_stride(b.rows(), b.cols()), b_cs = broadcast_col_stride(b.cols());
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j)
        py[i * cols + j] = Kernel::value(pa[i * a_rs + j * a_cs], pb[i * b_rs + j * b_cs]);
  }

  tape.record(y, [a = a.operand(), b = b.operand(), y = y.operand(), path] {
    if (path == BroadcastPath::same_shape) {
      parallel_chunks(y.numel(), elementwise_chunk, y.numel(), [&](index_t begin, index_t end) {
        const auto dY = flat_range(static_cast<const T*>(y.adjoint), begin, end);
        const auto av = flat_range(a.value, begin, end), bv = flat_range(b.value, begin, end);
        const auto yv = flat_range(y.value, begin, end);
        if (a.active()) flat_range(a.adjoint, begin, end) += Kernel::grad_a(dY, av, bv, yv);
        if (b.active()) flat_range(b.adjoint, begin, end) += Kernel::grad_b(dY, av, bv, yv);
      });
    } else if (path == BroadcastPath::rows) {
      // A row operand's adjoint row accumulates the contributions of every result row.
      for (index_t i = 0; i < y.rows; ++i) {
        const index_t ia = a.rows == 1 ? 0 : i, ib = b.rows == 1 ? 0 : i;
        const auto dy = y.adj().row(i).array();
        const auto av = a.val().row(ia).array();
        const auto bv = b.val().row(ib).array();
        const auto yv = y.val().row(i).array();
        if (a.active()) a.adj().row(ia).array() += Kernel::grad_a(dy, av, bv, yv);
        if (b.active()) b.adj().row(ib).array() += Kernel::grad_b(dy, av, bv, yv);
      }
    } else {
      const index_t a_rs = broadcast_row_stride(a.rows, a.cols), a_cs = broadcast_col_stride(a.cols);
      const index_t b_rs = broadcast_row_stride(b.rows, b.cols), b_cs = broadcast_col_stride(b.cols);
      for (index_t i = 0; i < y.rows; ++i)
        for (index_t j = 0; j < y.cols; ++j) {
          const index_t ka = i * a_rs + j * a_cs, kb = i * b_rs + j * b_cs, ky = i * y.cols + j;
          const T dy = y.adjoint[ky], av = a.value[ka], bv = b.value[kb], yv = y.value[ky];
          if (a.active()) a.adjoint[ka] += Kernel::grad_a(dy, av, bv, yv);
          if (b.active()) b.adjoint[kb] += Kernel::grad_b(dy, av, bv, yv);
        }
    }
  });
  return y;
}

// y = alpha·x + beta with constants alpha, beta: scale, add_scalar and the scalar operators.
template <Scalar T>
Var<T> affine(const char* op, const Var<T>& x, T alpha, T beta) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result(op, x.rows(), x.cols(), {x});
  y.mutable_matrix().array() = alpha * x.matrix().array() + beta;
  tape.record(y, [x = x.operand(), y = y.operand(), alpha] {
    if (x.active()) x.adj().array() += alpha * y.adj().array();
  });
  return y;
}

}  // namespace detail

/// a:[R,C]|[1,C]|[R,1]|[1,1] b:[R,C]|[1,C]|[R,1]|[1,1] -> a + b [R,C] (broadcast; see the header comment)
template <Scalar T>
Var<T> add(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::AddKernel>("add", a, b);
}

/// a:[R,C]|[1,C]|[R,1]|[1,1] b:[R,C]|[1,C]|[R,1]|[1,1] -> a − b [R,C] (broadcast)
template <Scalar T>
Var<T> sub(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::SubKernel>("sub", a, b);
}

/// a:[R,C]|[1,C]|[R,1]|[1,1] b:[R,C]|[1,C]|[R,1]|[1,1] -> a ⊙ b [R,C] (elementwise product, broadcast)
template <Scalar T>
Var<T> mul(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::MulKernel>("mul", a, b);
}

/// a:[R,C]|[1,C]|[R,1]|[1,1] b:[R,C]|[1,C]|[R,1]|[1,1] -> a / b [R,C] (elementwise, broadcast).
/// Division by zero gives inf/NaN as in IEEE arithmetic; the tape's finite check reports it.
template <Scalar T>
Var<T> div(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::DivKernel>("div", a, b);
}

/// x:[R,C] -> s·x [R,C]
template <Scalar T>
Var<T> scale(const Var<T>& x, std::type_identity_t<T> s) {
  return detail::affine("scale", x, s, T(0));
}

/// x:[R,C] -> x + s [R,C]
template <Scalar T>
Var<T> add_scalar(const Var<T>& x, std::type_identity_t<T> s) {
  return detail::affine("add_scalar", x, T(1), s);
}

// Operators. There is deliberately no `Var * Var`: it would be ambiguous between the matrix
// product and the elementwise product, so callers write `matmul(a, b)` or `mul(a, b)`.
// The scalar parameters are non-deduced so that `x * 2` or `x + 0.5` work for Var<float>.

/// a, b: broadcastable (see `add`) -> a + b
template <Scalar T>
Var<T> operator+(const Var<T>& a, const Var<T>& b) {
  return add(a, b);
}

/// a, b: broadcastable (see `sub`) -> a − b
template <Scalar T>
Var<T> operator-(const Var<T>& a, const Var<T>& b) {
  return sub(a, b);
}

/// a, b: broadcastable (see `div`) -> a / b
template <Scalar T>
Var<T> operator/(const Var<T>& a, const Var<T>& b) {
  return div(a, b);
}

/// x:[R,C] -> −x [R,C]
template <Scalar T>
Var<T> operator-(const Var<T>& x) {
  return detail::affine("neg", x, T(-1), T(0));
}

/// x:[R,C] -> x + s [R,C]
template <Scalar T>
Var<T> operator+(const Var<T>& x, std::type_identity_t<T> s) {
  return add_scalar(x, s);
}

/// x:[R,C] -> s + x [R,C]
template <Scalar T>
Var<T> operator+(std::type_identity_t<T> s, const Var<T>& x) {
  return add_scalar(x, s);
}

/// x:[R,C] -> x − s [R,C]
template <Scalar T>
Var<T> operator-(const Var<T>& x, std::type_identity_t<T> s) {
  return add_scalar(x, -s);
}

/// x:[R,C] -> s − x [R,C]
template <Scalar T>
Var<T> operator-(std::type_identity_t<T> s, const Var<T>& x) {
  return detail::affine("scalar_sub", x, T(-1), s);
}

/// x:[R,C] -> x·s [R,C]
template <Scalar T>
Var<T> operator*(const Var<T>& x, std::type_identity_t<T> s) {
  return scale(x, s);
}

/// x:[R,C] -> s·x [R,C]
template <Scalar T>
Var<T> operator*(std::type_identity_t<T> s, const Var<T>& x) {
  return scale(x, s);
}

/// x:[R,C] -> x / s [R,C], computed as x·(1/s) (one rounding more than a true division).
template <Scalar T>
Var<T> operator/(const Var<T>& x, std::type_identity_t<T> s) {
  return scale(x, T(1) / s);
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_ELEMENTWISE_INSTANCES(kind, T) \
  kind Var<T> detail::affine(const char*, const Var<T>&, T, T); \
  kind Var<T> add(const Var<T>&, const Var<T>&); \
  kind Var<T> sub(const Var<T>&, const Var<T>&); \
  kind Var<T> mul(const Var<T>&, const Var<T>&); \
  kind Var<T> div(const Var<T>&, const Var<T>&);
DCA_EXTERN_INSTANCES(DCA_ELEMENTWISE_INSTANCES)

}  // namespace dca
