// dca/train/loop.hpp — the optimisation loop every trainer shares: one reusable tape, AdamW over
// parameter groups with warmup + cosine decay and global-norm clipping, the step count, an
// optional learning curve, and checkpoints that resume bit-identically. A trainer says what to
// compute (a loss on the tape); the loop says how to optimise it.
//
// A step whose loss or gradient norm is NaN or infinite is refused before the update: DivergenceError
// naming the step, the loss, the norm and the first parameter at fault, with the parameters, the
// optimizer state and the step count left at the last good step — so a trainer that saves a
// checkpoint after its steps never overwrites a good one with a diverged one.
//
//   dca::TrainingLoop<float> loop({{"model", model.parameters()}}, {.max_lr = 1e-3, .total_steps = 500});
//   while (loop.step_count() < 500)
//     loop.step([&](dca::Tape<float>& tape) { return model.loss(tape, ids, targets, batch); });
//   loop.save_checkpoint("run/checkpoint.safetensors", {{"sampler", sampler.state()}});
//
// A loss made of independent parts (the halves of a batch) can instead run its parts side by side,
// one thread each: loop.step_parts(2, shared_pass, part_loss).
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/train/checkpoint.hpp"
#include "dca/train/learning_curve.hpp"
#include "dca/train/optimizer.hpp"
#include "dca/train/schedule.hpp"

#include <cmath>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dca {

/// How a loop optimises: the learning-rate schedule, AdamW and clipping. The defaults are the
/// pretraining run of examples/pretrain; a trainer's config may start from other values, and a
/// designated `.optimization = {...}` starts again from these.
struct OptimizationConfig {
  double max_lr = 2e-3;  // peak learning rate, reached after the warmup
  double min_lr = 2e-4;  // learning rate at the end of the cosine decay
  index_t warmup_steps = 100;
  index_t total_steps = 3000;  // the cosine decays over this many steps
  double weight_decay = 0.1;   // AdamW's decoupled decay of the parameters default_decays selects (matrices)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // global gradient-norm limit; 0: no clipping

  WarmupCosine schedule() const { return {max_lr, min_lr, warmup_steps, total_steps}; }
  AdamWConfig adamw() const { return {max_lr, beta1, beta2, eps, weight_decay}; }

  /// RangeError naming the first field outside its range.
  void validate() const {
    schedule().validate();
    adamw().validate();
    if (!(grad_clip >= 0) || !std::isfinite(grad_clip))
      detail::fail<RangeError>("OptimizationConfig: grad_clip = ", grad_clip, " must be finite and ≥ 0");
  }
};

template <Scalar T>
class TrainingLoop {
 public:
  /// Held-out values for a learning-curve row, one per curve column, computed on the loop's tape.
  using Evaluation = std::function<std::vector<double>(Tape<T>&)>;

  /// A loop over `groups` (their parameters must outlive it). Frozen parameters are left alone.
  TrainingLoop(std::vector<ParameterGroup<T>> groups, OptimizationConfig config)
      : config_(validated(config)),
        optimizer_(groups, config.adamw()),
        parameters_(optimizer_.parameters().begin(), optimizer_.parameters().end()) {}

  /// Records a learning curve with these held-out columns; `evaluate` fills them on the rows
  /// `curve.evaluate_every` selects. Call before the first step.
  void record_curve(LearningCurveConfig curve, std::vector<CurveColumn> columns, Evaluation evaluate) {
    if (step_count_ > 0)
      detail::fail<UsageError>("TrainingLoop::record_curve: ", step_count_, " steps have run already");
    if (curve.evaluate_every > 0 && !evaluate)
      detail::fail<UsageError>("TrainingLoop::record_curve: evaluate_every = ", curve.evaluate_every,
                               " without an evaluation");
    curve_.emplace(std::move(curve), std::move(columns));
    evaluate_ = std::move(evaluate);
  }

  /// One optimizer step on the loss `loss_of(tape)` puts on the freshly reset tape ([1,1]);
  /// returns it. Adds a learning-curve row when one is due.
  template <class LossOf>
  double step(LossOf&& loss_of) {
    tape_.reset();
    double loss = 0;
    try {
      const Var<T> value = loss_of(tape_);
      tape_.backward(value);
      loss = static_cast<double>(value.item());
    } catch (...) {
      optimizer_.zero_grad();  // a backward pass cut short must not leave half a gradient to the next step
      throw;
    }
    return finish_step(loss);
  }

