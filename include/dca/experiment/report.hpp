// dca/experiment/report.hpp — the reproduction written up: CSV tables with every seed's numbers,
// SVG plots, and a Markdown report that puts each finding next to the paper's number and marks it
// reproduced only when the mean over seeds has the paper's sign and lies more than two standard
// errors from zero. The numbers come from experiment/reproduction.hpp's plan.
//
//   dca::write_tables_and_plots(profile, results, "runs/x", "runs/x/plots");
//   const std::string md = dca::reproduction_report(profile, results, {.command = "...", .plot_dir = "plots"});
//
// Longer than most headers (about 360 lines): the report is one document, and most of it is the
// prose and table layout of its sections, which read best in order.
#pragma once

#include "dca/experiment/compute.hpp"
#include "dca/experiment/reproduction.hpp"
#include "dca/experiment/stats.hpp"
#include "dca/io/atomic_file.hpp"
#include "dca/io/csv.hpp"
#include "dca/io/svg.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace dca {

/// "12m05s" or "1h02m": a duration as the reports and progress lines print it.
inline std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  char buffer[32];
  if (s >= 3600)
    std::snprintf(buffer, sizeof buffer, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else
    std::snprintf(buffer, sizeof buffer, "%ldm%02lds", s / 60, s % 60);
  return buffer;
}

/// How a report was made, as it states it.
struct ReportSetting {
  std::string command;              // the command line that produced it
  std::string plot_dir = "plots";   // where the report's links find the SVG plots, relative to it
  std::string version = "unknown";  // the library version
};

/// The change (%) of perplexity exp(loss) from the frozen decoder's to the augmented one's.
inline double perplexity_change(double augmented, double frozen) {
  return 100.0 * (std::exp(augmented - frozen) - 1.0);
}

/// Mean ± std over seeds of `f` of each run.
inline MeanStd over_seeds(const std::vector<RunResult>& runs, const std::function<double(const RunResult&)>& f) {
  std::vector<double> v;
  for (const RunResult& r : runs) v.push_back(f(r));
  return mean_std(v);
}

/// Perplexity change (%) of the n-th token, n = i + 1: one run's, and its mean ± std over seeds.
inline double change_at(const RunResult& r, std::size_t i) { return perplexity_change(r.augmented[i], r.frozen[i]); }
inline MeanStd change_at(const std::vector<RunResult>& runs, std::size_t i) {
  return over_seeds(runs, [i](const RunResult& r) { return change_at(r, i); });
}

/// Mean perplexity change over n = 1..last.
inline double mean_change(const RunResult& r, index_t last) {
  double s = 0;
  for (index_t n = 0; n < last; ++n) s += change_at(r, static_cast<std::size_t>(n));
  return s / static_cast<double>(last);
}

/// "+1.23 ± 0.45<unit>".
inline std::string plus_minus(const MeanStd& m, int decimals, const char* unit = "") {
  char buffer[96];
  std::snprintf(buffer, sizeof buffer, "%+.*f ± %.*f%s", decimals, m.mean, decimals, m.stddev, unit);
  return buffer;
}

/// A fraction as "12.3 ± 4.5" percent.
inline std::string percent(const MeanStd& m) {
  char buffer[96];
  std::snprintf(buffer, sizeof buffer, "%.1f ± %.1f", 100 * m.mean, 100 * m.stddev);
  return buffer;
}

/// "yes" when the mean has the expected sign and lies more than two standard errors from zero,
/// "no" when it has the other sign that clearly, "inconclusive" otherwise.
inline std::string verdict(const MeanStd& m, double expected_sign) {
  const double margin = 2 * m.standard_error();
  if (m.mean * expected_sign > margin) return "yes";
  if (m.mean * expected_sign < -margin) return "no (opposite sign)";
  return "inconclusive (within 2 s.e.)";
}

