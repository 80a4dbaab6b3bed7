// Shared helpers for the test suite: deterministic random tensors and comparisons.
#pragma once

#include "dca/tensor/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>

namespace dca::test {

/// A tensor with entries uniform in [lo, hi), reproducible from `seed`.
template <Scalar T = double>
Tensor<T> random_tensor(Shape shape, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Tensor<T> t(shape);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(dist(rng));
  return t;
}

/// max |a - b| / max(max |b|, tiny): the relative error the parity tests use. `a` and `b` are
/// spans (or anything with size() and operator[]) of equal length.
template <class A, class B>
double max_relative_difference(const A& a, const B& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-300);
}

}  // namespace dca::test
