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

#include "dca/autodiff/parameter.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace dca {

/// One named optimizer state tensor, as `state()` exports it and `load_state` reads it.
/// The view borrows memory: from the optimizer (export) or from the caller (restore).
template <Scalar T>
struct StateTensor {
  std::string name;
  TensorView<const T> value;
};

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

// RangeError naming `field` of `owner` unless the value is finite and >= 0 (> 0 when `positive`).
inline void check_non_negative(const char* owner, const char* field, double value, bool positive = false) {
  if (!std::isfinite(value) || value < 0 || (positive && value == 0))
    fail<RangeError>(owner, ": ", field, " = ", value, " must be finite and ", positive ? "> 0" : ">= 0");
}

// RangeError naming `field` of `owner` unless the value lies in [0, 1) (decay rates).
inline void check_decay_rate(const char* owner, const char* field, double value) {
  if (!(value >= 0 && value < 1)) fail<RangeError>(owner, ": ", field, " = ", value, " is outside [0, 1)");
}

// A per-parameter state tensor: a counter is a rank-0 scalar holding a non-negative integer (AdamW's
// step), any other slot has the parameter's shape.
struct SlotSpec {
  const char* name;
  bool counter;
};

// The parameters an optimizer updates and their state tensors ("slots"), allocated (zeroed) at a
// parameter's first update, exported and restored under the names "<parameter name>.<slot>".
template <Scalar T>
class SlotTable {
 public:
  SlotTable(const char* optimizer, std::vector<Parameter<T>*> parameters, std::vector<SlotSpec> specs)
      : optimizer_(optimizer),
        parameters_(std::move(parameters)),
        specs_(std::move(specs)),
        slots_(parameters_.size()) {
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      if (parameters_[i] == nullptr) fail<UsageError>(optimizer_, ": parameter ", i, " is a null pointer");
      if (!names_.emplace(parameters_[i]->name(), Location{i, specs_.size()}).second)
        fail<UsageError>(optimizer_, ": two parameters are named '", parameters_[i]->name(),
                         "'; state names must be unique");
      for (std::size_t s = 0; s < specs_.size(); ++s)
        if (!names_.emplace(state_name(i, s), Location{i, s}).second)
          fail<UsageError>(optimizer_, ": state name '", state_name(i, s), "' is ambiguous");
    }
  }

  std::size_t size() const { return parameters_.size(); }
  std::span<Parameter<T>* const> parameters() const { return parameters_; }
  Parameter<T>& parameter(std::size_t i) const { return *parameters_[i]; }

  // Whether parameter i takes part in an update: not frozen and holding a gradient. Throws
  // ShapeError when its gradient or its state no longer has its shape.
  bool updatable(std::size_t i) const {
    const Parameter<T>& p = *parameters_[i];
    if (p.frozen() || !p.has_grad()) return false;
    if (p.grad().shape() != p.shape())
      fail<ShapeError>(optimizer_, ": parameter '", p.name(), "' has shape ", p.shape(), " but its gradient has shape ",
                       p.grad().shape());
    for (std::size_t s = 0; s < slots_[i].size(); ++s)
      if (!specs_[s].counter && slots_[i][s].shape() != p.shape())
        fail<ShapeError>(optimizer_, ": parameter '", p.name(), "' has shape ", p.shape(), " but its state '",
                         state_name(i, s), "' has shape ", slots_[i][s].shape());
    return true;
  }

  // Parameter i's slot tensors, allocated and zeroed on first use.
  std::span<Tensor<T>> slots(std::size_t i) {
    if (slots_[i].empty())
      for (const SlotSpec& spec : specs_) slots_[i].emplace_back(spec.counter ? Shape{} : parameters_[i]->shape());
    return slots_[i];
  }

  void zero_grad() const {
    for (Parameter<T>* p : parameters_)
      if (p->has_grad()) p->zero_grad();
  }

  std::vector<StateTensor<T>> state() const {
    std::vector<StateTensor<T>> out;
    for (std::size_t i = 0; i < parameters_.size(); ++i)
      for (std::size_t s = 0; s < slots_[i].size(); ++s) out.push_back({state_name(i, s), slots_[i][s].view()});
    return out;
  }

  // Replaces the whole state. Validates everything before changing anything.
  void load(std::span<const StateTensor<T>> tensors) {
    std::vector<std::vector<const StateTensor<T>*>> given(parameters_.size(),
                                                          std::vector<const StateTensor<T>*>(specs_.size(), nullptr));
    for (const StateTensor<T>& tensor : tensors) {
      const auto found = names_.find(tensor.name);
      if (found == names_.end() || found->second.slot == specs_.size())
        fail<FormatError>(optimizer_, "::load_state: '", tensor.name, "' is not a state tensor of this optimizer",
                          state_naming_hint());
      const auto [i, s] = found->second;
      if (given[i][s] != nullptr) fail<FormatError>(optimizer_, "::load_state: '", tensor.name, "' is given twice");
      const Shape expected = specs_[s].counter ? Shape{} : parameters_[i]->shape();
      if (tensor.value.shape() != expected)
        fail<ShapeError>(optimizer_, "::load_state: '", tensor.name, "' has shape ", tensor.value.shape(),
                         " but must have shape ", expected);
      if (specs_[s].counter) {
        const double count = static_cast<double>(tensor.value[0]);
        if (!std::isfinite(count) || count < 0 || count != std::floor(count))
          fail<FormatError>(optimizer_, "::load_state: '", tensor.name, "' holds ", count,
                            ", not a non-negative whole number");
      }
      given[i][s] = &tensor;
    }
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto given_count = std::count_if(given[i].begin(), given[i].end(), [](auto* t) { return t != nullptr; });
      if (given_count == 0 || given_count == static_cast<std::ptrdiff_t>(specs_.size())) continue;
      const auto missing =
          static_cast<std::size_t>(std::find(given[i].begin(), given[i].end(), nullptr) - given[i].begin());
      fail<FormatError>(optimizer_, "::load_state: '", state_name(i, missing),
                        "' is missing while other state of parameter '", parameters_[i]->name(), "' is given");
    }
    // Copied into fresh storage first: `tensors` may view the current state (load_state(state())).
    std::vector<std::vector<Tensor<T>>> restored(parameters_.size());
    for (std::size_t i = 0; i < parameters_.size(); ++i)
      if (!given[i].empty() && given[i][0] != nullptr)
        for (const StateTensor<T>* tensor : given[i]) restored[i].emplace_back(tensor->value);
    slots_ = std::move(restored);
  }

 private:
  struct Location {
    std::size_t parameter;
    std::size_t slot;  // specs_.size() for the parameter's own name
  };

  std::string state_name(std::size_t i, std::size_t s) const { return parameters_[i]->name() + "." + specs_[s].name; }

  std::string state_naming_hint() const {
    std::string hint = " (its state tensors are named '<parameter name>.<slot>' with slots";
    for (const SlotSpec& spec : specs_) hint += concat(" '", spec.name, "'");
    return specs_.empty() ? " (it has no state)" : hint + ")";
  }

  const char* optimizer_;
  std::vector<Parameter<T>*> parameters_;
  std::vector<SlotSpec> specs_;
  std::vector<std::vector<Tensor<T>>> slots_;  // per parameter: empty until its first update
  std::unordered_map<std::string, Location> names_;
};

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