namespace detail {

inline std::string join_counts(const std::vector<index_t>& v) {
  std::string s;
  for (const index_t x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
  return s;
}

}  // namespace detail

/// Writes table1_ahead_loss.csv … table4_compute.csv (every seed's numbers) into `out` and the
/// three SVG plots (perplexity change vs n, accuracy vs N_L, ablation bars) into `plots`.
inline void write_tables_and_plots(const ReproductionProfile& p, const ReproductionResults& res,
                                   const std::filesystem::path& out, const std::filesystem::path& plots) {
  CsvWriter ahead({"latents", "seed", "n", "frozen_loss", "augmented_loss", "perplexity_change_percent"});
  CsvWriter arithmetic({"latents", "seed", "accuracy"});
  arithmetic.row(0, 0, res.frozen_accuracy);
  std::vector<ChartSeries> curves;
  std::vector<ChartPoint> accuracy_points;
  for (const auto& [latents, runs] : res.by_latents) {
    ChartSeries curve{"N_L = " + std::to_string(latents), {}};
    for (index_t n = 1; n <= p.horizon; ++n) {
      const auto i = static_cast<std::size_t>(n - 1);
      const MeanStd change = change_at(runs, i);
      curve.points.push_back({static_cast<double>(n), change.mean, change.stddev});
      for (std::size_t s = 0; s < runs.size(); ++s)
        ahead.row(latents, p.seeds[s], n, runs[s].frozen[i], runs[s].augmented[i], change_at(runs[s], i));
    }
    curves.push_back(curve);
    for (std::size_t s = 0; s < runs.size(); ++s) arithmetic.row(latents, p.seeds[s], runs[s].accuracy);
    const auto acc = over_seeds(runs, [](const RunResult& r) { return r.accuracy; });
    accuracy_points.push_back({static_cast<double>(latents), 100 * acc.mean, 100 * acc.stddev});
  }
  ahead.write(out / "table1_ahead_loss.csv");
  arithmetic.write(out / "table2_arithmetic.csv");

  CsvWriter ablation(
      {"variant", "latents", "seed", "n1_perplexity_change_percent", "mean_perplexity_change_percent", "accuracy"});
  std::vector<ChartBar> bars;
  for (const auto& [v, runs] : res.ablations) {
    for (std::size_t s = 0; s < runs.size(); ++s)
      ablation.row(v.label, v.latents, p.seeds[s], change_at(runs[s], 0), mean_change(runs[s], p.n_ahead),
                   runs[s].accuracy);
    const auto m = over_seeds(runs, [&](const RunResult& r) { return mean_change(r, p.n_ahead); });
    bars.push_back({v.bar, m.mean, m.stddev});
  }
  ablation.write(out / "table3_ablations.csv");
  CsvWriter delayed({"delay_tokens", "seed", "accuracy"});
  for (const auto& [v, runs] : res.ablations)
    if (v.delays)
      for (const index_t d : p.delays)
        for (std::size_t s = 0; s < runs.size(); ++s) delayed.row(d, p.seeds[s], runs[s].delayed.at(d));
  delayed.write(out / "table3_asynchronous.csv");
  CsvWriter compute({"latents", "augmentation_ms", "decoding_ms", "augmentation_flops", "decoding_flops"});
  for (const Timing& t : res.timings)
    compute.row(t.latents, t.augment_ms, t.decode_ms, t.augment_flops, t.decode_flops);
  compute.write(out / "table4_compute.csv");

  std::filesystem::create_directories(plots);
  LineChartConfig line{.title = "Perplexity change of the n-th token after the latents (mean ± std over seeds)",
                       .x_label = "n (tokens after the insertion point)",
                       .y_label = "perplexity change vs frozen decoder (%)",
                       .log2_x = true,
                       .reference_lines = {{0.0, "frozen"}}};
  write_line_chart(plots / "ahead_loss.svg", line, curves);
  LineChartConfig acc{.title = "Held-out arithmetic exact match vs latent count (mean ± std over seeds)",
                      .x_label = "N_L (latents)",
                      .y_label = "exact match (%)",
                      .log2_x = true,
                      .reference_lines = {{100 * res.frozen_accuracy, "frozen"}}};
  write_line_chart(plots / "arithmetic.svg", acc, std::vector<ChartSeries>{{"augmented", accuracy_points}});
  BarChartConfig bar{.width = std::max(640.0, 90.0 * static_cast<double>(bars.size())),
                     .title = "Mean perplexity change, n = 1.." + std::to_string(p.n_ahead) +
                              ", N_L = " + std::to_string(p.ablation_latents) + " (mean ± std over seeds)",
                     .x_label = "variant",
                     .y_label = "perplexity change vs frozen (%)",
                     .reference_lines = {}};
  write_bar_chart(plots / "ablations.svg", bar, bars);
}

/// The Markdown report: setup, the four experiments' tables with the paper's numbers beside
/// them, the plots (under `setting.plot_dir`), and the findings marked reproduced or not.
inline std::string reproduction_report(const ReproductionProfile& p, const ReproductionResults& res,
                                       const ReportSetting& setting) {
  std::ostringstream md;
  char line[2048];
  md << "## Reproducing the paper at toy scale\n\n";
  md << "Generated by `examples/reproduce` (profile `" << p.name << "`, dca " << setting.version << ") on "
     << std::thread::hardware_concurrency()
     << " hardware threads; do not edit by hand. Compute: " << format_duration(res.total_seconds())
     << " in all — pretraining " << format_duration(res.pretrain_seconds) << ", "
     << (res.by_latents.size() + res.ablations.size() - 1) * p.seeds.size() << " coprocessor runs "
     << format_duration(res.runs_seconds) << " (training and evaluation), the rest "
     << format_duration(res.other_seconds) << ". Command:\n\n```sh\n"
     << setting.command << "\n```\n\n";
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
                static_cast<long>(p.decoder.n_heads), static_cast<long>(res.decoder_parameters),
                static_cast<long>(res.pretrain_steps), static_cast<long>(p.pretrain.batch_size),
                static_cast<long>(p.pretrain.seq_len), format_duration(res.pretrain_seconds).c_str(), res.pretrain_loss,
                p.arithmetic_weight, 100 * res.frozen_accuracy, static_cast<long>(p.problems),
                static_cast<long>(p.coprocessor.optimization.total_steps), static_cast<long>(p.coprocessor.batch_size),
                static_cast<long>(p.coprocessor.seq_len), static_cast<long>(p.coprocessor.points_per_sequence),
                static_cast<long>(p.n_ahead),
                [&] {
                  std::vector<index_t> s(p.seeds.begin(), p.seeds.end());
                  return detail::join_counts(s);
                }()
                    .c_str());
  md << line;

