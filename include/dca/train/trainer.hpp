// dca/train/trainer.hpp — language-model training composed from the library's parts: a decoder,
// a corpus mixture and its seeded sampler, AdamW with warmup + cosine decay and global-norm
// clipping, one reusable tape, validation, and checkpoints that resume bit-identically.
//
//   dca::Trainer<float> trainer(model, corpus, {.batch_size = 16, .seq_len = 128, .total_steps = 3000});
//   while (trainer.step_count() < 3000) {
//     const double loss = trainer.step();
//     if (trainer.step_count() % 500 == 0) trainer.save_checkpoint("run/checkpoint.safetensors");
//   }
//   const double held_out = trainer.validation_loss(50);   // nats per token
#pragma once

#include "dca/io/hf.hpp"
#include "dca/train/checkpoint.hpp"
#include "dca/data/corpus.hpp"
#include "dca/train/optimizer.hpp"
#include "dca/train/schedule.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace dca {

/// Hyper-parameters of a training run (defaults: the toy pretraining run of examples/pretrain).
struct TrainerConfig {
  index_t batch_size = 16;      // sequences per step
  index_t seq_len = 128;        // tokens per sequence
  double max_lr = 2e-3;         // peak learning rate, reached after the warmup
  double min_lr = 2e-4;         // learning rate at the end of the cosine decay
  index_t warmup_steps = 100;
  index_t total_steps = 3000;   // the cosine decays over this many steps
  double weight_decay = 0.1;    // AdamW decoupled decay (matrices only, see default_decays)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip = 1.0;       // global gradient-norm limit; 0: no clipping
  std::uint64_t seed = 1;       // the batch sampler's seed

  void validate() const {
    if (batch_size < 1 || seq_len < 1)
      detail::fail<RangeError>("TrainerConfig: batch_size ", batch_size, " and seq_len ", seq_len, " must be ≥ 1");
    if (!(grad_clip >= 0)) detail::fail<RangeError>("TrainerConfig: grad_clip must be ≥ 0, got ", grad_clip);
    WarmupCosine{max_lr, min_lr, warmup_steps, total_steps}.validate();
  }
};

template <Scalar T>
class Trainer {
 public:
  /// The model and the corpus must outlive the trainer. The model's parameters are trained in
  /// place (frozen ones are left alone).
  Trainer(Decoder<T>& model, const CorpusMixture& corpus, TrainerConfig config)
      : model_(model), corpus_(corpus), config_(validated(config)),
        optimizer_(model.parameters(), AdamWConfig{config.max_lr, config.beta1, config.beta2, 1e-8, config.weight_decay}),
        sampler_(corpus, config.seed) {
    corpus.check_windows("Trainer", Split::train, config.seq_len);
  }

  /// One optimizer step on a fresh training batch; returns its mean loss (nats per token).
  double step() {
    const Batch batch = sampler_.sample(config_.batch_size, config_.seq_len);
    tape_.reset();
    const Var<T> loss = model_.loss(tape_, batch.inputs, batch.targets, batch.batch);
    tape_.backward(loss);
    if (config_.grad_clip > 0) last_grad_norm_ = static_cast<double>(clip_grad_norm(model_.parameters(), config_.grad_clip));
    optimizer_.step(learning_rate());
    optimizer_.zero_grad();
    ++step_count_;
    return static_cast<double>(loss.item());
  }

  /// Mean loss over up to `max_batches` fixed held-out batches (the same ones on every call).
  double validation_loss(index_t max_batches) {
    double total = 0;
    index_t tokens = 0;
    for (const Batch& batch : corpus_.validation_batches(config_.batch_size, config_.seq_len, max_batches)) {
      tape_.reset();
      NoGradGuard<T> no_grad(tape_);
      const Var<T> loss = model_.loss(tape_, batch.inputs, batch.targets, batch.batch);
      total += static_cast<double>(loss.item()) * static_cast<double>(batch.inputs.size());
      tokens += static_cast<index_t>(batch.inputs.size());
    }
    tape_.reset();
    return total / static_cast<double>(tokens);
  }

  /// The learning rate of the next step.
  double learning_rate() const {
    return WarmupCosine{config_.max_lr, config_.min_lr, config_.warmup_steps, config_.total_steps}(step_count_);
  }
  index_t step_count() const { return step_count_; }
  double last_grad_norm() const { return last_grad_norm_; }
  const TrainerConfig& config() const { return config_; }

  /// Writes model weights, optimizer state, step count and sampler state to one safetensors file,
  /// atomically: an interrupted save never leaves a damaged checkpoint under `path`.
  void save_checkpoint(const std::filesystem::path& path) const {
    write_checkpoint<T>(path, model_.parameters(), optimizer_,
                        {{"config", hf_config_to_json(model_.config()).dump()},
                         {"step", std::to_string(step_count_)},
                         {"sampler", sampler_.state()}});
  }

  /// Restores a checkpoint written by `save_checkpoint` for the same architecture. Everything is
  /// checked before anything changes: a missing or misshapen tensor, or a checkpoint of another
  /// architecture, throws FormatError and leaves model, optimizer and trainer as they were.
  void load_checkpoint(const std::filesystem::path& path) {
    const std::string config = hf_config_to_json(model_.config()).dump();
    const std::string required[] = {"config", "step", "sampler"};
    const auto metadata = read_checkpoint<T>(path, model_.parameters(), optimizer_, required, [&](const auto& meta) {
      if (meta.at("config") != config)
        detail::fail<FormatError>(path.string(), ": the checkpoint's model configuration ", meta.at("config"),
                                  " differs from this model's ", config);
      checkpoint_count(path.string(), meta, "step");
      Rng(0).set_state(meta.at("sampler"));  // validates the text before anything changes
    });
    sampler_.set_state(metadata.at("sampler"));
    step_count_ = checkpoint_count(path.string(), metadata, "step");
  }

 private:
  static TrainerConfig validated(const TrainerConfig& config) {
    config.validate();
    return config;
  }

  Decoder<T>& model_;
  const CorpusMixture& corpus_;
  TrainerConfig config_;
  AdamW<T> optimizer_;
  BatchSampler sampler_;
  Tape<T> tape_;
  index_t step_count_ = 0;
  double last_grad_norm_ = 0;
};

}  // namespace dca
