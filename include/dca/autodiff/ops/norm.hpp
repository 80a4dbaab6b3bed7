// dca/autodiff/ops/norm.hpp — layer normalisation (GPT-2) and RMS normalisation (Llama, Gemma-2).
// Both normalise each row of an [N,C] input and have a hand-written backward that reuses the
// per-row statistics the forward pass saved in the arena, so backward makes one pass per row.
#pragma once

#include "dca/autodiff/parallel.hpp"
#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <algorithm>
#include <cmath>

namespace dca {

/// How `rms_norm` applies its weight w: as the gain itself (Llama), or as an offset from one
/// (Gemma-2 checkpoints store w with gain = 1 + w, so a zero-initialised weight is the identity).
enum class RmsWeight { plain, one_plus };

namespace detail {

template <Scalar T>
void check_norm_operands(const char* op, const Var<T>& x, const Var<T>& w, double eps) {
  if (x.cols() == 0) fail<ShapeError>(op, ": input x is ", x.shape(), "; there is nothing to normalise in a row");
  if (w.rows() != 1 || w.cols() != x.cols())
    fail<ShapeError>(op, ": weight is ", w.shape(), ", expected [1,", x.cols(), "] for input x ", x.shape());
  if (!(eps >= 0) || !std::isfinite(eps)) fail<RangeError>(op, ": eps must be finite and >= 0, got ", eps);
}

// Rows per block of layer_norm's backward: each block sums its own part of the weight and bias
// gradients (a block is also the unit the rows are split over threads by).
inline constexpr index_t norm_block_rows = 32;

}  // namespace detail

/// x:[N,C] w:[1,C] b:[1,C] -> [N,C]
/// Layer normalisation of each row: (x − mean)/sqrt(var + eps)·w + b, with the biased variance
/// (divided by C) as in PyTorch's LayerNorm and GPT-2. `eps` is the model's (GPT-2: 1e-5).
template <Scalar T>
Var<T> layer_norm(const Var<T>& x, const Var<T>& w, const Var<T>& b, double eps) {
  detail::check_norm_operands("layer_norm", x, w, eps);
  if (b.rows() != 1 || b.cols() != x.cols())
    detail::fail<ShapeError>("layer_norm: bias is ", b.shape(), ", expected [1,", x.cols(), "] for input x ",
                             x.shape());
  Tape<T>& tape = x.tape();
  const index_t rows = x.rows();
  const T cols = static_cast<T>(x.cols());
  Var<T> y = tape.make_result("layer_norm", rows, x.cols(), {x, w, b});
  T* mean = tape.template allocate<T>(rows);
  T* rstd = tape.template allocate<T>(rows);
  auto X = x.matrix();
  auto Y = y.mutable_matrix();
  auto W = w.matrix().row(0).array();
  auto B = b.matrix().row(0).array();
  detail::parallel_rows(rows, x.cols(), [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      auto xr = X.row(r).array();
      mean[r] = xr.sum() / cols;
      // Two passes (mean, then squared deviations) avoid the cancellation of E[x²] − E[x]².
      const T variance = (xr - mean[r]).square().sum() / cols;
      rstd[r] = T(1) / std::sqrt(variance + static_cast<T>(eps));
      Y.row(r).array() = (xr - mean[r]) * rstd[r] * W + B;
    }
  });
  // Weight and bias gradients are sums over rows: each block of rows sums its own part, and the
  // parts are added in block order, so the result does not depend on the thread count.
  const index_t blocks = (rows + detail::norm_block_rows - 1) / detail::norm_block_rows;
  T* partial = y.requires_grad() && (w.requires_grad() || b.requires_grad())
                   ? tape.template allocate<T>(blocks * 2 * x.cols())
                   : nullptr;
  tape.record(y, [x = x.operand(), w = w.operand(), b = b.operand(), y = y.operand(), mean, rstd, cols, partial,
                  blocks] {
    auto dY = y.adj();
    auto X = x.val();
    auto W = w.val().row(0).array();
    const bool params = w.active() || b.active();
    // Block k's parts of the weight and bias gradients: partial[2kC, 2kC + C) and [2kC + C, 2(k+1)C).
    const auto part = [&](index_t block, index_t which) {
      const index_t begin = (2 * block + which) * y.cols;
      return detail::flat_range(partial, begin, begin + y.cols);
    };
    detail::parallel_chunks(y.rows, detail::norm_block_rows, y.numel(), [&](index_t begin, index_t end) {
      for (index_t block = begin / detail::norm_block_rows; block * detail::norm_block_rows < end; ++block) {
        if (params) {
          part(block, 0).setZero();
          part(block, 1).setZero();
        }
        const index_t block_end = std::min(end, (block + 1) * detail::norm_block_rows);
        for (index_t r = block * detail::norm_block_rows; r < block_end; ++r) {
          auto dyr = dY.row(r).array();
          auto x_hat = (X.row(r).array() - mean[r]) * rstd[r];
          if (x.active()) {  // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w
            auto g = dyr * W;
            const T g_mean = g.sum() / cols;
            const T gx_mean = (g * x_hat).sum() / cols;
            x.adj().row(r).array() += rstd[r] * (g - g_mean - x_hat * gx_mean);
          }
          if (params) {
            part(block, 0) += (dyr * x_hat).transpose();
            part(block, 1) += dyr.transpose();
          }
        }
      }
    });
    for (index_t block = 0; params && block < blocks; ++block) {
      if (w.active()) w.adj().row(0).array() += part(block, 0).transpose();
      if (b.active()) b.adj().row(0).array() += part(block, 1).transpose();
    }
  });
  return y;
}

