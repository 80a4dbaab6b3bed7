// dca/autodiff/ops/cross_entropy.hpp — fused log-softmax + negative log-likelihood over integer
// targets, the language-modelling loss. Fusing it means the [N,V] softmax is never stored: the
// forward pass keeps one logsumexp per row, and backward recomputes softmax = exp(logits − lse)
// while it writes the gradient (as llm.c does), which matters when V is a 256k vocabulary.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <cmath>
#include <span>
#include <type_traits>

namespace dca {

/// How `cross_entropy` combines the per-token losses into one value.
enum class Reduction { mean, sum };

/// Options of `cross_entropy`.
struct CrossEntropyOptions {
  /// Rows whose target equals this contribute no loss, no gradient and no weight. Default −100
  /// (PyTorch's, and what Hugging Face uses for padding and prompt tokens).
  index_t ignore_index = -100;
  /// Default `Reduction::mean`: the weighted mean over non-ignored rows; `sum`: the weighted sum.
  Reduction reduction = Reduction::mean;
};

namespace detail {

// Row loops split over the OpenMP threads once a problem is this large (logit elements); below
// it the thread start-up costs more than the rows.
inline constexpr index_t cross_entropy_parallel_elements = index_t{1} << 16;

template <class F>
void cross_entropy_rows(index_t rows, [[maybe_unused]] bool parallel, const F& body) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (index_t r = 0; r < rows; ++r) body(r);
}

template <Scalar T>
void check_cross_entropy_targets(const char* op, const Var<T>& logits, std::span<const index_t> targets,
                                 index_t ignore_index) {
  const index_t vocab = logits.cols();
  if (static_cast<index_t>(targets.size()) != logits.rows())
    fail<ShapeError>(op, ": ", targets.size(), " targets for the ", logits.rows(), " rows of logits ", logits.shape());
  for (std::size_t i = 0; i < targets.size(); ++i)
    if (targets[i] != ignore_index && (targets[i] < 0 || targets[i] >= vocab))
      fail<RangeError>(op, ": target ", targets[i], " at position ", i, " is outside [0,", vocab, ") for logits ",
                       logits.shape(), " and is not ignore_index (", ignore_index, ")");
}

// lse[r] = log Σ exp(logits[r,:]) for every row with a target (0 for ignored rows), subtracting
// the row maximum first so large logits cannot overflow.
template <Scalar T>
void cross_entropy_row_logsumexp(ConstMatrixMap<T> logits, std::span<const index_t> targets, index_t ignore_index, T* lse) {
  cross_entropy_rows(logits.rows(), logits.size() >= cross_entropy_parallel_elements, [&](index_t r) {
    if (targets[static_cast<std::size_t>(r)] == ignore_index) {
      lse[r] = T(0);
      return;
    }
    auto row = logits.row(r).array();
    const T max = row.maxCoeff();
    lse[r] = max + std::log((row - max).exp().sum());
  });
}

// dlogits[r,:] += coefficient·(softmax(logits[r,:]) − onehot(target)), softmax recomputed from lse.
template <Scalar T>
void add_cross_entropy_row_gradient(const Operand<T>& logits, index_t r, index_t target, T lse, T coefficient) {
  logits.adj().row(r).array() += coefficient * (logits.val().row(r).array() - lse).exp();
  logits.adjoint[r * logits.cols + target] -= coefficient;
}

}  // namespace detail

