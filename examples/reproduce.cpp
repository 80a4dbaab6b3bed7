// reproduce — the paper's findings at toy scale, from a fresh clone to tables and plots.
//
// Pretrains a byte-level decoder on English text mixed with synthetic arithmetic, trains
// coprocessors through it on that same general mixture (no task-specific training, ≥ 3 seeds
// each), and measures: (1) the n-th token's perplexity change for several latent counts, (2)
// held-out arithmetic accuracy vs. latent count, (3) baselines and ablations at one latent count,
// (4) the compute of an augmentation against decoding as many extra tokens. Writes CSV files, SVG
// plots and a Markdown report; --update-docs puts the report into docs/results.md.
//
//   ./build/examples/reproduce --quick                 # the README demo, a few minutes
//   ./build/examples/reproduce --update-docs           # the full profile (about an hour on 2 cores)
//   ./build/examples/reproduce --help                  # every option
//
// Every finished stage is kept in the output directory (the decoder, each run's results), so an
// interrupted run continues where it stopped; --fresh starts over.
#include <dca/coproc/dispatch.hpp>
#include <dca/coproc/trainer.hpp>
#include <dca/dca.hpp>
#include <dca/experiment/compute.hpp>
#include <dca/experiment/evaluation.hpp>
#include <dca/train/trainer.hpp>

#include "progress.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef DCA_VERSION_STRING
#define DCA_VERSION_STRING "unknown"
#endif

