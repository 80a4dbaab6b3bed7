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

#include <algorithm>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace dca {

/// What one optimizer step on a coprocessor's structured loss returns.
struct CoprocessorStep {
  double loss = 0;                   // the objective
  std::vector<double> per_position;  // mean cross-entropy of the n-th ahead token, n = 1..N_A
  index_t parts = 1;                 // how many parts the batch was computed in
};

/// The number of parts coprocessor_step splits a plan into: one per thread of the library, at most
/// one per point of a sequence, and 1 when the coprocessor cannot be split (a gate, the last-layer
/// input) or runs inside a parallel region.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
index_t coprocessor_step_parts(const Coprocessor<T, NumLatents, Objective>& coprocessor, const AugmentationPlan& plan) {
  if (!coprocessor.splittable()) return 1;
#if defined(_OPENMP)
  if (omp_in_parallel()) return 1;
#endif
  return std::clamp<index_t>(num_threads(), 1, plan.points_per_sequence);
}

/// One optimizer step of `loop` (over the coprocessor's parameter groups) on the structured loss of
/// ids [B·T] augmented at `plan`. On several threads the batch is split into parts — each a slice of
/// every sequence's points (AugmentationPlan::part) — that run side by side, each on one thread
/// with single-threaded kernels, after the frozen decoder's pass over the tokens, which they share
/// (TrainingLoop::step_parts): at these model sizes that scales better than threading every op. The
/// loss is each part's mean over its groups weighted by its share of them. On one thread (or for a
/// coprocessor that cannot be split) it is the plain loss; the parts change the rounding, so runs
/// compare bit for bit at the same thread count.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
CoprocessorStep coprocessor_step(TrainingLoop<T>& loop, Coprocessor<T, NumLatents, Objective>& coprocessor,
                                 Decoder<T>& decoder, std::span<const index_t> ids, const AugmentationPlan& plan) {
  CoprocessorStep out;
  out.parts = coprocessor_step_parts(coprocessor, plan);
  if (out.parts == 1) {
    out.loss = loop.step([&](Tape<T>& tape) {
      AugmentedLoss<T> loss = coprocessor.loss(tape, decoder, ids, plan);
      out.per_position = std::move(loss.per_position);
      return loss.loss;
    });
    return out;
  }
  coprocessor.check_plan(ids, plan);
  std::vector<AugmentationPlan> plans;
  for (index_t i = 0; i < out.parts; ++i) plans.push_back(plan.part(i, out.parts));
  std::vector<std::vector<double>> per_position(static_cast<std::size_t>(out.parts));
  TokenPass<T> tokens;
  out.loss = loop.step_parts(
      out.parts,
      [&](Tape<T>& tape) {
        coprocessor.check_decoder(decoder, true);
        tokens = Coprocessor<T, NumLatents, Objective>::read_tokens(tape, decoder, ids, plan.batch);
      },
      [&](Tape<T>& tape, index_t i) {
        const AugmentationPlan& part = plans[static_cast<std::size_t>(i)];
        AugmentedLoss<T> loss = coprocessor.loss_given_tokens(tape, decoder, ids, part, tokens);
        per_position[static_cast<std::size_t>(i)] = std::move(loss.per_position);
        const double share = static_cast<double>(part.groups()) / static_cast<double>(plan.groups());
        return scale(loss.loss, static_cast<T>(share));
      });
  out.per_position.assign(per_position[0].size(), 0.0);
  for (index_t i = 0; i < out.parts; ++i) {
    const double share = static_cast<double>(plans[static_cast<std::size_t>(i)].groups()) /
                         static_cast<double>(plan.groups());
    for (std::size_t n = 0; n < out.per_position.size(); ++n)
      out.per_position[n] += share * per_position[static_cast<std::size_t>(i)][n];
  }
  return out;
}

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
    CoprocessorStep done = coprocessor_step(loop_, coprocessor_, decoder_, std::span<const index_t>(batch.inputs), plan);
    last_per_position_ = std::move(done.per_position);
    return done.loss;
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
