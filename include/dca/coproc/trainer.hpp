// dca/coproc/trainer.hpp — training a coprocessor through a frozen decoder on plain text, and
// evaluating it on held-out text (coproc/evaluate.hpp).
//
//   decoder.freeze();
//   dca::Coprocessor<float, 16> coprocessor(decoder, {.n_ahead = 16});
//   dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, {.points_per_sequence = 16});
//   for (int i = 0; i < 1000; ++i) trainer.step();
//   auto table = trainer.evaluate(20);   // table.augmented[n−1] vs table.baseline[n−1]
#pragma once

#include "dca/coproc/coprocessor.hpp"
#include "dca/coproc/evaluate.hpp"
#include "dca/train/checkpoint.hpp"
#include "dca/data/corpus.hpp"
#include "dca/train/schedule.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace dca {

struct CoprocessorTrainerConfig {
  index_t batch_size = 8;            // sequences per step
  index_t seq_len = 128;             // tokens per sequence
  index_t points_per_sequence = 16;  // K augmentation points per sequence, drawn afresh every step
  double max_lr = 1e-3;              // peak learning rate (AdamW)
  double min_lr = 1e-4;              // end of the cosine decay
  index_t warmup_steps = 50;
  index_t total_steps = 1000;
  double weight_decay = 0.0;         // the coprocessor starts from trained weights: no decay by default
  double grad_clip = 1.0;            // 0: off
  std::uint64_t seed = 1;            // batches and augmentation points

  void validate() const {
    if (batch_size < 1 || seq_len < 2 || points_per_sequence < 1)
      detail::fail<RangeError>("CoprocessorTrainerConfig: batch_size ", batch_size, ", seq_len ", seq_len,
                               " and points_per_sequence ", points_per_sequence, " must be positive (seq_len ≥ 2)");
    if (!(grad_clip >= 0)) detail::fail<RangeError>("CoprocessorTrainerConfig: grad_clip must be ≥ 0, got ", grad_clip);
    WarmupCosine{max_lr, min_lr, warmup_steps, total_steps}.validate();
  }
};

template <Scalar T, index_t NumLatents, AheadObjective Objective>
class CoprocessorTrainer {
 public:
  /// The decoder must be frozen; decoder, coprocessor and corpus must outlive the trainer.
  CoprocessorTrainer(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor, const CorpusMixture& corpus,
                     CoprocessorTrainerConfig config)
      : decoder_(decoder), coprocessor_(coprocessor), corpus_(corpus), config_(validated(config)),
        optimizer_(coprocessor.parameters(), AdamWConfig{config.max_lr, 0.9, 0.95, 1e-8, config.weight_decay}),
        sampler_(corpus, config.seed), points_rng_(config.seed + 1) {
    corpus.check_windows("CoprocessorTrainer", Split::train, config.seq_len);
    if (config.seq_len - coprocessor.config().n_ahead < config.points_per_sequence)
      detail::fail<RangeError>("CoprocessorTrainer: ", config.points_per_sequence, " augmentation points with N_A = ",
                               coprocessor.config().n_ahead, " ahead tokens do not fit sequences of ", config.seq_len);
  }

  /// One optimizer step on a fresh batch with fresh augmentation points; returns the objective.
  double step() {
    const Batch batch = sampler_.sample(config_.batch_size, config_.seq_len);
    const auto& sequences = batch.inputs;  // the window's first seq_len tokens
    const AugmentationPlan plan = AugmentationPlan::random(config_.batch_size, config_.seq_len, config_.points_per_sequence,
                                                           coprocessor_.config().n_ahead, points_rng_);
    tape_.reset();
    const AugmentedLoss<T> loss = coprocessor_.loss(tape_, decoder_, sequences, plan);
    tape_.backward(loss.loss);
    if (config_.grad_clip > 0) clip_grad_norm(coprocessor_.parameters(), config_.grad_clip);
    optimizer_.step(learning_rate());
    optimizer_.zero_grad();
    ++step_count_;
    last_per_position_ = loss.per_position;
    return static_cast<double>(loss.loss.item());
  }

  /// Held-out per-position losses over up to `max_batches` fixed validation batches, each
  /// sequence augmented at `points` fixed points (the same on every call; 0: every point).
  AheadEvaluation evaluate(index_t max_batches, index_t points = 0) {
    const auto batches = corpus_.validation_batches(config_.batch_size, config_.seq_len, max_batches);
    return evaluate_ahead(decoder_, coprocessor_, std::span<const Batch>(batches), points, config_.seed + 7);
  }

  double learning_rate() const {
    return WarmupCosine{config_.max_lr, config_.min_lr, config_.warmup_steps, config_.total_steps}(step_count_);
  }
  index_t step_count() const { return step_count_; }
  /// Per-position training losses of the last step.
  const std::vector<double>& last_per_position() const { return last_per_position_; }

  /// Coprocessor weights, optimizer state, step count and random states, atomically.
  void save_checkpoint(const std::filesystem::path& path) const {
    write_checkpoint<T>(path, coprocessor_.parameters(), optimizer_,
                        {{"step", std::to_string(step_count_)},
                         {"sampler", sampler_.state()},
                         {"points", points_rng_.state()},
                         {"latents", std::to_string(NumLatents)},
                         {"n_ahead", std::to_string(coprocessor_.config().n_ahead)}});
  }

  /// Restores a checkpoint of a coprocessor of the same shape; nothing changes on error.
  void load_checkpoint(const std::filesystem::path& path) {
    const std::string required[] = {"step", "sampler", "points", "latents", "n_ahead"};
    const auto metadata = read_checkpoint<T>(path, coprocessor_.parameters(), optimizer_, required, [&](const auto& meta) {
      if (meta.at("latents") != std::to_string(NumLatents) ||
          meta.at("n_ahead") != std::to_string(coprocessor_.config().n_ahead))
        detail::fail<FormatError>(path.string(), ": a checkpoint of a coprocessor with ", meta.at("latents"),
                                  " latents and N_A = ", meta.at("n_ahead"), ", not ", NumLatents, " and ",
                                  coprocessor_.config().n_ahead);
      checkpoint_count(path.string(), meta, "step");
      Rng(0).set_state(meta.at("sampler"));
      Rng(0).set_state(meta.at("points"));
    });
    sampler_.set_state(metadata.at("sampler"));
    points_rng_.set_state(metadata.at("points"));
    step_count_ = checkpoint_count(path.string(), metadata, "step");
  }

 private:
  static CoprocessorTrainerConfig validated(const CoprocessorTrainerConfig& config) {
    config.validate();
    return config;
  }

  Decoder<T>& decoder_;
  Coprocessor<T, NumLatents, Objective>& coprocessor_;
  const CorpusMixture& corpus_;
  CoprocessorTrainerConfig config_;
  AdamW<T> optimizer_;
  BatchSampler sampler_;
  Rng points_rng_;
  Tape<T> tape_;
  index_t step_count_ = 0;
  std::vector<double> last_per_position_;
};

}  // namespace dca
