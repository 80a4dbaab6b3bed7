// dca/autodiff/ops/matmul.hpp — matrix products (with transposed variants) and the fused linear
// layer. These are the reference for the one pattern every op follows:
//   1. validate shapes, with a message naming the op and the shapes;
//   2. `tape.make_result(op, rows, cols, {inputs})`;
//   3. compute the value with Eigen into `y.mutable_matrix()`;
//   4. `tape.record(y, closure)`: the closure captures Operands and adds each *active* input's
//      contribution; constant inputs are skipped, so a frozen weight costs no gradient GEMM.
#pragma once

#include "dca/autodiff/tape.hpp"

namespace dca {

namespace detail {

inline void check_same_tape(const char* op, const auto& a, const auto& b) {
  if (&a.tape() != &b.tape()) fail<UsageError>(op, ": operands belong to different tapes");
}

// y = op(a) · op(b), where op transposes when the flag is set.
template <Scalar T>
Var<T> product(const char* op, const Var<T>& a, const Var<T>& b, bool trans_a, bool trans_b) {
  check_same_tape(op, a, b);
  const index_t m = trans_a ? a.cols() : a.rows();
  const index_t k = trans_a ? a.rows() : a.cols();
  const index_t kb = trans_b ? b.cols() : b.rows();
  const index_t n = trans_b ? b.rows() : b.cols();
  if (k != kb)
    fail<ShapeError>(op, ": inner dimensions differ: a is ", a.shape(), trans_a ? " (transposed)" : "", ", b is ",
                     b.shape(), trans_b ? " (transposed)" : "", " (", k, " vs ", kb, ")");
  Tape<T>& tape = a.tape();
  Var<T> y = tape.make_result(op, m, n, {a, b});
  auto A = a.matrix();
  auto B = b.matrix();
  auto Y = y.mutable_matrix();
  if (!trans_a && !trans_b) Y.noalias() = A * B;
  if (!trans_a && trans_b) Y.noalias() = A * B.transpose();
  if (trans_a && !trans_b) Y.noalias() = A.transpose() * B;
  if (trans_a && trans_b) Y.noalias() = A.transpose() * B.transpose();
  tape.record(y, [a = a.operand(), b = b.operand(), y = y.operand(), trans_a, trans_b, stats = &tape.stats()] {
    auto dY = y.adj();
    if (a.active()) {  // dA = dY·op(B)ᵀ, transposed back if A was used transposed
      auto dA = a.adj();
      if (!trans_a && !trans_b) dA.noalias() += dY * b.val().transpose();
      if (!trans_a && trans_b) dA.noalias() += dY * b.val();
      if (trans_a && !trans_b) dA.noalias() += b.val() * dY.transpose();
      if (trans_a && trans_b) dA.noalias() += b.val().transpose() * dY.transpose();
      Tape<T>::count_gemm(stats, a.rows, a.cols, y.cols);
    }
    if (b.active()) {  // dB = op(A)ᵀ·dY, transposed back if B was used transposed
      auto dB = b.adj();
      if (!trans_a && !trans_b) dB.noalias() += a.val().transpose() * dY;
      if (!trans_a && trans_b) dB.noalias() += dY.transpose() * a.val();
      if (trans_a && !trans_b) dB.noalias() += a.val() * dY;
      if (trans_a && trans_b) dB.noalias() += dY.transpose() * a.val().transpose();
      Tape<T>::count_gemm(stats, b.rows, b.cols, y.rows);
    }
  });
  return y;
}

}  // namespace detail

/// a:[M,K] b:[K,N] -> [M,N]
template <Scalar T>
Var<T> matmul(const Var<T>& a, const Var<T>& b) {
  return detail::product("matmul", a, b, false, false);
}

/// a:[M,K] b:[N,K] -> a·bᵀ [M,N]
template <Scalar T>
Var<T> matmul_nt(const Var<T>& a, const Var<T>& b) {
  return detail::product("matmul_nt", a, b, false, true);
}

/// a:[K,M] b:[K,N] -> aᵀ·b [M,N]
template <Scalar T>
Var<T> matmul_tn(const Var<T>& a, const Var<T>& b) {
  return detail::product("matmul_tn", a, b, true, false);
}

/// a:[K,M] b:[N,K] -> aᵀ·bᵀ [M,N]
template <Scalar T>
Var<T> matmul_tt(const Var<T>& a, const Var<T>& b) {
  return detail::product("matmul_tt", a, b, true, true);
}

/// x:[N,in] w:[out,in] -> x·wᵀ [N,out]  — a linear layer with PyTorch's weight layout.
template <Scalar T>
Var<T> linear(const Var<T>& x, const Var<T>& w) {
  return detail::product("linear", x, w, false, true);
}

/// x:[N,in] w:[out,in] bias:[1,out] -> x·wᵀ + bias [N,out]
template <Scalar T>
Var<T> linear(const Var<T>& x, const Var<T>& w, const Var<T>& bias) {
  detail::check_same_tape("linear", x, w);
  detail::check_same_tape("linear", x, bias);
  if (x.cols() != w.cols())
    detail::fail<ShapeError>("linear: input x is ", x.shape(), " but weight is ", w.shape(), " (expected [out,",
                             x.cols(), "])");
  if (bias.rows() != 1 || bias.cols() != w.rows())
    detail::fail<ShapeError>("linear: bias is ", bias.shape(), ", expected [1,", w.rows(), "] for weight ", w.shape());
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("linear", x.rows(), w.rows(), {x, w, bias});
  auto Y = y.mutable_matrix();
  Y.noalias() = x.matrix() * w.matrix().transpose();
  Y.rowwise() += bias.matrix().row(0);
  tape.record(y, [x = x.operand(), w = w.operand(), b = bias.operand(), y = y.operand(), stats = &tape.stats()] {
    auto dY = y.adj();
    if (x.active()) {
      x.adj().noalias() += dY * w.val();
      Tape<T>::count_gemm(stats, x.rows, x.cols, w.rows);
    }
    if (w.active()) {
      w.adj().noalias() += dY.transpose() * x.val();
      Tape<T>::count_gemm(stats, w.rows, w.cols, x.rows);
    }
    if (b.active()) b.adj().row(0) += dY.colwise().sum();
  });
  return y;
}

}  // namespace dca