  // Experiment 1.
  const std::vector<index_t> shown = [&] {
    std::vector<index_t> n;
    for (index_t x = 1; x <= p.horizon; x *= 2) n.push_back(x);
    return n;
  }();
  md << "### 1. Perplexity of the n-th token after the latents (paper, Table 1)\n\n";
  md << "Held-out English text (" << res.text_batches << " batches), augmented at every position; change of "
     << "the n-th token's perplexity against the frozen decoder on the same tokens, mean ± std over seeds (%). "
     << "Negative is better. Coprocessors were trained with N_A = " << p.n_ahead
     << "; n beyond it tests persistence.\n\n";
  md << "| N_L |";
  for (const index_t n : shown) md << " n=" << n << " |";
  md << "\n| --- |";
  for (std::size_t i = 0; i < shown.size(); ++i) md << " --- |";
  md << "\n";
  for (const auto& [latents, runs] : res.by_latents) {
    md << "| " << latents << " |";
    for (const index_t n : shown) {
      const auto i = static_cast<std::size_t>(n - 1);
      md << " " << plus_minus(change_at(runs, i), 2) << " |";
    }
    md << "\n";
  }
  md << "| paper (Gemma-2 2B, 8/16/32/64 latents) | −1.53 / −2.48 / −3.28 / −3.94 |";
  for (std::size_t i = 1; i + 1 < shown.size(); ++i) md << " |";
  md << " −0.55 … −1.20 |\n\n";
  md << "![perplexity change vs n](" << setting.plot_dir << "/ahead_loss.svg)\n\n";

