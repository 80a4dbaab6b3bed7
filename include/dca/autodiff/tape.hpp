// dca/autodiff/tape.hpp — tape-based reverse-mode autodiff over tensor-valued nodes.
//
// A `Tape` records one computation as a linear list of nodes. Each node holds a value matrix and,
// if it is *active* (depends on something that wants a gradient), an adjoint matrix of the same
// shape plus a backward closure. `backward(loss)` sweeps the nodes in reverse creation order and
// runs each closure, which adds its output adjoint's contribution to its inputs' adjoints with
// GEMM-level Eigen code. All values, adjoints and closures live in the tape's arena: no per-node
// heap allocation, and `reset()` releases a whole step at once while keeping the memory.
//
// Constants (frozen parameters, cached keys/values, inputs) get no adjoint: ops test
// `Operand::active()` and skip the work — including weight-gradient GEMMs — for constant inputs,
// while still propagating to active ones. See docs/autodiff.md for the op pattern.
//
// Longer than ~400 lines because Var, Operand and Tape are one concept: a Var is a handle into
// its tape's node list, and the guards (NoGradGuard, TapeScope) only toggle tape state; split,
// each header would need the others' internals.
#pragma once

#include "dca/autodiff/arena.hpp"
#include "dca/autodiff/parallel.hpp"
#include "dca/autodiff/parameter.hpp"
#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/tensor/tensor.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <map>
#include <string>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

namespace dca {

template <Scalar T>
class Tape;

/// What a closure needs of one operand: its value and (if active) its adjoint, as raw memory.
/// Trivially copyable so that backward closures capturing it can live in the arena.
template <Scalar T>
struct Operand {
  const T* value = nullptr;
  T* adjoint = nullptr;  // null for constants
  index_t rows = 0;
  index_t cols = 0;

  bool active() const { return adjoint != nullptr; }
  index_t numel() const { return rows * cols; }
  ConstMatrixMap<T> val() const { return {value, rows, cols}; }
  MatrixMap<T> adj() const { return {adjoint, rows, cols}; }
};

/// Where one kind of op spends its time on a profiling tape (Tape::set_profiling).
struct OpProfile {
  std::uint64_t calls = 0;      // results made by the op
  double forward_seconds = 0;   // from making its result to recording its backward (its forward compute)
  double backward_seconds = 0;  // in its backward closures
};

/// Op name -> its profile, for every op a profiling tape has seen since profiling began.
using TapeProfile = std::map<std::string, OpProfile>;

/// Counters a tape keeps while sweeping; the frozen-parameter tests and benchmarks read them.
struct TapeStats {
  std::uint64_t backward_gemms = 0;    // GEMMs run by backward closures
  double backward_gemm_flops = 0;      // their FLOPs (2·m·n·k each)
  std::uint64_t backward_closures = 0; // closures run by backward sweeps
};

namespace detail {

template <Scalar T>
struct Node {
  T* value = nullptr;
  T* adjoint = nullptr;  // null: constant
  index_t rows = 0;
  index_t cols = 0;
  void (*backward)(void*) = nullptr;
  void* closure = nullptr;
  std::uint64_t serial = 0;
  const char* op = "";
  // Who owns the adjoint: the tape (intermediates, zeroed before a repeated sweep), or a leaf
  // whose gradient accumulates over sweeps (a `variable`, or a parameter's gradient buffer).
  enum class Owner : std::uint8_t { tape, variable, parameter } owner = Owner::tape;
  std::uint8_t n_inputs = 0;
  std::array<std::uint32_t, 4> inputs{};  // first inputs, for error messages
};

}  // namespace detail

/// A handle to a node on a tape: a matrix [rows, cols]. Cheap to copy. Using a Var after its tape
/// was reset (or after the scope that created it closed) throws `UsageError`; a Var must not
/// outlive the Tape object itself.
template <Scalar T>
class Var {
 public:
  Var() = default;