/// Decides per parameter whether weight decay applies; evaluated once, at construction.
template <Scalar T>
using DecayRule = std::function<bool(const Parameter<T>&)>;

/// AdamW (Loshchilov & Hutter) with PyTorch's exact update, per parameter p with gradient g and
/// its own step count t (incremented at each update of p):
///   p ← p − lr·wd·p                      (decoupled decay, only when the decay rule says so)
///   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
///   p ← p − lr·(m / (1−β1ᵗ)) / (√v / √(1−β2ᵗ) + eps)
/// Frozen parameters and parameters without a gradient are skipped and keep their state.
template <Scalar T>
class AdamW {
 public:
  AdamW(std::vector<Parameter<T>*> parameters, AdamWConfig config = {}, DecayRule<T> decays = default_decays<T>)
      : config_(config),
        table_("AdamW", std::move(parameters), {{"step", true}, {"exp_avg", false}, {"exp_avg_sq", false}}) {
    config_.validate();
    for (Parameter<T>* p : table_.parameters()) decays_.push_back(decays(*p));
  }

  /// One update of every unfrozen parameter that has a gradient, at learning rate `lr` (>= 0).
  void step(double lr) {
    detail::check_non_negative("AdamW::step", "lr", lr);
    ++step_count_;
    for (std::size_t i = 0; i < table_.size(); ++i) {
      if (!table_.updatable(i)) continue;
      Parameter<T>& parameter = table_.parameter(i);
      const std::span<Tensor<T>> slots = table_.slots(i);
      // The count lives in a T scalar, as PyTorch's float32 `step`: for float it stops at 2²⁴ steps,
      // where βᵗ is negligible for any usual β.
      const double t = static_cast<double>(slots[0][0] += T(1));
      const double bias_correction1 = 1 - std::pow(config_.beta1, t);
      const double bias_correction2 = 1 - std::pow(config_.beta2, t);
      const T decay = static_cast<T>(decays_[i] ? 1 - lr * config_.weight_decay : 1.0);
      const T beta1 = static_cast<T>(config_.beta1), beta2 = static_cast<T>(config_.beta2);
      const T step_size = static_cast<T>(lr / bias_correction1);
      const T sqrt_bias_correction2 = static_cast<T>(std::sqrt(bias_correction2));
      const T eps = static_cast<T>(config_.eps);
      T* p_data = parameter.value().data();
      const T* g_data = parameter.grad().data();
      T* m_data = slots[1].data();
      T* v_data = slots[2].data();
      detail::for_each_block(parameter.numel(), [&](index_t begin, index_t n) {
        detail::ArrayMap<T> p(p_data + begin, n), m(m_data + begin, n), v(v_data + begin, n);
        detail::ConstArrayMap<T> g(g_data + begin, n);
        m = beta1 * m + (T(1) - beta1) * g;
        v = beta2 * v + (T(1) - beta2) * g.square();
        p = decay * p - step_size * (m / (v.sqrt() / sqrt_bias_correction2 + eps));
      });
    }
  }
  /// One update at the configured learning rate.
  void step() { step(config_.lr); }

