// dca/coproc/trainer.hpp — training a coprocessor through a frozen decoder on plain text: what
// each step computes (a fresh batch, fresh augmentation points, the structured loss). How it is
// optimised — AdamW over parameter groups, the schedule, clipping, the learning curve, checkpoints —
// is dca::TrainingLoop's.
//
//   decoder.freeze();
//   dca::Coprocessor<float, 16> coprocessor(decoder, {.n_ahead = 16});
//   dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, {.points_per_sequence = 16});
//   for (int i = 0; i < 1000; ++i) trainer.step();
//   auto table = trainer.evaluate(20);   // table.augmented[n−1] vs table.baseline[n−1]
#pragma once

#include "dca/coproc/coprocessor.hpp"
#include "dca/coproc/evaluate.hpp"
#include "dca/data/corpus.hpp"
#include "dca/train/loop.hpp"

#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace dca {

struct CoprocessorTrainerConfig {
  index_t batch_size = 8;            // sequences per step
  index_t seq_len = 128;             // tokens per sequence
  index_t points_per_sequence = 16;  // K augmentation points per sequence, drawn afresh every step
  std::uint64_t seed = 1;            // batches and augmentation points
  // The coprocessor starts from trained weights: a tenth of the pretraining rate, no decay.
  OptimizationConfig optimization{
      .max_lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 50, .total_steps = 1000, .weight_decay = 0.0};
  double new_lr_multiplier = 1.0;  // the rate of the parameters initialised here — soft tokens, the
                                   // latent projection, LoRA's B — relative to the copied weights
  LearningCurveConfig curve;       // off unless curve.every > 0; held-out rows: evaluate(eval_batches, eval_points)
  // Points to take first (AugmentationPlan::preferring), given a sequence [T] and a point t; the
  // rest of the K are uniform. Empty: all K uniform (the paper's recipe).
  std::function<bool(std::span<const index_t>, index_t)> preferred_points;
  // Or a score of every token slot of a batch [B·T]: each sequence's K highest-scored points
  // (AugmentationPlan::top_scored). At most one of the two.
  std::function<std::vector<double>(const Batch&)> point_scores;

  void validate() const {
    if (batch_size < 1 || seq_len < 2 || points_per_sequence < 1)
      detail::fail<RangeError>("CoprocessorTrainerConfig: batch_size ", batch_size, ", seq_len ", seq_len,
                               " and points_per_sequence ", points_per_sequence, " must be positive (seq_len ≥ 2)");
    if (!(new_lr_multiplier >= 0) || !std::isfinite(new_lr_multiplier))
      detail::fail<RangeError>("CoprocessorTrainerConfig: new_lr_multiplier = ", new_lr_multiplier,
                               " must be finite and ≥ 0");
    if (preferred_points && point_scores)
      detail::fail<UsageError>("CoprocessorTrainerConfig: preferred_points and point_scores both choose the points; "
                               "set one");
    optimization.validate();
    curve.validate();
  }
};

template <Scalar T, index_t NumLatents, AheadObjective Objective>
class CoprocessorTrainer {
 public:
  /// The decoder must be frozen; decoder, coprocessor and corpus must outlive the trainer.
  CoprocessorTrainer(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                     const CorpusMixture& corpus, CoprocessorTrainerConfig config)
      : decoder_(decoder),
        coprocessor_(coprocessor),
        corpus_(corpus),
        config_(validated(config)),
        loop_(coprocessor.parameter_groups(config.new_lr_multiplier), config.optimization),
        sampler_(corpus, config.seed),
        points_rng_(config.seed + 1) {
    corpus.check_windows("CoprocessorTrainer", Split::train, config.seq_len);
    if (config.seq_len - coprocessor.config().n_ahead < config.points_per_sequence)
      detail::fail<RangeError>("CoprocessorTrainer: ", config.points_per_sequence,
                               " augmentation points with N_A = ", coprocessor.config().n_ahead,
                               " ahead tokens do not fit sequences of ", config.seq_len);
    if (config_.curve.enabled())
      loop_.record_curve(config_.curve, curve_columns(), [this](Tape<T>&) { return curve_row(); });
  }