  /// True for a default-constructed Var that refers to no node.
  bool empty() const { return tape_ == nullptr; }
  /// True if the Var refers to a node that is still on its tape (not released by a reset or a
  /// closed TapeScope); every other accessor throws UsageError when this is false.
  bool valid() const;
  index_t rows() const { return node().rows; }
  index_t cols() const { return node().cols; }
  Shape shape() const { return Shape{rows(), cols()}; }
  index_t numel() const { return rows() * cols(); }
  /// True if gradients flow to this value (it depends on an active leaf or parameter).
  bool requires_grad() const { return node().adjoint != nullptr; }
  /// The name of the op that produced the value.
  const char* op() const { return node().op; }

  TensorView<const T> value() const {
    const auto& n = node();
    return {n.value, Shape{n.rows, n.cols}};
  }
  ConstMatrixMap<T> matrix() const { return value().matrix(); }
  /// The single value of a [1,1] Var.
  T item() const {
    const auto& n = node();
    if (n.rows != 1 || n.cols != 1)
      detail::fail<ShapeError>("Var::item: value of '", n.op, "' is [", n.rows, ",", n.cols, "], not [1,1]");
    return n.value[0];
  }
  /// d(loss)/d(this value) after `Tape::backward`. Throws for constants, which have no adjoint.
  TensorView<const T> grad() const {
    const auto& n = node();
    if (!n.adjoint)
      detail::fail<UsageError>("Var::grad: the value of '", n.op,
                               "' is a constant (it does not depend on any variable or unfrozen parameter), "
                               "so it has no gradient");
    return {n.adjoint, Shape{n.rows, n.cols}};
  }
  Tape<T>& tape() const {
    if (!tape_) detail::fail<UsageError>("Var: this Var is empty (default-constructed)");
    return *tape_;
  }

  /// For op authors: the operand record a backward closure captures.
  Operand<T> operand() const {
    const auto& n = node();
    return {n.value, n.adjoint, n.rows, n.cols};
  }
  /// For op authors: the value memory of a freshly made result, to be written by the op.
  MatrixMap<T> mutable_matrix() const {
    const auto& n = node();
    return {n.value, n.rows, n.cols};
  }
  T* mutable_data() const { return node().value; }

 private:
  friend class Tape<T>;
  Var(Tape<T>* tape, std::uint32_t index, std::uint64_t serial) : tape_(tape), index_(index), serial_(serial) {}
  const detail::Node<T>& node() const;

  Tape<T>* tape_ = nullptr;
  std::uint32_t index_ = 0;
  std::uint64_t serial_ = 0;
};


template <Scalar T>
class Tape {
 public:
  explicit Tape(std::size_t arena_block_bytes = std::size_t{1} << 20) : arena_(arena_block_bytes) {
    nodes_.reserve(256);
  }
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  // ---- leaves ---------------------------------------------------------------------------------

  /// An active leaf holding a copy of `value` (rank ≤ 2; a vector becomes one row). Its gradient
  /// (`Var::grad`) accumulates over backward passes until `zero_adjoints()` or `reset()`.
  Var<T> variable(TensorView<const T> value, const char* name = "variable") {
    Var<T> v = leaf(name, value, grad_enabled_);
    if (v.requires_grad()) nodes_.back().owner = detail::Node<T>::Owner::variable;
    return v;
  }
  /// A constant leaf holding a copy of `value`.
  Var<T> constant(TensorView<const T> value, const char* name = "constant") { return leaf(name, value, false); }
  /// A constant leaf that reads `value` in place (no copy); the memory must stay valid and
  /// unchanged until the tape is reset. Used for cached keys/values and frozen weights.
  Var<T> constant_view(TensorView<const T> value, const char* name = "constant") {
    check_leaf_rank(name, value.shape());
    auto v = push(name, value.rows(), value.cols(), const_cast<T*>(value.data()), nullptr);
    return v;
  }
  /// A parameter on this tape, read in place. Active unless the parameter is frozen or gradients
  /// are disabled; its adjoint is the parameter's own gradient buffer, so gradients from several
  /// uses and several backward passes add up there.
  Var<T> param(Parameter<T>& p) {
    check_leaf_rank(p.name().c_str(), p.shape());
    T* value = p.value().data();
    if (p.frozen() || !grad_enabled_) return push("param", p.value().rows(), p.value().cols(), value, nullptr);
    Var<T> v = push("param", p.value().rows(), p.value().cols(), value, gradient_buffer(p));
    nodes_.back().owner = detail::Node<T>::Owner::parameter;
    return v;
  }

