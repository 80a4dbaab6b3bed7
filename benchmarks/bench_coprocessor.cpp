// Coprocessor training cost, float32, against the number K of augmentation points per sequence, on the
// GPT-2 style "small" decoder of docs/performance.md (L=4, H=4, d=256, V=256, tied head, frozen) with a
// coprocessor initialised from it: T=256 tokens per sequence, N_L=16 latents, N_A=16 ahead tokens.
//   ./build/benchmarks/bench_coprocessor --benchmark_counters_tabular=true
// BM_CoprocessorTrainingStep: structured loss + backward + AdamW step, K = 8..64, one and two threads
// — the cost per point should stay flat (time ratio ≈ FLOP ratio, the K-independent token pass aside)
// and memory grow linearly in K. BM_CoprocessorTrainingStepReproduction: the same step at the shapes
// of the reproduction's default (full) profile (experiment/reproduction.hpp: its Llama-style decoder,
// batch, sequence length, K and N_A; N_L = 16, the largest latent count it trains).
// BM_CoprocessorStepStructured / BM_CoprocessorStepDense: loss + backward only, on the same weights,
// tokens and plan, for `Coprocessor::loss` against `dense_reference_loss` (coproc/dense_reference.hpp:
// the paper's one extended sequence per row with a (T + K·(N_L+N_A−1))² mask), K = 8..64; their ratio
// is the structured form's speed-up. Each plan is drawn once per benchmark (seeded) and reused every
// step. Every step is AdamW at `dca::AdamWConfig{}` and lr 1e-4, without clipping (the reproduction's
// trainer also clips at norm 1 and decays nothing: an O(parameters) difference).
//
// Counters: "points/s" and "ms/point" (wall clock) count the B·K augmentation points of a step;
// "GFLOP" is the model below, per step (structured steps only); "parts": how many parts
// dca::coprocessor_step split the batch into (one per thread); "arena MB" is the tape arena's bytes
// in use after the step (values, adjoints, closures and attention probabilities of the whole step, in
// 10⁶ bytes; nothing is rewound within a step, so it is also the step's high-water mark; with several
// parts, the main tape's: the shared pass and part 0, the other parts being on tapes of their own). It excludes
// the fixed parameters, gradients and AdamW moments, and the dense masks (std::vector, not the arena).
//
// FLOP model of a structured step (a multiply-add is 2 FLOPs; G = B·K groups, group g at point t_g reads
// C_g = t_g + 1 cache rows; R = N_L + N_A − 1 rows per ahead group). Per row, one pass through the
// weights costs W = 2·L·(d·(q + 2·kv) + q·d + m·d·F) (q|k|v projections of widths q = H·D and
// kv = H_kv·D, the output projection, an MLP of width F with m = 2 matrices, 3 when gated); for the
// GPT-2 small decoder W = 24·L·d². The output head costs H = 2·V·d; attention costs A = 4·L·q per
// (query, visible key) pair (q·kᵀ and P·v). The backward of a product with a trainable weight costs 2×
// its forward (input and weight gradients), with a frozen weight or a constant key/value 1× (input
// gradient only). So a pair with a cache key costs 2A in all (forward, dP and dQ), a pair with an
// active key 3A (dK and dV too):
//   token pass (constant)  B·T·W + A·B·T(T+1)/2                             forward only, no head
//   coprocessor            G·N_L·(3W + 6d²) + A·Σ_g (2·N_L·C_g + 3·N_L(N_L+1)/2)
//                          (trainable: 3× forward; 2d²: the residual latent projection; the cache is
//                          constant; no head: Coprocessor::loss asks the coprocessor for no logits)
//   ahead pass (frozen)    G·R·(2W + 2H) + A·Σ_g (2·R·C_g + 3·R(R+1)/2)      (input gradients only)
// Embeddings, biases, norms, GELU, softmax, the loss and AdamW are not counted (O(d) per row or per
// parameter). `--dca_export` prints the model's backward part beside the tape's own count of backward
// GEMM FLOPs (Tape::stats); they agree to about 1% (attention runs in query blocks, a little over the
// exact visible pairs).
//
// `bench_coprocessor --dca_export DIR [--K 8] [--config small|reproduction] [--B n]` (handled before
// Google Benchmark reads the command line) writes the benchmark's setup for K points after a few
// training steps (see export_for_pytorch) for benchmarks/pytorch_coprocessor_step.py --check DIR,
// which recomputes the loss, gradients and AdamW step in PyTorch: compare_pytorch_coprocessor.sh.
#include <dca/coproc/dense_reference.hpp>
#include <dca/coproc/trainer.hpp>
#include <dca/dca.hpp>
#include <dca/experiment/reproduction.hpp>
#include <dca/io/hf.hpp>
#include <dca/io/safetensors.hpp>
#include <dca/train/checkpoint.hpp>

