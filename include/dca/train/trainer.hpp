// dca/train/trainer.hpp — language-model training: what each step computes (a decoder's
// next-token loss on a fresh batch of a corpus mixture) and the held-out loss. How it is optimised
// — AdamW with warmup + cosine decay and clipping, the learning curve, checkpoints that resume
// bit-identically — is dca::TrainingLoop's.
//
//   dca::Trainer<float> trainer(model, corpus, {.batch_size = 16, .seq_len = 128});
//   while (trainer.step_count() < 3000) {
//     const double loss = trainer.step();
//     if (trainer.step_count() % 500 == 0) trainer.save_checkpoint("run/checkpoint.safetensors");
//   }
//   const double held_out = trainer.validation_loss(50);   // nats per token
#pragma once

#include "dca/data/corpus.hpp"
#include "dca/io/hf_config.hpp"
#include "dca/nn/decoder.hpp"
#include "dca/train/loop.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace dca {

/// A training run (defaults: the toy pretraining run of examples/pretrain).
struct TrainerConfig {
  index_t batch_size = 16;          // sequences per step
  index_t seq_len = 128;            // tokens per sequence
  std::uint64_t seed = 1;           // the batch sampler's seed
  OptimizationConfig optimization;  // schedule, AdamW (decay: matrices only, see default_decays), clipping
  LearningCurveConfig curve;        // off unless curve.every > 0; held-out rows: validation_loss(eval_batches)

  void validate() const {
    if (batch_size < 1 || seq_len < 1)
      detail::fail<RangeError>("TrainerConfig: batch_size ", batch_size, " and seq_len ", seq_len, " must be ≥ 1");
    optimization.validate();
    curve.validate();
  }
};

template <Scalar T>
class Trainer {
 public:
  /// The model and the corpus must outlive the trainer. The model's parameters are trained in
  /// place (frozen ones are left alone).
  Trainer(Decoder<T>& model, const CorpusMixture& corpus, TrainerConfig config)
      : model_(model),
        corpus_(corpus),
        config_(validated(config)),
        loop_({{.name = "model", .parameters = model.parameters()}}, config.optimization),
        sampler_(corpus, config.seed) {
    corpus.check_windows("Trainer", Split::train, config.seq_len);
    if (config_.curve.enabled())
      loop_.record_curve(config_.curve, {{"held_out_loss"}},
                         [this](Tape<T>&) { return std::vector<double>{validation_loss(config_.curve.eval_batches)}; });
  }

  /// One optimizer step on a fresh training batch; returns its mean loss (nats per token).
  double step() {
    const Batch batch = sampler_.sample(config_.batch_size, config_.seq_len);
    return loop_.step([&](Tape<T>& tape) { return model_.loss(tape, batch.inputs, batch.targets, batch.batch); });
  }

  /// Mean loss over up to `max_batches` fixed held-out batches (the same ones on every call).
  double validation_loss(index_t max_batches) {
    Tape<T>& tape = loop_.tape();
    double total = 0;
    index_t tokens = 0;
    for (const Batch& batch : corpus_.validation_batches(config_.batch_size, config_.seq_len, max_batches)) {
      tape.reset();
      NoGradGuard<T> no_grad(tape);
      const Var<T> loss = model_.loss(tape, batch.inputs, batch.targets, batch.batch);
      total += static_cast<double>(loss.item()) * static_cast<double>(batch.inputs.size());
      tokens += static_cast<index_t>(batch.inputs.size());
    }
    tape.reset();
    return total / static_cast<double>(tokens);
  }

  /// The learning rate of the next step.
  double learning_rate() const { return loop_.learning_rate(); }
  index_t step_count() const { return loop_.step_count(); }
  /// The learning curve (config.curve), or null when it is off.
  const LearningCurve* learning_curve() const { return loop_.curve(); }
  double last_grad_norm() const { return loop_.last_grad_norm(); }
  const TrainerConfig& config() const { return config_; }

  /// Writes model weights, optimizer state, step count and sampler state to one safetensors file,
  /// atomically: an interrupted save never leaves a damaged checkpoint under `path`.
  void save_checkpoint(const std::filesystem::path& path) const {
    loop_.save_checkpoint(path, {{"config", hf_config_to_json(model_.config()).dump()}, {"sampler", sampler_.state()}});
  }

  /// Restores a checkpoint written by `save_checkpoint` for the same architecture. Everything is
  /// checked before anything changes: a missing or misshapen tensor, or a checkpoint of another
  /// architecture, throws FormatError and leaves model, optimizer and trainer as they were.
  void load_checkpoint(const std::filesystem::path& path) {
    const std::string config = hf_config_to_json(model_.config()).dump();
    const std::string required[] = {"config", "sampler"};
    const auto metadata = loop_.load_checkpoint(path, required, [&](const auto& meta) {
      if (meta.at("config") != config)
        detail::fail<FormatError>(path.string(), ": the checkpoint's model configuration ", meta.at("config"),
                                  " differs from this model's ", config);
      Rng(0).set_state(meta.at("sampler"));  // validates the text before anything changes
    });
    sampler_.set_state(metadata.at("sampler"));
  }

 private:
  static TrainerConfig validated(const TrainerConfig& config) {
    config.validate();
    return config;
  }

  Decoder<T>& model_;
  const CorpusMixture& corpus_;
  TrainerConfig config_;
  TrainingLoop<T> loop_;
  BatchSampler sampler_;
};

}  // namespace dca
