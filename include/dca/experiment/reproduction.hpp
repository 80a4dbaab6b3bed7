// dca/experiment/reproduction.hpp — the plan of the paper's reproduction at toy scale: what a
// profile sizes and sweeps, which coprocessors it trains (every variant at every seed, in a fixed
// order), what each run measures, and the files a finished run is kept in so that an interrupted
// reproduction resumes. examples/reproduce executes the plan; experiment/report.hpp writes it up.
//
//   const auto profile = dca::ReproductionProfile::quick();
//   for (const dca::PlannedRun& run : dca::reproduction_plan(profile))
//     results[run.id()] = train_and_measure(run.variant, run.seed);
#pragma once

#include "dca/coproc/config.hpp"
#include "dca/coproc/trainer.hpp"
#include "dca/experiment/arithmetic.hpp"
#include "dca/io/csv.hpp"
#include "dca/nn/config.hpp"
#include "dca/train/trainer.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace dca {

namespace detail {

// A training run's batch of `batch` sequences of `seq_len` tokens, and its schedule's length.
template <class RunConfig>
void size_run(RunConfig& run, index_t batch, index_t seq_len, index_t steps, index_t warmup) {
  run.batch_size = batch;
  run.seq_len = seq_len;
  run.optimization.total_steps = steps;
  run.optimization.warmup_steps = warmup;
}

}  // namespace detail

/// What one profile runs: sizes, budgets, sweeps and seeds.
struct ReproductionProfile {
  std::string name;
  DecoderConfig decoder;                       // the frozen decoder's architecture
  TrainerConfig pretrain;                      // its pretraining on the mixture
  double arithmetic_weight = 0.3;              // sampling weight of the arithmetic text (each text source: 1)
  index_t arithmetic_bytes = 4 << 20;          // generated arithmetic training text
  ArithmeticConfig arithmetic;                 // the task (held-out split built in)
  CoprocessorTrainerConfig coprocessor;        // every coprocessor run (the seed varies)
  index_t n_ahead = 16;                        // N_A of every run but the N_A sweep
  std::vector<index_t> latent_counts;          // experiments 1 and 2
  index_t ablation_latents = 4;                // experiment 3
  std::vector<index_t> lora_ranks;             // experiment 3
  std::vector<index_t> ahead_sweep;            // experiment 3: N_A values besides n_ahead
  std::vector<index_t> delays;                 // experiment 3: asynchronous latents, tokens late
  std::vector<std::uint64_t> seeds;            // every run, ≥ 3
  index_t horizon = 32;                        // experiment 1 scores n = 1..horizon
  index_t eval_batches = 4;                    // held-out text batches, augmented at every point
  index_t problems = 200;                      // held-out arithmetic problems
  index_t timing_context = 64;                 // experiment 4: prompt length of the timings
  index_t timing_repeats = 20;                 // experiment 4: median of this many

  /// Minutes: a demo of every stage, numbers too noisy to read anything into (the README's).
  static ReproductionProfile quick() {
    ReproductionProfile p;
    p.name = "quick";
    p.decoder = DecoderConfig::llama({.vocab = 256, .dim = 64, .layers = 2, .heads = 2, .mlp = 192});
    detail::size_run(p.pretrain, 16, 96, 1000, 100);
    p.arithmetic_bytes = 1 << 20;
    p.arithmetic.operations = {{Operation::add, 1, 2}, {Operation::multiply, 1, 2}};
    detail::size_run(p.coprocessor, 4, 96, 60, 6);
    p.coprocessor.points_per_sequence = 8;
    p.latent_counts = {1, 4, 16};
    p.ablation_latents = 4;
    p.lora_ranks = {4, 16};
    p.ahead_sweep = {4, 8, 32};
    p.delays = {1, 2, 3};
    p.seeds = {1, 2, 3};
    p.horizon = 32;
    p.eval_batches = 2;
    p.problems = 100;
    p.timing_repeats = 10;
    return p;
  }

  /// The profile docs/results.md reports: the pretraining example's decoder size.
  static ReproductionProfile full() {
    ReproductionProfile p = quick();
    p.name = "full";
    p.decoder = DecoderConfig::llama({.vocab = 256, .dim = 128, .layers = 4, .heads = 4, .mlp = 384});
    detail::size_run(p.pretrain, 16, 128, 4800, 100);
    p.arithmetic_bytes = 8 << 20;
    detail::size_run(p.coprocessor, 8, 128, 300, 30);
    p.coprocessor.points_per_sequence = 16;
    p.latent_counts = {1, 2, 4, 8, 16};
    p.eval_batches = 8;
    p.problems = 300;
    p.timing_repeats = 30;
    return p;
  }

