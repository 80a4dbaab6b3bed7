// Coprocessor training cost, float32, against the number K of augmentation points per sequence, on the
// GPT-2 style "small" decoder of docs/performance.md (L=4, H=4, d=256, V=256, tied head, frozen) with a
// coprocessor initialised from it: T=256 tokens per sequence, N_L=16 latents, N_A=16 ahead tokens.
//   ./build/benchmarks/bench_coprocessor --benchmark_counters_tabular=true
// BM_CoprocessorTrainingStep: structured loss + backward + AdamW step, K = 8..64 — the cost per point
// should stay flat (time ratio ≈ FLOP ratio, the K-independent token pass aside) and memory grow
// linearly in K. BM_CoprocessorStepStructured / BM_CoprocessorStepDense: loss + backward only, on the
// same weights, tokens and plan, for `Coprocessor::loss` against `dense_reference_loss`
// (coproc/dense_reference.hpp: the paper's one extended sequence per row with a (T + K·(N_L+N_A−1))²
// mask); their ratio is the structured form's speed-up. Each plan is drawn once per benchmark
// (seeded) and reused every step.
//
// Counters: "points/s" and "ms/point" (wall clock) count the B·K augmentation points of a step;
// "GFLOP" is the model below, per step (structured steps only); "arena MB" is the tape arena's bytes
// in use after the step (values, adjoints, closures and attention probabilities of the whole step, in
// 10⁶ bytes; nothing is rewound within a step, so it is also the step's high-water mark). It excludes
// the fixed parameters, gradients and AdamW moments, and the dense masks (std::vector, not the arena).
//
// FLOP model of a structured step (a multiply-add is 2 FLOPs; G = B·K groups, group g at point t_g reads
// C_g = t_g + 1 cache rows; R = N_L + N_A − 1 rows per ahead group). Per row, one pass through the
// weights costs W = 24·L·d² (q|k|v 3d², output d², MLP 4d² + 4d², per layer) and the tied head H = 2·V·d;
// attention costs A = 4·L·d per (query, visible key) pair (q·kᵀ and P·v). The backward of a product
// with a trainable weight costs 2× its forward (input and weight gradients), with a frozen weight or a
// constant key/value 1× (input gradient only). So a pair with a cache key costs 2A in all (forward, dP
// and dQ), a pair with an active key 3A (dK and dV too):
//   token pass (constant)  B·T·(W + H) + A·B·T(T+1)/2                       forward only
//   coprocessor            G·N_L·(3W + 3H + 6d²) + A·Σ_g (2·N_L·C_g + 3·N_L(N_L+1)/2)
//                          (trainable: 3× forward; 2d²: the residual latent projection; the cache is constant)
//   ahead pass (frozen)    G·R·(2W + 2H) + A·Σ_g (2·R·C_g + 3·R(R+1)/2)      (input gradients only)
// The coprocessor's head counts because `Decoder::forward` computes logits the loss never reads and the
// sweep runs their backward. Embeddings, biases, norms, GELU, softmax, the loss and AdamW are not
// counted (O(d) per row or per parameter). The model's backward part agrees with the tape's own count
// of backward GEMM FLOPs (Tape::stats) to about 1% (attention runs in query blocks, a little over the
// exact visible pairs).
#include <dca/coproc/dense_reference.hpp>
#include <dca/dca.hpp>

#include <benchmark/benchmark.h>

#include "context.hpp"

#include <chrono>
#include <cmath>
#include <vector>

namespace {

using dca::index_t;

constexpr index_t layers = 4, heads = 4, width = 256, vocab = 256, context = 256;
constexpr index_t n_latents = 16, n_ahead = 16;

using SmallCoprocessor = dca::Coprocessor<float, n_latents>;

// A frozen decoder, its coprocessor (from its weights), B random sequences and K seeded points per
// sequence: identical for every benchmark of the same K and B.
struct Setup {
  dca::Decoder<float> decoder;
  SmallCoprocessor coprocessor;
  std::vector<index_t> ids;
  dca::AugmentationPlan plan;

  Setup(index_t k, index_t batch)
      : decoder(dca::DecoderConfig::gpt2(
                    {.vocab = vocab, .dim = width, .layers = layers, .heads = heads, .max_positions = context}),
                1),
        coprocessor(decoder, dca::CoprocessorConfig{.n_ahead = n_ahead}),
        ids(static_cast<std::size_t>(batch * context)) {
    decoder.freeze();
    dca::Rng rng(2);
    for (auto& id : ids) id = rng.below(vocab);
    plan = dca::AugmentationPlan::random(batch, context, k, n_ahead, rng);
  }