  /// Zeroes the gradient of every parameter that has one (frozen ones included).
  void zero_grad() { table_.zero_grad(); }

  /// Number of `step` calls (restored by `load_state`).
  index_t step_count() const { return step_count_; }
  const AdamWConfig& config() const { return config_; }
  std::span<Parameter<T>* const> parameters() const { return table_.parameters(); }
  /// Whether weight decay applies to parameters()[i].
  bool decays(std::size_t i) const { return decays_[i]; }

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
  AdamWConfig config_;
  detail::SlotTable<T> table_;
  std::vector<bool> decays_;
  index_t step_count_ = 0;
};

/// SGD with momentum, PyTorch's update (no dampening, no Nesterov), per parameter p with gradient g:
///   g ← g + wd·p               (coupled L2 decay, only when the decay rule says so)
///   buf ← μ·buf + g            (buf starts at 0, so the first update has buf = g, as PyTorch)
///   p ← p − lr·buf             (p ← p − lr·g when μ = 0; there is then no state)
template <Scalar T>
class Sgd {
 public:
  Sgd(std::vector<Parameter<T>*> parameters, SgdConfig config = {}, DecayRule<T> decays = default_decays<T>)
      : config_(config),
        table_("Sgd", std::move(parameters),
               config.momentum > 0 ? std::vector<detail::SlotSpec>{{"momentum_buffer", false}}
                                   : std::vector<detail::SlotSpec>{}) {
    config_.validate();
    for (Parameter<T>* p : table_.parameters()) decays_.push_back(decays(*p));
  }

