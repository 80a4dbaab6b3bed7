// dca/train/parameter_table.hpp — what every optimizer keeps besides its update rule: the
// parameters it updates in groups (PyTorch's param_groups: a learning-rate multiplier and a weight
// decay per group) and each parameter's state tensors, allocated at its first update, exported
// and restored by name for checkpoints.
#pragma once

#include "dca/autodiff/parameter.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
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

/// Parameters that share a learning-rate multiplier and a weight decay.
template <Scalar T>
struct ParameterGroup {
  std::string name{};                      // names the group in messages
  std::vector<Parameter<T>*> parameters{};
  double lr_multiplier = 1.0;              // the group's rate: this times the rate a step is given; >= 0
  std::optional<double> weight_decay{};    // per unit rate, where the decay rule applies; empty: the optimizer's
};

/// Decides per parameter whether weight decay applies; evaluated once, at construction.
template <Scalar T>
using DecayRule = std::function<bool(const Parameter<T>&)>;

namespace detail {

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

// The parameters an optimizer updates — each with its group's learning-rate multiplier and weight
// decay — and their state tensors ("slots"), allocated (zeroed) at a parameter's first update,
// exported and restored under the names "<parameter name>.<slot>".
template <Scalar T>
class ParameterTable {
 public:
  // `weight_decay` is the decay of groups that set none; `decays` says which parameters decay at all.
  ParameterTable(const char* optimizer, std::span<const ParameterGroup<T>> groups, std::vector<SlotSpec> specs,
                 double weight_decay, const DecayRule<T>& decays)
      : optimizer_(optimizer), specs_(std::move(specs)) {
    for (const ParameterGroup<T>& group : groups) {
      check_non_negative(optimizer_, concat("the lr_multiplier of group '", group.name, "'").c_str(),
                         group.lr_multiplier);
      const double decay = group.weight_decay.value_or(weight_decay);
      check_non_negative(optimizer_, concat("the weight_decay of group '", group.name, "'").c_str(), decay);
      for (Parameter<T>* p : group.parameters) {
        parameters_.push_back(p);
        lr_multipliers_.push_back(group.lr_multiplier);
        weight_decays_.push_back(decay);
        decays_.push_back(p != nullptr && decays(*p));
      }
    }
    slots_.resize(parameters_.size());
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
  // Parameter i's learning rate at base rate `lr`, and its weight decay (0 where the rule says none).
  double rate(std::size_t i, double lr) const { return lr * lr_multipliers_[i]; }
  double weight_decay(std::size_t i) const { return decays_[i] ? weight_decays_[i] : 0.0; }
  bool decays(std::size_t i) const { return decays_[i]; }

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
  std::vector<double> lr_multipliers_, weight_decays_;  // per parameter, from its group
  std::vector<bool> decays_;                            // per parameter, from the decay rule
  std::vector<SlotSpec> specs_;
  std::vector<std::vector<Tensor<T>>> slots_;  // per parameter: empty until its first update
  std::unordered_map<std::string, Location> names_;
};

}  // namespace detail
}  // namespace dca
