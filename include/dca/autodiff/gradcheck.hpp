// dca/autodiff/gradcheck.hpp — finite-difference check of reverse-mode gradients, in double.
//
//   CHECK(dca::check_gradients([](auto x, auto w) { return dca::matmul(x, w); }, x0, w0));
//
// The function receives one active Var per input and returns a Var of any shape. Its output is
// projected onto a fixed random direction r (L = Σ r⊙f), the analytic gradient of L is taken
// with one backward sweep, and every input element's derivative is estimated by central
// differences with step h = cbrt(eps)·max(1,|x|). The error of one element is
// |analytic − numeric| / max(|analytic|, |numeric|, abs_floor); the result reports the worst one
// with both values, and converts to true when it is within tolerance.
#pragma once

#include "dca/autodiff/tape.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace dca {

struct GradCheckOptions {
  double tolerance = 1e-6;      // largest accepted error
  double abs_floor = 1e-3;      // denominators never go below this (gradients near zero)
  std::uint64_t seed = 20241223;  // for the projection direction and element sampling
  index_t max_elements_per_input = 0;  // 0: every element; otherwise a random sample of this size
};

struct GradCheckResult {
  bool passed = true;
  double worst_error = 0;
  int worst_input = -1;  // index of the input holding the worst element
  index_t worst_row = -1;
  index_t worst_col = -1;
  double analytic = 0;
  double numeric = 0;
  index_t elements_checked = 0;

  explicit operator bool() const { return passed; }

  std::string message() const {
    if (worst_input < 0) return detail::concat("gradient check: nothing checked (", elements_checked, " elements)");
    return detail::concat("gradient check ", passed ? "passed" : "FAILED", ": worst error ", worst_error, " at input ",
                          worst_input, " element (", worst_row, ",", worst_col, "): analytic ", analytic, ", numeric ",
                          numeric, " (", elements_checked, " elements checked)");
  }
  friend std::ostream& operator<<(std::ostream& out, const GradCheckResult& r) { return out << r.message(); }
};

namespace detail {

template <class F, std::size_t... I>
Var<double> call_with_vars(F& f, Tape<double>& tape, std::vector<Tensor<double>>& inputs, std::index_sequence<I...>) {
  return f(tape.variable(inputs[I].view())...);
}

template <class F, std::size_t N>
double projected_output(F& f, std::vector<Tensor<double>>& inputs, const Tensor<double>& direction) {
  Tape<double> tape;
  NoGradGuard<double> no_grad(tape);
  Var<double> y = call_with_vars(f, tape, inputs, std::make_index_sequence<N>{});
  return (y.matrix().array() * direction.matrix().array()).sum();
}

// Scores one element's analytic against its numeric derivative and keeps the worst in `result`.
inline void record_comparison(GradCheckResult& result, const GradCheckOptions& options, int input, index_t element,
                              index_t cols, double analytic, double numeric) {
  const double error = std::abs(analytic - numeric) / std::max({std::abs(analytic), std::abs(numeric), options.abs_floor});
  ++result.elements_checked;
  const bool worse = result.worst_input < 0 || error > result.worst_error ||
                     (std::isnan(error) && !std::isnan(result.worst_error));  // NaN is the worst
  if (!worse) return;
  result.worst_error = error;
  result.worst_input = input;
  result.worst_row = element / std::max<index_t>(cols, 1);
  result.worst_col = element % std::max<index_t>(cols, 1);
  result.analytic = analytic;
  result.numeric = numeric;
}

inline Tensor<double> as_matrix_input(const Tensor<double>& t, std::size_t index) {
  if (t.rank() > 2)
    fail<ShapeError>("check_gradients: input ", index, " has rank ", t.rank(), " ", t.shape(),
                     "; pass matrices (rank ≤ 2)");
  return t;
}

}  // namespace detail