  /// One update of every unfrozen parameter that has a gradient, at learning rate `lr` (>= 0).
  void step(double lr) {
    detail::check_non_negative("Sgd::step", "lr", lr);
    ++step_count_;
    const T rate = static_cast<T>(lr), momentum = static_cast<T>(config_.momentum);
    for (std::size_t i = 0; i < table_.size(); ++i) {
      if (!table_.updatable(i)) continue;
      Parameter<T>& parameter = table_.parameter(i);
      const T decay = static_cast<T>(decays_[i] ? config_.weight_decay : 0.0);
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
  std::span<Parameter<T>* const> parameters() const { return table_.parameters(); }
  /// Whether weight decay applies to parameters()[i].
  bool decays(std::size_t i) const { return decays_[i]; }

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
  SgdConfig config_;
  detail::SlotTable<T> table_;
  std::vector<bool> decays_;
  index_t step_count_ = 0;
};

/// PyTorch's clip_grad_norm_: the L2 norm of all unfrozen parameters' gradients taken together
/// (accumulated in double); when it exceeds `max_norm`, every such gradient is scaled by
/// max_norm / (norm + 1e-6). Returns the norm before clipping. NonFiniteError, naming the first
/// parameter whose gradient holds NaN or infinity, when the norm is not finite.
template <Scalar T>
T clip_grad_norm(std::span<Parameter<T>* const> parameters, double max_norm) {
  detail::check_non_negative("clip_grad_norm", "max_norm", max_norm, true);
  const auto clipped = [](const Parameter<T>* p) { return !p->frozen() && p->has_grad(); };
  double total = 0;  // Σ g² over every clipped gradient
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    if (parameters[i] == nullptr) detail::fail<UsageError>("clip_grad_norm: parameter ", i, " is a null pointer");
    if (!clipped(parameters[i])) continue;
    const Tensor<T>& g = parameters[i]->grad();
    if (g.shape() != parameters[i]->shape())
      detail::fail<ShapeError>("clip_grad_norm: parameter '", parameters[i]->name(), "' has shape ",
                               parameters[i]->shape(), " but its gradient has shape ", g.shape());
    total += detail::sum_of_squares(g.data(), g.numel());
  }
  const double norm = std::sqrt(total);
  if (!std::isfinite(norm)) {
    for (const Parameter<T>* p : parameters) {
      if (!clipped(p)) continue;
      const std::span<const T> g = p->grad().span();
      const auto bad = std::find_if(g.begin(), g.end(), [](T x) { return !std::isfinite(x); });
      if (bad != g.end())
        detail::fail<NonFiniteError>("clip_grad_norm: the gradient of '", p->name(), "' holds ", *bad, " at element ",
                                     bad - g.begin(), " (total norm ", norm, ")");
    }
    detail::fail<NonFiniteError>("clip_grad_norm: the gradient norm overflowed to ", norm,
                                 " although every element is finite");
  }
  const double scale = max_norm / (norm + 1e-6);
  if (scale < 1)
    for (Parameter<T>* p : parameters)
      if (clipped(p)) detail::ArrayMap<T>(p->mutable_grad().data(), p->numel()) *= static_cast<T>(scale);
  return static_cast<T>(norm);
}

/// clip_grad_norm over a model's parameter list.
template <Scalar T>
T clip_grad_norm(const std::vector<Parameter<T>*>& parameters, double max_norm) {
  return clip_grad_norm(std::span<Parameter<T>* const>(parameters), max_norm);
}

}  // namespace dca