  double points() const { return static_cast<double>(plan.groups()); }
};

// FLOPs of one structured step (see the header comment).
double step_flops(const dca::AugmentationPlan& plan) {
  const double d = width, W = 24.0 * layers * d * d, H = 2.0 * vocab * d, A = 4.0 * layers * d;
  const double B = static_cast<double>(plan.batch), T = static_cast<double>(plan.seq_len), G = plan.groups();
  const double NL = n_latents, R = n_latents + n_ahead - 1;
  double flops = B * T * (W + H) + A * B * T * (T + 1) / 2;
  flops += G * NL * (3 * W + 3 * H + 6 * d * d) + G * R * (2 * W + 2 * H);
  for (const index_t t : plan.points) {
    const double C = static_cast<double>(t + 1);
    flops += A * (2 * NL * C + 3 * NL * (NL + 1) / 2) + A * (2 * R * C + 3 * R * (R + 1) / 2);
  }
  return flops;
}

// Runs the timed loop; `step` is one step. Returns the loop's wall-clock seconds.
template <class Step>
double timed_loop(benchmark::State& state, Step& step) {
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(step());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// "ms/point" is a plain counter from the loop's own wall clock: an inverted rate counter would be
// printed with a misleading "s" suffix.
void report_points_and_memory(benchmark::State& state, const Setup& setup, const dca::Tape<float>& tape,
                              double seconds) {
  const double points = setup.points(), iterations = static_cast<double>(state.iterations());
  state.counters["points/s"] = benchmark::Counter(points, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ms/point"] = benchmark::Counter(1e3 * seconds / (iterations * points));
  state.counters["arena MB"] = benchmark::Counter(static_cast<double>(tape.arena().used_bytes()) * 1e-6);
}

void report_flops(benchmark::State& state, const Setup& setup) {
  const double gflop = step_flops(setup.plan) * 1e-9;
  state.counters["GFLOP"] = benchmark::Counter(gflop);
  state.counters["GFLOP/s"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: K, batch, threads.
void BM_CoprocessorTrainingStep(benchmark::State& state) {
  dca::set_num_threads(static_cast<int>(state.range(2)));
  Setup setup(state.range(0), state.range(1));
  dca::AdamW<float> optimizer(setup.coprocessor.parameters(), dca::AdamWConfig{});
  dca::Tape<float> tape;
  const auto step = [&] {
    tape.reset();
    const auto loss = setup.coprocessor.loss(tape, setup.decoder, setup.ids, setup.plan);
    tape.backward(loss.loss);
    optimizer.step(1e-4);
    optimizer.zero_grad();
    return loss.loss.item();
  };
  // Steady state, as in training: the first steps grow the tape's arena, fault in its pages and
  // allocate the optimizer state; Google Benchmark reruns this function several times, so without
  // the warm-up they would be timed each time.
  for (int warm_up = 0; warm_up < 2; ++warm_up) step();
  const double seconds = timed_loop(state, step);
  report_points_and_memory(state, setup, tape, seconds);
  report_flops(state, setup);
}

// Loss + backward of the coprocessor's parameters, structured or dense, with its gradients zeroed
// after each step as an optimizer would; returns the loss.
template <bool Dense>
float loss_and_gradients(Setup& setup, dca::Tape<float>& tape) {
  tape.reset();
  const auto loss = Dense ? dca::dense_reference_loss(setup.coprocessor, tape, setup.decoder, setup.ids, setup.plan)
                          : setup.coprocessor.loss(tape, setup.decoder, setup.ids, setup.plan);
  tape.backward(loss.loss);
  for (dca::Parameter<float>* p : setup.coprocessor.parameters())
    if (p->has_grad()) p->zero_grad();
  return loss.loss.item();
}

// Args: K, batch, threads.
template <bool Dense>
void coprocessor_loss_and_gradients(benchmark::State& state) {
  dca::set_num_threads(static_cast<int>(state.range(2)));
  Setup setup(state.range(0), state.range(1));
  dca::Tape<float> tape;
  // The two benchmarks must time the same loss: checked once against the structured form.
  const float structured = loss_and_gradients<false>(setup, tape);
  const float loss = loss_and_gradients<Dense>(setup, tape);
  if (std::abs(loss - structured) > 1e-4f * std::abs(structured)) {
    state.SkipWithError("the dense reference loss differs from the structured loss");
    return;
  }
  const auto step = [&] { return loss_and_gradients<Dense>(setup, tape); };
  for (int warm_up = 0; warm_up < 2; ++warm_up) step();
  const double seconds = timed_loop(state, step);
  report_points_and_memory(state, setup, tape, seconds);
  if (!Dense) report_flops(state, setup);
}

void BM_CoprocessorStepStructured(benchmark::State& state) { coprocessor_loss_and_gradients<false>(state); }
void BM_CoprocessorStepDense(benchmark::State& state) { coprocessor_loss_and_gradients<true>(state); }

}  // namespace

BENCHMARK(BM_CoprocessorTrainingStep)
    ->ArgNames({"K", "B", "threads"})
    ->Args({8, 1, 1})
    ->Args({16, 1, 1})
    ->Args({32, 1, 1})
    ->Args({64, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CoprocessorStepStructured)
    ->ArgNames({"K", "B", "threads"})
    ->Args({8, 1, 1})
    ->Args({16, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CoprocessorStepDense)
    ->ArgNames({"K", "B", "threads"})
    ->Args({8, 1, 1})
    ->Args({16, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

DCA_BENCHMARK_MAIN()
