// dca/train/optimizer.hpp — AdamW and SGD with momentum over `Parameter`s, and global gradient
// clipping, with PyTorch's update rules so hyper-parameters and results carry over.
//
//   dca::AdamW<float> optimizer(model.parameters(), {.lr = 3e-4, .weight_decay = 0.1});
//   tape.backward(loss);
//   dca::clip_grad_norm(model.parameters(), 1.0);
//   optimizer.step(schedule(step));
//   optimizer.zero_grad();
//
// Optimizer state lives per parameter and is allocated at a parameter's first update, so frozen
// parameters (the frozen decoder) cost no optimizer memory. It is exported and restored as named
// tensors "<parameter name>.<slot>", PyTorch's state_dict keys: "step", "exp_avg", "exp_avg_sq"
// for AdamW, "momentum_buffer" for SGD.
#pragma once

#include "dca/train/parameter_table.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace dca {

/// The default weight-decay rule: decay matrices (rank >= 2), but not biases and norm weights
/// (rank < 2) nor embeddings (the name contains "embed", "wte" or "wpe"), whose rows a decay
/// would pull toward zero without regard to how often their token occurs (GPT-2 / nanoGPT practice).
template <Scalar T>
bool default_decays(const Parameter<T>& parameter) {
  const std::string& name = parameter.name();
  const bool embedding = name.find("embed") != std::string::npos || name.find("wte") != std::string::npos ||
                         name.find("wpe") != std::string::npos;
  return parameter.shape().rank() >= 2 && !embedding;
}

/// AdamW hyper-parameters (PyTorch's names; defaults are GPT-style pre-training values).
struct AdamWConfig {
  double lr = 3e-4;           // learning rate used by `step()` without an argument; >= 0
  double beta1 = 0.9;         // decay of the first-moment average; in [0, 1)
  double beta2 = 0.95;        // decay of the second-moment average; in [0, 1) (PyTorch's default is 0.999)
  double eps = 1e-8;          // added to sqrt(v̂); > 0 so a never-moved parameter does not divide 0 by 0
  double weight_decay = 0.1;  // decoupled decay per unit learning rate; >= 0 (PyTorch's default is 0.01)

  /// Throws RangeError naming the first field outside its range.
  void validate() const;
};

/// SGD hyper-parameters (PyTorch's names, without dampening and Nesterov).
struct SgdConfig {
  double lr = 1e-2;           // learning rate used by `step()` without an argument; >= 0
  double momentum = 0.9;      // in [0, 1); 0 is plain SGD with no state (PyTorch's default is 0)
  double weight_decay = 0.0;  // L2 term added to the gradient (coupled, as PyTorch's SGD); >= 0

  /// Throws RangeError naming the first field outside its range.
  void validate() const;
};

namespace detail {

// Elements per block of the update loops: the block's slices of all four arrays stay in L1/L2 cache
// while the block's expressions run, so every array streams through memory once.
inline constexpr index_t optimizer_block = 4096;
// Parameters at least this large are updated by all OpenMP threads (the loops are bandwidth-bound).
inline constexpr index_t optimizer_parallel_elements = index_t{1} << 17;

template <Scalar T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <Scalar T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// Calls body(begin, length) for consecutive blocks covering [0, n). Elementwise bodies give the
// same result on any number of threads.
template <class Body>
void for_each_block(index_t n, const Body& body) {
  const index_t blocks = (n + optimizer_block - 1) / optimizer_block;
  [[maybe_unused]] const bool parallel = n >= optimizer_parallel_elements;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (index_t b = 0; b < blocks; ++b) {
    const index_t begin = b * optimizer_block;
    body(begin, std::min(optimizer_block, n - begin));
  }
}

// Σ x² accumulated in double. Eight independent partial sums let the compiler vectorise the
// float-to-double conversion; Eigen's cast<double>() runs scalar and is 6x slower here.
template <Scalar T>
double sum_of_squares(const T* x, index_t n) {
  constexpr index_t lanes = 8;
  double partial[lanes] = {};
  index_t i = 0;
  for (; i + lanes <= n; i += lanes)
    for (index_t k = 0; k < lanes; ++k) partial[k] += static_cast<double>(x[i + k]) * static_cast<double>(x[i + k]);
  double total = 0;
  for (; i < n; ++i) total += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (const double p : partial) total += p;
  return total;
}

}  // namespace detail

inline void AdamWConfig::validate() const {
  detail::check_non_negative("AdamWConfig", "lr", lr);
  detail::check_decay_rate("AdamWConfig", "beta1", beta1);
  detail::check_decay_rate("AdamWConfig", "beta2", beta2);
  detail::check_non_negative("AdamWConfig", "eps", eps, true);
  detail::check_non_negative("AdamWConfig", "weight_decay", weight_decay);
}