#include <benchmark/benchmark.h>

#include "context.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace {

using dca::index_t;

constexpr index_t n_latents = 16, n_ahead = 16;

using BenchCoprocessor = dca::Coprocessor<float, n_latents>;

// A decoder architecture and the sequence length of its benchmark.
struct BenchShape {
  const char* name;
  dca::DecoderConfig decoder;
  index_t seq_len;
  index_t default_k, default_batch;  // the configuration's own K and B (the export's defaults)
};

// The small decoder of docs/performance.md, T = 256.
BenchShape small_shape() {
  return {"small",
          dca::DecoderConfig::gpt2({.vocab = 256, .dim = 256, .layers = 4, .heads = 4, .max_positions = 256}), 256, 8,
          1};
}

// The reproduction's default profile (examples/reproduce without --quick or --smoke): its decoder,
// and the batch, sequence length and K of its coprocessor runs. Its N_A must be the benchmark's.
BenchShape reproduction_shape() {
  const dca::ReproductionProfile p = dca::ReproductionProfile::full();
  const auto& counts = p.latent_counts;
  if (p.n_ahead != n_ahead || std::find(counts.begin(), counts.end(), n_latents) == counts.end())
    throw dca::UsageError("bench_coprocessor: the reproduction profile no longer trains N_L = 16, N_A = 16 "
                          "coprocessors; update reproduction_shape");
  const dca::CoprocessorTrainerConfig& run = p.coprocessor;
  return {"reproduction", p.decoder, run.seq_len, run.points_per_sequence, run.batch_size};
}

// A frozen decoder, its coprocessor (from its weights), B random sequences and K seeded points per
// sequence: identical for every benchmark of the same shape, K and B.
struct Setup {
  dca::DecoderConfig config;
  dca::Decoder<float> decoder;
  BenchCoprocessor coprocessor;
  std::vector<index_t> ids;
  dca::AugmentationPlan plan;

  Setup(const BenchShape& shape, index_t k, index_t batch)
      : config(shape.decoder),
        decoder(shape.decoder, 1),
        coprocessor(decoder, dca::CoprocessorConfig{.n_ahead = n_ahead}),
        ids(static_cast<std::size_t>(batch * shape.seq_len)) {
    decoder.freeze();
    dca::Rng rng(2);
    for (auto& id : ids) id = rng.below(config.vocab_size);
    plan = dca::AugmentationPlan::random(batch, shape.seq_len, k, n_ahead, rng);
  }

  double points() const { return static_cast<double>(plan.groups()); }
};

// The FLOP model's two parts (see the header comment): all FLOPs of one structured step, and those of
// its backward pass alone (what Tape::stats counts).
struct StepFlops {
  double total = 0, backward = 0;
};

StepFlops step_flops(const dca::DecoderConfig& c, const dca::AugmentationPlan& plan) {
  const double d = static_cast<double>(c.hidden_size), L = static_cast<double>(c.n_layers);
  const double q = static_cast<double>(c.n_heads * c.resolved_head_dim());
  const double kv = static_cast<double>(c.n_kv_heads * c.resolved_head_dim());
  const double mlp = static_cast<double>(c.intermediate_size) * (c.gated_mlp ? 3 : 2);
  const double W = 2 * L * (d * (q + 2 * kv) + q * d + mlp * d), H = 2.0 * static_cast<double>(c.vocab_size) * d;
  const double A = 4 * L * q;
  const double B = static_cast<double>(plan.batch), T = static_cast<double>(plan.seq_len), G = plan.groups();
  const double NL = n_latents, R = n_latents + n_ahead - 1;
  StepFlops f;
  f.total = B * T * W + A * B * T * (T + 1) / 2;
  f.total += G * NL * (3 * W + 6 * d * d) + G * R * (2 * W + 2 * H);
  f.backward = G * NL * (2 * W + 4 * d * d) + G * R * (W + H);
  for (const index_t t : plan.points) {
    const double C = static_cast<double>(t + 1);
    f.total += A * (2 * NL * C + 3 * NL * (NL + 1) / 2) + A * (2 * R * C + 3 * R * (R + 1) / 2);
    f.backward += A * (NL * C + 2 * NL * (NL + 1) / 2) + A * (R * C + 2 * R * (R + 1) / 2);
  }
  return f;
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
  const double gflop = step_flops(setup.config, setup.plan).total * 1e-9;
  state.counters["GFLOP"] = benchmark::Counter(gflop);
  state.counters["GFLOP/s"] = benchmark::Counter(gflop, benchmark::Counter::kIsIterationInvariantRate);
}

