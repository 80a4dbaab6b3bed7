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
// The plan (profiles, variants, seeds) is dca/experiment/reproduction.hpp and the write-up
// dca/experiment/report.hpp; this program runs the plan. Every finished stage is kept in the
// output directory (the decoder, each run's results), so an interrupted run continues where it
// stopped; --fresh starts over.
#include <dca/dca.hpp>
#include <dca/experiment/report.hpp>
#include <dca/experiment/reproduction.hpp>

#include "progress.hpp"
#include "run_control.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#ifndef DCA_VERSION_STRING
#define DCA_VERSION_STRING "unknown"
#endif

namespace {

using dca::index_t;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Every run's coprocessor takes its latent count at run time: one instantiation for all of them.
using RunCoprocessor = dca::Coprocessor<float, dca::dynamic_latents>;

// What every run reads: the profile, the data and the frozen decoder.
struct Context {
  dca::ReproductionProfile profile;
  fs::path out;
  const dca::CorpusMixture* mixture = nullptr;
  std::vector<dca::Batch> text_batches;  // held-out English text
  std::vector<dca::Problem> problems;    // held-out arithmetic
  dca::Decoder<float>* decoder = nullptr;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// ---- runs (experiments 1-3) ----------------------------------------------------------------

dca::RunResult train_and_evaluate(const Context& c, const dca::PlannedRun& planned, const std::string& title) {
  dca::Decoder<float>& decoder = *c.decoder;
  dca::CoprocessorConfig config = planned.variant.config;
  config.n_latents = planned.variant.latents;
  config.seed = planned.seed;
  RunCoprocessor coprocessor(decoder, config);
  dca::CoprocessorTrainerConfig run = c.profile.coprocessor;
  run.seed = planned.seed;
  dca::CoprocessorTrainer trainer(decoder, coprocessor, *c.mixture, run);
  const index_t total = run.optimization.total_steps;
  dca::RunResult r;
  const auto start = Clock::now();
  double smoothed = 0;
  std::printf("%s\n", title.c_str());
  while (trainer.step_count() < total) {
    const double loss = trainer.step();
    smoothed = trainer.step_count() == 1 ? loss : 0.9 * smoothed + 0.1 * loss;
    const double rate = static_cast<double>(trainer.step_count()) / seconds_since(start);
    examples::draw_progress(trainer.step_count(), total, smoothed, rate, "steps",
                            static_cast<double>(total - trainer.step_count()) / rate);
  }
  r.train_seconds = seconds_since(start);
  r.steps = trainer.step_count();
  const auto evaluation_start = Clock::now();
  std::printf("\n");
  coprocessor.set_n_ahead(c.profile.horizon);
  const dca::AheadEvaluation table =
      dca::evaluate_ahead(decoder, coprocessor, std::span<const dca::Batch>(c.text_batches), 0, 7);
  r.frozen = table.baseline;
  r.augmented = table.augmented;
  r.accuracy = dca::score_arithmetic(decoder, coprocessor, c.profile.arithmetic, c.problems, {}).accuracy();
  if (planned.variant.delays)
    for (const index_t d : c.profile.delays) {
      dca::AugmentationSchedule late;
      late.asynchronous = true;
      late.delay = d;
      r.delayed[d] = dca::score_arithmetic(decoder, coprocessor, c.profile.arithmetic, c.problems, late).accuracy();
    }
  r.eval_seconds = seconds_since(evaluation_start);
  return r;
}

// ---- compute (experiment 4) -----------------------------------------------------------------

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

// After the prompt is in the cache (not timed): the coprocessor's latents and their insertion,
// against decoding N_L greedy tokens one at a time.
dca::Timing time_augmentation(const Context& c, std::span<const index_t> prompt, index_t n_latents) {
  dca::Decoder<float>& decoder = *c.decoder;
  RunCoprocessor coprocessor(decoder, {.n_latents = n_latents, .n_ahead = c.profile.n_ahead});
  dca::KVCache<float> cache(decoder.config(), static_cast<index_t>(prompt.size()) + n_latents);
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
  const auto milliseconds_since = [](Clock::time_point start) { return 1e3 * seconds_since(start); };
  dca::Timing t;
  t.latents = n_latents;
  t.augment_ms = median_ms(c.profile.timing_repeats, [&] {
    prefill();
    const auto start = Clock::now();
    const auto z = coprocessor.latents(tape, decoder, cache.prefix(cache.size() - 1), prompt.back());
    cache.insert_latents(tape, decoder, z, cache.size() - 1, coprocessor.config().positions);
    return milliseconds_since(start);
  });
  t.decode_ms = median_ms(c.profile.timing_repeats, [&] {
    index_t token = prefill();
    const auto start = Clock::now();
    for (index_t i = 0; i < n_latents; ++i) {
      const index_t one[] = {token};
      token = next_token(cache.append_tokens(tape, decoder, one));
    }
    return milliseconds_since(start);
  });
  const index_t context = static_cast<index_t>(prompt.size());
  t.augment_flops = dca::augmentation_flops(decoder.config(), n_latents, context);
  t.decode_flops = dca::decoding_flops(decoder.config(), n_latents, context);
  return t;
}

// ---- the decoder --------------------------------------------------------------------------

dca::Decoder<float> pretrained_decoder(const Context& c, dca::ReproductionResults& res, bool fresh) {
  const fs::path dir = c.out / "decoder", info = c.out / "decoder" / "pretraining.csv";
  if (!fresh && fs::exists(info)) {
    const dca::CsvTable t = dca::read_csv(info);
    res.pretrain_steps = static_cast<index_t>(dca::parse_csv_number(t.rows.at(0).at(0)));
    res.pretrain_seconds = dca::parse_csv_number(t.rows.at(0).at(1));
    res.pretrain_loss = dca::parse_csv_number(t.rows.at(0).at(2));
    std::printf("decoder: %s (pretrained earlier)\n", dir.c_str());
    return dca::load_hf_decoder<float>(dir);
  }
  const dca::ReproductionProfile& p = c.profile;
  dca::Decoder<float> model(p.decoder, p.pretrain.seed);
  dca::Trainer<float> trainer(model, *c.mixture, p.pretrain);
  std::printf("pretraining the decoder (%ld parameters) on the mixture\n", static_cast<long>(model.parameter_count()));
  const auto start = Clock::now();
  const index_t total = p.pretrain.optimization.total_steps,
                tokens_per_step = p.pretrain.batch_size * p.pretrain.seq_len;
  double smoothed = 0;
  while (trainer.step_count() < total) {
    const double loss = trainer.step();
    smoothed = trainer.step_count() == 1 ? loss : 0.95 * smoothed + 0.05 * loss;
    const double rate = static_cast<double>(trainer.step_count() * tokens_per_step) / seconds_since(start);
    if (trainer.step_count() % 10 == 0 || trainer.step_count() == total)
      examples::draw_progress(trainer.step_count(), total, smoothed, rate, "tok",
                              static_cast<double>((total - trainer.step_count()) * tokens_per_step) / rate);
  }
  res.pretrain_seconds = seconds_since(start);
  res.pretrain_steps = trainer.step_count();
  res.pretrain_loss = trainer.validation_loss(20);
  std::printf("\nheld-out loss %.4f nats/byte\n", res.pretrain_loss);
  dca::save_hf_decoder(model, dir);
  dca::CsvWriter csv({"steps", "seconds", "validation_loss"});
  csv.row(res.pretrain_steps, res.pretrain_seconds, res.pretrain_loss);
  csv.write(info);
  return model;
}

// The headline numbers on the console: the n-th token's perplexity change and the accuracy per N_L.
void print_summary(const dca::ReproductionProfile& p, const dca::ReproductionResults& res) {
  std::printf("\nperplexity change of the n-th token vs the frozen decoder (%%, mean ± std over %zu seeds):\n",
              p.seeds.size());
  std::printf("%5s %16s %16s %16s %18s\n", "N_L", "n=1", "n=4", "n=16", "exact match (%)");
  for (const auto& [latents, runs] : res.by_latents) {
    std::printf("%5ld", static_cast<long>(latents));
    for (const std::size_t i : {std::size_t{0}, std::size_t{3}, std::size_t{15}})
      std::printf(" %16s", dca::plus_minus(dca::change_at(runs, i), 2).c_str());
    std::printf(" %18s\n",
                dca::percent(dca::over_seeds(runs, [](const dca::RunResult& r) { return r.accuracy; })).c_str());
  }
  std::printf("%5s %16s %16s %16s %18.1f\n", "0", "", "", "", 100 * res.frozen_accuracy);
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
  app.add_option("--threads", threads, "threads")->capture_default_str()->check(examples::at_least(1));
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
    c.profile = smoke   ? dca::ReproductionProfile::smoke()
                : quick ? dca::ReproductionProfile::quick()
                        : dca::ReproductionProfile::full();
    const dca::ReproductionProfile& p = c.profile;
    c.out = out_dir.empty() ? fs::path("runs") / ("reproduce-" + p.name) : fs::path(out_dir);
    examples::check_writable_directory(c.out, "--out");
    fs::create_directories(c.out / "runs");
    const fs::path settings = c.out / "profile.txt";
    if (!fresh && fs::exists(settings) && dca::read_text_file(settings) != p.fingerprint())
      throw dca::UsageError(c.out.string() + " holds results of other settings (" + settings.string() +
                            "); pass --fresh to start over or --out for another directory");
    dca::write_text_atomically(settings, p.fingerprint());
    std::string command = "./build/examples/reproduce";
    if (const char* wait = std::getenv("OMP_WAIT_POLICY"))
      command = "OMP_WAIT_POLICY=" + std::string(wait) + " " + command;
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

    dca::ReproductionResults res;
    const auto decoder_start = Clock::now();
    const bool pretrain_now = fresh || !fs::exists(c.out / "decoder" / "pretraining.csv");
    dca::Decoder<float> decoder = pretrained_decoder(c, res, fresh);
    if (pretrain_now) fresh_work += seconds_since(decoder_start);
    decoder.freeze();
    c.decoder = &decoder;
    res.decoder_parameters = decoder.parameter_count();
    res.text_batches = static_cast<index_t>(c.text_batches.size());
    res.frozen_accuracy = dca::score_arithmetic(decoder, p.arithmetic, c.problems).accuracy();
    std::printf("frozen decoder: %.1f%% exact match on %ld held-out problems\n", 100 * res.frozen_accuracy,
                static_cast<long>(c.problems.size()));

    // Every run once, in the plan's order; a finished run's results are read back instead of retrained.
    const std::vector<dca::PlannedRun> plan = dca::reproduction_plan(p);
    std::map<std::string, dca::RunResult> done;
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const dca::PlannedRun& run = plan[i];
      const fs::path file = c.out / "runs" / (run.id() + ".csv");
      if (!fresh && fs::exists(file)) {
        done[run.id()] = dca::RunResult::load(file, p.horizon);
        continue;
      }
      char title[160];
      std::snprintf(title, sizeof title, "run %zu/%zu: %s, N_L = %ld, seed %llu", i + 1, plan.size(),
                    run.variant.label.c_str(), static_cast<long>(run.variant.latents),
                    static_cast<unsigned long long>(run.seed));
      done[run.id()] = train_and_evaluate(c, run, title);
      done[run.id()].save(file);
      fresh_work += done[run.id()].train_seconds + done[run.id()].eval_seconds;
    }
    res.collect(p, done);