inline void SgdConfig::validate() const {
  detail::check_non_negative("SgdConfig", "lr", lr);
  detail::check_decay_rate("SgdConfig", "momentum", momentum);
  detail::check_non_negative("SgdConfig", "weight_decay", weight_decay);
}

/// AdamW (Loshchilov & Hutter) with PyTorch's exact update, per parameter p with gradient g and
/// its own step count t (incremented at each update of p):
///   p ← p − lr·wd·p                      (decoupled decay, only when the decay rule says so)
///   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
///   p ← p − lr·(m / (1−β1ᵗ)) / (√v / √(1−β2ᵗ) + eps)
/// Frozen parameters and parameters without a gradient are skipped and keep their state.
template <Scalar T>
class AdamW {
 public:
  /// One group of `parameters` at the configured weight decay.
  AdamW(std::vector<Parameter<T>*> parameters, AdamWConfig config = {}, DecayRule<T> decays = default_decays<T>)
      : AdamW(std::vector<ParameterGroup<T>>{{.name = "parameters", .parameters = std::move(parameters)}}, config, std::move(decays)) {}
  /// Parameter groups: each runs at its lr_multiplier times the step's rate, with its weight decay.
  AdamW(std::span<const ParameterGroup<T>> groups, AdamWConfig config = {}, DecayRule<T> decays = default_decays<T>)
      : config_(validated(config)),
        table_("AdamW", groups, {{"step", true}, {"exp_avg", false}, {"exp_avg_sq", false}},
               config.weight_decay, decays) {}

  /// One update of every unfrozen parameter that has a gradient, at learning rate `lr` (>= 0)
  /// times its group's multiplier.
  void step(double lr) {
    detail::check_non_negative("AdamW::step", "lr", lr);
    ++step_count_;
    updates_.clear();
    blocks_.clear();
    index_t elements = 0;
    for (std::size_t i = 0; i < table_.size(); ++i) {
      if (!table_.updatable(i)) continue;
      Parameter<T>& parameter = table_.parameter(i);
      const std::span<Tensor<T>> slots = table_.slots(i);
      const double rate = table_.rate(i, lr);
      // The count lives in a T scalar, as PyTorch's float32 `step`: for float it stops at 2²⁴ steps,
      // where βᵗ is negligible for any usual β.
      const double t = static_cast<double>(slots[0][0] += T(1));
      const double bias_correction1 = 1 - std::pow(config_.beta1, t);
      const double bias_correction2 = 1 - std::pow(config_.beta2, t);
      updates_.push_back({parameter.value().data(), parameter.grad().data(), slots[1].data(), slots[2].data(),
                          static_cast<T>(table_.decays(i) ? 1 - rate * table_.weight_decay(i) : 1.0),
                          static_cast<T>(rate / bias_correction1), static_cast<T>(std::sqrt(bias_correction2))});
      for (index_t begin = 0; begin < parameter.numel(); begin += detail::optimizer_block)
        blocks_.push_back({updates_.size() - 1, begin, std::min(detail::optimizer_block, parameter.numel() - begin)});
      elements += parameter.numel();
    }
    // Every parameter's blocks in one loop, so that small parameters share the threads as well.
    const T beta1 = static_cast<T>(config_.beta1), beta2 = static_cast<T>(config_.beta2);
    const T eps = static_cast<T>(config_.eps);
    [[maybe_unused]] const bool parallel = elements >= detail::optimizer_parallel_elements;
    const auto count = static_cast<std::ptrdiff_t>(blocks_.size());
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
    for (std::ptrdiff_t b = 0; b < count; ++b) {
      const Block& block = blocks_[static_cast<std::size_t>(b)];
      const Update& u = updates_[block.update];
      detail::ArrayMap<T> p(u.value + block.begin, block.n), m(u.exp_avg + block.begin, block.n),
          v(u.exp_avg_sq + block.begin, block.n);
      detail::ConstArrayMap<T> g(u.grad + block.begin, block.n);
      m = beta1 * m + (T(1) - beta1) * g;
      v = beta2 * v + (T(1) - beta2) * g.square();
      p = u.decay * p - u.step_size * (m / (v.sqrt() / u.sqrt_bias_correction2 + eps));
    }
  }
  /// One update at the configured learning rate.
  void step() { step(config_.lr); }

  /// Zeroes the gradient of every parameter that has one (frozen ones included).
  void zero_grad() { table_.zero_grad(); }

  /// Number of `step` calls (restored by `load_state`).
  index_t step_count() const { return step_count_; }
  const AdamWConfig& config() const { return config_; }
  /// Every group's parameters, in group order.
  std::span<Parameter<T>* const> parameters() const { return table_.parameters(); }
  /// Whether weight decay applies to parameters()[i].
  bool decays(std::size_t i) const { return table_.decays(i); }
  /// parameters()[i]'s learning rate at base rate `lr`: lr times its group's multiplier.
  double rate(std::size_t i, double lr) const { return table_.rate(i, lr); }