/// x:[N,C] w:[1,C] -> [N,C]
/// RMS normalisation of each row: x·rsqrt(mean(x²) + eps)·g, with g = w (`RmsWeight::plain`,
/// Llama) or g = 1 + w (`RmsWeight::one_plus`, Gemma-2). No mean is subtracted and there is no bias.
/// `eps` is the model's (e.g. Gemma-2: 1e-6).
template <Scalar T>
Var<T> rms_norm(const Var<T>& x, const Var<T>& w, double eps, RmsWeight mode = RmsWeight::plain) {
  detail::check_norm_operands("rms_norm", x, w, eps);
  Tape<T>& tape = x.tape();
  const index_t rows = x.rows();
  const T cols = static_cast<T>(x.cols());
  const T gain_offset = mode == RmsWeight::one_plus ? T(1) : T(0);
  Var<T> y = tape.make_result("rms_norm", rows, x.cols(), {x, w});
  T* rstd = tape.template allocate<T>(rows);
  auto X = x.matrix();
  auto Y = y.mutable_matrix();
  auto gain = w.matrix().row(0).array() + gain_offset;
  for (index_t r = 0; r < rows; ++r) {
    auto xr = X.row(r).array();
    rstd[r] = T(1) / std::sqrt(xr.square().sum() / cols + static_cast<T>(eps));
    Y.row(r).array() = xr * rstd[r] * gain;
  }
  tape.record(y, [x = x.operand(), w = w.operand(), y = y.operand(), rstd, cols, gain_offset] {
    auto dY = y.adj();
    auto X = x.val();
    auto gain = w.val().row(0).array() + gain_offset;
    for (index_t r = 0; r < y.rows; ++r) {
      auto dyr = dY.row(r).array();
      auto xr = X.row(r).array();
      if (x.active()) {  // dx = rstd·g·dy − x·rstd³/C·Σ(g·dy·x); the second term is rstd's dependence on x
        auto g_dy = dyr * gain;
        const T coupling = (g_dy * xr).sum() * rstd[r] * rstd[r] * rstd[r] / cols;
        x.adj().row(r).array() += rstd[r] * g_dy - xr * coupling;
      }
      if (w.active()) w.adj().row(0).array() += dyr * xr * rstd[r];
    }
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_NORM_INSTANCES(kind, T) \
  kind Var<T> layer_norm(const Var<T>&, const Var<T>&, const Var<T>&, double); \
  kind Var<T> rms_norm(const Var<T>&, const Var<T>&, double, RmsWeight);
DCA_EXTERN_INSTANCES(DCA_NORM_INSTANCES)

}  // namespace dca