/// logits:[N,V] targets:[N] weights:[N] or empty -> [1,1]
/// Loss_i = w_i·(logsumexp(logits[i,:]) − logits[i,t_i]) over rows whose target is not
/// `options.ignore_index` (w_i = 1 when `weights` is empty). `Reduction::sum` returns Σ Loss_i;
/// `Reduction::mean` returns Σ Loss_i / Σ w_i over the non-ignored rows (PyTorch's semantics).
/// If every target is ignored (or those weights sum to 0) the mean is defined as 0 with zero
/// gradient: a batch without targets (e.g. all padding) must not poison training with 0/0 = NaN.
/// A target outside [0,V) that is not the ignore index throws `RangeError`.
template <Scalar T>
Var<T> cross_entropy(const Var<T>& logits, std::span<const index_t> targets, const CrossEntropyOptions& options = {},
                     std::span<const std::type_identity_t<T>> weights = {}) {
  detail::check_cross_entropy_targets("cross_entropy", logits, targets, options.ignore_index);
  const index_t rows = logits.rows();
  if (!weights.empty() && static_cast<index_t>(weights.size()) != rows)
    detail::fail<ShapeError>("cross_entropy: ", weights.size(), " weights for the ", rows, " rows of logits ",
                             logits.shape(), "; pass one weight per row, or none");
  Tape<T>& tape = logits.tape();
  Var<T> y = tape.make_result("cross_entropy", 1, 1, {logits});
  T* lse = tape.template allocate<T>(rows);
  auto L = logits.matrix();
  detail::cross_entropy_row_logsumexp(L, targets, options.ignore_index, lse);
  // The N row losses are summed in double so a long sequence's float loss does not drift.
  double total = 0;
  double weight_sum = 0;
  for (index_t r = 0; r < rows; ++r) {
    const index_t target = targets[static_cast<std::size_t>(r)];
    if (target == options.ignore_index) continue;
    const double weight = weights.empty() ? 1.0 : static_cast<double>(weights[static_cast<std::size_t>(r)]);
    total += weight * static_cast<double>(lse[r] - L(r, target));
    weight_sum += weight;
  }
  const double denominator = options.reduction == Reduction::mean ? weight_sum : 1.0;
  const double scale = denominator == 0 ? 0.0 : 1.0 / denominator;
  y.mutable_data()[0] = static_cast<T>(total * scale);
  tape.record(y, [logits = logits.operand(), y = y.operand(), targets = tape.copy(targets).data(),
                  weights = weights.empty() ? nullptr : tape.copy(weights).data(), lse,
                  ignore_index = options.ignore_index, scale = static_cast<T>(scale)] {
    const T dy = y.adjoint[0] * scale;
    if (!logits.active() || dy == T(0)) return;  // also the all-ignored mean: zero gradient
    detail::cross_entropy_rows(logits.rows, logits.numel() >= detail::cross_entropy_parallel_elements, [&](index_t r) {
      if (targets[r] == ignore_index) return;
      const T coefficient = weights ? dy * weights[r] : dy;
      detail::add_cross_entropy_row_gradient(logits, r, targets[r], lse[r], coefficient);
    });
  });
  return y;
}

/// logits:[N,V] targets:[N] -> [N,1]
/// The unreduced, unweighted loss of each row, logsumexp(logits[i,:]) − logits[i,t_i], and 0 at
/// rows whose target is `ignore_index`; differentiable, for reporting the loss of individual
/// tokens (e.g. the n-th token after a latent). A target outside [0,V) throws `RangeError`.
template <Scalar T>
Var<T> cross_entropy_per_token(const Var<T>& logits, std::span<const index_t> targets, index_t ignore_index = -100) {
  detail::check_cross_entropy_targets("cross_entropy_per_token", logits, targets, ignore_index);
  const index_t rows = logits.rows();
  Tape<T>& tape = logits.tape();
  Var<T> y = tape.make_result("cross_entropy_per_token", rows, 1, {logits});
  T* lse = tape.template allocate<T>(rows);
  auto L = logits.matrix();
  detail::cross_entropy_row_logsumexp(L, targets, ignore_index, lse);
  T* losses = y.mutable_data();
  for (index_t r = 0; r < rows; ++r) {
    const index_t target = targets[static_cast<std::size_t>(r)];
    losses[r] = target == ignore_index ? T(0) : lse[r] - L(r, target);
  }
  tape.record(y, [logits = logits.operand(), y = y.operand(), targets = tape.copy(targets).data(), lse,
                  ignore_index] {
    if (!logits.active()) return;
    detail::cross_entropy_rows(logits.rows, logits.numel() >= detail::cross_entropy_parallel_elements, [&](index_t r) {
      if (targets[r] == ignore_index) return;
      detail::add_cross_entropy_row_gradient(logits, r, targets[r], lse[r], y.adjoint[r]);
    });
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_CROSS_ENTROPY_INSTANCES(kind, T) \
  kind Var<T> cross_entropy(const Var<T>&, std::span<const index_t>, const CrossEntropyOptions&, std::span<const T>); \
  kind Var<T> cross_entropy_per_token(const Var<T>&, std::span<const index_t>, index_t);
DCA_EXTERN_INSTANCES(DCA_CROSS_ENTROPY_INSTANCES)

}  // namespace dca