namespace {

using dca::index_t;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// What one profile runs: sizes, budgets, sweeps and seeds.
struct Profile {
  std::string name;
  dca::DecoderConfig decoder;                   // the frozen decoder's architecture
  dca::TrainerConfig pretrain;                  // its pretraining on the mixture
  double arithmetic_weight = 0.3;               // sampling weight of the arithmetic text (each text source: 1)
  index_t arithmetic_bytes = 4 << 20;           // generated arithmetic training text
  dca::ArithmeticConfig arithmetic;             // the task (held-out split built in)
  dca::CoprocessorTrainerConfig coprocessor;    // every coprocessor run (the seed varies)
  index_t n_ahead = 16;                         // N_A of every run but the N_A sweep
  std::vector<index_t> latent_counts;           // experiments 1 and 2
  index_t ablation_latents = 4;                 // experiment 3
  std::vector<index_t> lora_ranks;              // experiment 3
  std::vector<index_t> ahead_sweep;             // experiment 3: N_A values besides n_ahead
  std::vector<index_t> delays;                  // experiment 3: asynchronous latents, tokens late
  std::vector<std::uint64_t> seeds;             // every run, ≥ 3
  index_t horizon = 32;                         // experiment 1 scores n = 1..horizon
  index_t eval_batches = 4;                     // held-out text batches, augmented at every point
  index_t problems = 200;                       // held-out arithmetic problems
  index_t timing_context = 64;                  // experiment 4: prompt length of the timings
  index_t timing_repeats = 20;                  // experiment 4: median of this many
};

dca::ArithmeticConfig task() {
  dca::ArithmeticConfig a;
  a.operations = {{dca::Operation::add, 1, 2}, {dca::Operation::multiply, 1, 2}};
  return a;
}

// Minutes: a demo of every stage, numbers too noisy to read anything into.
Profile quick_profile() {
  Profile p;
  p.name = "quick";
  p.decoder = dca::DecoderConfig::llama({.vocab = 256, .dim = 64, .layers = 2, .heads = 2, .mlp = 192});
  p.pretrain.batch_size = 16;
  p.pretrain.seq_len = 96;
  p.pretrain.optimization.total_steps = 1000;
  p.pretrain.optimization.warmup_steps = 100;
  p.arithmetic_bytes = 1 << 20;
  p.arithmetic = task();
  p.coprocessor.batch_size = 4;
  p.coprocessor.seq_len = 96;
  p.coprocessor.points_per_sequence = 8;
  p.coprocessor.optimization.total_steps = 60;
  p.coprocessor.optimization.warmup_steps = 6;
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

// The profile docs/results.md reports: the pretraining example's decoder size.
Profile full_profile() {
  Profile p = quick_profile();
  p.name = "full";
  p.decoder = dca::DecoderConfig::llama({.vocab = 256, .dim = 128, .layers = 4, .heads = 4, .mlp = 384});
  p.pretrain.batch_size = 16;
  p.pretrain.seq_len = 128;
  p.pretrain.optimization.total_steps = 4800;
  p.pretrain.optimization.warmup_steps = 100;
  p.arithmetic_bytes = 8 << 20;
  p.coprocessor.batch_size = 8;
  p.coprocessor.seq_len = 128;
  p.coprocessor.points_per_sequence = 16;
  p.coprocessor.optimization.total_steps = 300;
  p.coprocessor.optimization.warmup_steps = 30;
  p.latent_counts = {1, 2, 4, 8, 16};
  p.eval_batches = 8;
  p.problems = 300;
  p.timing_repeats = 30;
  return p;
}

// A tiny profile for the test suite: every stage in seconds.
Profile smoke_profile() {
  Profile p = quick_profile();
  p.name = "smoke";
  p.decoder = dca::DecoderConfig::llama({.vocab = 256, .dim = 32, .layers = 1, .heads = 2, .mlp = 64});
  p.pretrain.batch_size = 4;
  p.pretrain.seq_len = 64;
  p.pretrain.optimization.total_steps = 20;
  p.pretrain.optimization.warmup_steps = 2;
  p.arithmetic_bytes = 64 << 10;
  p.coprocessor.batch_size = 2;
  p.coprocessor.seq_len = 64;
  p.coprocessor.points_per_sequence = 2;
  p.coprocessor.optimization.total_steps = 2;
  p.coprocessor.optimization.warmup_steps = 1;
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

// One coprocessor to train: a latent count and a configuration.
struct Variant {
  std::string id;     // file-safe, unique
  std::string label;  // for tables
  std::string bar;    // a short label under a bar of the ablation chart
  index_t latents = 4;
  dca::CoprocessorConfig config;
  bool delays = false;  // also score asynchronous latents arriving late
};

// What a run measured.
struct RunResult {
  std::vector<double> frozen, augmented;  // held-out loss of the n-th token, n = 1..horizon
  double accuracy = 0;                    // arithmetic, latents inserted at the end of the prompt
  std::map<index_t, double> delayed;      // arithmetic, latents arriving d tokens late
  double train_seconds = 0;
  double eval_seconds = 0;
  index_t steps = 0;
};

struct Context {
  Profile profile;
  fs::path out;
  const dca::CorpusMixture* mixture = nullptr;
  std::vector<dca::Batch> text_batches;  // held-out English text
  std::vector<dca::Problem> problems;    // held-out arithmetic
  dca::Decoder<float>* decoder = nullptr;
};

// Every setting that shapes a result, one per line: a later invocation may reuse the stages an
// earlier one left in the output directory only when this text is the same.
std::string fingerprint(const Profile& p) {
  std::ostringstream f;
  const auto& d = p.decoder;
  const auto list = [](const auto& values) {
    std::string s;
    for (const auto& v : values) s += std::to_string(v) + " ";
    return s;
  };
  f << "profile " << p.name << "\ndecoder " << d.architecture << " " << d.hidden_size << " " << d.n_layers << " "
    << d.n_heads << " " << d.n_kv_heads << " " << d.intermediate_size << "\npretrain " << p.pretrain.batch_size << " "
    << p.pretrain.seq_len << " " << p.pretrain.optimization.total_steps << " " << p.pretrain.optimization.warmup_steps << " " << p.pretrain.optimization.max_lr
    << " " << p.pretrain.seed << "\nmixture " << p.arithmetic_weight << " " << p.arithmetic_bytes << " "
    << p.arithmetic.held_out_percent << " " << p.arithmetic.seed << "\ncoprocessor " << p.coprocessor.batch_size << " "
    << p.coprocessor.seq_len << " " << p.coprocessor.points_per_sequence << " " << p.coprocessor.optimization.total_steps << " "
    << p.coprocessor.optimization.max_lr << " " << p.n_ahead << "\nsweeps " << list(p.latent_counts) << "| " << p.ablation_latents
    << " | " << list(p.lora_ranks) << "| " << list(p.ahead_sweep) << "| " << list(p.delays) << "| " << list(p.seeds)
    << "\nevaluation " << p.horizon << " " << p.eval_batches << " " << p.problems << "\n";
  for (const auto& op : p.arithmetic.operations)
    f << "operation " << dca::operation_symbol(op.operation) << " " << op.min_digits << " " << op.max_digits << "\n";
  return f.str();
}

// ---- runs -----------------------------------------------------------------------------------

void save_run(const fs::path& path, const RunResult& r) {
  dca::CsvWriter csv({"quantity", "index", "value"});
  for (std::size_t n = 0; n < r.frozen.size(); ++n) {
    csv.row("frozen", n + 1, r.frozen[n]);
    csv.row("augmented", n + 1, r.augmented[n]);
  }
  csv.row("accuracy", 0, r.accuracy);
  for (const auto& [d, a] : r.delayed) csv.row("accuracy_delayed", d, a);
  csv.row("train_seconds", 0, r.train_seconds);
  csv.row("eval_seconds", 0, r.eval_seconds);
  csv.row("steps", 0, r.steps);
  csv.write(path);
}

RunResult load_run(const fs::path& path, index_t horizon) {
  const dca::CsvTable table = dca::read_csv(path);
  RunResult r;
  for (const dca::CsvRow& row : table.rows) {
    const std::string& what = row[0];
    const auto index = static_cast<index_t>(dca::parse_csv_number(row[1]));
    const double value = dca::parse_csv_number(row[2]);
    if (what == "frozen") r.frozen.push_back(value);
    else if (what == "augmented") r.augmented.push_back(value);
    else if (what == "accuracy") r.accuracy = value;
    else if (what == "accuracy_delayed") r.delayed[index] = value;
    else if (what == "train_seconds") r.train_seconds = value;
    else if (what == "eval_seconds") r.eval_seconds = value;
    else if (what == "steps") r.steps = static_cast<index_t>(value);
  }
  if (static_cast<index_t>(r.frozen.size()) != horizon || r.augmented.size() != r.frozen.size() || r.steps < 1)
    throw dca::FormatError(path.string() + ": not a complete run (pass --fresh to redo it)");
  return r;
}

template <index_t NumLatents>
RunResult train_and_evaluate(const Context& c, const Variant& v, std::uint64_t seed, const std::string& title) {
  dca::Decoder<float>& decoder = *c.decoder;
  dca::CoprocessorConfig config = v.config;
  config.seed = seed;
  dca::Coprocessor<float, NumLatents> coprocessor(decoder, config);
  dca::CoprocessorTrainerConfig run = c.profile.coprocessor;
  run.seed = seed;
  dca::CoprocessorTrainer trainer(decoder, coprocessor, *c.mixture, run);
  RunResult r;
  const auto start = Clock::now();
  double smoothed = 0;
  std::printf("%s\n", title.c_str());
  while (trainer.step_count() < run.optimization.total_steps) {
    const double loss = trainer.step();
    smoothed = trainer.step_count() == 1 ? loss : 0.9 * smoothed + 0.1 * loss;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double rate = static_cast<double>(trainer.step_count()) / elapsed;
    examples::draw_progress(trainer.step_count(), run.optimization.total_steps, smoothed, rate, "steps",
                            static_cast<double>(run.optimization.total_steps - trainer.step_count()) / rate);
  }
  r.train_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  r.steps = trainer.step_count();
  const auto evaluation_start = Clock::now();
  std::printf("\n");
  coprocessor.set_n_ahead(c.profile.horizon);
  const dca::AheadEvaluation table =
      dca::evaluate_ahead(decoder, coprocessor, std::span<const dca::Batch>(c.text_batches), 0, 7);
  r.frozen = table.baseline;
  r.augmented = table.augmented;
  r.accuracy = dca::score_arithmetic(decoder, coprocessor, c.profile.arithmetic, c.problems, {}).accuracy();
  if (v.delays)
    for (const index_t d : c.profile.delays) {
      dca::AugmentationSchedule late;
      late.asynchronous = true;
      late.delay = d;
      r.delayed[d] = dca::score_arithmetic(decoder, coprocessor, c.profile.arithmetic, c.problems, late).accuracy();
    }
  r.eval_seconds = std::chrono::duration<double>(Clock::now() - evaluation_start).count();
  return r;
}

// The counts the profiles use; each is one instantiation of the coprocessor.
template <class F>
decltype(auto) with_latents(index_t latents, F&& f) {
  return dca::dispatch_latents<1, 2, 4, 8, 16>(latents, std::forward<F>(f));
}

// ---- compute (experiment 4) -----------------------------------------------------------------

struct Timing {
  index_t latents = 0;
  double augment_ms = 0, decode_ms = 0;  // one augmentation; decoding N_L tokens
  double augment_flops = 0, decode_flops = 0;
};

// Median wall time of `measure`, which times one repetition itself (setup outside its clock),
// after one unmeasured repetition that grows the tape's arena and wakes the thread pool.
template <class F>
double median_ms(index_t repeats, F&& measure) {
  measure();
  std::vector<double> ms;
  for (index_t i = 0; i < repeats; ++i) ms.push_back(measure());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double since(Clock::time_point start) { return std::chrono::duration<double, std::milli>(Clock::now() - start).count(); }

// After the prompt is in the cache (not timed): the coprocessor's latents and their insertion,
// against decoding N_L greedy tokens one at a time.
template <index_t NumLatents>
Timing time_augmentation(const Context& c, std::span<const index_t> prompt) {
  dca::Decoder<float>& decoder = *c.decoder;
  dca::Coprocessor<float, NumLatents> coprocessor(decoder, {.n_ahead = c.profile.n_ahead});
  dca::KVCache<float> cache(decoder.config(), static_cast<index_t>(prompt.size()) + NumLatents);
  dca::Tape<float> tape;
  dca::NoGradGuard<float> no_grad(tape);
  dca::GenerationConfig greedy;
  greedy.temperature = 0;
  dca::Rng rng(0);  // unused by greedy choice
  const auto next_token = [&](const dca::Var<float>& logits) {
    return dca::sample_token(dca::detail::last_row(logits), greedy, rng);
  };
  const auto prefill = [&] {
    cache.reset();
    tape.reset();
    return next_token(cache.append_tokens(tape, decoder, prompt));
  };
  Timing t;
  t.latents = NumLatents;
  t.augment_ms = median_ms(c.profile.timing_repeats, [&] {
    prefill();
    const auto start = Clock::now();
    const auto z = coprocessor.latents(tape, decoder, cache.prefix(cache.size() - 1), prompt.back());
    cache.insert_latents(tape, decoder, z, cache.size() - 1, coprocessor.config().positions);
    return since(start);
  });
  t.decode_ms = median_ms(c.profile.timing_repeats, [&] {
    index_t token = prefill();
    const auto start = Clock::now();
    for (index_t i = 0; i < NumLatents; ++i) {
      const index_t one[] = {token};
      token = next_token(cache.append_tokens(tape, decoder, one));
    }
    return since(start);
  });
  const index_t context = static_cast<index_t>(prompt.size());
  t.augment_flops = dca::augmentation_flops(decoder.config(), NumLatents, context);
  t.decode_flops = dca::decoding_flops(decoder.config(), NumLatents, context);
  return t;
}

// ---- statistics and report --------------------------------------------------------------------

double ppl_change(double augmented, double frozen) { return 100.0 * (std::exp(augmented - frozen) - 1.0); }

dca::MeanStd over_seeds(const std::vector<RunResult>& runs, const std::function<double(const RunResult&)>& f) {
  std::vector<double> v;
  for (const RunResult& r : runs) v.push_back(f(r));
  return dca::mean_std(v);
}

// Perplexity change (%) of the n-th token, n = i + 1: one run's, and its mean ± std over seeds.
double change_at(const RunResult& r, std::size_t i) { return ppl_change(r.augmented[i], r.frozen[i]); }
dca::MeanStd change_at(const std::vector<RunResult>& runs, std::size_t i) {
  return over_seeds(runs, [i](const RunResult& r) { return change_at(r, i); });
}

// Mean perplexity change over n = 1..last.
double mean_change(const RunResult& r, index_t last) {
  double s = 0;
  for (index_t n = 0; n < last; ++n) s += change_at(r, static_cast<std::size_t>(n));
  return s / static_cast<double>(last);
}

std::string pm(const dca::MeanStd& m, int decimals, const char* unit = "") {
  char buffer[96];
  std::snprintf(buffer, sizeof buffer, "%+.*f ± %.*f%s", decimals, m.mean, decimals, m.stddev, unit);
  return buffer;
}

std::string percent(const dca::MeanStd& m) {
  char buffer[96];
  std::snprintf(buffer, sizeof buffer, "%.1f ± %.1f", 100 * m.mean, 100 * m.stddev);
  return buffer;
}

// "yes" when the mean has the expected sign and lies more than two standard errors from zero,
// "no" when it has the other sign that clearly, "inconclusive" otherwise.
std::string verdict(const dca::MeanStd& m, double expected_sign) {
  const double margin = 2 * m.standard_error();
  if (m.mean * expected_sign > margin) return "yes";
  if (m.mean * expected_sign < -margin) return "no (opposite sign)";
  return "inconclusive (within 2 s.e.)";
}

struct Results {
  std::map<index_t, std::vector<RunResult>> by_latents;          // default variant, experiments 1–2
  std::vector<std::pair<Variant, std::vector<RunResult>>> ablations;  // experiment 3, default first
  std::vector<Timing> timings;
  double frozen_accuracy = 0;
  double pretrain_seconds = 0, pretrain_loss = 0;
  index_t pretrain_steps = 0;
  double runs_seconds = 0;   // training and evaluating every coprocessor, whenever it ran
  double other_seconds = 0;  // the last invocation's remaining work: data, frozen scores, timings, reports
  double total_seconds() const { return pretrain_seconds + runs_seconds + other_seconds; }
};

std::string join(const std::vector<index_t>& v) {
  std::string s;
  for (const index_t x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
  return s;
}

void write_tables_and_plots(const Context& c, const Results& res, const fs::path& plots) {
  const Profile& p = c.profile;
  dca::CsvWriter ahead({"latents", "seed", "n", "frozen_loss", "augmented_loss", "perplexity_change_percent"});
  dca::CsvWriter arithmetic({"latents", "seed", "accuracy"});
  arithmetic.row(0, 0, res.frozen_accuracy);
  std::vector<dca::ChartSeries> curves;
  std::vector<dca::ChartPoint> accuracy_points;
  for (const auto& [latents, runs] : res.by_latents) {
    dca::ChartSeries curve{"N_L = " + std::to_string(latents), {}};
    for (index_t n = 1; n <= p.horizon; ++n) {
      const auto i = static_cast<std::size_t>(n - 1);
      const dca::MeanStd change = change_at(runs, i);
      curve.points.push_back({static_cast<double>(n), change.mean, change.stddev});
      for (std::size_t s = 0; s < runs.size(); ++s)
        ahead.row(latents, p.seeds[s], n, runs[s].frozen[i], runs[s].augmented[i], change_at(runs[s], i));
    }
    curves.push_back(curve);
    for (std::size_t s = 0; s < runs.size(); ++s) arithmetic.row(latents, p.seeds[s], runs[s].accuracy);
    const auto acc = over_seeds(runs, [](const RunResult& r) { return r.accuracy; });
    accuracy_points.push_back({static_cast<double>(latents), 100 * acc.mean, 100 * acc.stddev});
  }
  ahead.write(c.out / "table1_ahead_loss.csv");
  arithmetic.write(c.out / "table2_arithmetic.csv");

  dca::CsvWriter ablation({"variant", "latents", "seed", "n1_perplexity_change_percent", "mean_perplexity_change_percent", "accuracy"});
  std::vector<dca::ChartBar> bars;
  for (const auto& [v, runs] : res.ablations) {
    for (std::size_t s = 0; s < runs.size(); ++s)
      ablation.row(v.label, v.latents, p.seeds[s], change_at(runs[s], 0),
                   mean_change(runs[s], p.n_ahead), runs[s].accuracy);
    const auto m = over_seeds(runs, [&](const RunResult& r) { return mean_change(r, p.n_ahead); });
    bars.push_back({v.bar, m.mean, m.stddev});
  }
  ablation.write(c.out / "table3_ablations.csv");
  dca::CsvWriter delayed({"delay_tokens", "seed", "accuracy"});
  for (const auto& [v, runs] : res.ablations)
    if (v.delays)
      for (const index_t d : p.delays)
        for (std::size_t s = 0; s < runs.size(); ++s) delayed.row(d, p.seeds[s], runs[s].delayed.at(d));
  delayed.write(c.out / "table3_asynchronous.csv");
  dca::CsvWriter compute({"latents", "augmentation_ms", "decoding_ms", "augmentation_flops", "decoding_flops"});
  for (const Timing& t : res.timings) compute.row(t.latents, t.augment_ms, t.decode_ms, t.augment_flops, t.decode_flops);
  compute.write(c.out / "table4_compute.csv");

  fs::create_directories(plots);
  dca::LineChartConfig line{.title = "Perplexity change of the n-th token after the latents (mean ± std over seeds)",
                            .x_label = "n (tokens after the insertion point)",
                            .y_label = "perplexity change vs frozen decoder (%)",
                            .log2_x = true,
                            .reference_lines = {{0.0, "frozen"}}};
  dca::write_line_chart(plots / "ahead_loss.svg", line, curves);
  dca::LineChartConfig acc{.title = "Held-out arithmetic exact match vs latent count (mean ± std over seeds)",
                           .x_label = "N_L (latents)",
                           .y_label = "exact match (%)",
                           .log2_x = true,
                           .reference_lines = {{100 * res.frozen_accuracy, "frozen"}}};
  dca::write_line_chart(plots / "arithmetic.svg", acc, std::vector<dca::ChartSeries>{{"augmented", accuracy_points}});
  dca::BarChartConfig bar{.width = std::max(640.0, 90.0 * static_cast<double>(bars.size())),
                          .title = "Mean perplexity change, n = 1.." + std::to_string(p.n_ahead) + ", N_L = " +
                                   std::to_string(p.ablation_latents) + " (mean ± std over seeds)",
                          .x_label = "variant",
                          .y_label = "perplexity change vs frozen (%)",
                          .reference_lines = {}};
  dca::write_bar_chart(plots / "ablations.svg", bar, bars);
}

std::string report(const Context& c, const Results& res, const std::string& command, const std::string& plot_dir) {
  const Profile& p = c.profile;
  std::ostringstream md;
  char line[2048];
  md << "## Reproducing the paper at toy scale\n\n";
  md << "Generated by `examples/reproduce` (profile `" << p.name << "`, dca " << DCA_VERSION_STRING
     << ") on " << std::thread::hardware_concurrency() << " hardware threads; do not edit by hand. Compute: "
     << examples::format_duration(res.total_seconds()) << " in all — pretraining "
     << examples::format_duration(res.pretrain_seconds) << ", " << (res.by_latents.size() + res.ablations.size() - 1) * p.seeds.size()
     << " coprocessor runs " << examples::format_duration(res.runs_seconds) << " (training and evaluation), the rest "
     << examples::format_duration(res.other_seconds) << ". Command:\n\n```sh\n" << command << "\n```\n\n";
  md << "CSV files with every seed's numbers are written next to the report (`table*.csv`).\n\n";
  std::snprintf(line, sizeof line,
                "**Setup.** A byte-level Llama-style decoder (d=%ld, %ld layers, %ld heads, %ld parameters) pretrained "
                "for %ld steps of %ld×%ld bytes (%s; held-out loss %.3f nats/byte on the mixture) on English text "
                "(Debian's `fortunes` and `dict-gcide`, weight 1 each) mixed with arithmetic problems written as text "
                "(weight %.2f; additions and products of 1–2-digit numbers, `37*86=3182`; 10%% of all "
                "problems held out, never in training text). Frozen decoder's held-out exact match: **%.1f%%** "
                "(%ld problems, greedy, 4 solved examples before each prompt). Each coprocessor is a full copy of "
                "the decoder trained %ld steps (batch %ld × %ld bytes, K = %ld points per sequence, N_A = %ld, "
                "residual latents, the library's defaults) on the same mixture, seeds %s.\n\n",
                static_cast<long>(p.decoder.hidden_size), static_cast<long>(p.decoder.n_layers),
                static_cast<long>(p.decoder.n_heads), static_cast<long>(c.decoder->parameter_count()),
                static_cast<long>(res.pretrain_steps), static_cast<long>(p.pretrain.batch_size),
                static_cast<long>(p.pretrain.seq_len), examples::format_duration(res.pretrain_seconds).c_str(),
                res.pretrain_loss, p.arithmetic_weight, 100 * res.frozen_accuracy, static_cast<long>(p.problems),
                static_cast<long>(p.coprocessor.optimization.total_steps), static_cast<long>(p.coprocessor.batch_size),
                static_cast<long>(p.coprocessor.seq_len), static_cast<long>(p.coprocessor.points_per_sequence),
                static_cast<long>(p.n_ahead), [&] {
                  std::vector<index_t> s(p.seeds.begin(), p.seeds.end());
                  return join(s);
                }().c_str());
  md << line;

  // Experiment 1.
  const std::vector<index_t> shown = [&] {
    std::vector<index_t> n;
    for (index_t x = 1; x <= p.horizon; x *= 2) n.push_back(x);
    return n;
  }();
  md << "### 1. Perplexity of the n-th token after the latents (paper, Table 1)\n\n";
  md << "Held-out English text (" << c.text_batches.size() << " batches), augmented at every position; change of "
     << "the n-th token's perplexity against the frozen decoder on the same tokens, mean ± std over seeds (%). "
     << "Negative is better. Coprocessors were trained with N_A = " << p.n_ahead << "; n beyond it tests persistence.\n\n";
  md << "| N_L |";
  for (const index_t n : shown) md << " n=" << n << " |";
  md << "\n| --- |";
  for (std::size_t i = 0; i < shown.size(); ++i) md << " --- |";
  md << "\n";
  for (const auto& [latents, runs] : res.by_latents) {
    md << "| " << latents << " |";
    for (const index_t n : shown) {
      const auto i = static_cast<std::size_t>(n - 1);
      md << " " << pm(change_at(runs, i), 2) << " |";
    }
    md << "\n";
  }
  md << "| paper (Gemma-2 2B, 8/16/32/64 latents) | −1.53 / −2.48 / −3.28 / −3.94 |";
  for (std::size_t i = 1; i + 1 < shown.size(); ++i) md << " |";
  md << " −0.55 … −1.20 |\n\n";
  md << "![perplexity change vs n](" << plot_dir << "/ahead_loss.svg)\n\n";

  // Experiment 2.
  md << "### 2. Held-out arithmetic accuracy vs latent count (paper, Table 2, GSM8K column)\n\n";
  md << "Latents inserted once, at the end of the prompt; exact match, mean ± std over seeds (%).\n\n";
  md << "| N_L | exact match (%) | change (points) |\n| --- | --- | --- |\n";
  std::snprintf(line, sizeof line, "| frozen | %.1f | |\n", 100 * res.frozen_accuracy);
  md << line;
  for (const auto& [latents, runs] : res.by_latents) {
    const auto acc = over_seeds(runs, [](const RunResult& r) { return r.accuracy; });
    const auto gain = over_seeds(runs, [&](const RunResult& r) { return 100 * (r.accuracy - res.frozen_accuracy); });
    md << "| " << latents << " | " << percent(acc) << " | " << pm(gain, 1) << " |\n";
  }
  md << "| paper (4/8/16/32/64 latents) | 21.38 → 22.67 / 23.12 / 24.72 / 26.76 / 31.43 | +1.3 … +10.1 |\n\n";
  md << "![accuracy vs latents](" << plot_dir << "/arithmetic.svg)\n\n";

  // Experiment 3.
  md << "### 3. Baselines and ablations at N_L = " << p.ablation_latents
     << " (paper, Tables 3, 5, 6, 8 and the last-layer ablation)\n\n";
  md << "| variant | n=1 perplexity change (%) | mean change n=1.." << p.n_ahead << " (%) | exact match (%) |\n";
  md << "| --- | --- | --- | --- |\n";
  for (const auto& [v, runs] : res.ablations) {
    md << "| " << v.label << " | " << pm(change_at(runs, 0), 2)
       << " | " << pm(over_seeds(runs, [&](const RunResult& r) { return mean_change(r, p.n_ahead); }), 2) << " | "
       << percent(over_seeds(runs, [](const RunResult& r) { return r.accuracy; })) << " |\n";
  }
  md << "\nThe last-layer variant recomputes the decoder's activations over the prompt at inference (a cache keeps "
        "only keys and values). Asynchronous latents (default variant, arriving d tokens late):\n\n";
  md << "| delay | exact match (%) |\n| --- | --- |\n";
  for (const auto& [v, runs] : res.ablations)
    if (v.delays) {
      md << "| 0 (synchronous) | " << percent(over_seeds(runs, [](const RunResult& r) { return r.accuracy; })) << " |\n";
      for (const index_t d : p.delays)
        md << "| " << d << " | " << percent(over_seeds(runs, [&](const RunResult& r) { return r.delayed.at(d); })) << " |\n";
    }
  md << "\n![ablations](" << plot_dir << "/ablations.svg)\n\n";

  // Experiment 4.
  md << "### 4. Compute: one augmentation vs decoding N_L extra tokens\n\n";
  md << "After a " << p.timing_context << "-token prompt, median of " << p.timing_repeats
     << " (ms, this machine, one process); FLOPs from `dca/experiment/compute.hpp` (matrix products).\n\n";
  md << "| N_L | augmentation (ms) | decoding N_L tokens (ms) | augmentation MFLOP | decoding MFLOP |\n";
  md << "| --- | --- | --- | --- | --- |\n";
  for (const Timing& t : res.timings) {
    std::snprintf(line, sizeof line, "| %ld | %.3f | %.3f | %.2f | %.2f |\n", static_cast<long>(t.latents), t.augment_ms,
                  t.decode_ms, t.augment_flops / 1e6, t.decode_flops / 1e6);
    md << line;
  }
  md << "\nTraining: ";
  std::snprintf(line, sizeof line, "a pretraining step took %.3f s (%.2f GFLOP); ",
                res.pretrain_seconds / static_cast<double>(std::max<index_t>(res.pretrain_steps, 1)),
                dca::pretraining_step_flops(p.decoder, p.pretrain.batch_size, p.pretrain.seq_len) / 1e9);
  md << line << "a coprocessor step took";
  for (const auto& [latents, runs] : res.by_latents) {
    const auto s = over_seeds(runs, [](const RunResult& r) { return r.train_seconds / static_cast<double>(r.steps); });
    std::snprintf(line, sizeof line, " %.3f s (%.2f GFLOP) at N_L = %ld;", s.mean,
                  dca::coprocessor_step_flops(p.decoder, p.coprocessor.batch_size, p.coprocessor.seq_len,
                                              p.coprocessor.points_per_sequence, latents, p.n_ahead) / 1e9,
                  static_cast<long>(latents));
    md << line;
  }
  md << " the paper reports no compute figures.\n\n";

  // Side by side.
  md << "### Against the paper\n\n";
  md << "A finding is marked reproduced when the mean over seeds has the paper's sign and lies more than two "
        "standard errors from zero.\n\n| finding | paper | here | reproduced |\n| --- | --- | --- | --- |\n";
  const index_t most = res.by_latents.rbegin()->first;
  const auto& most_runs = res.by_latents.rbegin()->second;
  const auto n1 = change_at(most_runs, 0);
  const auto last = change_at(most_runs, static_cast<std::size_t>(p.horizon - 1));
  const auto acc_gain = over_seeds(most_runs, [&](const RunResult& r) { return 100 * (r.accuracy - res.frozen_accuracy); });
  md << "| perplexity at n=1 falls (N_L = " << most << ") | −3.28 % (32 latents) | " << pm(n1, 2, " %") << " | "
     << verdict(n1, -1) << " |\n";
  md << "| the gain persists at n=" << p.horizon << " | −0.55 … −1.20 % | " << pm(last, 2, " %") << " | "
     << verdict(last, -1) << " |\n";
  md << "| reasoning accuracy rises (N_L = " << most << ") | +5.4 points (32 latents) | " << pm(acc_gain, 1, " points")
     << " | " << verdict(acc_gain, 1) << " |\n";
  const auto& default_runs = res.ablations.front().second;
  const std::map<std::string, std::string> paper_worse = {
      {"pause", "PPL 11.63 vs 10.60 (32 latents)"},          {"random-init", "GSM8K 25.78 vs 26.76"},
      {"lora", "GSM8K 24.03 / 23.35 (LoRA-128 / 64) vs 26.76"}, {"last-layer", "PPL 10.81 vs 10.60"}};
  for (const auto& [v, runs] : res.ablations)
    for (const auto& [prefix, paper] : paper_worse) {
      if (v.id.rfind(prefix, 0) != 0) continue;
      std::vector<double> d;  // paired by seed: the variant's mean perplexity change minus the default's
      for (std::size_t s = 0; s < runs.size(); ++s) d.push_back(mean_change(runs[s], p.n_ahead) - mean_change(default_runs[s], p.n_ahead));
      const auto worse = dca::mean_std(d);
      md << "| " << v.label << " worse than the full coprocessor (mean perplexity change, paired by seed) | " << paper
         << " | " << pm(worse, 2, " points") << " | " << verdict(worse, 1) << " |\n";
    }
  for (const auto& [v, runs] : res.ablations)
    if (v.delays)
      for (const index_t d : p.delays) {
        const auto gain = over_seeds(runs, [&](const RunResult& r) { return 100 * (r.delayed.at(d) - res.frozen_accuracy); });
        md << "| latents arriving " << d << " token" << (d == 1 ? "" : "s") << " late still help (accuracy vs frozen) | "
           << (d == 1 ? "27.2" : d == 2 ? "27.1" : d == 3 ? "26.9" : "—") << " vs 21.38 | " << pm(gain, 1, " points") << " | "
           << verdict(gain, 1) << " |\n";
      }
  md << "\nWhere a row says inconclusive or no, this toy scale does not reproduce the paper's finding. The "
        "design choices behind the defaults are studied in docs/coprocessor.md.\n";
  return md.str();
}

// Replaces the text between the reproduction markers of `path` (appending them if absent).
void update_docs(const fs::path& path, const std::string& section) {
  const std::string begin = "<!-- reproduce:begin -->", end = "<!-- reproduce:end -->";
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string doc = text.str();
  const std::size_t b = doc.find(begin), e = doc.find(end);
  const std::string block = begin + "\n" + section + end;
  if (b != std::string::npos && e != std::string::npos && e > b)
    doc.replace(b, e + end.size() - b, block);
  else
    doc += "\n" + block + "\n";
  dca::write_text_atomically(path, doc);
}

// ---- main -------------------------------------------------------------------------------------

dca::Decoder<float> pretrained_decoder(const Context& c, Results& res, bool fresh) {
  const fs::path dir = c.out / "decoder", info = c.out / "decoder" / "pretraining.csv";
  if (!fresh && fs::exists(info)) {
    const dca::CsvTable t = dca::read_csv(info);
    res.pretrain_steps = static_cast<index_t>(dca::parse_csv_number(t.rows.at(0).at(0)));
    res.pretrain_seconds = dca::parse_csv_number(t.rows.at(0).at(1));
    res.pretrain_loss = dca::parse_csv_number(t.rows.at(0).at(2));
    std::printf("decoder: %s (pretrained earlier)\n", dir.c_str());
    return dca::load_hf_decoder<float>(dir);
  }
  const Profile& p = c.profile;
  dca::Decoder<float> model(p.decoder, p.pretrain.seed);
  dca::Trainer<float> trainer(model, *c.mixture, p.pretrain);
  std::printf("pretraining the decoder (%ld parameters) on the mixture\n", static_cast<long>(model.parameter_count()));
  const auto start = Clock::now();
  double smoothed = 0;
  while (trainer.step_count() < p.pretrain.optimization.total_steps) {
    const double loss = trainer.step();
    smoothed = trainer.step_count() == 1 ? loss : 0.95 * smoothed + 0.05 * loss;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double rate = static_cast<double>(trainer.step_count() * p.pretrain.batch_size * p.pretrain.seq_len) / elapsed;
    if (trainer.step_count() % 10 == 0 || trainer.step_count() == p.pretrain.optimization.total_steps)
      examples::draw_progress(trainer.step_count(), p.pretrain.optimization.total_steps, smoothed, rate, "tok",
                              static_cast<double>((p.pretrain.optimization.total_steps - trainer.step_count()) * p.pretrain.batch_size *
                                                  p.pretrain.seq_len) / rate);
  }
  res.pretrain_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  res.pretrain_steps = trainer.step_count();
  res.pretrain_loss = trainer.validation_loss(20);
  std::printf("\nheld-out loss %.4f nats/byte\n", res.pretrain_loss);
  dca::save_hf_decoder(model, dir);
  dca::CsvWriter csv({"steps", "seconds", "validation_loss"});
  csv.row(res.pretrain_steps, res.pretrain_seconds, res.pretrain_loss);
  csv.write(info);
  return model;
}

std::vector<Variant> ablation_variants(const Profile& p) {
  const index_t nl = p.ablation_latents;
  dca::CoprocessorConfig base;
  base.n_ahead = p.n_ahead;
  std::vector<Variant> out;
  out.push_back({"nl" + std::to_string(nl), "coprocessor (default)", "default", nl, base, true});
  Variant pause{"pause-nl" + std::to_string(nl), "pause tokens", "pause", nl, base, false};
  pause.config.source = dca::LatentSource::pause;
  out.push_back(pause);
  Variant random{"random-init-nl" + std::to_string(nl), "random-init coprocessor", "random init", nl, base, false};
  random.config.init_from_decoder = false;
  out.push_back(random);
  for (const index_t r : p.lora_ranks) {
    Variant lora{"lora" + std::to_string(r) + "-nl" + std::to_string(nl), "LoRA rank " + std::to_string(r),
                 "LoRA " + std::to_string(r), nl, base, false};
    lora.config.lora_rank = r;
    out.push_back(lora);
  }
  Variant last{"last-layer-nl" + std::to_string(nl), "last-layer activations", "last layer", nl, base, false};
  last.config.input = dca::CoprocessorInput::last_layer;
  out.push_back(last);
  for (const index_t a : p.ahead_sweep) {
    Variant ahead{"na" + std::to_string(a) + "-nl" + std::to_string(nl), "N_A = " + std::to_string(a),
                  "N_A=" + std::to_string(a), nl, base, false};
    ahead.config.n_ahead = a;
    out.push_back(ahead);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Reproduce the paper's findings at toy scale: tables, plots and docs/results.md"};
  bool quick = false, smoke = false, fresh = false;
  std::string out_dir, docs = "docs/results.md", fortunes_dir = "/usr/share/games/fortunes",
                       dictionary = "/usr/share/dictd/gcide.dict.dz";
  bool update = false;
  int threads = 2;
  app.add_flag("--quick", quick, "the quick profile (a few minutes; the README demo)");
  app.add_flag("--smoke", smoke, "a seconds-long profile for the test suite");
  app.add_option("--out", out_dir, "output directory (default runs/reproduce-<profile>)");
  app.add_flag("--fresh", fresh, "ignore the results of an earlier run in the output directory");
  app.add_flag("--update-docs", update, "rewrite the reproduction section of --docs and copy the plots next to it");
  app.add_option("--docs", docs, "the results page --update-docs rewrites")->capture_default_str();
  app.add_option("--threads", threads, "threads")->capture_default_str();
  app.add_option("--fortunes", fortunes_dir, "fortune files (English text)")->capture_default_str();
  app.add_option("--dictionary", dictionary, "gzip dictionary (English text)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    if (quick && smoke) throw dca::UsageError("--quick and --smoke are different profiles; pass one");
    const auto wall = Clock::now();
    double fresh_work = 0;  // seconds of this invocation spent pretraining or on runs (counted separately)
    dca::set_num_threads(threads);
    std::printf("gemm: %s\n", dca::gemm_backend_summary().c_str());
    Context c;
    c.profile = smoke ? smoke_profile() : quick ? quick_profile() : full_profile();
    const Profile& p = c.profile;
    c.out = out_dir.empty() ? fs::path("runs") / ("reproduce-" + p.name) : fs::path(out_dir);
    fs::create_directories(c.out / "runs");
    const fs::path settings = c.out / "profile.txt";
    if (!fresh && fs::exists(settings)) {
      std::ifstream in(settings);
      std::stringstream earlier;
      earlier << in.rdbuf();
      if (earlier.str() != fingerprint(p))
        throw dca::UsageError(c.out.string() + " holds results of other settings (" + settings.string() +
                              "); pass --fresh to start over or --out for another directory");
    }
    dca::write_text_atomically(settings, fingerprint(p));
    std::string command = "./build/examples/reproduce";
    if (const char* wait = std::getenv("OMP_WAIT_POLICY")) command = "OMP_WAIT_POLICY=" + std::string(wait) + " " + command;
    for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];

    dca::CorpusMixture text, mixture;
    for (auto source : {dca::TextSource::from_directory(fortunes_dir, dca::skip_suffixes({".dat", ".u8"})),
                        dca::TextSource::from_gzip(dictionary)}) {
      text.add(source);
      mixture.add(std::move(source));
    }
    mixture.add(dca::arithmetic_training_source(p.arithmetic, p.arithmetic_bytes), p.arithmetic_weight);
    c.mixture = &mixture;
    c.text_batches = text.validation_batches(p.coprocessor.batch_size, p.coprocessor.seq_len, p.eval_batches);
    c.problems = dca::held_out_problems(p.arithmetic, p.problems);
    std::printf("profile %s: output in %s\n", p.name.c_str(), c.out.c_str());

    Results res;
    const auto decoder_start = Clock::now();
    const bool pretrain_now = fresh || !fs::exists(c.out / "decoder" / "pretraining.csv");
    dca::Decoder<float> decoder = pretrained_decoder(c, res, fresh);
    if (pretrain_now) fresh_work += std::chrono::duration<double>(Clock::now() - decoder_start).count();
    decoder.freeze();
    c.decoder = &decoder;
    res.frozen_accuracy = dca::score_arithmetic(decoder, p.arithmetic, c.problems).accuracy();
    std::printf("frozen decoder: %.1f%% exact match on %ld held-out problems\n", 100 * res.frozen_accuracy,
                static_cast<long>(c.problems.size()));

    // Every run once, in a fixed order; a finished run's results are read back instead of retrained.
    std::vector<std::pair<Variant, std::uint64_t>> plan;
    dca::CoprocessorConfig base;
    base.n_ahead = p.n_ahead;
    for (const index_t nl : p.latent_counts)
      for (const auto seed : p.seeds) plan.push_back({{"nl" + std::to_string(nl), "coprocessor", "default", nl, base, nl == p.ablation_latents}, seed});
    const std::vector<Variant> ablations = ablation_variants(p);
    for (const Variant& v : ablations)
      if (v.id != ablations.front().id || std::find(p.latent_counts.begin(), p.latent_counts.end(), v.latents) == p.latent_counts.end())
        for (const auto seed : p.seeds) plan.push_back({v, seed});
    std::map<std::string, RunResult> done;
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const auto& [v, seed] = plan[i];
      const std::string id = v.id + "-seed" + std::to_string(seed);
      const fs::path file = c.out / "runs" / (id + ".csv");
      if (!fresh && fs::exists(file)) {
        done[id] = load_run(file, p.horizon);
        continue;
      }
      char title[160];
      std::snprintf(title, sizeof title, "run %zu/%zu: %s, N_L = %ld, seed %llu", i + 1, plan.size(), v.label.c_str(),
                    static_cast<long>(v.latents), static_cast<unsigned long long>(seed));
      done[id] =
          with_latents(v.latents, [&](auto n) { return train_and_evaluate<decltype(n)::value>(c, v, seed, title); });
      save_run(file, done[id]);
      fresh_work += done[id].train_seconds + done[id].eval_seconds;
    }
    for (const auto& [id, r] : done) res.runs_seconds += r.train_seconds + r.eval_seconds;
    for (const index_t nl : p.latent_counts)
      for (const auto seed : p.seeds) res.by_latents[nl].push_back(done.at("nl" + std::to_string(nl) + "-seed" + std::to_string(seed)));
    for (const Variant& v : ablations) {
      std::vector<RunResult> runs;
      for (const auto seed : p.seeds) runs.push_back(done.at(v.id + "-seed" + std::to_string(seed)));
      res.ablations.push_back({v, runs});
    }

    std::printf("timing one augmentation against decoding N_L tokens\n");
    const std::vector<index_t> prompt(c.text_batches.front().inputs.begin(),
                                      c.text_batches.front().inputs.begin() + std::min(p.timing_context, p.coprocessor.seq_len));
    for (const index_t nl : p.latent_counts)
      res.timings.push_back(with_latents(nl, [&](auto n) { return time_augmentation<decltype(n)::value>(c, prompt); }));
    res.other_seconds = std::chrono::duration<double>(Clock::now() - wall).count() - fresh_work;

    write_tables_and_plots(c, res, c.out / "plots");
    const std::string md = report(c, res, command, "plots");
    dca::write_text_atomically(c.out / "results.md", md);
    if (update) {
      const fs::path plots = fs::path(docs).parent_path() / "results";
      write_tables_and_plots(c, res, plots);
      update_docs(docs, report(c, res, command, "results"));
      std::printf("updated %s and %s\n", docs.c_str(), plots.c_str());
    }

    std::printf("\nperplexity change of the n-th token vs the frozen decoder (%%, mean ± std over %zu seeds):\n",
                p.seeds.size());
    std::printf("%5s %16s %16s %16s %18s\n", "N_L", "n=1", "n=4", "n=16", "exact match (%)");
    for (const auto& [latents, runs] : res.by_latents) {
      std::printf("%5ld", static_cast<long>(latents));
      for (const std::size_t i : {std::size_t{0}, std::size_t{3}, std::size_t{15}})
        std::printf(" %16s", pm(change_at(runs, i), 2).c_str());
      std::printf(" %18s\n", percent(over_seeds(runs, [](const RunResult& r) { return r.accuracy; })).c_str());
    }
    std::printf("%5s %16s %16s %16s %18.1f\n", "0", "", "", "", 100 * res.frozen_accuracy);
    std::printf("\nreport: %s (tables: %s/table*.csv, plots: %s/plots) in %s\n", (c.out / "results.md").c_str(),
                c.out.c_str(), c.out.c_str(), examples::format_duration(res.total_seconds()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nreproduce: %s\n", e.what());
    return 1;
  }
  return 0;
}