    std::printf("timing one augmentation against decoding N_L tokens\n");
    const std::vector<index_t> prompt(
        c.text_batches.front().inputs.begin(),
        c.text_batches.front().inputs.begin() + std::min(p.timing_context, p.coprocessor.seq_len));
    for (const index_t nl : p.latent_counts)
      res.timings.push_back(time_augmentation(c, prompt, nl));
    res.other_seconds = seconds_since(wall) - fresh_work;

    dca::write_tables_and_plots(p, res, c.out, c.out / "plots");
    dca::write_text_atomically(c.out / "results.md",
                               dca::reproduction_report(p, res, {command, "plots", DCA_VERSION_STRING}));
    if (update) {
      const fs::path plots = fs::path(docs).parent_path() / "results";
      dca::write_tables_and_plots(p, res, c.out, plots);
      dca::replace_reproduction_section(docs,
                                        dca::reproduction_report(p, res, {command, "results", DCA_VERSION_STRING}));
      std::printf("updated %s and %s\n", docs.c_str(), plots.c_str());
    }
    print_summary(p, res);
    std::printf("\nreport: %s (tables: %s/table*.csv, plots: %s/plots) in %s\n", (c.out / "results.md").c_str(),
                c.out.c_str(), c.out.c_str(), dca::format_duration(res.total_seconds()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nreproduce: %s\n", e.what());
    return 1;
  }
  return 0;
}