  /// One optimizer step on a loss that is the sum of `parts` independent parts — the halves of a
  /// batch, say: `shared(tape)` runs first, on the loop's tape (what every part reads, such as a
  /// frozen model's pass over the whole batch, as constants), then `part(tape, i)` for each i in
  /// [0, parts) on a tape of its own, returning that part's share of the loss ([1,1]). With at least
  /// `parts` threads the parts run side by side, each on one thread with single-threaded kernels
  /// (for small models this scales better than threading every op); otherwise one after the other.
  /// Either way the result is the same bits: part i's gradients go to buffers of its own and are
  /// added to the parameters' in part order. Returns the loss (the parts' sum).
  template <class Shared, class Part>
  double step_parts(index_t parts, Shared&& shared, Part&& part) {
    if (parts < 1) detail::fail<RangeError>("TrainingLoop::step_parts: ", parts, " parts; at least one");
    tape_.reset();
    shared(tape_);
    prepare_parts(parts);
    std::vector<double> losses(static_cast<std::size_t>(parts), 0.0);
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(parts));
    const auto run = [&](index_t i) {
      try {
        Tape<T>& tape = i == 0 ? tape_ : *part_tapes_[static_cast<std::size_t>(i - 1)];
        const Var<T> loss = part(tape, i);
        tape.backward(loss);
        losses[static_cast<std::size_t>(i)] = static_cast<double>(loss.item());
      } catch (...) {
        errors[static_cast<std::size_t>(i)] = std::current_exception();
      }
    };
#if defined(_OPENMP)
    if (parts > 1 && num_threads() >= parts && !omp_in_parallel()) {
#pragma omp parallel num_threads(static_cast<int>(parts))
      for (index_t i = omp_get_thread_num(); i < parts; i += omp_get_num_threads()) run(i);
    } else
#endif
    {
      for (index_t i = 0; i < parts; ++i) run(i);
    }
    for (const std::exception_ptr& error : errors)
      if (error) {
        clear_part_gradients();
        optimizer_.zero_grad();  // part 0's, which went to the parameters' own buffers
        std::rethrow_exception(error);
      }
    add_part_gradients();
    double loss = 0;
    for (const double l : losses) loss += l;
    return finish_step(loss);
  }

  /// The learning rate of the next step (before each group's multiplier).
  double learning_rate() const { return config_.schedule()(step_count_); }
  index_t step_count() const { return step_count_; }
  /// The gradient norm before clipping at the last step (computed with clipping off too: every
  /// step checks it is finite).
  double last_grad_norm() const { return last_grad_norm_; }
  const OptimizationConfig& config() const { return config_; }
  const AdamW<T>& optimizer() const { return optimizer_; }
  /// The learning curve, or null when none is recorded.
  const LearningCurve* curve() const { return curve_ ? &*curve_ : nullptr; }
  /// The tape steps run on; between steps, free for evaluations.
  Tape<T>& tape() { return tape_; }

  /// Every group's parameters, the optimizer state, the step count, the learning curve's partial
  /// sums and `metadata` in one file, atomically.
  void save_checkpoint(const std::filesystem::path& path, std::map<std::string, std::string> metadata) const {
    metadata["step"] = std::to_string(step_count_);
    if (curve_) metadata.merge(curve_->state());
    write_checkpoint<T>(path, parameters_, optimizer_, std::move(metadata));
  }

  /// Restores a checkpoint of `save_checkpoint`: the metadata keys in `required` must exist and
  /// `validate(metadata)` (which throws on a mismatch) must accept them; the learning curve keeps
  /// its rows up to the checkpoint's step. Everything is checked before anything changes (FormatError
  /// otherwise). Returns the metadata, for the trainer's own state.
  template <class Validate>
  std::map<std::string, std::string> load_checkpoint(const std::filesystem::path& path,
                                                     std::span<const std::string> required, const Validate& validate) {
    std::vector<std::string> keys(required.begin(), required.end());
    keys.push_back("step");
    std::optional<LearningCurve> curve;
    const auto metadata = read_checkpoint<T>(path, parameters_, optimizer_, keys, [&](const auto& meta) {
      const index_t step = checkpoint_count(path.string(), meta, "step");
      validate(meta);
      if (curve_) curve.emplace(curve_->resumed(meta, step));
    });
    step_count_ = checkpoint_count(path.string(), metadata, "step");
    if (curve) curve_ = std::move(curve);
    return metadata;
  }

 private:
  static OptimizationConfig validated(const OptimizationConfig& config) {
    config.validate();
    return config;
  }

  // After the backward pass: the divergence check, clipping, the update, the step count and the
  // learning curve. The check comes first because everything after it is irreversible: AdamW's
  // moments absorb a NaN for good, and the caller's next checkpoint would store it.
  double finish_step(double loss) {
    const std::span<Parameter<T>* const> parameters(parameters_);
    const double norm = grad_norm(parameters);  // one pass over the gradients, which clipping needs anyway
    if (!std::isfinite(loss) || !std::isfinite(norm)) refuse_diverged_step(loss, norm);
    if (config_.grad_clip > 0) scale_to_norm(parameters, norm, config_.grad_clip);
    last_grad_norm_ = norm;
    const double rate = learning_rate();
    optimizer_.step(rate);
    optimizer_.zero_grad();
    ++step_count_;
    if (curve_ && curve_->add_step(step_count_, loss))
      curve_->add_row(step_count_, rate, curve_->evaluation_due(step_count_) ? evaluate_(tape_) : std::vector<double>{});
    return loss;
  }

  // DivergenceError for the step about to run (step_count_ + 1), after zeroing its gradients, so
  // that a caller who catches it (to lower the rate and go on, say) starts the next step clean.
  [[noreturn]] void refuse_diverged_step(double loss, double norm) {
    const std::string culprit = std::isfinite(norm) ? std::string("every gradient is finite; the loss alone is not")
                                                    : describe_non_finite_gradient(std::span<Parameter<T>* const>(parameters_));
    optimizer_.zero_grad();
    detail::fail<DivergenceError>(
        "TrainingLoop: training diverged at step ", step_count_ + 1, ": loss = ", detail::shown(loss),
        ", gradient norm = ", detail::shown(norm), "; ", culprit, ". Nothing was updated: the parameters and the "
        "optimizer state are those of step ", step_count_, ". To find the op that first produced a non-finite value, "
        "rerun with tape().set_check_finite(true); a lower max_lr or grad_clip > 0 may avoid the divergence");
  }

  // Tapes and gradient buffers for parts 1..parts−1 (part 0 uses the loop's tape and the
  // parameters' own buffers), kept from step to step; the buffers are zero between steps.
  void prepare_parts(index_t parts) {
    while (static_cast<index_t>(part_tapes_.size()) < parts - 1) {
      part_tapes_.push_back(std::make_unique<Tape<T>>());
      part_gradients_.emplace_back();
      std::vector<std::pair<const Parameter<T>*, T*>> redirects;
      for (Parameter<T>* p : parameters_) {
        part_gradients_.back().emplace_back(p->shape());
        redirects.emplace_back(p, part_gradients_.back().back().data());
      }
      part_tapes_.back()->redirect_gradients(std::move(redirects));
    }
    for (index_t i = 0; i + 1 < parts; ++i) part_tapes_[static_cast<std::size_t>(i)]->reset();
    parts_in_use_ = parts;
  }

  // Adds the gradients parts 1.. computed to the parameters', in part order, zeroing the buffers.
  void add_part_gradients() {
    for (index_t i = 0; i + 1 < parts_in_use_; ++i)
      for (std::size_t k = 0; k < parameters_.size(); ++k) {
        if (!part_tapes_[static_cast<std::size_t>(i)]->redirect_used(k)) continue;
        Tensor<T>& g = part_gradients_[static_cast<std::size_t>(i)][k];
        T* into = parameters_[k]->grad_buffer();
        T* from = g.data();
        detail::parallel_chunks(g.numel(), detail::parallel_min_elements, g.numel(), [&](index_t begin, index_t end) {
          detail::flat_range(into, begin, end) += detail::flat_range(static_cast<const T*>(from), begin, end);
          std::fill(from + begin, from + end, T(0));  // zero between steps
        });
      }
  }

  // Zeroes the gradient buffers parts 1.. used.
  void clear_part_gradients() {
    for (index_t i = 0; i + 1 < parts_in_use_; ++i)
      for (std::size_t k = 0; k < parameters_.size(); ++k)
        if (part_tapes_[static_cast<std::size_t>(i)]->redirect_used(k)) {
          Tensor<T>& g = part_gradients_[static_cast<std::size_t>(i)][k];
          detail::zero_fill(g.data(), g.numel());
        }
  }

  OptimizationConfig config_;
  AdamW<T> optimizer_;
  std::vector<Parameter<T>*> parameters_;  // every group's, in group order
  Tape<T> tape_;
  std::vector<std::unique_ptr<Tape<T>>> part_tapes_;             // step_parts: parts 1..
  std::vector<std::vector<Tensor<T>>> part_gradients_;           // their gradients, per parameter
  index_t parts_in_use_ = 1;
  index_t step_count_ = 0;
  double last_grad_norm_ = 0;
  std::optional<LearningCurve> curve_;
  Evaluation evaluate_;
};

}  // namespace dca
