// dca/autodiff/ops/matmul.hpp — matrix products (with transposed variants) and the fused linear
// layer. These are the reference for the one pattern every op follows:
//   1. validate shapes, with a message naming the op and the shapes;
//   2. `tape.make_result(op, rows, cols, {inputs})`;
//   3. compute the value into `y.mutable_matrix()` (products through detail::gemm, see core/gemm.hpp);
//   4. `tape.record(y, closure)`: the closure captures Operands and adds each *active* input's
//      contribution; constant inputs are skipped, so a frozen weight costs no gradient GEMM.
#pragma once

#include "dca/autodiff/parallel.hpp"
#include "dca/core/gemm.hpp"
#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

namespace dca {

namespace detail {

inline void check_same_tape(const char* op, const auto& a, const auto& b) {
  if (&a.tape() != &b.tape()) fail<UsageError>(op, ": operands belong to different tapes");
}

// Y = every row set to `bias`, so that the GEMM that follows accumulates onto it (one pass over Y
// instead of a GEMM pass and a separate bias pass).
template <Scalar T>
void fill_rows_with_bias(MatrixMap<T> Y, ConstMatrixMap<T> bias) {
  parallel_rows(Y.rows(), Y.cols(), [&](index_t begin, index_t end) {
    for (index_t i = begin; i < end; ++i) Y.row(i) = bias.row(0);
  });
}

// d(bias) += column sums of dY, accumulated row by row so that every pass is contiguous.
template <Scalar T>
void add_bias_gradient(const Operand<T>& bias, const Operand<T>& y) {
  auto db = bias.adj().row(0);
  const auto dY = y.adj();
  for (index_t i = 0; i < dY.rows(); ++i) db += dY.row(i);
}

// The backward pass of y = f(x, w) for a product: dX by `input` and dW (with any bias gradient) by
// `weight`, side by side on two threads when both are needed and they write different adjoints.
template <Scalar T, class Input, class Weight>
void backward_pair(const Operand<T>& x, const Operand<T>& w, const Operand<T>& y, const Input& input,
                   const Weight& weight) {
  const bool both = x.active() && w.active() && x.adjoint != w.adjoint;
  const double work = static_cast<double>(x.numel()) * static_cast<double>(y.cols);  // multiply-adds of dX
  if (both)
    run_pair(work, input, weight);
  else {
    input();
    weight();
  }
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
  if (!trans_a && !trans_b) gemm(Y, A, B);
  if (!trans_a && trans_b) gemm(Y, A, B.transpose());
  if (trans_a && !trans_b) gemm(Y, A.transpose(), B);
  if (trans_a && trans_b) gemm(Y, A.transpose(), B.transpose());
  tape.record(y, [a = a.operand(), b = b.operand(), y = y.operand(), trans_a, trans_b, stats = &tape.stats()] {
    const auto input_a = [&] {  // dA = dY·op(B)ᵀ, transposed back if A was used transposed
      if (!a.active()) return;
      auto dA = a.adj();
      auto dY = y.adj();
      if (!trans_a && !trans_b) gemm_add(dA, dY, b.val().transpose());
      if (!trans_a && trans_b) gemm_add(dA, dY, b.val());
      if (trans_a && !trans_b) gemm_add(dA, b.val(), dY.transpose());
      if (trans_a && trans_b) gemm_add(dA, b.val().transpose(), dY.transpose());
    };
    const auto input_b = [&] {  // dB = op(A)ᵀ·dY, transposed back if B was used transposed
      if (!b.active()) return;
      auto dB = b.adj();
      auto dY = y.adj();
      if (!trans_a && !trans_b) gemm_add(dB, a.val().transpose(), dY);
      if (!trans_a && trans_b) gemm_add(dB, dY.transpose(), a.val());
      if (trans_a && !trans_b) gemm_add(dB, a.val(), dY);
      if (trans_a && trans_b) gemm_add(dB, dY.transpose(), a.val().transpose());
    };
    backward_pair(a, b, y, input_a, input_b);
    if (a.active()) Tape<T>::count_gemm(stats, a.rows, a.cols, y.cols);
    if (b.active()) Tape<T>::count_gemm(stats, b.rows, b.cols, y.rows);
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
  detail::fill_rows_with_bias(Y, bias.matrix());
  detail::gemm_add(Y, x.matrix(), w.matrix().transpose());
  tape.record(y, [x = x.operand(), w = w.operand(), b = bias.operand(), y = y.operand(), stats = &tape.stats()] {
    detail::backward_pair(
        x, w, y, [&] { if (x.active()) detail::gemm_add(x.adj(), y.adj(), w.val()); },
        [&] {
          if (w.active()) detail::gemm_add(w.adj(), y.adj().transpose(), x.val());
          if (b.active()) detail::add_bias_gradient(b, y);
        });
    if (x.active()) Tape<T>::count_gemm(stats, x.rows, x.cols, w.rows);
    if (w.active()) Tape<T>::count_gemm(stats, w.rows, w.cols, x.rows);
  });
  return y;
}

/// x:[N,in] w:[in,out] bias:[1,out] -> x·w + bias [N,out]  — a linear layer with the weight stored
/// [in, out] (GPT-2's Conv1D), the bias added in the same pass as the product.
template <Scalar T>
Var<T> matmul(const Var<T>& x, const Var<T>& w, const Var<T>& bias) {
  detail::check_same_tape("matmul", x, w);
  detail::check_same_tape("matmul", x, bias);
  if (x.cols() != w.rows())
    detail::fail<ShapeError>("matmul: input x is ", x.shape(), " but weight is ", w.shape(), " (expected [",
                             x.cols(), ",out])");
  if (bias.rows() != 1 || bias.cols() != w.cols())
    detail::fail<ShapeError>("matmul: bias is ", bias.shape(), ", expected [1,", w.cols(), "] for weight ", w.shape());
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("matmul", x.rows(), w.cols(), {x, w, bias});
  auto Y = y.mutable_matrix();
  detail::fill_rows_with_bias(Y, bias.matrix());
  detail::gemm_add(Y, x.matrix(), w.matrix());
  tape.record(y, [x = x.operand(), w = w.operand(), b = bias.operand(), y = y.operand(), stats = &tape.stats()] {
    detail::backward_pair(
        x, w, y, [&] { if (x.active()) detail::gemm_add(x.adj(), y.adj(), w.val().transpose()); },
        [&] {
          if (w.active()) detail::gemm_add(w.adj(), x.val().transpose(), y.adj());
          if (b.active()) detail::add_bias_gradient(b, y);
        });
    if (x.active()) Tape<T>::count_gemm(stats, x.rows, x.cols, w.cols);
    if (w.active()) Tape<T>::count_gemm(stats, w.rows, w.cols, x.rows);
  });
  return y;
}

namespace detail {

// y = x·w[:, begin:begin+count] (+ bias[begin:begin+count]), the weight and bias read in place.
template <Scalar T>
Var<T> matmul_column_block(const Var<T>& x, const Var<T>& w, const Var<T>* bias, index_t begin, index_t count) {
  check_same_tape("matmul_cols", x, w);
  if (bias) check_same_tape("matmul_cols", x, *bias);
  if (x.cols() != w.rows())
    fail<ShapeError>("matmul_cols: input x is ", x.shape(), " but weight is ", w.shape(), " (expected [", x.cols(),
                     ",out])");
  if (begin < 0 || count < 0 || begin > w.cols() - count)
    fail<ShapeError>("matmul_cols: columns [", begin, ",", begin + count, ") (begin ", begin, ", count ", count,
                     ") are outside weight ", w.shape());
  if (bias && (bias->rows() != 1 || bias->cols() != w.cols()))
    fail<ShapeError>("matmul_cols: bias is ", bias->shape(), ", expected [1,", w.cols(), "] for weight ", w.shape());
  Tape<T>& tape = x.tape();
  Var<T> y = bias ? tape.make_result("matmul_cols", x.rows(), count, {x, w, *bias})
                  : tape.make_result("matmul_cols", x.rows(), count, {x, w});
  auto Y = y.mutable_matrix();
  const auto W = w.matrix().middleCols(begin, count);
  if (bias) {
    fill_rows_with_bias<T>(Y, ConstMatrixMap<T>(bias->value().data() + begin, 1, count));
    gemm_add(Y, x.matrix(), W);
  } else {
    gemm(Y, x.matrix(), W);
  }
  const Operand<T> b = bias ? bias->operand() : Operand<T>{};
  tape.record(y, [x = x.operand(), w = w.operand(), b, y = y.operand(), begin, stats = &tape.stats()] {
    backward_pair(
        x, w, y, [&] { if (x.active()) gemm_add(x.adj(), y.adj(), w.val().middleCols(begin, y.cols).transpose()); },
        [&] {
          if (w.active()) gemm_add(w.adj().middleCols(begin, y.cols), x.val().transpose(), y.adj());
          if (b.active()) add_bias_gradient(Operand<T>{nullptr, b.adjoint + begin, 1, y.cols}, y);
        });
    if (x.active()) Tape<T>::count_gemm(stats, x.rows, x.cols, y.cols);
    if (w.active()) Tape<T>::count_gemm(stats, w.rows, y.cols, x.rows);
  });
  return y;
}

}  // namespace detail

/// x:[N,in] w:[in,W] bias:[1,W] -> x·w[:, begin:begin+count] + bias[:, begin:begin+count] [N,count]
/// Columns [begin, begin+count) of an [in, out]-weight linear layer, with the weight and bias read
/// in place: GPT-2's fused query/key/value projection yields q, k and v directly, without the
/// [N, 3d] product and three column slices.
template <Scalar T>
Var<T> matmul_cols(const Var<T>& x, const Var<T>& w, const Var<T>& bias, index_t begin, index_t count) {
  return detail::matmul_column_block(x, w, &bias, begin, count);
}

/// x:[N,in] w:[in,W] -> x·w[:, begin:begin+count] [N,count]  (the same without a bias)
template <Scalar T>
Var<T> matmul_cols(const Var<T>& x, const Var<T>& w, index_t begin, index_t count) {
  return detail::matmul_column_block(x, w, static_cast<const Var<T>*>(nullptr), begin, count);
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_MATMUL_INSTANCES(kind, T) \
  kind Var<T> detail::product(const char*, const Var<T>&, const Var<T>&, bool, bool); \
  kind Var<T> linear(const Var<T>&, const Var<T>&, const Var<T>&); \
  kind Var<T> matmul(const Var<T>&, const Var<T>&, const Var<T>&); \
  kind Var<T> detail::matmul_column_block(const Var<T>&, const Var<T>&, const Var<T>*, index_t, index_t);
DCA_EXTERN_INSTANCES(DCA_MATMUL_INSTANCES)

}  // namespace dca