// One training step as the benchmark times it: structured loss, backward, AdamW at lr `lr`,
// zero_grad. Returns the loss.
float training_step(Setup& setup, dca::Tape<float>& tape, dca::AdamW<float>& optimizer, double lr) {
  tape.reset();
  const auto loss = setup.coprocessor.loss(tape, setup.decoder, setup.ids, setup.plan);
  tape.backward(loss.loss);
  optimizer.step(lr);
  optimizer.zero_grad();
  return loss.loss.item();
}

// The optimisation the timed steps run: AdamW at dca::AdamWConfig{}'s settings and a constant lr of
// 1e-4, no clipping (as the PyTorch side).
dca::OptimizationConfig bench_optimization() {
  const dca::AdamWConfig adamw{};
  return {.max_lr = 1e-4, .min_lr = 1e-4, .warmup_steps = 0, .total_steps = index_t{1} << 40,
          .weight_decay = adamw.weight_decay, .beta1 = adamw.beta1, .beta2 = adamw.beta2, .eps = adamw.eps,
          .grad_clip = 0};
}

// Args: K, batch, threads. The step as CoprocessorTrainer runs it (dca::coprocessor_step: on several
// threads the batch in parts side by side).
void coprocessor_training_step(benchmark::State& state, const BenchShape& shape) {
  dca::set_num_threads(static_cast<int>(state.range(2)));
  Setup setup(shape, state.range(0), state.range(1));
  dca::TrainingLoop<float> loop(setup.coprocessor.parameter_groups(), bench_optimization());
  index_t parts = 1;
  const auto step = [&] {
    const dca::CoprocessorStep done = dca::coprocessor_step(loop, setup.coprocessor, setup.decoder,
                                                            std::span<const index_t>(setup.ids), setup.plan);
    parts = done.parts;
    return done.loss;
  };
  // Steady state, as in training: the first steps grow the tapes' arenas, fault in their pages and
  // allocate the optimizer state; Google Benchmark reruns this function several times, so without
  // the warm-up they would be timed each time.
  for (int warm_up = 0; warm_up < 2; ++warm_up) step();
  const double seconds = timed_loop(state, step);
  report_points_and_memory(state, setup, loop.tape(), seconds);
  report_flops(state, setup);
  state.counters["parts"] = benchmark::Counter(static_cast<double>(parts));
}