  /// A tiny profile for the test suite: every stage in seconds.
  static ReproductionProfile smoke() {
    ReproductionProfile p = quick();
    p.name = "smoke";
    p.decoder = DecoderConfig::llama({.vocab = 256, .dim = 32, .layers = 1, .heads = 2, .mlp = 64});
    detail::size_run(p.pretrain, 4, 64, 20, 2);
    p.arithmetic_bytes = 64 << 10;
    detail::size_run(p.coprocessor, 2, 64, 2, 1);
    p.coprocessor.points_per_sequence = 2;
    p.latent_counts = {1, 2};
    p.ablation_latents = 2;
    p.lora_ranks = {2};
    p.ahead_sweep = {4};
    p.delays = {1};
    p.eval_batches = 1;
    p.problems = 10;
    p.timing_repeats = 2;
    return p;
  }

  /// Every setting that shapes a result, one per line: a later invocation may reuse the runs an
  /// earlier one left in an output directory only when this text is the same.
  std::string fingerprint() const {
    std::ostringstream f;
    const auto& d = decoder;
    const auto list = [](const auto& values) {
      std::string s;
      for (const auto& v : values) s += std::to_string(v) + " ";
      return s;
    };
    const OptimizationConfig& pre = pretrain.optimization;
    const OptimizationConfig& cop = coprocessor.optimization;
    f << "profile " << name << "\ndecoder " << d.architecture << " " << d.hidden_size << " " << d.n_layers << " "
      << d.n_heads << " " << d.n_kv_heads << " " << d.intermediate_size << "\npretrain " << pretrain.batch_size << " "
      << pretrain.seq_len << " " << pre.total_steps << " " << pre.warmup_steps << " " << pre.max_lr << " "
      << pretrain.seed << "\nmixture " << arithmetic_weight << " " << arithmetic_bytes << " "
      << arithmetic.held_out_percent << " " << arithmetic.seed << "\ncoprocessor " << coprocessor.batch_size << " "
      << coprocessor.seq_len << " " << coprocessor.points_per_sequence << " " << cop.total_steps << " " << cop.max_lr
      << " " << n_ahead << "\nsweeps " << list(latent_counts) << "| " << ablation_latents << " | " << list(lora_ranks)
      << "| " << list(ahead_sweep) << "| " << list(delays) << "| " << list(seeds) << "\nevaluation " << horizon << " "
      << eval_batches << " " << problems << "\n";
    for (const auto& op : arithmetic.operations)
      f << "operation " << operation_symbol(op.operation) << " " << op.min_digits << " " << op.max_digits << "\n";
    return f.str();
  }
};

/// One coprocessor to train: a latent count and a configuration.
struct Variant {
  std::string id;     // file-safe, unique
  std::string label;  // for tables
  std::string bar;    // a short label under a bar of the ablation chart
  index_t latents = 4;
  CoprocessorConfig config;
  bool delays = false;  // also score asynchronous latents arriving late
};

/// A variant trained with one seed.
struct PlannedRun {
  Variant variant;
  std::uint64_t seed = 1;

  /// The run's name: its result file is <id>.csv.
  std::string id() const { return variant.id + "-seed" + std::to_string(seed); }
};

/// The default coprocessor at N_L = `latents` (experiments 1 and 2; with delays at the ablation count).
inline Variant default_variant(const ReproductionProfile& p, index_t latents) {
  CoprocessorConfig base;
  base.n_ahead = p.n_ahead;
  return {"nl" + std::to_string(latents), "coprocessor", "default", latents, base, latents == p.ablation_latents};
}

/// Experiment 3 at N_L = ablation_latents, the default first: pause tokens, a randomly initialised
/// coprocessor, LoRA at each rank, the last-layer input, and each N_A of the sweep.
inline std::vector<Variant> ablation_variants(const ReproductionProfile& p) {
  const index_t nl = p.ablation_latents;
  const std::string at = "-nl" + std::to_string(nl);
  Variant base = default_variant(p, nl);
  std::vector<Variant> out;
  const auto variant = [&](const std::string& id, const std::string& label, const std::string& bar) {
    Variant v = base;
    v.id = id + at;
    v.label = label;
    v.bar = bar;
    v.delays = false;
    return v;
  };
  out.push_back(base);
  out.back().label = "coprocessor (default)";
  out.push_back(variant("pause", "pause tokens", "pause"));
  out.back().config.source = LatentSource::pause;
  out.push_back(variant("random-init", "random-init coprocessor", "random init"));
  out.back().config.init_from_decoder = false;
  for (const index_t r : p.lora_ranks) {
    out.push_back(variant("lora" + std::to_string(r), "LoRA rank " + std::to_string(r), "LoRA " + std::to_string(r)));
    out.back().config.lora_rank = r;
  }
  out.push_back(variant("last-layer", "last-layer activations", "last layer"));
  out.back().config.input = CoprocessorInput::last_layer;
  for (const index_t a : p.ahead_sweep) {
    out.push_back(variant("na" + std::to_string(a), "N_A = " + std::to_string(a), "N_A=" + std::to_string(a)));
    out.back().config.n_ahead = a;
  }
  return out;
}

