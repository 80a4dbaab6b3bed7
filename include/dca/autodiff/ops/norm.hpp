// dca/autodiff/ops/norm.hpp — layer normalisation (GPT-2) and RMS normalisation (Llama, Gemma-2).
// Both normalise each row of an [N,C] input and have a hand-written backward that reuses the
// per-row statistics the forward pass saved in the arena, so backward makes one pass per row.
#pragma once

#include "dca/autodiff/tape.hpp"

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
  for (index_t r = 0; r < rows; ++r) {
    auto xr = X.row(r).array();
    mean[r] = xr.sum() / cols;
    // Two passes (mean, then squared deviations) avoid the cancellation of E[x²] − E[x]².
    const T variance = (xr - mean[r]).square().sum() / cols;
    rstd[r] = T(1) / std::sqrt(variance + static_cast<T>(eps));
    Y.row(r).array() = (xr - mean[r]) * rstd[r] * W + B;
  }
  tape.record(y, [x = x.operand(), w = w.operand(), b = b.operand(), y = y.operand(), mean, rstd, cols] {
    auto dY = y.adj();
    auto X = x.val();
    auto W = w.val().row(0).array();
    for (index_t r = 0; r < y.rows; ++r) {
      auto dyr = dY.row(r).array();
      auto x_hat = (X.row(r).array() - mean[r]) * rstd[r];
      if (x.active()) {  // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w
        auto g = dyr * W;
        const T g_mean = g.sum() / cols;
        const T gx_mean = (g * x_hat).sum() / cols;
        x.adj().row(r).array() += rstd[r] * (g - g_mean - x_hat * gx_mean);
      }
      if (w.active()) w.adj().row(0).array() += dyr * x_hat;
      if (b.active()) b.adj().row(0).array() += dyr;
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

}  // namespace dca
