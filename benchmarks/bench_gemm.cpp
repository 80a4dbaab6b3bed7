// The machine's ceilings, for every other figure: the FMA peak of one core (register-only fused
// multiply-adds, no memory traffic) and SGEMM at the training step's shapes on each GEMM path.
//   ./build/benchmarks/bench_gemm --benchmark_counters_tabular=true
//   DCA_GEMM=blas ./build/benchmarks/bench_gemm     # the BLAS's own kernel choice, for comparison
// docs/performance.md reports these numbers.
#include <dca/core/gemm.hpp>

#include <benchmark/benchmark.h>

#include "context.hpp"

#include <immintrin.h>

#include <random>

namespace {

using dca::GemmPath;
using dca::index_t;
using Matrix = dca::RowMatrix<float>;

// Single-precision FMA peak of the calling thread: 16 independent accumulator chains (enough to
// cover the FMA latency on every x86 core) of the widest vectors this binary was compiled for.
void BM_FmaPeak(benchmark::State& state) {
#if defined(__AVX512F__)
  using Vector = __m512;
  constexpr int lanes = 16;
  const auto fma = [](Vector a, Vector b, Vector c) { return _mm512_fmadd_ps(a, b, c); };
  const auto splat = [](float x) { return _mm512_set1_ps(x); };
#elif defined(__AVX2__) && defined(__FMA__)
  using Vector = __m256;
  constexpr int lanes = 8;
  const auto fma = [](Vector a, Vector b, Vector c) { return _mm256_fmadd_ps(a, b, c); };
  const auto splat = [](float x) { return _mm256_set1_ps(x); };
#else
  state.SkipWithError("compiled without AVX2/FMA (-march=native is DCA_NATIVE)");
  return;
  using Vector = float;
  constexpr int lanes = 1;
  const auto fma = [](float a, float b, float c) { return a * b + c; };
  const auto splat = [](float x) { return x; };
#endif
  constexpr int chains = 16, inner = 1000;
  Vector acc[chains];
  for (int i = 0; i < chains; ++i) acc[i] = splat(1.0f + 1e-6f * static_cast<float>(i));
  Vector b = splat(0.999999f), c = splat(1e-7f);
  benchmark::DoNotOptimize(b);
  benchmark::DoNotOptimize(c);
  for (auto _ : state) {
    for (int r = 0; r < inner; ++r)
#pragma GCC unroll 16
      for (int i = 0; i < chains; ++i) acc[i] = fma(acc[i], b, c);
    benchmark::DoNotOptimize(acc);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * lanes * chains * inner, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

// Args: m, n, k, variant (0 = A·B, 1 = A·Bᵀ, 2 = Aᵀ·B), path (0 = this process's choice, 1 = Eigen).
void BM_Sgemm(benchmark::State& state) {
  const index_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int variant = static_cast<int>(state.range(3));
  const GemmPath path = state.range(4) == 0 ? dca::gemm_backend().path : GemmPath::eigen;
  dca::set_num_threads(1);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const auto random = [&](index_t rows, index_t cols) {
    Matrix x(rows, cols);
    for (index_t i = 0; i < x.size(); ++i) x.data()[i] = dist(rng);
    return x;
  };
  const Matrix a = variant == 2 ? random(k, m) : random(m, k), b = variant == 1 ? random(n, k) : random(k, n);
  Matrix c(m, n);
  for (auto _ : state) {
    if (variant == 0) dca::detail::gemm_on(path, c, a, b, 1.0f, false);
    if (variant == 1) dca::detail::gemm_on(path, c, a, b.transpose(), 1.0f, false);
    if (variant == 2) dca::detail::gemm_on(path, c, a.transpose(), b, 1.0f, false);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k),
                                                 benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// The small training config's products (batch·T = 1024 rows, d = 256, MLP 1024): projections
// forward (A·B with GPT-2's [in,out] weights), their input gradients (A·Bᵀ), weight gradients
// (Aᵀ·B), and one attention head's score product (T = 128, D = 64).
void register_shapes(benchmark::internal::Benchmark* b) {
  for (int path : {0, 1}) {
    b->Args({1024, 256, 256, 0, path})->Args({1024, 1024, 256, 0, path})->Args({1024, 256, 1024, 0, path});
    b->Args({1024, 256, 1024, 1, path})->Args({256, 1024, 1024, 2, path})->Args({256, 256, 1024, 2, path});
    b->Args({128, 128, 64, 1, path})->Args({1024, 1024, 1024, 0, path});
  }
}

}  // namespace

BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Sgemm)->ArgNames({"m", "n", "k", "variant", "eigen"})->Apply(register_shapes)->Unit(benchmark::kMicrosecond);

DCA_BENCHMARK_MAIN()