  // Experiment 2.
  md << "### 2. Held-out arithmetic accuracy vs latent count (paper, Table 2, GSM8K column)\n\n";
  md << "Latents inserted once, at the end of the prompt; exact match, mean ± std over seeds (%).\n\n";
  md << "| N_L | exact match (%) | change (points) |\n| --- | --- | --- |\n";
  std::snprintf(line, sizeof line, "| frozen | %.1f | |\n", 100 * res.frozen_accuracy);
  md << line;
  for (const auto& [latents, runs] : res.by_latents) {
    const auto acc = over_seeds(runs, [](const RunResult& r) { return r.accuracy; });
    const auto gain = over_seeds(runs, [&](const RunResult& r) { return 100 * (r.accuracy - res.frozen_accuracy); });
    md << "| " << latents << " | " << percent(acc) << " | " << plus_minus(gain, 1) << " |\n";
  }
  md << "| paper (4/8/16/32/64 latents) | 21.38 → 22.67 / 23.12 / 24.72 / 26.76 / 31.43 | +1.3 … +10.1 |\n\n";
  md << "![accuracy vs latents](" << setting.plot_dir << "/arithmetic.svg)\n\n";

  // Experiment 3.
  md << "### 3. Baselines and ablations at N_L = " << p.ablation_latents
     << " (paper, Tables 3, 5, 6, 8 and the last-layer ablation)\n\n";
  md << "| variant | n=1 perplexity change (%) | mean change n=1.." << p.n_ahead << " (%) | exact match (%) |\n";
  md << "| --- | --- | --- | --- |\n";
  for (const auto& [v, runs] : res.ablations) {
    md << "| " << v.label << " | " << plus_minus(change_at(runs, 0), 2) << " | "
       << plus_minus(over_seeds(runs, [&](const RunResult& r) { return mean_change(r, p.n_ahead); }), 2) << " | "
       << percent(over_seeds(runs, [](const RunResult& r) { return r.accuracy; })) << " |\n";
  }
  md << "\nThe last-layer variant recomputes the decoder's activations over the prompt at inference (a cache keeps "
        "only keys and values). Asynchronous latents (default variant, arriving d tokens late):\n\n";
  md << "| delay | exact match (%) |\n| --- | --- |\n";
  for (const auto& [v, runs] : res.ablations)
    if (v.delays) {
      md << "| 0 (synchronous) | " << percent(over_seeds(runs, [](const RunResult& r) { return r.accuracy; }))
         << " |\n";
      for (const index_t d : p.delays)
        md << "| " << d << " | " << percent(over_seeds(runs, [&](const RunResult& r) { return r.delayed.at(d); }))
           << " |\n";
    }
  md << "\n![ablations](" << setting.plot_dir << "/ablations.svg)\n\n";

