// dca/autodiff/ops/rope.hpp — rotary position embedding (RoPE) with explicit position ids, in the
// Hugging Face "rotate_half" layout used by Llama and Gemma: within each head of size D, element
// i is paired with element i + D/2 (not with its neighbour, as in the original paper).
//
// Positions are explicit because the coprocessor's latent embeddings and the decoder's cached
// tokens do not sit at 0..N-1. The rotation is linear in x, so backward rotates the output
// adjoint by the opposite angles, reusing the cos/sin table the forward pass left in the arena.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <cmath>
#include <span>

namespace dca {

/// How `rope` splits rows into heads and computes its angles.
struct RopeConfig {
  /// Heads packed side by side in each row; the head size is D = cols / n_heads. Default 1.
  index_t n_heads = 1;
  /// Base θ of the frequencies θ^(−2i/D). Default 10000 (Llama 2, Gemma-2; Llama 3 uses 500000).
  double theta = 10000.0;
  /// Default false: each angle p·θ^(−2i/D) and its cos/sin are computed in double, then
  /// converted to T — the most accurate table. True: inv_freq = 1/θ^(float(2i)/float(D)), the
  /// angle float(p)·inv_freq and its cos/sin are all computed in single precision and then
  /// converted to T, which is what Hugging Face transformers does for every dtype; use it to
  /// match Hugging Face outputs. The float angle's error grows like p·2⁻²⁴, so the two tables
  /// differ by about 3e-8 at position 1, 2e-5 at position 1000 and 6e-4 at position 32000.
  bool float32_angles = false;
};

namespace detail {

// Fills cos/sin [N, D/2] for each row's position, computing in `Angle` precision (float or
// double) and rounding to T only at the end. `inv_freq` is scratch for D/2 frequencies.
template <class Angle, Scalar T>
void fill_rope_table(std::span<const index_t> positions, index_t head_dim, double theta, Angle* inv_freq,
                     T* cos_table, T* sin_table) {
  const index_t half = head_dim / 2;
  for (index_t i = 0; i < half; ++i) {
    const Angle exponent = static_cast<Angle>(2 * i) / static_cast<Angle>(head_dim);
    inv_freq[i] = Angle(1) / std::pow(static_cast<Angle>(theta), exponent);
  }
  for (std::size_t r = 0; r < positions.size(); ++r) {
    const Angle position = static_cast<Angle>(positions[r]);
    T* cos_row = cos_table + static_cast<index_t>(r) * half;
    T* sin_row = sin_table + static_cast<index_t>(r) * half;
    for (index_t i = 0; i < half; ++i) {
      const Angle angle = position * inv_freq[i];
      cos_row[i] = static_cast<T>(std::cos(angle));
      sin_row[i] = static_cast<T>(std::sin(angle));
    }
  }
}

// out = R(direction·angle)·in for every head pair (i, i + D/2) of every row; with `accumulate`
// the rotation is added to out instead. Backward uses direction −1: a rotation's transpose.
template <bool accumulate, Scalar T>
void rotate_head_pairs(const T* in, T* out, const T* cos_table, const T* sin_table, index_t rows, index_t n_heads,
                       index_t head_dim, T direction) {
  const index_t half = head_dim / 2;
  for (index_t r = 0; r < rows; ++r) {
    const T* cos_row = cos_table + r * half;
    const T* sin_row = sin_table + r * half;
    for (index_t h = 0; h < n_heads; ++h) {
      const index_t offset = (r * n_heads + h) * head_dim;
      const T* in_a = in + offset;
      const T* in_b = in_a + half;
      T* out_a = out + offset;
      T* out_b = out_a + half;
      for (index_t i = 0; i < half; ++i) {
        const T s = direction * sin_row[i];
        const T a = in_a[i] * cos_row[i] - in_b[i] * s;
        const T b = in_b[i] * cos_row[i] + in_a[i] * s;
        if constexpr (accumulate) {
          out_a[i] += a;
          out_b[i] += b;
        } else {
          out_a[i] = a;
          out_b[i] = b;
        }
      }
    }
  }
}

}  // namespace detail

/// x:[N,H·D] positions:[N] -> [N,H·D]
/// Rotary position embedding: for row r at position p = positions[r], each of the H heads, and
/// i < D/2, with angle = p·θ^(−2i/D):
///   out[i] = x[i]·cos − x[i+D/2]·sin,  out[i+D/2] = x[i+D/2]·cos + x[i]·sin.
/// D must be even and H must divide the column count; positions must be ≥ 0.
template <Scalar T>
Var<T> rope(const Var<T>& x, std::span<const index_t> positions, const RopeConfig& config = {}) {
  const index_t rows = x.rows();
  if (config.n_heads < 1 || x.cols() % config.n_heads != 0)
    detail::fail<ShapeError>("rope: x ", x.shape(), " cannot be split into n_heads = ", config.n_heads,
                             " heads of equal size");
  const index_t head_dim = x.cols() / config.n_heads;
  if (head_dim == 0 || head_dim % 2 != 0)
    detail::fail<ShapeError>("rope: the head size D = ", head_dim, " (x ", x.shape(), ", n_heads = ", config.n_heads,
                             ") must be even and positive: RoPE rotates pairs (i, i + D/2)");
  if (static_cast<index_t>(positions.size()) != rows)
    detail::fail<ShapeError>("rope: ", positions.size(), " positions for the ", rows, " rows of x ", x.shape());
  for (std::size_t r = 0; r < positions.size(); ++r)
    if (positions[r] < 0) detail::fail<RangeError>("rope: position ", positions[r], " of row ", r, " is negative");
  if (!(config.theta > 0) || !std::isfinite(config.theta))
    detail::fail<RangeError>("rope: theta must be finite and > 0, got ", config.theta);

  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("rope", rows, x.cols(), {x});
  const index_t half = head_dim / 2;
  T* cos_table = tape.template allocate<T>(rows * half);
  T* sin_table = tape.template allocate<T>(rows * half);
  if (config.float32_angles)
    detail::fill_rope_table(positions, head_dim, config.theta, tape.template allocate<float>(half), cos_table,
                            sin_table);
  else
    detail::fill_rope_table(positions, head_dim, config.theta, tape.template allocate<double>(half), cos_table,
                            sin_table);
  detail::rotate_head_pairs<false>(x.value().data(), y.mutable_data(), cos_table, sin_table, rows, config.n_heads,
                                   head_dim, T(1));
  tape.record(y, [x = x.operand(), y = y.operand(), cos_table, sin_table, n_heads = config.n_heads, head_dim] {
    if (x.active())
      detail::rotate_head_pairs<true>(y.adjoint, x.adjoint, cos_table, sin_table, y.rows, n_heads, head_dim, T(-1));
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_ROPE_INSTANCES(kind, T) \
  kind Var<T> rope(const Var<T>&, std::span<const index_t>, const RopeConfig&);
DCA_EXTERN_INSTANCES(DCA_ROPE_INSTANCES)

}  // namespace dca