  /// Every allocated state tensor: "<name>.step" (shape []), "<name>.exp_avg" and "<name>.exp_avg_sq"
  /// (the parameter's shape), in parameter order. Views stay valid until the next `load_state`.
  std::vector<StateTensor<T>> state() const { return table_.state(); }
  /// Replaces the state: parameters named in `tensors` get theirs (all three tensors), the others
  /// start afresh. FormatError for an unknown or repeated name, an incomplete set or a bad step;
  /// ShapeError for a tensor of the wrong shape. Nothing changes when it throws.
  void load_state(std::span<const StateTensor<T>> tensors, index_t step_count) {
    if (step_count < 0) detail::fail<RangeError>("AdamW::load_state: step_count ", step_count, " is negative");
    table_.load(tensors);
    step_count_ = step_count;
  }

 private:
  static AdamWConfig validated(const AdamWConfig& config) {
    config.validate();
    return config;
  }

  // One parameter's update of a step, and one block of it: the work items of the step's loop,
  // kept between steps so that a step allocates nothing.
  struct Update {
    T* value;
    const T* grad;
    T* exp_avg;
    T* exp_avg_sq;
    T decay, step_size, sqrt_bias_correction2;
  };
  struct Block {
    std::size_t update;
    index_t begin, n;
  };

  AdamWConfig config_;
  detail::ParameterTable<T> table_;
  index_t step_count_ = 0;
  std::vector<Update> updates_;
  std::vector<Block> blocks_;
};

/// SGD with momentum, PyTorch's update (no dampening, no Nesterov), per parameter p with gradient g:
///   g ← g + wd·p               (coupled L2 decay, only when the decay rule says so)
///   buf ← μ·buf + g            (buf starts at 0, so the first update has buf = g, as PyTorch)
///   p ← p − lr·buf             (p ← p − lr·g when μ = 0; there is then no state)
template <Scalar T>
class Sgd {
 public:
  /// One group of `parameters` at the configured weight decay.
  Sgd(std::vector<Parameter<T>*> parameters, SgdConfig config = {}, DecayRule<T> decays = default_decays<T>)
      : Sgd(std::vector<ParameterGroup<T>>{{.name = "parameters", .parameters = std::move(parameters)}}, config, std::move(decays)) {}
  /// Parameter groups: each runs at its lr_multiplier times the step's rate, with its weight decay.
  Sgd(std::span<const ParameterGroup<T>> groups, SgdConfig config = {}, DecayRule<T> decays = default_decays<T>)
      : config_(validated(config)),
        table_("Sgd", groups,
               config.momentum > 0 ? std::vector<detail::SlotSpec>{{"momentum_buffer", false}}
                                   : std::vector<detail::SlotSpec>{},
               config.weight_decay, decays) {}

  /// One update of every unfrozen parameter that has a gradient, at learning rate `lr` (>= 0)
  /// times its group's multiplier.
  void step(double lr) {
    detail::check_non_negative("Sgd::step", "lr", lr);
    ++step_count_;
    const T momentum = static_cast<T>(config_.momentum);
    for (std::size_t i = 0; i < table_.size(); ++i) {
      if (!table_.updatable(i)) continue;
      Parameter<T>& parameter = table_.parameter(i);
      const T rate = static_cast<T>(table_.rate(i, lr));
      const T decay = static_cast<T>(table_.weight_decay(i));
      T* p_data = parameter.value().data();
      const T* g_data = parameter.grad().data();
      T* buf_data = config_.momentum > 0 ? table_.slots(i)[0].data() : nullptr;
      detail::for_each_block(parameter.numel(), [&](index_t begin, index_t n) {
        detail::ArrayMap<T> p(p_data + begin, n);
        detail::ConstArrayMap<T> g(g_data + begin, n);
        if (buf_data == nullptr) {
          p -= rate * (g + decay * p);
          return;
        }
        detail::ArrayMap<T> buf(buf_data + begin, n);
        buf = momentum * buf + (g + decay * p);
        p -= rate * buf;
      });
    }
  }
  /// One update at the configured learning rate.
  void step() { step(config_.lr); }

  /// Zeroes the gradient of every parameter that has one (frozen ones included).
  void zero_grad() { table_.zero_grad(); }

  /// Number of `step` calls (restored by `load_state`).
  index_t step_count() const { return step_count_; }
  const SgdConfig& config() const { return config_; }
  /// Every group's parameters, in group order.
  std::span<Parameter<T>* const> parameters() const { return table_.parameters(); }
  /// Whether weight decay applies to parameters()[i].
  bool decays(std::size_t i) const { return table_.decays(i); }