void BM_CoprocessorTrainingStep(benchmark::State& state) { coprocessor_training_step(state, small_shape()); }
void BM_CoprocessorTrainingStepReproduction(benchmark::State& state) {
  coprocessor_training_step(state, reproduction_shape());
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
  Setup setup(small_shape(), state.range(0), state.range(1));
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

// ---- the step's products alone: the rate the step is held against ---------------------------------

// The products one training step runs (dca::set_gemm_observer), in order; the observer may be
// called from the threads of a parallel region, hence the lock.
struct GemmRecorder {
  std::mutex lock;
  std::vector<dca::GemmCall> calls;

  static void observe(const dca::GemmCall& call, void* self) {
    auto* recorder = static_cast<GemmRecorder*>(self);
    const std::lock_guard<std::mutex> guard(recorder->lock);
    recorder->calls.push_back(call);
  }
};

// Every product of one training step of `setup`, recorded after `tape` and `optimizer` warmed up.
std::vector<dca::GemmCall> step_products(Setup& setup, dca::Tape<float>& tape, dca::AdamW<float>& optimizer) {
  GemmRecorder recorder;
  dca::set_gemm_observer(&GemmRecorder::observe, &recorder);
  training_step(setup, tape, optimizer, 1e-4);
  dca::set_gemm_observer(nullptr);
  return std::move(recorder.calls);
}

// Runs `calls` again, one after the other, on scratch operands of their shapes (on the GEMM path
// this process chose): the time the step's products take when nothing else runs.
class ProductReplay {
 public:
  explicit ProductReplay(std::vector<dca::GemmCall> calls) : calls_(std::move(calls)) {
    std::size_t largest = 1;
    for (const dca::GemmCall& c : calls_)
      largest = std::max({largest, static_cast<std::size_t>(c.m * c.k), static_cast<std::size_t>(c.k * c.n),
                          static_cast<std::size_t>(c.m * c.n)});
    a_.assign(largest, 0.01f);
    b_.assign(largest, 0.02f);
    c_.assign(largest, 0.0f);
  }

  double flops() const {
    double total = 0;
    for (const dca::GemmCall& c : calls_) total += 2.0 * static_cast<double>(c.m * c.n * c.k);
    return total;
  }

  void run() {
    const dca::GemmPath path = dca::gemm_backend().path;
    for (const dca::GemmCall& c : calls_) {
      // op(A) is [m,k]: its row-major storage is [k,m] when transposed; likewise op(B) [k,n].
      const dca::detail::GemmOperand<const float> a{a_.data(), c.transpose_a ? c.k : c.m, c.transpose_a ? c.m : c.k,
                                                    c.transpose_a ? c.m : c.k, c.transpose_a};
      const dca::detail::GemmOperand<const float> b{b_.data(), c.transpose_b ? c.n : c.k, c.transpose_b ? c.k : c.n,
                                                    c.transpose_b ? c.k : c.n, c.transpose_b};
      dca::detail::gemm_strided<float>(path, {c_.data(), c.m, c.n, c.n, false}, a, b, 1.0f, c.accumulate);
    }
  }

  std::size_t size() const { return calls_.size(); }

 private:
  std::vector<dca::GemmCall> calls_;
  std::vector<float> a_, b_, c_;
};

// Args: K, batch (one thread). The products of one BM_CoprocessorTrainingStep step, replayed alone:
// "GFLOP/s" is their FLOPs (2·m·n·k each, as run) over their time. The step's own rate over the same
// FLOPs (BM_CoprocessorTrainingStep's time) divided by this one is the share of the step that is
// product time at this machine's SGEMM rate.
void BM_CoprocessorStepProductsAlone(benchmark::State& state) {
  dca::set_num_threads(1);
  Setup setup(small_shape(), state.range(0), state.range(1));
  dca::AdamW<float> optimizer(setup.coprocessor.parameters(), dca::AdamWConfig{});
  dca::Tape<float> tape;
  for (int warm_up = 0; warm_up < 2; ++warm_up) training_step(setup, tape, optimizer, 1e-4);
  ProductReplay replay(step_products(setup, tape, optimizer));
  replay.run();
  for (auto _ : state) replay.run();
  state.counters["products"] = benchmark::Counter(static_cast<double>(replay.size()));
  state.counters["GFLOP"] = benchmark::Counter(replay.flops() * 1e-9);
  state.counters["GFLOP/s"] = benchmark::Counter(replay.flops() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- --dca_profile: where one step's time goes --------------------------------------------------------

// Prints, for `steps` training steps of the small shape at K points, the tape's per-op profile
// (forward and backward ms per step), the optimizer's share, and the step's products replayed alone.
int profile_main(index_t k, int threads, int steps) {
  dca::set_num_threads(threads);
  Setup setup(small_shape(), k, 1);
  dca::AdamW<float> optimizer(setup.coprocessor.parameters(), dca::AdamWConfig{});
  dca::Tape<float> tape;
  for (int warm_up = 0; warm_up < 3; ++warm_up) training_step(setup, tape, optimizer, 1e-4);
  tape.set_profiling(true);
  double step_seconds = 0, optimizer_seconds = 0;
  for (int i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    tape.reset();
    const auto loss = setup.coprocessor.loss(tape, setup.decoder, setup.ids, setup.plan);
    tape.backward(loss.loss);
    const auto update = std::chrono::steady_clock::now();
    optimizer.step(1e-4);
    optimizer.zero_grad();
    const auto end = std::chrono::steady_clock::now();
    step_seconds += std::chrono::duration<double>(end - start).count();
    optimizer_seconds += std::chrono::duration<double>(end - update).count();
  }
  tape.set_profiling(false);
  const double per_step = 1e3 / steps;
  std::vector<std::pair<std::string, dca::OpProfile>> ops(tape.profile().begin(), tape.profile().end());
  std::sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) {
    return a.second.forward_seconds + a.second.backward_seconds > b.second.forward_seconds + b.second.backward_seconds;
  });
  std::printf("small decoder, K = %ld, %d thread(s), %d steps on one tape (every op threaded): %.1f ms per step (%s)\n",
              static_cast<long>(k), threads, steps, step_seconds * per_step, dca::gemm_backend_summary().c_str());
  std::printf("%-22s %9s %12s %12s %8s\n", "op", "calls", "forward ms", "backward ms", "% step");
  double counted = 0;
  for (const auto& [name, p] : ops) {
    const double ms = (p.forward_seconds + p.backward_seconds) * per_step;
    counted += ms;
    std::printf("%-22s %9.0f %12.2f %12.2f %7.1f%%\n", name.c_str(), static_cast<double>(p.calls) / steps,
                p.forward_seconds * per_step, p.backward_seconds * per_step, 100 * ms / (step_seconds * per_step));
  }
  const double step_ms = step_seconds * per_step, optimizer_ms = optimizer_seconds * per_step;
  std::printf("%-22s %9s %25.2f %7.1f%%\n", "AdamW + zero_grad", "", optimizer_ms, 100 * optimizer_ms / step_ms);
  std::printf("%-22s %9s %25.2f %7.1f%%\n", "elsewhere", "", step_ms - counted - optimizer_ms,
              100 * (step_ms - counted - optimizer_ms) / step_ms);
  ProductReplay replay(step_products(setup, tape, optimizer));
  dca::set_num_threads(1);
  replay.run();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) replay.run();
  const double replay_ms = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() * per_step;
  std::printf("the step's %zu products alone, one thread: %.1f ms, %.1f GFLOP/s (%.1f%% of the step's time)\n",
              replay.size(), replay_ms, replay.flops() * 1e-6 / replay_ms, 100 * replay_ms / step_ms);
  // The step as CoprocessorTrainer runs it: on several threads, the batch in parts side by side.
  dca::set_num_threads(threads);
  dca::TrainingLoop<float> loop(setup.coprocessor.parameter_groups(), bench_optimization());
  const auto trainer_step = [&] {
    return dca::coprocessor_step(loop, setup.coprocessor, setup.decoder, std::span<const index_t>(setup.ids), setup.plan);
  };
  for (int warm_up = 0; warm_up < 2; ++warm_up) trainer_step();
  const auto loop_start = std::chrono::steady_clock::now();
  index_t parts = 1;
  for (int i = 0; i < steps; ++i) parts = trainer_step().parts;
  const double loop_ms = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_start).count() * per_step;
  std::printf("as CoprocessorTrainer runs it (dca::coprocessor_step, %ld part(s) side by side): %.1f ms per step\n",
              static_cast<long>(parts), loop_ms);
  return 0;
}

