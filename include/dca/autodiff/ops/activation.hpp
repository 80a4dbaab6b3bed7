// dca/autodiff/ops/activation.hpp — elementwise unary functions: exp, log, tanh, sigmoid, relu, the
// two GELUs, SiLU and soft-capping. Each is a forward and a derivative expression handed to one
// helper, `detail::unary`; both are Eigen array expressions, so Eigen's vectorised exp, tanh,
// logistic and erf kernels do the work. The GELUs and SiLU, whose derivative repeats their
// transcendental part, go through `detail::unary_with_derivative` instead, which evaluates it once
// and keeps the derivative for the backward pass.
//
// These overloads live in namespace dca, so inside it an unqualified `exp(1.0)` finds them (and
// fails to deduce) instead of the C library function: always write `std::exp` etc. on scalars.
#pragma once

#include "dca/autodiff/parallel.hpp"
#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

// Eigen's vectorised erf (for gelu_erf: ~50x faster than std::erf per element in float) lives in
// this module, which ships with every Eigen installation despite its directory name.
#include <unsupported/Eigen/SpecialFunctions>

#include <algorithm>
#include <numbers>
#include <type_traits>

namespace dca {

namespace detail {

template <Scalar T>
inline constexpr T sqrt_2_over_pi = T(0.7978845608028654);  // √(2/π), gelu_tanh
template <Scalar T>
inline constexpr T inv_sqrt_2pi = T(0.3989422804014327);  // 1/√(2π), the normal density's factor

// y = forward(x) elementwise; backward adds dy ⊙ derivative(x, y). Both functors take Eigen
// arrays and return array expressions. `derivative` is stored in the backward closure, so it may
// capture scalars only.
template <Scalar T, class Forward, class Derivative>
Var<T> unary(const char* op, const Var<T>& x, Forward forward, Derivative derivative) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result(op, x.rows(), x.cols(), {x});
  y.mutable_matrix().array() = forward(x.matrix().array());
  tape.record(y, [x = x.operand(), y = y.operand(), derivative] {
    if (x.active()) x.adj().array() += y.adj().array() * derivative(x.val().array(), y.val().array());
  });
  return y;
}

// Elements per chunk of `unary_with_derivative`: a chunk's shared intermediate stays in L1.
inline constexpr index_t unary_chunk = 256;

template <Scalar T>
using ChunkArray = Eigen::Array<T, Eigen::Dynamic, 1, Eigen::ColMajor, unary_chunk, 1>;  // on the stack
template <Scalar T>
using ConstChunkMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <Scalar T>
using ChunkMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;

// y = f(x) elementwise for functions whose derivative shares their expensive part (a tanh, erf or
// logistic). `kernel(x, y, dydx)` fills one chunk's value and, when `dydx` is not null, its
// derivative, evaluating the shared part once; the derivative is kept in the arena while a backward
// pass needs it, so backward is one multiply-add per element instead of a second evaluation.
template <Scalar T, class Kernel>
Var<T> unary_with_derivative(const char* op, const Var<T>& x, Kernel kernel) {
  Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result(op, x.rows(), x.cols(), {x});
  const index_t n = x.numel();
  T* derivative = y.requires_grad() ? tape.template allocate<T>(n) : nullptr;
  const T* in = x.value().data();
  T* out = y.mutable_data();
  parallel_chunks(n, unary_chunk, n, [&](index_t first, index_t last) {
    for (index_t begin = first; begin < last; begin += unary_chunk) {
      const index_t count = std::min(unary_chunk, last - begin);
      kernel(ConstChunkMap<T>(in + begin, count), ChunkMap<T>(out + begin, count),
             derivative ? derivative + begin : nullptr);
    }
  });
  tape.record(y, [x = x.operand(), y = y.operand(), derivative] {
    if (!x.active()) return;
    parallel_chunks(x.numel(), unary_chunk, x.numel(), [&](index_t begin, index_t end) {
      flat_range(x.adjoint, begin, end) +=
          flat_range(static_cast<const T*>(y.adjoint), begin, end) * flat_range(static_cast<const T*>(derivative), begin, end);
    });
  });
  return y;
}

}  // namespace detail

/// x:[R,C] -> eˣ [R,C]
template <Scalar T>
Var<T> exp(const Var<T>& x) {
  return detail::unary(
      "exp", x, [](const auto& v) { return v.exp(); }, [](const auto&, const auto& y) { return y; });
}

/// x:[R,C] -> ln x [R,C]. Like std::log, x = 0 gives −inf and x < 0 gives NaN (no throw: the
/// tape's finite check reports them).
template <Scalar T>
Var<T> log(const Var<T>& x) {
  return detail::unary(
      "log", x, [](const auto& v) { return v.log(); }, [](const auto& v, const auto&) { return v.inverse(); });
}

