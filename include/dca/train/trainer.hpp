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
#include "dca/train/corpus.hpp"
#include "dca/train/optimizer.hpp"
#include "dca/train/schedule.hpp"

#include <filesystem>
#include <set>
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
    SafeTensorsWriter writer;
    for (Parameter<T>* p : model_.parameters()) writer.add("model." + p->name(), std::as_const(p->value()).view());
    for (const StateTensor<T>& s : optimizer_.state()) writer.add("optimizer." + s.name, s.value);
    writer.set_metadata("format", "dca-checkpoint-1");
    writer.set_metadata("config", hf_config_to_json(model_.config()).dump());
    writer.set_metadata("step", std::to_string(step_count_));
    writer.set_metadata("optimizer_steps", std::to_string(optimizer_.step_count()));
    writer.set_metadata("sampler", sampler_.state());
    writer.write(path);
  }

  /// Restores a checkpoint written by `save_checkpoint` for the same architecture. Everything is
  /// checked before anything changes: a missing or misshapen tensor, or a checkpoint of another
  /// architecture, throws FormatError and leaves model, optimizer and trainer as they were.
  void load_checkpoint(const std::filesystem::path& path) {
    const SafeTensors file = SafeTensors::read(path);
    const std::string name = path.string();
    const auto& meta = file.metadata();
    for (const char* key : {"format", "config", "step", "optimizer_steps", "sampler"})
      if (!meta.contains(key)) detail::fail<FormatError>(name, ": not a dca checkpoint (metadata '", key, "' is missing)");
    if (meta.at("config") != hf_config_to_json(model_.config()).dump())
      detail::fail<FormatError>(name, ": the checkpoint's model configuration ", meta.at("config"),
                                " differs from this model's ", hf_config_to_json(model_.config()).dump());
    std::vector<Tensor<T>> weights;
    std::set<std::string> known;
    for (Parameter<T>* p : model_.parameters()) {
      const std::string key = "model." + p->name();
      known.insert(key);
      if (!file.contains(key)) detail::fail<FormatError>(name, ": tensor '", key, "' is missing");
      weights.push_back(file.template tensor<T>(key));
      if (!(weights.back().shape() == p->shape()))
        detail::fail<FormatError>(name, ": tensor '", key, "' is ", weights.back().shape(), ", expected ", p->shape());
    }
    std::vector<Tensor<T>> state_values;
    std::vector<std::string> state_names;
    for (const std::string& key : file.names()) {
      if (known.contains(key)) continue;
      if (!key.starts_with("optimizer."))
        detail::fail<FormatError>(name, ": unexpected tensor '", key, "'");
      state_names.push_back(key.substr(std::string("optimizer.").size()));
      state_values.push_back(file.template tensor<T>(key));
    }
    std::vector<StateTensor<T>> state;
    for (std::size_t i = 0; i < state_values.size(); ++i) state.push_back({state_names[i], state_values[i].view()});
    const index_t step = parse_count(name, "step", meta.at("step"));
    const index_t optimizer_steps = parse_count(name, "optimizer_steps", meta.at("optimizer_steps"));
    Rng probe(0);
    probe.set_state(meta.at("sampler"));  // validates the text before anything changes
    optimizer_.load_state(state, optimizer_steps);
    std::size_t i = 0;
    for (Parameter<T>* p : model_.parameters()) p->value() = std::move(weights[i++]);
    sampler_.set_state(meta.at("sampler"));
    step_count_ = step;
  }

 private:
  static TrainerConfig validated(const TrainerConfig& config) {
    config.validate();
    return config;
  }

  static index_t parse_count(const std::string& file, const char* key, const std::string& text) {
    std::size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || value < 0)
      detail::fail<FormatError>(file, ": metadata '", key, "' = '", text, "' is not a step count");
    return static_cast<index_t>(value);
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