  /// One optimizer step on a fresh batch with fresh augmentation points; returns the objective.
  double step() {
    const Batch batch = sampler_.sample(config_.batch_size, config_.seq_len);
    const index_t sequences = config_.batch_size, length = config_.seq_len, k = config_.points_per_sequence,
                  n_ahead = coprocessor_.config().n_ahead;
    const AugmentationPlan plan = [&] {
      if (config_.preferred_points)
        return AugmentationPlan::preferring(sequences, length, k, n_ahead, std::span<const index_t>(batch.inputs),
                                            config_.preferred_points, points_rng_);
      if (config_.point_scores)
        return AugmentationPlan::top_scored(sequences, length, k, n_ahead,
                                            std::span<const double>(config_.point_scores(batch)), points_rng_);
      return AugmentationPlan::random(sequences, length, k, n_ahead, points_rng_);
    }();
    return loop_.step([&](Tape<T>& tape) {
      AugmentedLoss<T> loss =
          coprocessor_.loss(tape, decoder_, batch.inputs, plan);  // the window's first seq_len tokens
      last_per_position_ = std::move(loss.per_position);
      return loss.loss;
    });
  }

  /// Held-out per-position losses over up to `max_batches` fixed validation batches, each
  /// sequence augmented at `points` fixed points (the same on every call; 0: every point).
  AheadEvaluation evaluate(index_t max_batches, index_t points = 0) {
    const auto batches = corpus_.validation_batches(config_.batch_size, config_.seq_len, max_batches);
    return evaluate_ahead(decoder_, coprocessor_, std::span<const Batch>(batches), points, config_.seed + 7);
  }

  /// The learning rate of the next step (the new parameters' is new_lr_multiplier times it).
  double learning_rate() const { return loop_.learning_rate(); }
  index_t step_count() const { return loop_.step_count(); }
  /// The learning curve (config.curve), or null when it is off.
  const LearningCurve* learning_curve() const { return loop_.curve(); }
  const CoprocessorTrainerConfig& config() const { return config_; }
  /// Per-position training losses of the last step.
  const std::vector<double>& last_per_position() const { return last_per_position_; }

  /// Coprocessor weights, optimizer state, step count and random states, atomically.
  void save_checkpoint(const std::filesystem::path& path) const {
    loop_.save_checkpoint(path, {{"sampler", sampler_.state()},
                                 {"points", points_rng_.state()},
                                 {"latents", std::to_string(coprocessor_.n_latents())},
                                 {"n_ahead", std::to_string(coprocessor_.config().n_ahead)}});
  }

  /// Restores a checkpoint of a coprocessor of the same shape; nothing changes on error.
  void load_checkpoint(const std::filesystem::path& path) {
    const std::string required[] = {"sampler", "points", "latents", "n_ahead"};
    const auto metadata = loop_.load_checkpoint(path, required, [&](const auto& meta) {
      if (meta.at("latents") != std::to_string(coprocessor_.n_latents()) ||
          meta.at("n_ahead") != std::to_string(coprocessor_.config().n_ahead))
        detail::fail<FormatError>(path.string(), ": a checkpoint of a coprocessor with ", meta.at("latents"),
                                  " latents and N_A = ", meta.at("n_ahead"), ", not ", coprocessor_.n_latents(), " and ",
                                  coprocessor_.config().n_ahead);
      Rng(0).set_state(meta.at("sampler"));  // validates the texts before anything changes
      Rng(0).set_state(meta.at("points"));
    });
    sampler_.set_state(metadata.at("sampler"));
    points_rng_.set_state(metadata.at("points"));
  }

 private:
  static CoprocessorTrainerConfig validated(const CoprocessorTrainerConfig& config) {
    config.validate();
    return config;
  }

  // The curve's held-out columns: the mean loss over n = 1..N_A with and without the latents
  // (plotted), then each position's.
  std::vector<CurveColumn> curve_columns() const {
    std::vector<CurveColumn> columns{{"held_out_augmented", true}, {"held_out_frozen", true}};
    for (const char* kind : {"augmented", "frozen"})
      for (index_t n = 1; n <= coprocessor_.config().n_ahead; ++n)
        columns.push_back({detail::concat("held_out_", kind, "_n", n), false});
    return columns;
  }

  std::vector<double> curve_row() {
    const AheadEvaluation table = evaluate(config_.curve.eval_batches, config_.curve.eval_points);
    std::vector<double> row{table.mean_augmented(), table.mean_baseline()};
    row.insert(row.end(), table.augmented.begin(), table.augmented.end());
    row.insert(row.end(), table.baseline.begin(), table.baseline.end());
    return row;
  }

  Decoder<T>& decoder_;
  Coprocessor<T, NumLatents, Objective>& coprocessor_;
  const CorpusMixture& corpus_;
  CoprocessorTrainerConfig config_;
  TrainingLoop<T> loop_;
  BatchSampler sampler_;
  Rng points_rng_;
  std::vector<double> last_per_position_;
};

}  // namespace dca