/// x:[R,C] -> tanh x [R,C]
template <Scalar T>
Var<T> tanh(const Var<T>& x) {
  return detail::unary(
      "tanh", x, [](const auto& v) { return v.tanh(); }, [](const auto&, const auto& y) { return T(1) - y.square(); });
}

/// x:[R,C] -> σ(x) = 1/(1+e⁻ˣ) [R,C]
template <Scalar T>
Var<T> sigmoid(const Var<T>& x) {
  return detail::unary(
      "sigmoid", x, [](const auto& v) { return v.logistic(); },
      [](const auto&, const auto& y) { return y * (T(1) - y); });
}

/// x:[R,C] -> max(x, 0) [R,C]. At the kink x = 0 the derivative is taken as 0 (as in PyTorch);
/// NaN stays NaN, so the finite check still sees it.
template <Scalar T>
Var<T> relu(const Var<T>& x) {
  return detail::unary(
      "relu", x, [](const auto& v) { return (v < T(0)).select(T(0), v); },
      [](const auto& v, const auto&) { return (v > T(0)).template cast<T>(); });
}

/// x:[R,C] -> 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) [R,C]  (GELU, tanh approximation)
template <Scalar T>
Var<T> gelu_tanh(const Var<T>& x) {
  return detail::unary_with_derivative("gelu_tanh", x, [](const auto& v, auto y, T* dydx) {
    constexpr T k = detail::sqrt_2_over_pi<T>, c = T(0.044715);
    const detail::ChunkArray<T> t = (k * (v + c * v.cube())).tanh();
    y = T(0.5) * v * (T(1) + t);
    // d/dx = 0.5·(1+t) + 0.5·x·(1−t²)·k·(1 + 3c·x²)
    if (dydx)
      detail::ChunkMap<T>(dydx, v.size()) =
          T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t.square()) * k * (T(1) + T(3) * c * v.square());
  });
}

/// x:[R,C] -> 0.5·x·(1 + erf(x/√2)) [R,C]  (exact GELU)
template <Scalar T>
Var<T> gelu_erf(const Var<T>& x) {
  return detail::unary_with_derivative("gelu_erf", x, [](const auto& v, auto y, T* dydx) {
    const detail::ChunkArray<T> cdf = T(0.5) * (T(1) + (v * (T(1) / std::numbers::sqrt2_v<T>)).erf());
    y = v * cdf;
    // Φ(x) + x·φ(x)
    if (dydx) detail::ChunkMap<T>(dydx, v.size()) = cdf + v * detail::inv_sqrt_2pi<T> * (T(-0.5) * v.square()).exp();
  });
}

/// x:[R,C] -> x·σ(x) [R,C]  (SiLU / swish)
template <Scalar T>
Var<T> silu(const Var<T>& x) {
  return detail::unary_with_derivative("silu", x, [](const auto& v, auto y, T* dydx) {
    const detail::ChunkArray<T> s = v.logistic();
    y = v * s;
    // σ(x)·(1 + x·(1 − σ(x)))
    if (dydx) detail::ChunkMap<T>(dydx, v.size()) = s * (T(1) + v * (T(1) - s));
  });
}

/// x:[R,C] -> c·tanh(x/c) [R,C]  (soft-capping, as Gemma-2 applies to logits); c > 0 else RangeError
template <Scalar T>
Var<T> softcap(const Var<T>& x, std::type_identity_t<T> c) {
  if (!(c > T(0))) detail::fail<RangeError>("softcap: cap c = ", c, " must be > 0");
  const T inv_c = T(1) / c;
  return detail::unary(
      "softcap", x, [c, inv_c](const auto& v) { return c * (v * inv_c).tanh(); },
      [inv_c](const auto&, const auto& y) { return T(1) - (y * inv_c).square(); });
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_ACTIVATION_INSTANCES(kind, T) \
  kind Var<T> exp(const Var<T>&); \
  kind Var<T> log(const Var<T>&); \
  kind Var<T> tanh(const Var<T>&); \
  kind Var<T> sigmoid(const Var<T>&); \
  kind Var<T> relu(const Var<T>&); \
  kind Var<T> gelu_tanh(const Var<T>&); \
  kind Var<T> gelu_erf(const Var<T>&); \
  kind Var<T> silu(const Var<T>&); \
  kind Var<T> softcap(const Var<T>&, T);
DCA_EXTERN_INSTANCES(DCA_ACTIVATION_INSTANCES)

}  // namespace dca
