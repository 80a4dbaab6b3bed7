// dca/core/config.hpp — the scalar concept, index type, Eigen aliases and thread control
// every other header builds on.
#pragma once

#include <Eigen/Core>

#include <concepts>
#include <cstddef>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dca {

/// Scalar types the library is instantiated for: float for training, double for gradient checks.
template <class T>
concept Scalar = std::same_as<T, float> || std::same_as<T, double>;

/// Signed index used for every size and offset (matches Eigen::Index).
using index_t = std::ptrdiff_t;

/// Row-major dynamic matrix; every tensor in the library is row-major and contiguous.
template <Scalar T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A row-major matrix view over memory the library owns elsewhere (no copy).
template <Scalar T>
using MatrixMap = Eigen::Map<RowMatrix<T>>;
template <Scalar T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>>;

/// A row-major matrix view with an explicit row stride, e.g. one attention head inside [T, H*D].
template <Scalar T>
using StridedMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <Scalar T>
using ConstStridedMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Sets the number of threads used by GEMMs and by the library's parallel loops (OpenMP).
/// Without OpenMP the library is single-threaded and this is a no-op.
inline void set_num_threads(int threads) {
  if (threads < 1) threads = 1;
  Eigen::setNbThreads(threads);
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
}

/// The number of threads the library's parallel loops use (1 without OpenMP).
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace dca