/// Checks the gradients of `f` with respect to every input; see the header comment.
template <class F, class... Inputs>
GradCheckResult check_gradients(const GradCheckOptions& options, F&& f, const Inputs&... input_values) {
  constexpr std::size_t N = sizeof...(Inputs);
  std::vector<Tensor<double>> inputs;
  {
    std::size_t i = 0;
    (inputs.push_back(detail::as_matrix_input(Tensor<double>(input_values), i++)), ...);
  }

  // Analytic gradients of L = Σ r⊙f(x) from one backward sweep seeded with r.
  std::mt19937_64 rng(options.seed);
  Tensor<double> direction;
  std::vector<Tensor<double>> analytic;
  {
    Tape<double> tape;
    std::vector<Var<double>> vars;
    Var<double> y = [&]<std::size_t... I>(std::index_sequence<I...>) {
      (vars.push_back(tape.variable(inputs[I].view())), ...);
      return f(vars[I]...);
    }(std::make_index_sequence<N>{});
    direction = Tensor<double>(Shape{y.rows(), y.cols()});
    std::normal_distribution<double> normal(0.0, 1.0 / std::sqrt(static_cast<double>(std::max<index_t>(y.numel(), 1))));
    for (index_t i = 0; i < direction.numel(); ++i) direction[i] = normal(rng);
    tape.backward(y, direction.view());
    for (auto& v : vars) analytic.emplace_back(v.grad());
  }

  GradCheckResult result;
  const double cbrt_eps = std::cbrt(std::numeric_limits<double>::epsilon());
  for (std::size_t input = 0; input < N; ++input) {
    Tensor<double>& x = inputs[input];
    std::vector<index_t> elements(static_cast<std::size_t>(x.numel()));
    for (index_t e = 0; e < x.numel(); ++e) elements[static_cast<std::size_t>(e)] = e;
    if (options.max_elements_per_input > 0 && x.numel() > options.max_elements_per_input) {
      std::shuffle(elements.begin(), elements.end(), rng);
      elements.resize(static_cast<std::size_t>(options.max_elements_per_input));
    }
    for (index_t e : elements) {
      const double saved = x[e];
      const double h = cbrt_eps * std::max(1.0, std::abs(saved));
      x[e] = saved + h;
      const double plus = detail::projected_output<F, N>(f, inputs, direction);
      x[e] = saved - h;
      const double minus = detail::projected_output<F, N>(f, inputs, direction);
      x[e] = saved;
      detail::record_comparison(result, options, static_cast<int>(input), e, x.cols(), analytic[input][e],
                                (plus - minus) / (2 * h));
    }
  }
  result.passed = result.worst_error <= options.tolerance;
  return result;
}

/// Checks d loss / d parameter for parameters a computation reads through `tape.param` (whole
/// models, where the values are not inputs of `f`). `loss(tape)` must return a [1,1] Var; it is
/// evaluated once with gradients and twice per checked element with the parameter perturbed in
/// place (and restored). The parameters' gradients are zeroed first and hold the analytic
/// gradient afterwards. `worst_input` indexes `parameters`.
template <class F>
GradCheckResult check_parameter_gradients(const GradCheckOptions& options, F&& loss,
                                          std::span<Parameter<double>* const> parameters) {
  for (Parameter<double>* p : parameters) {
    p->grad_buffer();
    p->zero_grad();
  }
  {
    Tape<double> tape;
    tape.backward(loss(tape));
  }
  auto evaluate = [&] {
    Tape<double> tape;
    NoGradGuard<double> no_grad(tape);
    return loss(tape).item();
  };
  GradCheckResult result;
  std::mt19937_64 rng(options.seed);
  const double cbrt_eps = std::cbrt(std::numeric_limits<double>::epsilon());
  for (std::size_t index = 0; index < parameters.size(); ++index) {
    Parameter<double>& p = *parameters[index];
    std::vector<index_t> elements(static_cast<std::size_t>(p.numel()));
    for (index_t e = 0; e < p.numel(); ++e) elements[static_cast<std::size_t>(e)] = e;
    if (options.max_elements_per_input > 0 && p.numel() > options.max_elements_per_input) {
      std::shuffle(elements.begin(), elements.end(), rng);
      elements.resize(static_cast<std::size_t>(options.max_elements_per_input));
    }
    for (index_t e : elements) {
      double& x = p.value()[e];
      const double saved = x, h = cbrt_eps * std::max(1.0, std::abs(saved));
      x = saved + h;
      const double plus = evaluate();
      x = saved - h;
      const double minus = evaluate();
      x = saved;
      detail::record_comparison(result, options, static_cast<int>(index), e, p.value().cols(), p.grad()[e],
                                (plus - minus) / (2 * h));
    }
  }
  result.passed = result.worst_error <= options.tolerance;
  return result;
}

template <class F, class... Inputs>
  requires(!std::same_as<std::decay_t<F>, GradCheckOptions>)
GradCheckResult check_gradients(F&& f, const Inputs&... inputs) {
  return check_gradients(GradCheckOptions{}, std::forward<F>(f), inputs...);
}

}  // namespace dca