  // ---- backward -------------------------------------------------------------------------------

  /// Reverse sweep from a [1,1] loss (seed 1). Adds to the gradients of every active leaf and
  /// parameter the loss depends on. Inside a `TapeScope`, the sweep stops at the scope's start.
  void backward(const Var<T>& loss) {
    const auto& n = checked_node(loss);
    if (n.rows != 1 || n.cols != 1)
      detail::fail<UsageError>("Tape::backward: '", n.op, "' is [", n.rows, ",", n.cols,
                               "], not a scalar [1,1]; pass a seed of that shape: backward(output, seed)");
    sweep(loss, nullptr);
  }
  /// Reverse sweep seeded with d(loss)/d(output) = `seed`, which must have the output's shape.
  void backward(const Var<T>& output, TensorView<const T> seed) {
    const auto& n = checked_node(output);
    if (seed.rows() != n.rows || seed.cols() != n.cols)
      detail::fail<ShapeError>("Tape::backward: seed ", seed.shape(), " does not match the [", n.rows, ",", n.cols,
                               "] output of '", n.op, "'");
    sweep(output, seed.data());
  }

  /// From now on the gradients of these parameters go to the given buffers (each the parameter's
  /// size) instead of the parameters' own: what lets tapes on several threads backpropagate into
  /// the same parameters at once (TrainingLoop::step_parts). While redirects are set, an unfrozen
  /// parameter without one is refused (UsageError), since its own buffer may be another thread's.
  /// An empty list ends the redirection.
  void redirect_gradients(std::vector<std::pair<const Parameter<T>*, T*>> redirects) {
    redirects_ = std::move(redirects);
    redirect_used_.assign(redirects_.size(), false);
  }
  /// Whether redirect `i` (in the order given) has been handed to a parameter since the last reset:
  /// which buffers hold gradients.
  bool redirect_used(std::size_t i) const { return i < redirect_used_.size() && redirect_used_[i]; }

  /// Zeroes the adjoints of this tape's `variable` leaves (parameters: `Parameter::zero_grad`).
  void zero_adjoints() {
    for (auto& n : nodes_)
      if (n.adjoint && n.owner == detail::Node<T>::Owner::variable)
        std::memset(n.adjoint, 0, sizeof(T) * static_cast<std::size_t>(n.rows * n.cols));
  }

  // ---- lifetime -------------------------------------------------------------------------------

  /// Releases every node (their Vars become invalid) and keeps the memory for the next step.
  void reset() {
    if (!scope_marks_.empty())
      detail::fail<UsageError>("Tape::reset: ", scope_marks_.size(), " TapeScope(s) are still open");
    nodes_.clear();
    arena_.reset();
    swept_ = false;
    std::fill(redirect_used_.begin(), redirect_used_.end(), false);
  }

  /// Number of nodes on the tape.
  std::size_t size() const { return nodes_.size(); }
  /// Capacity of the node list (constant across steps of the same size once warmed up).
  std::size_t node_capacity() const { return nodes_.capacity(); }
  const Arena& arena() const { return arena_; }
  TapeStats& stats() { return stats_; }

  /// While false, every new value is a constant (see `NoGradGuard`).
  bool grad_enabled() const { return grad_enabled_; }
  void set_grad_enabled(bool enabled) { grad_enabled_ = enabled; }

