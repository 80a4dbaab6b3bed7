// dca/autodiff/parallel.hpp — splitting an op's elementwise or row loop over the OpenMP threads.
//
// GEMMs thread themselves (OpenBLAS or Eigen); these helpers are for the memory-bound loops between
// them (activations, norms, bias and residual adds), which otherwise leave the second core idle.
// Small loops stay on the calling thread, and so does every loop already inside a parallel region
// (attention's per-head work).
#pragma once

#include "dca/core/config.hpp"

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace dca::detail {

// Below this many elements a loop runs on the calling thread: at a fraction of a nanosecond per
// element, waking the other threads would cost more than their share of the work.
inline constexpr index_t parallel_min_elements = index_t{1} << 15;

// Below this many multiply-adds per half, a product's backward halves run one after the other.
inline constexpr index_t pair_min_work = index_t{1} << 18;

// The number of threads a loop over `elements` elements uses.
inline int loop_threads([[maybe_unused]] index_t elements) {
#if defined(_OPENMP)
  if (elements >= parallel_min_elements && !omp_in_parallel()) return num_threads();
#endif
  return 1;
}

// Calls body(begin, end) on disjoint ranges of whole chunks covering [0, n): [0, n) is cut into
// chunks of `chunk` items (the last may be shorter) and each thread takes a contiguous run of them.
// `elements` is the work of the whole loop, which decides whether it is split at all. The ranges
// depend on the thread count only through which thread runs them, so a body that writes only its
// own range gives the same bits on any number of threads.
template <class Body>
void parallel_chunks(index_t n, index_t chunk, index_t elements, const Body& body) {
  const index_t chunks = (n + chunk - 1) / chunk;
  const int threads = static_cast<int>(std::min<index_t>(loop_threads(elements), chunks));
  if (threads <= 1) {
    if (n > 0) body(index_t{0}, n);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    const index_t t = omp_get_thread_num(), team = omp_get_num_threads();
    const index_t begin = chunks * t / team * chunk, end = std::min(n, chunks * (t + 1) / team * chunk);
    if (begin < end) body(begin, end);
  }
#endif
}

// The threads a set of `n` independent tasks uses: all of the library's, at most one per task, and
// one inside a parallel region (the caller's threads are already busy).
inline int task_threads(index_t n) {
#if defined(_OPENMP)
  if (omp_in_parallel()) return 1;
#endif
  return static_cast<int>(std::clamp<index_t>(n, 1, num_threads()));
}

// Runs body(task, slot) for every task in [0, n), dynamically scheduled over `threads` threads;
// `slot` in [0, threads) is the running thread's, for per-thread scratch. With one thread it opens
// no parallel region: inside even a one-thread region, every threaded GEMM would be a nested team,
// whose threads libgomp creates afresh each time (a decode step created ~30).
template <class Body>
void parallel_tasks(index_t n, [[maybe_unused]] int threads, const Body& body) {
#if defined(_OPENMP)
  if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (index_t task = 0; task < n; ++task) body(task, omp_get_thread_num());
    return;
  }
#endif
  for (index_t task = 0; task < n; ++task) body(task, 0);
}

// Runs first() and second(), the two independent halves of a product's backward pass (the input
// gradient and the weight gradient: the same FLOPs), side by side when the library runs on two
// threads and `work` (multiply-adds of each half) is worth a parallel region: each half's GEMMs then
// run whole on one thread, which at the coprocessor's shapes beats splitting every GEMM in two.
// On one thread, inside a parallel region, or with other thread counts (where the BLAS threads each
// GEMM over all of them), one after the other. The halves must write disjoint memory.
template <class First, class Second>
void run_pair(double work, const First& first, const Second& second) {
#if defined(_OPENMP)
  if (num_threads() == 2 && !omp_in_parallel() && work >= static_cast<double>(pair_min_work)) {
#pragma omp parallel num_threads(2)
    {
      if (omp_get_thread_num() == 0)
        first();
      else
        second();
    }
    return;
  }
#endif
  (void)work;
  first();
  second();
}

// Elements [begin, end) of contiguous memory as an Eigen array: one thread's part of a flat loop.
template <class T>
Eigen::Map<Eigen::Array<std::remove_const_t<T>, Eigen::Dynamic, 1>> flat_range(T* data, index_t begin, index_t end)
  requires(!std::is_const_v<T>)
{
  return {data + begin, end - begin};
}
template <class T>
Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> flat_range(const T* data, index_t begin, index_t end) {
  return {data + begin, end - begin};
}

// Sets count elements to zero, on all threads when the array is large (fresh adjoints).
template <class T>
void zero_fill(T* data, index_t count) {
  parallel_chunks(count, parallel_min_elements, count, [&](index_t begin, index_t end) {
    std::memset(data + begin, 0, sizeof(T) * static_cast<std::size_t>(end - begin));
  });
}

// parallel_chunks over the rows of an [n, cols] matrix: one chunk per row.
template <class Body>
void parallel_rows(index_t n, index_t cols, const Body& body) {
  parallel_chunks(n, 1, n * cols, body);
}

}  // namespace dca::detail
