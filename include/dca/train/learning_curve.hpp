// dca/train/learning_curve.hpp — a run's learning curve: every `every` steps a row with the
// training loss (the mean over the steps since the previous row), the learning rate and,
// every `evaluate_every` steps, held-out evaluations, kept in <directory>/learning_curve.csv and
// drawn in <directory>/learning_curve.svg. Both files are rewritten atomically at every row, so
// an interrupted run leaves a complete curve, and a run resumed from a checkpoint continues the
// curve from the checkpoint's step (TrainingLoop saves and restores it).
//
//   dca::LearningCurve curve({.directory = "runs/x", .every = 50, .evaluate_every = 200}, {{"held_out_loss"}});
//   if (curve.add_step(step, loss)) curve.add_row(step, lr, curve.evaluation_due(step) ? held_out() : {});
#pragma once

#include "dca/io/csv.hpp"
#include "dca/io/svg.hpp"

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dca {

/// When and where a training loop records its learning curve. Off unless `every` > 0.
struct LearningCurveConfig {
  std::filesystem::path directory = ".";  // the run directory: learning_curve.csv and learning_curve.svg
  index_t every = 0;                      // steps per row; 0: no curve
  index_t evaluate_every = 0;             // steps between held-out evaluations, a multiple of `every`; 0: none
  index_t eval_batches = 4;               // held-out batches per evaluation
  index_t eval_points = 0;                // coprocessor runs: augmentation points per held-out sequence; 0: all

  bool enabled() const { return every > 0; }

  void validate() const {
    if (every < 0 || evaluate_every < 0)
      detail::fail<RangeError>("LearningCurveConfig: every = ", every, " and evaluate_every = ", evaluate_every,
                               " must be ≥ 0");
    if (evaluate_every > 0 && (every == 0 || evaluate_every % every != 0))
      detail::fail<RangeError>("LearningCurveConfig: evaluate_every = ", evaluate_every,
                               " must be a multiple of every = ", every, " (evaluations go into curve rows)");
    if (eval_batches < 1 || eval_points < 0)
      detail::fail<RangeError>("LearningCurveConfig: eval_batches = ", eval_batches,
                               " must be ≥ 1 and eval_points = ", eval_points, " ≥ 0");
  }
};

/// A held-out column of a curve, after step, learning_rate and train_loss.
struct CurveColumn {
  std::string name;
  bool plotted = true;  // drawn in the chart; false: in the CSV only (per-position losses, say)
};

class LearningCurve {
 public:
  /// One row: the mean training loss since the previous row and, if evaluated, the held-out values.
  struct Row {
    index_t step;
    double learning_rate, train_loss;
    std::vector<double> held_out;  // one per held-out column, or empty: not evaluated at this row
  };

  /// A curve with these held-out columns, in the order evaluations return their values.
  LearningCurve(LearningCurveConfig config, std::vector<CurveColumn> held_out)
      : config_(validated(std::move(config))), held_out_(std::move(held_out)) {}

  const LearningCurveConfig& config() const { return config_; }
  index_t rows() const { return static_cast<index_t>(rows_.size()); }
  /// The latest row; UsageError while there is none.
  const Row& last() const {
    if (rows_.empty()) detail::fail<UsageError>("LearningCurve::last: no row yet");
    return rows_.back();
  }

  /// Counts the training loss of step `step`; true when a row is due after it.
  bool add_step(index_t step, double loss) {
    loss_sum_ += loss;
    ++loss_steps_;
    return config_.enabled() && step % config_.every == 0;
  }

  /// Whether the row of `step` carries a held-out evaluation.
  bool evaluation_due(index_t step) const { return config_.evaluate_every > 0 && step % config_.evaluate_every == 0; }

  /// Appends the row of `step` — the mean training loss since the previous row, `learning_rate`,
  /// and `held_out` (one value per held-out column, or none) — and rewrites both files.
  void add_row(index_t step, double learning_rate, std::vector<double> held_out) {
    if (!held_out.empty() && held_out.size() != held_out_.size())
      detail::fail<ShapeError>("LearningCurve: ", held_out.size(), " held-out values for ", held_out_.size(),
                               " columns");
    if (loss_steps_ == 0)
      detail::fail<UsageError>("LearningCurve: a row at step ", step, " without a training step since the last");
    rows_.push_back({step, learning_rate, loss_sum_ / static_cast<double>(loss_steps_), std::move(held_out)});
    loss_sum_ = 0;
    loss_steps_ = 0;
    write();
  }

  /// What a checkpoint keeps of the curve: the training losses counted since the last row.
  std::map<std::string, std::string> state() const {
    return {{"curve_loss_sum", csv_number(loss_sum_)}, {"curve_loss_steps", csv_number(loss_steps_)}};
  }

  /// The curve of a run resumed at `step` from a checkpoint with `metadata`: the rows of the CSV in
  /// the run directory up to `step` (none if there is no file) and the checkpoint's partial sums.
  /// FormatError naming the file when it holds other columns; nothing is written until a row is added.
  LearningCurve resumed(const std::map<std::string, std::string>& metadata, index_t step) const {
    LearningCurve out(config_, held_out_);
    if (const auto sum = metadata.find("curve_loss_sum"); sum != metadata.end()) {
      out.loss_sum_ = parse_csv_number(sum->second);
      out.loss_steps_ = static_cast<index_t>(parse_csv_number(metadata.at("curve_loss_steps")));
    }
    if (!config_.enabled() || !std::filesystem::exists(csv_path())) return out;
    const CsvTable table = read_csv(csv_path());
    if (table.header != header())
      detail::fail<FormatError>(csv_path().string(), ": the curve's columns differ from this run's (",
                                table.header.size(), " vs ", header().size(), "); resume into a fresh directory");
    for (const CsvRow& row : table.rows) {
      const auto row_step = static_cast<index_t>(parse_csv_number(row[0]));
      if (row_step > step) break;
      Row r{row_step, parse_csv_number(row[1]), parse_csv_number(row[2]), {}};
      const bool evaluated = row.size() > 3 && !row[3].empty();
      for (std::size_t c = 3; evaluated && c < row.size(); ++c) r.held_out.push_back(parse_csv_number(row[c]));
      out.rows_.push_back(std::move(r));
    }
    return out;
  }

  std::filesystem::path csv_path() const { return config_.directory / "learning_curve.csv"; }
  std::filesystem::path svg_path() const { return config_.directory / "learning_curve.svg"; }

 private:
  static LearningCurveConfig validated(LearningCurveConfig config) {
    config.validate();
    return config;
  }

  CsvRow header() const {
    CsvRow h{"step", "learning_rate", "train_loss"};
    for (const CurveColumn& c : held_out_) h.push_back(c.name);
    return h;
  }

  void write() const {
    std::filesystem::create_directories(config_.directory);
    std::vector<CsvRow> records;
    ChartSeries train{"training loss (mean since the previous row)", {}};
    std::vector<ChartSeries> plotted;
    for (const CurveColumn& c : held_out_)
      if (c.plotted) plotted.push_back({c.name, {}});
    for (const Row& r : rows_) {
      CsvRow record{csv_number(r.step), csv_number(r.learning_rate), csv_number(r.train_loss)};
      for (std::size_t c = 0; c < held_out_.size(); ++c)
        record.push_back(r.held_out.empty() ? "" : csv_number(r.held_out[c]));
      records.push_back(std::move(record));
      train.points.push_back({static_cast<double>(r.step), r.train_loss, 0});
      if (r.held_out.empty()) continue;
      std::size_t s = 0;
      for (std::size_t c = 0; c < held_out_.size(); ++c)
        if (held_out_[c].plotted) plotted[s++].points.push_back({static_cast<double>(r.step), r.held_out[c], 0});
    }
    write_csv(csv_path(), header(), records);
    std::vector<ChartSeries> series{std::move(train)};
    for (ChartSeries& s : plotted)
      if (!s.points.empty()) series.push_back(std::move(s));
    write_line_chart(svg_path(),
                     LineChartConfig{.title = "Learning curve", .x_label = "step", .y_label = "loss (nats/token)"},
                     series);
  }

  LearningCurveConfig config_;
  std::vector<CurveColumn> held_out_;
  std::vector<Row> rows_;
  double loss_sum_ = 0;  // training losses since the last row
  index_t loss_steps_ = 0;
};

}  // namespace dca