  /// When on, every op checks its output for NaN/inf and throws `NonFiniteError` naming the op,
  /// the element and the input shapes. Off by default (it costs one pass over each output).
  void set_check_finite(bool on) { check_finite_ = on; }
  bool check_finite() const { return check_finite_; }

  /// When on, the tape times every op's forward (from its make_result to its record) and backward
  /// closure by op name, into `profile()`: where a step's time goes. Off by default (a clock read
  /// per op and per closure when on; nothing when off). Turning it on clears the profile.
  void set_profiling(bool on) {
    profiling_ = on;
    if (on) profile_.clear();
  }
  bool profiling() const { return profiling_; }
  const TapeProfile& profile() const { return profile_; }

  // ---- for op authors (the one pattern: make_result, compute, record) ------------------------

  /// A new [rows, cols] result of `op`, uninitialised. It is active if gradients are enabled and
  /// any input is active.
  Var<T> make_result(const char* op, index_t rows, index_t cols, std::initializer_list<Var<T>> inputs) {
    return make_result(op, rows, cols, std::span<const Var<T>>(inputs.begin(), inputs.size()));
  }
  /// The same for a run-time number of inputs (concatenation).
  Var<T> make_result(const char* op, index_t rows, index_t cols, std::span<const Var<T>> inputs) {
    bool active = false;
    for (const Var<T>& in : inputs) {
      if (in.tape_ != this)
        detail::fail<UsageError>(op, ": an input belongs to another tape (or is an empty Var)");
      active = active || checked_node(in).adjoint != nullptr;
    }
    Var<T> y = make_result(op, rows, cols, active);
    auto& n = nodes_.back();
    for (const Var<T>& in : inputs) {
      if (n.n_inputs == n.inputs.size()) break;
      n.inputs[n.n_inputs++] = in.index_;
    }
    return y;
  }
  /// A new result whose activity the op decides itself (ops with a variable number of inputs).
  Var<T> make_result(const char* op, index_t rows, index_t cols, bool active) {
    if (profiling_) op_started_ = Clock::now();
    if (rows < 0 || cols < 0) detail::fail<ShapeError>(op, ": negative result shape [", rows, ",", cols, "]");
    active = active && grad_enabled_;
    T* value = arena_.allocate_array<T>(rows * cols);
    T* adjoint = nullptr;
    if (active) {
      adjoint = arena_.allocate_array<T>(rows * cols);
      detail::zero_fill(adjoint, rows * cols);
    }
    return push(op, rows, cols, value, adjoint);
  }

  /// Completes an op: checks its output (if checking is on) and, if the result is active,
  /// stores `backward` to run during the reverse sweep. The closure lives in the arena and is
  /// never destroyed, so it may capture only trivially destructible things (Operands, pointers,
  /// sizes, scalars, arena arrays).
  template <class F>
  void record(const Var<T>& result, F&& backward) {
    auto& n = const_cast<detail::Node<T>&>(checked_node(result));
    if (check_finite_) check_output(n);
    if (profiling_) {
      OpProfile& p = profile_[n.op];
      ++p.calls;
      p.forward_seconds += std::chrono::duration<double>(Clock::now() - op_started_).count();
    }
    if (!n.adjoint) return;
    using Fn = std::decay_t<F>;
    static_assert(std::is_trivially_destructible_v<Fn>,
                  "backward closures live in the arena and are never destroyed: capture Operands, raw "
                  "pointers, sizes and scalars only");
    static_assert(alignof(Fn) <= Arena::alignment);
    void* memory = arena_.allocate(sizeof(Fn));
    n.closure = new (memory) Fn(std::forward<F>(backward));
    n.backward = [](void* closure) { (*static_cast<Fn*>(closure))(); };
  }