// ---- --dca_export: the setup, for the PyTorch side's loss check ------------------------------------

std::string number(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", x);
  return text;
}

std::vector<std::int64_t> as_int64(std::span<const index_t> values) { return {values.begin(), values.end()}; }

// Writes the benchmark's setup of `shape` at K points per sequence and B sequences into `dir`:
//   decoder/                            the frozen decoder (save_hf_decoder: config.json, model.safetensors)
//   coprocessor.safetensors             its coprocessor and AdamW state before the checked step
//                                       (write_checkpoint: "model.<name>", "optimizer.<name>.<slot>")
//   coprocessor_after_step.safetensors  the same after the checked step's AdamW update at lr 1e-4
//   batch.safetensors                   ids [B, T] and points [B, K] (I64), dca's loss [1] and
//                                       per-position losses [N_A] (F64), the coprocessor's gradients
//                                       of the checked step ("grad.<name>"), and as metadata the
//                                       shapes, the AdamW settings and the parameters it decays
// Before the checked step the coprocessor trains `train_steps` steps at `train_lr` on the same batch:
// fresh from the decoder its latent projection is zero, the latents are the insertion tokens'
// embeddings and the loss does not depend on any other coprocessor weight; a few steps later every
// weight matters and the coprocessor differs from the decoder, so a mix-up of the two shows.
int export_for_pytorch(const std::filesystem::path& dir, const BenchShape& shape, index_t k, index_t batch,
                       int train_steps, double train_lr) {
  dca::set_num_threads(1);
  Setup setup(shape, k, batch);
  const std::vector<dca::Parameter<float>*> parameters = setup.coprocessor.parameters();
  const dca::AdamWConfig adamw{};
  dca::AdamW<float> optimizer(parameters, adamw);
  dca::Tape<float> tape;
  for (int i = 0; i < train_steps; ++i) training_step(setup, tape, optimizer, train_lr);

  std::filesystem::create_directories(dir);
  const std::map<std::string, std::string> checkpoint_metadata{{"config", shape.name}};
  dca::write_checkpoint<float>(dir / "coprocessor.safetensors", parameters, optimizer, checkpoint_metadata);

  tape.reset();
  tape.stats() = {};
  const auto loss = setup.coprocessor.loss(tape, setup.decoder, setup.ids, setup.plan);
  tape.backward(loss.loss);
  const double backward_gemm_flops = tape.stats().backward_gemm_flops;
  const double structured = loss.loss.item();

  constexpr double step_lr = 1e-4;
  dca::SafeTensorsWriter out;
  out.add_integers("ids", as_int64(setup.ids), {batch, shape.seq_len});
  out.add_integers("points", as_int64(setup.plan.points), {batch, k});
  const double loss_value[] = {structured};
  out.add("loss", dca::TensorView<const double>(loss_value, dca::Shape{1}));
  const auto positions = static_cast<index_t>(loss.per_position.size());
  out.add("per_position", dca::TensorView<const double>(loss.per_position.data(), dca::Shape{positions}));
  std::string decayed;
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const dca::Parameter<float>& p = *parameters[i];
    if (p.has_grad()) out.add("grad." + p.name(), p.grad().view());
    if (optimizer.decays(i)) decayed += (decayed.empty() ? "" : ",") + p.name();
  }
  out.set_metadata("config", shape.name);
  out.set_metadata("n_latents", std::to_string(n_latents));
  out.set_metadata("n_ahead", std::to_string(n_ahead));
  out.set_metadata("loss", number(structured));
  out.set_metadata("lr", number(step_lr));
  out.set_metadata("beta1", number(adamw.beta1));
  out.set_metadata("beta2", number(adamw.beta2));
  out.set_metadata("eps", number(adamw.eps));
  out.set_metadata("weight_decay", number(adamw.weight_decay));
  out.set_metadata("decays", decayed);
  out.set_metadata("train_steps", std::to_string(train_steps));
  out.set_metadata("train_lr", number(train_lr));

  // The library's dense-mask form of the same loss at the same weights (forward only: the
  // gradients stay the structured step's), for the record.
  dca::Tape<float> dense_tape;
  const double dense =
      dca::dense_reference_loss(setup.coprocessor, dense_tape, setup.decoder, setup.ids, setup.plan).loss.item();
  out.set_metadata("dense_loss", number(dense));

  optimizer.step(step_lr);
  dca::write_checkpoint<float>(dir / "coprocessor_after_step.safetensors", parameters, optimizer, checkpoint_metadata);
  optimizer.zero_grad();
  dca::save_hf_decoder(setup.decoder, dir / "decoder");
  out.write(dir / "batch.safetensors");

  const StepFlops model = step_flops(setup.config, setup.plan);
  std::printf("dca export %s: config %s K=%ld B=%ld T=%ld N_L=%ld N_A=%ld, after %d training steps at lr %g\n",
              dir.c_str(), shape.name, static_cast<long>(k), static_cast<long>(batch),
              static_cast<long>(shape.seq_len), static_cast<long>(n_latents), static_cast<long>(n_ahead), train_steps,
              train_lr);
  std::printf("dca loss %.9g (structured), %.9g (dense reference)\n", structured, dense);
  std::printf("FLOP model: %.4f GFLOP per step, backward %.4f GFLOP; tape's backward GEMMs %.4f GFLOP (%+.2f%%)\n",
              model.total * 1e-9, model.backward * 1e-9, backward_gemm_flops * 1e-9,
              100 * (backward_gemm_flops / model.backward - 1));
  return 0;
}