  /// Every allocated state tensor: "<name>.momentum_buffer" (the parameter's shape), in parameter
  /// order; none when momentum is 0. Views stay valid until the next `load_state`.
  std::vector<StateTensor<T>> state() const { return table_.state(); }
  /// Replaces the state, with the same rules and errors as `AdamW::load_state`.
  void load_state(std::span<const StateTensor<T>> tensors, index_t step_count) {
    if (step_count < 0) detail::fail<RangeError>("Sgd::load_state: step_count ", step_count, " is negative");
    table_.load(tensors);
    step_count_ = step_count;
  }

 private:
  static SgdConfig validated(const SgdConfig& config) {
    config.validate();
    return config;
  }

  SgdConfig config_;
  detail::ParameterTable<T> table_;
  index_t step_count_ = 0;
};

namespace detail {
// Whether a parameter's gradient counts in the norm: it is trained and has a gradient buffer.
template <Scalar T>
bool clipped(const Parameter<T>* p) {
  return !p->frozen() && p->has_grad();
}
}  // namespace detail

/// The L2 norm of all unfrozen parameters' gradients taken together, accumulated in double: what
/// clip_grad_norm clips and the training loop checks. NaN or infinity when a gradient element is
/// (or, rarely, when the sum of squares overflows). UsageError for a null pointer, ShapeError for a
/// gradient of another shape than its parameter.
template <Scalar T>
double grad_norm(std::span<Parameter<T>* const> parameters) {
  double total = 0;  // Σ g² over every unfrozen gradient
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    if (parameters[i] == nullptr) detail::fail<UsageError>("grad_norm: parameter ", i, " is a null pointer");
    if (!detail::clipped(parameters[i])) continue;
    const Tensor<T>& g = parameters[i]->grad();
    if (g.shape() != parameters[i]->shape())
      detail::fail<ShapeError>("grad_norm: parameter '", parameters[i]->name(), "' has shape ", parameters[i]->shape(),
                               " but its gradient has shape ", g.shape());
    total += detail::sum_of_squares(g.data(), g.numel());
  }
  return std::sqrt(total);
}

/// "the gradient of '<name>' holds nan at element 48" for the first unfrozen parameter whose
/// gradient holds NaN or infinity, or "every gradient element is finite (...)" — for messages about a
/// norm that is not finite, which the first parameter at fault explains better than the norm does.
template <Scalar T>
std::string describe_non_finite_gradient(std::span<Parameter<T>* const> parameters) {
  for (const Parameter<T>* p : parameters) {
    if (p == nullptr || !detail::clipped(p)) continue;
    const std::span<const T> g = p->grad().span();
    const auto bad = std::find_if(g.begin(), g.end(), [](T x) { return !std::isfinite(x); });
    if (bad != g.end())
      return detail::concat("the gradient of '", p->name(), "' holds ", detail::shown(static_cast<double>(*bad)),
                            " at element ", bad - g.begin());
  }
  return "every gradient element is finite (the sum of their squares overflowed)";
}

/// Scales every unfrozen gradient by max_norm / (norm + 1e-6) when that is below 1, `norm` being
/// their grad_norm: the second half of clip_grad_norm, for a caller that has the norm already.
template <Scalar T>
void scale_to_norm(std::span<Parameter<T>* const> parameters, double norm, double max_norm) {
  const double scale = max_norm / (norm + 1e-6);
  if (scale < 1)
    for (Parameter<T>* p : parameters)
      if (detail::clipped(p)) detail::ArrayMap<T>(p->mutable_grad().data(), p->numel()) *= static_cast<T>(scale);
}

/// PyTorch's clip_grad_norm_: the L2 norm of all unfrozen parameters' gradients taken together
/// (grad_norm); when it exceeds `max_norm`, every such gradient is scaled by
/// max_norm / (norm + 1e-6). Returns the norm before clipping. NonFiniteError, naming the first
/// parameter whose gradient holds NaN or infinity, when the norm is not finite.
template <Scalar T>
T clip_grad_norm(std::span<Parameter<T>* const> parameters, double max_norm) {
  detail::check_non_negative("clip_grad_norm", "max_norm", max_norm, true);
  const double norm = grad_norm(parameters);
  if (!std::isfinite(norm))
    detail::fail<NonFiniteError>("clip_grad_norm: ", describe_non_finite_gradient(parameters), " (total norm ",
                                 detail::shown(norm), ")");
  scale_to_norm(parameters, norm, max_norm);
  return static_cast<T>(norm);
}

/// clip_grad_norm over a model's parameter list.
template <Scalar T>
T clip_grad_norm(const std::vector<Parameter<T>*>& parameters, double max_norm) {
  return clip_grad_norm(std::span<Parameter<T>* const>(parameters), max_norm);
}

}  // namespace dca