  // Experiment 4.
  md << "### 4. Compute: one augmentation vs decoding N_L extra tokens\n\n";
  md << "After a " << p.timing_context << "-token prompt, median of " << p.timing_repeats
     << " (ms, this machine, one process); FLOPs from `dca/experiment/compute.hpp` (matrix products).\n\n";
  md << "| N_L | augmentation (ms) | decoding N_L tokens (ms) | augmentation MFLOP | decoding MFLOP |\n";
  md << "| --- | --- | --- | --- | --- |\n";
  for (const Timing& t : res.timings) {
    std::snprintf(line, sizeof line, "| %ld | %.3f | %.3f | %.2f | %.2f |\n", static_cast<long>(t.latents),
                  t.augment_ms, t.decode_ms, t.augment_flops / 1e6, t.decode_flops / 1e6);
    md << line;
  }
  md << "\nTraining: ";
  std::snprintf(line, sizeof line, "a pretraining step took %.3f s (%.2f GFLOP); ",
                res.pretrain_seconds / static_cast<double>(std::max<index_t>(res.pretrain_steps, 1)),
                pretraining_step_flops(p.decoder, p.pretrain.batch_size, p.pretrain.seq_len) / 1e9);
  md << line << "a coprocessor step took";
  for (const auto& [latents, runs] : res.by_latents) {
    const auto s = over_seeds(runs, [](const RunResult& r) { return r.train_seconds / static_cast<double>(r.steps); });
    std::snprintf(line, sizeof line, " %.3f s (%.2f GFLOP) at N_L = %ld;", s.mean,
                  coprocessor_step_flops(p.decoder, p.coprocessor.batch_size, p.coprocessor.seq_len,
                                         p.coprocessor.points_per_sequence, latents, p.n_ahead) /
                      1e9,
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
  const auto acc_gain =
      over_seeds(most_runs, [&](const RunResult& r) { return 100 * (r.accuracy - res.frozen_accuracy); });
  md << "| perplexity at n=1 falls (N_L = " << most << ") | −3.28 % (32 latents) | " << plus_minus(n1, 2, " %") << " | "
     << verdict(n1, -1) << " |\n";
  md << "| the gain persists at n=" << p.horizon << " | −0.55 … −1.20 % | " << plus_minus(last, 2, " %") << " | "
     << verdict(last, -1) << " |\n";
  md << "| reasoning accuracy rises (N_L = " << most << ") | +5.4 points (32 latents) | "
     << plus_minus(acc_gain, 1, " points") << " | " << verdict(acc_gain, 1) << " |\n";
  const auto& default_runs = res.ablations.front().second;
  const std::map<std::string, std::string> paper_worse = {{"pause", "PPL 11.63 vs 10.60 (32 latents)"},
                                                          {"random-init", "GSM8K 25.78 vs 26.76"},
                                                          {"lora", "GSM8K 24.03 / 23.35 (LoRA-128 / 64) vs 26.76"},
                                                          {"last-layer", "PPL 10.81 vs 10.60"}};
  for (const auto& [v, runs] : res.ablations)
    for (const auto& [prefix, paper] : paper_worse) {
      if (v.id.rfind(prefix, 0) != 0) continue;
      std::vector<double> d;  // paired by seed: the variant's mean perplexity change minus the default's
      for (std::size_t s = 0; s < runs.size(); ++s)
        d.push_back(mean_change(runs[s], p.n_ahead) - mean_change(default_runs[s], p.n_ahead));
      const auto worse = mean_std(d);
      md << "| " << v.label << " worse than the full coprocessor (mean perplexity change, paired by seed) | " << paper
         << " | " << plus_minus(worse, 2, " points") << " | " << verdict(worse, 1) << " |\n";
    }
  for (const auto& [v, runs] : res.ablations)
    if (v.delays)
      for (const index_t d : p.delays) {
        const auto gain =
            over_seeds(runs, [&](const RunResult& r) { return 100 * (r.delayed.at(d) - res.frozen_accuracy); });
        md << "| latents arriving " << d << " token" << (d == 1 ? "" : "s")
           << " late still help (accuracy vs frozen) | "
           << (d == 1   ? "27.2"
               : d == 2 ? "27.1"
               : d == 3 ? "26.9"
                        : "—")
           << " vs 21.38 | " << plus_minus(gain, 1, " points") << " | " << verdict(gain, 1) << " |\n";
      }
  md << "\nWhere a row says inconclusive or no, this toy scale does not reproduce the paper's finding. The "
        "design choices behind the defaults are studied in docs/coprocessor.md.\n";
  return md.str();
}

/// Replaces the text between `<!-- reproduce:begin -->` and `<!-- reproduce:end -->` of the
/// Markdown file at `path` with `section` (appending the markers, or creating the file, when
/// absent), atomically.
inline void replace_reproduction_section(const std::filesystem::path& path, const std::string& section) {
  const std::string begin = "<!-- reproduce:begin -->", end = "<!-- reproduce:end -->";
  std::string doc = std::filesystem::exists(path) ? read_text_file(path) : std::string();
  const std::size_t b = doc.find(begin), e = doc.find(end);
  const std::string block = begin + "\n" + section + end;
  if (b != std::string::npos && e != std::string::npos && e > b)
    doc.replace(b, e + end.size() - b, block);
  else
    doc += "\n" + block + "\n";
  write_text_atomically(path, doc);
}

}  // namespace dca
