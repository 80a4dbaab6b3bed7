// Specification of the reproduction's plan and write-up, without training anything: which runs a
// profile makes, that their results read back exactly, when a finding counts as reproduced, and
// what the report and the docs section contain.
#include "dca/experiment/report.hpp"
#include "dca/experiment/reproduction.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

using dca::index_t;

namespace {

// A run whose augmented loss is `gain` nats below the frozen one at every position.
dca::RunResult synthetic_run(index_t horizon, double gain, double accuracy) {
  dca::RunResult r;
  for (index_t n = 0; n < horizon; ++n) {
    r.frozen.push_back(1.0 + 0.01 * static_cast<double>(n));
    r.augmented.push_back(r.frozen.back() - gain);
  }
  r.accuracy = accuracy;
  r.delayed = {{1, accuracy / 2}};
  r.train_seconds = 2;
  r.eval_seconds = 1;
  r.steps = 2;
  return r;
}

}  // namespace

TEST_CASE(
    "the plan runs the default coprocessor at every latent count and seed, then every other ablation, each once") {
  const auto p = dca::ReproductionProfile::smoke();  // N_L 1 and 2, ablations at N_L = 2, seeds 1..3
  const auto plan = dca::reproduction_plan(p);
  // 2 latent counts × 3 seeds, then pause, random init, LoRA 2, last layer and N_A = 4 × 3 seeds:
  // the default ablation is the N_L = 2 run already made.
  REQUIRE(plan.size() == 6 + 5 * 3);
  CHECK(plan[0].id() == "nl1-seed1");
  CHECK(plan[5].id() == "nl2-seed3");
  CHECK(plan[6].id() == "pause-nl2-seed1");
  CHECK(plan.back().id() == "na4-nl2-seed3");
  std::set<std::string> ids;
  for (const auto& run : plan) ids.insert(run.id());
  CHECK(ids.size() == plan.size());
  CHECK(plan[3].variant.delays);  // the default at the ablation count also scores late latents
  CHECK_FALSE(plan[0].variant.delays);
  CHECK(plan.back().variant.config.n_ahead == 4);
  CHECK(plan[6].variant.config.source == dca::LatentSource::pause);
}

TEST_CASE("a run's results read back bit for bit, and an incomplete file is refused naming it") {
  dca::test::TempDir dir;
  dca::RunResult r = synthetic_run(2, 1.0 / 3.0, 0.1);
  r.save(dir.path / "run.csv");
  const auto back = dca::RunResult::load(dir.path / "run.csv", 2);
  CHECK(back.frozen == r.frozen);
  CHECK(back.augmented == r.augmented);
  CHECK(back.accuracy == r.accuracy);
  CHECK(back.delayed == r.delayed);
  CHECK(back.steps == 2);
  const std::string message = (dir.path / "run.csv").string() + ": not a complete run of 3";
  CHECK_THROWS_WITH_AS(dca::RunResult::load(dir.path / "run.csv", 3), doctest::Contains(message.c_str()),
                       dca::FormatError);
}

TEST_CASE("the fingerprint changes with a setting that shapes the results and only then") {
  auto p = dca::ReproductionProfile::quick();
  const std::string before = p.fingerprint();
  CHECK(dca::ReproductionProfile::quick().fingerprint() == before);
  p.seeds.push_back(4);
  CHECK(p.fingerprint() != before);
  CHECK(before.starts_with("profile quick\ndecoder llama 64 2 2 2 192\n"));
}

TEST_CASE("a finding counts as reproduced only with the paper's sign, beyond two standard errors") {
  const std::vector<double> clear = {1.0, 1.1, 0.9}, unclear = {1.0, -1.0, 0.5};
  CHECK(dca::verdict(dca::mean_std(clear), +1) == "yes");
  CHECK(dca::verdict(dca::mean_std(clear), -1) == "no (opposite sign)");
  CHECK(dca::verdict(dca::mean_std(unclear), +1) == "inconclusive (within 2 s.e.)");
  CHECK(dca::perplexity_change(1.0, 1.0) == 0.0);
  CHECK(dca::perplexity_change(0.0, std::log(2.0)) == doctest::Approx(-50.0));
}

TEST_CASE("the report covers the four experiments, links its plots, and the tables hold every seed") {
  const auto p = dca::ReproductionProfile::smoke();
  std::map<std::string, dca::RunResult> done;
  for (const auto& run : dca::reproduction_plan(p))
    done[run.id()] = synthetic_run(p.horizon, 0.01 * static_cast<double>(run.variant.latents), 0.2);
  dca::ReproductionResults res;
  res.collect(p, done);
  res.frozen_accuracy = 0.1;
  res.decoder_parameters = 1234;
  res.text_batches = 1;
  res.pretrain_steps = 20;
  for (const index_t nl : p.latent_counts) res.timings.push_back({nl, 1.0, 2.0, 3e6, 4e6});
  REQUIRE(res.by_latents.size() == 2);
  REQUIRE(res.ablations.size() == 6);  // the default first
  CHECK(res.runs_seconds == 3.0 * static_cast<double>(done.size()));

  const std::string md = dca::reproduction_report(p, res, {.command = "reproduce --smoke", .plot_dir = "figs"});
  for (const char* part : {"### 1. Perplexity", "### 2. Held-out arithmetic", "### 3. Baselines and ablations",
                           "### 4. Compute", "### Against the paper", "reproduce --smoke", "figs/ahead_loss.svg",
                           "figs/arithmetic.svg", "figs/ablations.svg", "1234 parameters"})
    CHECK_MESSAGE(md.find(part) != std::string::npos, part);

  dca::test::TempDir dir;
  dca::write_tables_and_plots(p, res, dir.path, dir.path / "plots");
  const auto ahead = dca::read_csv(dir.path / "table1_ahead_loss.csv");
  CHECK(ahead.rows.size() == p.latent_counts.size() * p.seeds.size() * static_cast<std::size_t>(p.horizon));
  CHECK(dca::read_csv(dir.path / "table3_ablations.csv").rows.size() == 6 * p.seeds.size());
  for (const char* plot : {"ahead_loss.svg", "arithmetic.svg", "ablations.svg"})
    CHECK(std::filesystem::exists(dir.path / "plots" / plot));
}

TEST_CASE("the docs section between the reproduction markers is replaced, and added when missing") {
  dca::test::TempDir dir;
  const auto page = dir.path / "results.md";
  dca::write_text_atomically(page, "intro\n<!-- reproduce:begin -->\nold\n<!-- reproduce:end -->\noutro\n");
  dca::replace_reproduction_section(page, "new\n");
  CHECK(dca::read_text_file(page) == "intro\n<!-- reproduce:begin -->\nnew\n<!-- reproduce:end -->\noutro\n");
  const auto fresh = dir.path / "fresh.md";
  dca::replace_reproduction_section(fresh, "new\n");
  CHECK(dca::read_text_file(fresh) == "\n<!-- reproduce:begin -->\nnew\n<!-- reproduce:end -->\n");
}