  /// Scratch memory that lives until the tape is reset (e.g. values a backward closure needs).
  template <class U>
  U* allocate(index_t count) {
    return arena_.allocate_array<U>(count);
  }
  /// A copy of `values` in the arena (ids, positions, masks captured by closures).
  template <class U>
  std::span<const U> copy(std::span<const U> values) {
    U* p = arena_.allocate_array<U>(static_cast<index_t>(values.size()));
    std::copy(values.begin(), values.end(), p);
    return {p, values.size()};
  }

  /// For op authors: records one backward GEMM (m·k by k·n) in the stats.
  static void count_gemm(TapeStats* stats, index_t m, index_t n, index_t k) {
    stats->backward_gemms += 1;
    stats->backward_gemm_flops += 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  }

 private:
  friend class Var<T>;
  template <Scalar>
  friend class TapeScope;

  static void check_leaf_rank(const char* name, const Shape& s) {
    if (s.rank() > 2)
      detail::fail<ShapeError>("Tape: leaf '", name, "' has rank ", s.rank(), " ", s,
                               "; tape values are matrices — reshape it to [rows, cols] first");
  }

  T* gradient_buffer(Parameter<T>& p) {
    if (redirects_.empty()) return p.grad_buffer();
    for (std::size_t i = 0; i < redirects_.size(); ++i)
      if (redirects_[i].first == &p) {
        redirect_used_[i] = true;
        return redirects_[i].second;
      }
    detail::fail<UsageError>("Tape::param: parameter '", p.name(),
                             "' has no gradient redirect on a tape whose gradients are redirected");
  }

  Var<T> leaf(const char* name, TensorView<const T> value, bool active) {
    check_leaf_rank(name, value.shape());
    Var<T> v = make_result(name, value.rows(), value.cols(), active);
    if (value.numel() > 0) std::memcpy(v.mutable_data(), value.data(), sizeof(T) * static_cast<std::size_t>(value.numel()));
    if (check_finite_) check_output(nodes_.back());
    return v;
  }

  Var<T> push(const char* op, index_t rows, index_t cols, T* value, T* adjoint) {
    if (nodes_.size() >= std::numeric_limits<std::uint32_t>::max())
      detail::fail<UsageError>("Tape: more than 2^32 nodes on one tape");
    detail::Node<T> n;
    n.value = value;
    n.adjoint = adjoint;
    n.rows = rows;
    n.cols = cols;
    n.serial = ++serial_counter_;
    n.op = op;
    nodes_.push_back(n);
    return Var<T>(this, static_cast<std::uint32_t>(nodes_.size() - 1), n.serial);
  }

  const detail::Node<T>& checked_node(const Var<T>& v) const {
    if (v.tape_ != this) detail::fail<UsageError>("Tape: the Var belongs to another tape (or is empty)");
    if (v.index_ >= nodes_.size() || nodes_[v.index_].serial != v.serial_)
      detail::fail<UsageError>("Var: its tape was reset (or the TapeScope that created it closed); "
                               "values do not survive a reset — recompute them on the current tape");
    return nodes_[v.index_];
  }

  void check_output(const detail::Node<T>& n) const {
    const index_t count = n.rows * n.cols;
    for (index_t i = 0; i < count; ++i) {
      if (std::isfinite(n.value[i])) continue;
      std::string inputs;
      for (std::uint8_t k = 0; k < n.n_inputs; ++k) {
        const auto& in = nodes_[n.inputs[k]];
        inputs += detail::concat(k ? ", " : "", in.op, " [", in.rows, ",", in.cols, "]");
      }
      detail::fail<NonFiniteError>(n.op, ": produced ", n.value[i], " at (", i / n.cols, ",", i % n.cols, ") of its [",
                                   n.rows, ",", n.cols, "] output; inputs: ", inputs.empty() ? "none" : inputs);
    }
  }

