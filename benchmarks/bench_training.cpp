// Training-step throughput: forward + cross-entropy + backward + AdamW, float32, GPT-2 style
// decoder with a tied head, at the two reference configs of docs/performance.md.
//   ./build/benchmarks/bench_training --benchmark_counters_tabular=true
// benchmarks/compare_pytorch.sh runs it side by side with the same step in PyTorch.
//
// FLOP accounting per token (L layers, width d, sequence T, vocabulary V; a multiply-add is 2 FLOPs;
// the step is 3x the forward: the backward of each product is two products of the same size):
//   matmuls    2·(12·L·d² + V·d)  per layer q|k|v 3d², output d², MLP 4d² + 4d²; the tied head V·d
//   attention  4·L·T·d            q·kᵀ and P·v over the full T×T score matrix
//   step       3·(matmuls + attention)
// This is the usual model-FLOPs convention (PaLM's appendix B, nanoGPT's estimate_mfu: 6N + 12·L·T·d),
// so "GFLOP/s" is comparable with figures quoted elsewhere; the bar of docs/performance.md uses it.
// The attention kernel skips the score blocks that causality hides, so it does less than the full
// square; "causal GFLOP/s" counts attention as only the visible half, 4·L·d·(T+1)/2 per token, the
// stricter figure. Embedding lookups, biases, norms, GELU, softmax, the loss and AdamW are not
// counted (they are O(d) per token, not O(d²)).
#include <dca/dca.hpp>
#include <dca/nn/nn.hpp>
#include <dca/train/optimizer.hpp>

#include <benchmark/benchmark.h>

#include "context.hpp"

#include <vector>

namespace {

using dca::index_t;

// Step FLOPs per token (see the header comment); `causal` counts only the visible half of attention.
double flops_per_token(index_t layers, index_t d, index_t t, index_t vocab, bool causal) {
  const double matmul = 2.0 * (12.0 * layers * d * d + static_cast<double>(vocab) * d);
  const double attention = causal ? 4.0 * layers * d * (t + 1) / 2.0 : 4.0 * layers * t * d;
  return 3.0 * (matmul + attention);
}

// Args: layers, heads, d, T, vocab, batch, threads.
void BM_TrainingStep(benchmark::State& state) {
  const index_t layers = state.range(0), heads = state.range(1), d = state.range(2), t = state.range(3),
                vocab = state.range(4), batch = state.range(5);
  dca::set_num_threads(static_cast<int>(state.range(6)));
  dca::Decoder<float> model(
      dca::DecoderConfig::gpt2({.vocab = vocab, .dim = d, .layers = layers, .heads = heads, .max_positions = t}), 1);
  dca::AdamW<float> optimizer(model.parameters(), dca::AdamWConfig{});
  dca::Rng rng(2);
  std::vector<index_t> ids(static_cast<std::size_t>(batch * t)), targets(ids.size());
  for (auto& id : ids) id = rng.below(vocab);
  for (auto& id : targets) id = rng.below(vocab);
  dca::Tape<float> tape;
  const auto step = [&] {
    tape.reset();
    const auto loss = model.loss(tape, ids, targets, batch);
    tape.backward(loss);
    optimizer.step(1e-4);
    optimizer.zero_grad();
    return loss.item();
  };
  // Steady state, as in training: the first steps grow the tape's arena, fault in its pages and
  // allocate the optimizer state; Google Benchmark reruns this function several times, so without
  // the warm-up they would be timed each time.
  for (int warm_up = 0; warm_up < 2; ++warm_up) step();
  for (auto _ : state) benchmark::DoNotOptimize(step());
  const double tokens = static_cast<double>(batch * t);
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(tokens * flops_per_token(layers, d, t, vocab, false) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["causal GFLOP/s"] = benchmark::Counter(tokens * flops_per_token(layers, d, t, vocab, true) * 1e-9,
                                                        benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// tiny: L=2, H=4, d=128, T=64, V=96, B=16;  small: L=4, H=4, d=256, T=128, V=256, B=8
BENCHMARK(BM_TrainingStep)
    ->ArgNames({"L", "H", "d", "T", "V", "B", "threads"})
    ->Args({2, 4, 128, 64, 96, 16, 1})
    ->Args({2, 4, 128, 64, 96, 16, 2})
    ->Args({4, 4, 256, 128, 256, 8, 1})
    ->Args({4, 4, 256, 128, 256, 8, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

DCA_BENCHMARK_MAIN()