/// Every run of the reproduction, each once, in the order they execute: the default variant at
/// every latent count and seed, then the ablations at every seed (the default ablation only when
/// the latent counts do not already include it).
inline std::vector<PlannedRun> reproduction_plan(const ReproductionProfile& p) {
  std::vector<PlannedRun> plan;
  for (const index_t nl : p.latent_counts)
    for (const auto seed : p.seeds) plan.push_back({default_variant(p, nl), seed});
  const std::vector<Variant> ablations = ablation_variants(p);
  const bool default_run =
      std::find(p.latent_counts.begin(), p.latent_counts.end(), p.ablation_latents) != p.latent_counts.end();
  for (const Variant& v : ablations)
    if (v.id != ablations.front().id || !default_run)
      for (const auto seed : p.seeds) plan.push_back({v, seed});
  return plan;
}

/// What a run measured.
struct RunResult {
  std::vector<double> frozen, augmented;  // held-out loss of the n-th token, n = 1..horizon
  double accuracy = 0;                    // arithmetic, latents inserted at the end of the prompt
  std::map<index_t, double> delayed;      // arithmetic, latents arriving d tokens late
  double train_seconds = 0;
  double eval_seconds = 0;
  index_t steps = 0;

  /// Writes the run's numbers (exactly: they read back bit for bit).
  void save(const std::filesystem::path& path) const {
    CsvWriter csv({"quantity", "index", "value"});
    for (std::size_t n = 0; n < frozen.size(); ++n) {
      csv.row("frozen", n + 1, frozen[n]);
      csv.row("augmented", n + 1, augmented[n]);
    }
    csv.row("accuracy", 0, accuracy);
    for (const auto& [d, a] : delayed) csv.row("accuracy_delayed", d, a);
    csv.row("train_seconds", 0, train_seconds);
    csv.row("eval_seconds", 0, eval_seconds);
    csv.row("steps", 0, steps);
    csv.write(path);
  }

  /// A run `save` wrote, scored up to n = `horizon`; FormatError naming the file when it is not
  /// complete (an interrupted write cannot happen: files are replaced atomically).
  static RunResult load(const std::filesystem::path& path, index_t horizon) {
    const CsvTable table = read_csv(path);
    RunResult r;
    for (const CsvRow& row : table.rows) {
      const std::string& what = row[0];
      const auto index = static_cast<index_t>(parse_csv_number(row[1]));
      const double value = parse_csv_number(row[2]);
      if (what == "frozen") r.frozen.push_back(value);
      else if (what == "augmented") r.augmented.push_back(value);
      else if (what == "accuracy") r.accuracy = value;
      else if (what == "accuracy_delayed") r.delayed[index] = value;
      else if (what == "train_seconds") r.train_seconds = value;
      else if (what == "eval_seconds") r.eval_seconds = value;
      else if (what == "steps") r.steps = static_cast<index_t>(value);
    }
    if (static_cast<index_t>(r.frozen.size()) != horizon || r.augmented.size() != r.frozen.size() || r.steps < 1)
      detail::fail<FormatError>(path.string(), ": not a complete run of ", horizon, " positions (pass --fresh to redo it)");
    return r;
  }
};

/// Experiment 4 at one latent count: one augmentation against decoding N_L tokens.
struct Timing {
  index_t latents = 0;
  double augment_ms = 0, decode_ms = 0;  // one augmentation; decoding N_L tokens
  double augment_flops = 0, decode_flops = 0;
};

/// Everything the report states: the runs grouped by experiment, and the reproduction's own facts.
struct ReproductionResults {
  std::map<index_t, std::vector<RunResult>> by_latents;               // default variant, experiments 1–2
  std::vector<std::pair<Variant, std::vector<RunResult>>> ablations;  // experiment 3, default first
  std::vector<Timing> timings;
  double frozen_accuracy = 0;
  double pretrain_seconds = 0, pretrain_loss = 0;
  index_t pretrain_steps = 0;
  index_t decoder_parameters = 0;
  index_t text_batches = 0;  // held-out English text batches of experiment 1
  double runs_seconds = 0;   // training and evaluating every coprocessor, whenever it ran
  double other_seconds = 0;  // the last invocation's remaining work: data, frozen scores, timings, reports
  double total_seconds() const { return pretrain_seconds + runs_seconds + other_seconds; }

  /// Sorts finished runs (by PlannedRun::id) into the experiments; every run of the plan must be there.
  void collect(const ReproductionProfile& p, const std::map<std::string, RunResult>& done) {
    const auto run = [&](const Variant& v, std::uint64_t seed) { return done.at(PlannedRun{v, seed}.id()); };
    for (const auto& [id, r] : done) runs_seconds += r.train_seconds + r.eval_seconds;
    for (const index_t nl : p.latent_counts)
      for (const auto seed : p.seeds) by_latents[nl].push_back(run(default_variant(p, nl), seed));
    for (const Variant& v : ablation_variants(p)) {
      std::vector<RunResult> runs;
      for (const auto seed : p.seeds) runs.push_back(run(v, seed));
      ablations.push_back({v, runs});
    }
  }
};

}  // namespace dca