  // Seeds `from` with `seed` ([rows, cols]; null: the scalar 1) and runs the reverse sweep.
  void sweep(const Var<T>& from, const T* seed) {
    const std::size_t floor = scope_marks_.empty() ? 0 : scope_marks_.back().nodes;
    if (from.index_ < floor)
      detail::fail<UsageError>("Tape::backward: '", nodes_[from.index_].op,
                               "' was created outside the innermost open TapeScope");
    auto& out = nodes_[from.index_];
    if (!out.adjoint) return;  // a constant: nothing depends on a variable
    if (swept_) {
      // Intermediate adjoints hold the previous sweep's values; leaves keep accumulating.
      for (std::size_t i = floor; i <= from.index_; ++i) {
        auto& n = nodes_[i];
        if (n.adjoint && n.owner == detail::Node<T>::Owner::tape) std::memset(n.adjoint, 0, sizeof(T) * static_cast<std::size_t>(n.rows * n.cols));
      }
    }
    swept_ = true;
    if (seed)
      detail::parallel_chunks(out.rows * out.cols, detail::parallel_min_elements, out.rows * out.cols,
                              [&](index_t begin, index_t end) {
                                detail::flat_range(out.adjoint, begin, end) += detail::flat_range(seed, begin, end);
                              });
    else
      out.adjoint[0] += T(1);
    for (std::size_t i = from.index_ + 1; i-- > floor;) {
      auto& n = nodes_[i];
      if (!n.backward) continue;
      if (profiling_) {
        const auto start = Clock::now();
        n.backward(n.closure);
        profile_[n.op].backward_seconds += std::chrono::duration<double>(Clock::now() - start).count();
      } else {
        n.backward(n.closure);
      }
      ++stats_.backward_closures;
    }
  }

  struct ScopeMark {
    std::size_t nodes;
    Arena::Mark arena;
  };
  using Clock = std::chrono::steady_clock;

  Arena arena_;
  std::vector<detail::Node<T>> nodes_;
  std::vector<ScopeMark> scope_marks_;
  std::uint64_t serial_counter_ = 0;
  TapeStats stats_;
  bool grad_enabled_ = true;
  bool check_finite_ = false;
  bool swept_ = false;
  bool profiling_ = false;
  TapeProfile profile_;
  std::vector<std::pair<const Parameter<T>*, T*>> redirects_;
  std::vector<bool> redirect_used_;
  Clock::time_point op_started_;
};

template <Scalar T>
bool Var<T>::valid() const {
  return tape_ && index_ < tape_->nodes_.size() && tape_->nodes_[index_].serial == serial_;
}

template <Scalar T>
const detail::Node<T>& Var<T>::node() const {
  if (!tape_) detail::fail<UsageError>("Var: this Var is empty (default-constructed)");
  return tape_->checked_node(*this);
}

/// RAII: disables gradients on a tape for its lifetime (inference, evaluation). Values made
/// inside are constants; nothing is recorded for backward.
template <Scalar T>
class NoGradGuard {
 public:
  explicit NoGradGuard(Tape<T>& tape) : tape_(tape), previous_(tape.grad_enabled()) { tape.set_grad_enabled(false); }
  ~NoGradGuard() { tape_.set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  Tape<T>& tape_;
  bool previous_;
};

/// RAII: a nested tape. Everything recorded inside the scope is released when it closes, and a
/// backward sweep started inside stops at the scope's start, so nodes from before the scope
/// receive adjoint contributions but do not propagate them further.
template <Scalar T>
class TapeScope {
 public:
  explicit TapeScope(Tape<T>& tape) : tape_(tape) {
    tape.scope_marks_.push_back({tape.nodes_.size(), tape.arena_.mark()});
  }
  ~TapeScope() {
    const auto mark = tape_.scope_marks_.back();
    tape_.scope_marks_.pop_back();
    tape_.nodes_.resize(mark.nodes);
    tape_.arena_.rewind(mark.arena);
  }
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  Tape<T>& tape_;
};

}  // namespace dca