// `--dca_export DIR [--K k] [--B b] [--config small|reproduction] [--train_steps n] [--train_lr x]`.
int export_main(int argc, char** argv) {
  try {
    if (argc < 3) throw dca::UsageError("--dca_export needs a directory");
    const std::filesystem::path dir = argv[2];
    std::string config = "small";
    long k = 0, batch = 0;
    int train_steps = 10;
    double train_lr = 1e-3;
    for (int i = 3; i < argc; i += 2) {
      const std::string_view flag = argv[i];
      if (i + 1 >= argc) throw dca::UsageError("--dca_export: " + std::string(flag) + " needs a value");
      const char* value = argv[i + 1];
      if (flag == "--K") k = std::atol(value);
      else if (flag == "--B") batch = std::atol(value);
      else if (flag == "--config") config = value;
      else if (flag == "--train_steps") train_steps = std::atoi(value);
      else if (flag == "--train_lr") train_lr = std::atof(value);
      else throw dca::UsageError("--dca_export: unknown option " + std::string(flag) +
                                 " (known: --K, --B, --config small|reproduction, --train_steps, --train_lr)");
    }
    if (config != "small" && config != "reproduction")
      throw dca::UsageError("--dca_export: --config is small or reproduction, not " + config);
    const BenchShape shape = config == "small" ? small_shape() : reproduction_shape();
    if (train_steps < 0) throw dca::UsageError("--dca_export: --train_steps must be ≥ 0");
    return export_for_pytorch(dir, shape, k > 0 ? k : shape.default_k, batch > 0 ? batch : shape.default_batch,
                              train_steps, train_lr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_coprocessor: %s\n", e.what());
    return 2;
  }
}

// K = 8, 16, 32, 64 at B = 1, one and two threads.
void small_step_args(benchmark::internal::Benchmark* b) { b->ArgsProduct({{8, 16, 32, 64}, {1}, {1, 2}}); }

// The reproduction profile's own K and B, one and two threads.
void reproduction_step_args(benchmark::internal::Benchmark* b) {
  const BenchShape shape = reproduction_shape();
  for (const int threads : {1, 2}) b->Args({shape.default_k, shape.default_batch, threads});
}

}  // namespace

