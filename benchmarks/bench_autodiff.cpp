// Autodiff benchmarks: tape overhead on a GEMM, per-node overhead, fused attention throughput.
//   ./build/benchmarks/bench_autodiff --benchmark_counters_tabular=true
// Every benchmark takes the thread count as its last argument (1 and 2 are registered).
// docs/performance.md reports these numbers.
#include <dca/dca.hpp>

#include <benchmark/benchmark.h>

#include "context.hpp"

#include <random>
#include <vector>

namespace {

using dca::index_t;
using dca::Shape;
using dca::Tensor;

Tensor<float> random_tensor(Shape shape, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Tensor<float> t(shape);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = dist(rng);
  return t;
}

// Forward y = a·b and backward da = dy·bᵀ, db = aᵀ·dy as three direct GEMM calls (the same
// kernels the tape's matmul uses): the floor for the tape.
void BM_DirectMatmulForwardBackward(benchmark::State& state) {
  const index_t m = state.range(0), k = state.range(1), n = state.range(2);
  dca::set_num_threads(static_cast<int>(state.range(3)));
  const auto a = random_tensor(Shape{m, k}, 1), b = random_tensor(Shape{k, n}, 2), dy = random_tensor(Shape{m, n}, 3);
  Tensor<float> y(Shape{m, n}), da(Shape{m, k}), db(Shape{k, n});
  for (auto _ : state) {
    dca::detail::gemm(y.matrix(), a.matrix(), b.matrix());
    dca::detail::gemm(da.matrix(), dy.matrix(), b.matrix().transpose());
    dca::detail::gemm(db.matrix(), a.matrix().transpose(), dy.matrix());
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(da.data());
    benchmark::DoNotOptimize(db.data());
  }
  const double flops = 3.0 * 2.0 * static_cast<double>(m * k * n);
  state.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// The same computation through the tape: parameters a and b, seed dy, gradients into a.grad/b.grad.
void BM_TapeMatmulForwardBackward(benchmark::State& state) {
  const index_t m = state.range(0), k = state.range(1), n = state.range(2);
  dca::set_num_threads(static_cast<int>(state.range(3)));
  dca::Parameter<float> a("a", random_tensor(Shape{m, k}, 1)), b("b", random_tensor(Shape{k, n}, 2));
  const auto dy = random_tensor(Shape{m, n}, 3);
  dca::Tape<float> tape;
  for (auto _ : state) {
    tape.reset();
    const auto y = dca::matmul(tape.param(a), tape.param(b));
    tape.backward(y, dy.view());
    benchmark::DoNotOptimize(a.grad().data());
  }
  const double flops = 3.0 * 2.0 * static_cast<double>(m * k * n);
  state.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// A chain of N scalings of a [1,1] value: forward + backward time per node is the tape's own
// overhead (node record, arena allocation, closure call), the arithmetic being negligible.
void BM_TapePerNodeOverhead(benchmark::State& state) {
  const index_t nodes = state.range(0);
  dca::Parameter<float> w("w", Tensor<float>(Shape{1, 1}, 1.0f));
  dca::Tape<float> tape;
  for (auto _ : state) {
    tape.reset();
    auto x = tape.param(w);
    for (index_t i = 0; i < nodes; ++i) x = dca::scale(x, 1.0001f);
    tape.backward(x);
  }
  // Inverted rate of nodes·1e-9 per second = nanoseconds per node.
  state.counters["ns/node"] = benchmark::Counter(static_cast<double>(nodes) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// Self-attention forward + backward of q, k, v: [T, d] with H heads of d/H, causal (rule 1) or
// bidirectional (rule 0). FLOPs counted for full T×T score matrices in both cases: forward 4·T²·D·H
// (QKᵀ, PV), backward 8·T²·D·H; the causal kernel skips the hidden blocks above the diagonal (10/16
// of the square at T = 128), so its figure is the full-square equivalent rate.
void BM_AttentionForwardBackward(benchmark::State& state) {
  const index_t t = state.range(0), d = state.range(1), heads = state.range(2);
  const bool causal = state.range(3) != 0;
  dca::set_num_threads(static_cast<int>(state.range(4)));
  dca::Parameter<float> q("q", random_tensor(Shape{t, d}, 1)), k("k", random_tensor(Shape{t, d}, 2)),
      v("v", random_tensor(Shape{t, d}, 3));
  const auto dy = random_tensor(Shape{t, d}, 4);
  dca::AttentionArgs<float> args;
  args.n_heads = heads;
  args.n_kv_heads = heads;
  args.rule = causal ? dca::AttentionRule::causal : dca::AttentionRule::bidirectional;
  dca::Tape<float> tape;
  for (auto _ : state) {
    tape.reset();
    const auto y = dca::attention(tape.param(q), tape.param(k), tape.param(v), args);
    tape.backward(y, dy.view());
  }
  const double flops = 12.0 * static_cast<double>(t * t * d);
  state.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

}  // namespace

BENCHMARK(BM_DirectMatmulForwardBackward)->Args({256, 128, 512, 1})->Args({256, 128, 512, 2})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TapeMatmulForwardBackward)->Args({256, 128, 512, 1})->Args({256, 128, 512, 2})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TapePerNodeOverhead)->Arg(1000);
BENCHMARK(BM_AttentionForwardBackward)
    ->ArgNames({"T", "d", "H", "causal", "threads"})
    ->Args({128, 256, 4, 1, 1})
    ->Args({128, 256, 4, 1, 2})
    ->Args({128, 256, 4, 0, 1})
    ->Args({128, 256, 4, 0, 2})
    ->Unit(benchmark::kMicrosecond);

DCA_BENCHMARK_MAIN()