BENCHMARK(BM_CoprocessorTrainingStep)
    ->ArgNames({"K", "B", "threads"})
    ->Apply(small_step_args)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CoprocessorTrainingStepReproduction)
    ->ArgNames({"K", "B", "threads"})
    ->Apply(reproduction_step_args)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CoprocessorStepProductsAlone)
    ->ArgNames({"K", "B"})
    ->ArgsProduct({{8, 16, 32, 64}, {1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CoprocessorStepStructured)
    ->ArgNames({"K", "B", "threads"})
    ->ArgsProduct({{8, 16, 32, 64}, {1}, {1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_CoprocessorStepDense)
    ->ArgNames({"K", "B", "threads"})
    ->ArgsProduct({{8, 16, 32, 64}, {1}, {1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// `--dca_export` (export_for_pytorch) and `--dca_profile [K [threads [steps]]]` (profile_main) are
// this benchmark's own; everything else is Google Benchmark's.
int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "--dca_export") return export_main(argc, argv);
  if (argc >= 2 && std::string_view(argv[1]) == "--dca_profile") {
    try {
      const index_t k = argc > 2 ? std::stol(argv[2]) : 64;
      const int threads = argc > 3 ? std::stoi(argv[3]) : 1, steps = argc > 4 ? std::stoi(argv[4]) : 10;
      if (k < 1 || threads < 1 || steps < 1) throw dca::UsageError("--dca_profile K threads steps: all must be ≥ 1");
      return profile_main(k, threads, steps);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_coprocessor --dca_profile: %s\n", e.what());
      return 2;
    }
  }
  return dca::bench::run_benchmarks(argc, argv);
}
