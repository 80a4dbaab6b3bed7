// Specification of the tape: leaves, parameters, frozen values, accumulation, scopes, resets.
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/autodiff/tape.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>

using dca::index_t;
using dca::Parameter;
using dca::Shape;
using dca::Tape;
using dca::Tensor;
using dca::Var;
using dca::test::random_tensor;

namespace {

// Σ_ij y_ij, built from matmuls with constant ones so these tests depend on matmul only.
template <class T>
Var<T> total(const Var<T>& y) {
  Tape<T>& tape = y.tape();
  const auto left = tape.constant(Tensor<T>(Shape{1, y.rows()}, T(1)));
  const auto right = tape.constant(Tensor<T>(Shape{y.cols(), 1}, T(1)));
  return dca::matmul(dca::matmul(left, y), right);
}

}  // namespace

TEST_CASE("backward of Σ(x·w) gives the column sums of w and of x as gradients") {
  Tape<double> tape;
  const auto xv = random_tensor(Shape{3, 4}, 1), wv = random_tensor(Shape{4, 2}, 2);
  const auto x = tape.variable(xv), w = tape.variable(wv);
  const auto loss = total(dca::matmul(x, w));
  tape.backward(loss);
  // d/dx_ik Σ_ij x_ik w_kj = Σ_j w_kj ; d/dw_kj = Σ_i x_ik
  for (index_t i = 0; i < 3; ++i)
    for (index_t k = 0; k < 4; ++k) CHECK(x.grad()(i, k) == doctest::Approx(wv(k, 0) + wv(k, 1)).epsilon(1e-14));
  for (index_t k = 0; k < 4; ++k)
    for (index_t j = 0; j < 2; ++j)
      CHECK(w.grad()(k, j) == doctest::Approx(xv(0, k) + xv(1, k) + xv(2, k)).epsilon(1e-14));
}

TEST_CASE("a frozen parameter gets no gradient and its weight-gradient GEMM is not run") {
  const auto xv = random_tensor(Shape{4, 3}, 1);
  auto run = [&](bool frozen) {
    Parameter<double> w("w", random_tensor(Shape{5, 3}, 2));
    w.set_frozen(frozen);
    Tape<double> tape;
    const auto x = tape.variable(xv);
    tape.backward(total(dca::linear(x, tape.param(w))));
    return std::tuple{tape.stats(), w.has_grad(), Tensor<double>(x.grad())};
  };
  const auto [active_stats, active_has_grad, active_dx] = run(false);
  const auto [frozen_stats, frozen_has_grad, frozen_dx] = run(true);
  CHECK(active_has_grad);
  CHECK_FALSE(frozen_has_grad);
  CHECK(active_stats.backward_gemms == frozen_stats.backward_gemms + 1);
  CHECK(active_stats.backward_gemm_flops - frozen_stats.backward_gemm_flops == doctest::Approx(2.0 * 5 * 3 * 4));
  // Gradients still flow through the frozen weight to the active input, unchanged.
  for (index_t i = 0; i < active_dx.numel(); ++i) CHECK(frozen_dx[i] == active_dx[i]);
}

TEST_CASE("a value computed only from constants and frozen parameters is a constant") {
  Parameter<double> w("w", random_tensor(Shape{2, 2}, 1));
  w.freeze();
  Tape<double> tape;
  const auto y = dca::matmul(tape.constant(random_tensor(Shape{1, 2}, 2)), tape.param(w));
  CHECK_FALSE(y.requires_grad());
  CHECK_THROWS_WITH_AS(y.grad(), doctest::Contains("is a constant"), dca::UsageError);
  tape.backward(total(y));  // nothing to do, and no error
  CHECK_FALSE(w.has_grad());
}

TEST_CASE("parameter gradients accumulate across backward passes until zeroed") {
  Parameter<double> w("w", random_tensor(Shape{3, 2}, 1));
  const auto xv = random_tensor(Shape{2, 3}, 2);
  Tape<double> tape;
  for (int pass = 0; pass < 2; ++pass) {
    tape.backward(total(dca::matmul(tape.constant(xv), tape.param(w))));
    tape.reset();
  }
  for (index_t k = 0; k < 3; ++k)
    for (index_t j = 0; j < 2; ++j) CHECK(w.grad()(k, j) == doctest::Approx(2 * (xv(0, k) + xv(1, k))).epsilon(1e-14));
  w.zero_grad();
  tape.backward(total(dca::matmul(tape.constant(xv), tape.param(w))));
  CHECK(w.grad()(0, 0) == doctest::Approx(xv(0, 0) + xv(1, 0)).epsilon(1e-14));
}

TEST_CASE("a parameter used twice receives the sum of both uses") {
  // L = Σ (x·w)·w  => dL/dw from both uses
  Parameter<double> w("w", random_tensor(Shape{2, 2}, 3));
  const auto xv = random_tensor(Shape{1, 2}, 4);
  Tape<double> tape;
  tape.backward(total(dca::matmul(dca::matmul(tape.constant(xv), tape.param(w)), tape.param(w))));
  // Reference: central differences on the plain formula.
  auto f = [&](const Tensor<double>& wv) {
    double l = 0;
    for (index_t j = 0; j < 2; ++j)
      for (index_t m = 0; m < 2; ++m)
        for (index_t k = 0; k < 2; ++k) l += xv[k] * wv(k, m) * wv(m, j);
    return l;
  };
  for (index_t e = 0; e < 4; ++e) {
    auto plus = w.value(), minus = w.value();
    plus[e] += 1e-6;
    minus[e] -= 1e-6;
    CHECK(w.grad()[e] == doctest::Approx((f(plus) - f(minus)) / 2e-6).epsilon(1e-8));
  }
}

TEST_CASE("a second backward on one tape re-zeroes intermediates and accumulates only into leaves") {
  Tape<double> tape;
  const auto x = tape.variable(random_tensor(Shape{2, 3}, 1));
  const auto w = tape.constant(random_tensor(Shape{3, 2}, 2));
  const auto loss = total(dca::matmul(x, w));
  tape.backward(loss);
  const Tensor<double> once(x.grad());
  tape.backward(loss);
  for (index_t i = 0; i < once.numel(); ++i) CHECK(x.grad()[i] == doctest::Approx(2 * once[i]).epsilon(1e-15));
  tape.zero_adjoints();
  tape.backward(loss);
  for (index_t i = 0; i < once.numel(); ++i) CHECK(x.grad()[i] == doctest::Approx(once[i]).epsilon(1e-15));
}

TEST_CASE("a no-grad guard makes every new value a constant and restores the previous mode") {
  Parameter<double> w("w", random_tensor(Shape{2, 2}, 1));
  Tape<double> tape;
  {
    dca::NoGradGuard<double> no_grad(tape);
    const auto y = dca::matmul(tape.variable(random_tensor(Shape{1, 2}, 2)), tape.param(w));
    CHECK_FALSE(y.requires_grad());
    CHECK_FALSE(tape.grad_enabled());
  }
  CHECK(tape.grad_enabled());
  CHECK(dca::matmul(tape.variable(random_tensor(Shape{1, 2}, 2)), tape.param(w)).requires_grad());
}

TEST_CASE("a tape scope releases its nodes and memory when it closes") {
  Tape<double> tape;
  const auto x = tape.variable(random_tensor(Shape{8, 8}, 1));
  const auto nodes_before = tape.size();
  const auto bytes_before = tape.arena().used_bytes();
  Var<double> inner;
  {
    dca::TapeScope<double> scope(tape);
    inner = dca::matmul(x, x);
    CHECK(tape.size() == nodes_before + 1);
  }
  CHECK(tape.size() == nodes_before);
  CHECK(tape.arena().used_bytes() == bytes_before);
  CHECK_THROWS_WITH_AS(inner.value(), doctest::Contains("reset"), dca::UsageError);
  CHECK(x.rows() == 8);  // values from before the scope stay valid
}

TEST_CASE("a backward sweep inside a scope stops at the scope's start") {
  Tape<double> tape;
  const auto x = tape.variable(random_tensor(Shape{2, 2}, 1));
  const auto h = dca::matmul(x, tape.constant(random_tensor(Shape{2, 2}, 2)));  // outside the scope
  {
    dca::TapeScope<double> scope(tape);
    tape.backward(total(h));
    // h received its adjoint, but h's own backward (into x) belongs to the outer computation.
    CHECK(h.grad()(0, 0) == 1.0);
    CHECK(x.grad()(0, 0) == 0.0);
    CHECK_THROWS_WITH_AS(tape.backward(h, Tensor<double>(Shape{2, 2}).view()),
                         doctest::Contains("outside the innermost open TapeScope"), dca::UsageError);
  }
}

TEST_CASE("reset releases every node, keeps the memory, and invalidates old values") {
  Tape<double> tape;
  const auto x = tape.variable(random_tensor(Shape{64, 64}, 1));
  const auto y = dca::matmul(x, x);
  const auto reserved = tape.arena().reserved_bytes();
  tape.reset();
  CHECK(tape.size() == 0);
  CHECK(tape.arena().used_bytes() == 0);
  CHECK(tape.arena().reserved_bytes() == reserved);
  CHECK_THROWS_WITH_AS(y.value(), doctest::Contains("its tape was reset"), dca::UsageError);
  CHECK_THROWS_AS(tape.backward(y), dca::UsageError);
  // A new node at the same index is not mistaken for the released one.
  const auto z = tape.variable(random_tensor(Shape{1, 1}, 2));
  CHECK(z.rows() == 1);
  CHECK_THROWS_AS(x.rows(), dca::UsageError);
}

TEST_CASE("backward from a non-scalar without a seed names the shape") {
  Tape<double> tape;
  const auto y = dca::matmul(tape.variable(random_tensor(Shape{2, 3}, 1)), tape.constant(random_tensor(Shape{3, 4}, 2)));
  CHECK_THROWS_WITH_AS(tape.backward(y), doctest::Contains("'matmul' is [2,4], not a scalar [1,1]"), dca::UsageError);
  CHECK_THROWS_WITH_AS(tape.backward(y, Tensor<double>(Shape{4, 2}).view()),
                       doctest::Contains("seed [4,2] does not match the [2,4] output"), dca::ShapeError);
}

TEST_CASE("values from two different tapes cannot be combined") {
  Tape<double> a, b;
  CHECK_THROWS_WITH_AS(dca::matmul(a.variable(random_tensor(Shape{2, 2}, 1)), b.variable(random_tensor(Shape{2, 2}, 2))),
                       doctest::Contains("different tapes"), dca::UsageError);
  CHECK_THROWS_WITH_AS(Var<double>().rows(), doctest::Contains("empty"), dca::UsageError);
}

TEST_CASE("with finite checking on, an op producing NaN is named with its shapes") {
  Tape<double> tape;
  tape.set_check_finite(true);
  const auto a = tape.variable(Tensor<double>(Shape{1, 2}, {std::numeric_limits<double>::max(), 1.0}));
  const auto b = tape.constant(Tensor<double>(Shape{2, 1}, {10.0, 0.0}));
  CHECK_THROWS_WITH_AS(dca::matmul(a, b),
                       doctest::Contains("matmul: produced inf at (0,0) of its [1,1] output; inputs: variable [1,2], "
                                         "constant [2,1]"),
                       dca::NonFiniteError);
  CHECK_THROWS_WITH_AS(tape.constant(Tensor<double>(Shape{1, 1}, {std::nan("")})), doctest::Contains("produced nan"),
                       dca::NonFiniteError);
  tape.set_check_finite(false);
  CHECK(std::isinf(dca::matmul(a, b).item()));
}

TEST_CASE("leaves of rank above two are rejected with a hint") {
  Tape<float> tape;
  CHECK_THROWS_WITH_AS(tape.variable(Tensor<float>(Shape{2, 2, 2})), doctest::Contains("reshape it to [rows, cols]"),
                       dca::ShapeError);
}

TEST_CASE("a profiling tape times every op's forward and backward by name; a tape that does not profile keeps none") {
  Tape<double> tape;
  const Var<double> x = tape.variable(random_tensor(Shape{64, 32}, 1).view());
  const Var<double> w = tape.variable(random_tensor(Shape{32, 48}, 2).view());
  tape.backward(total(dca::matmul(x, w)));
  CHECK(tape.profile().empty());
  tape.set_profiling(true);
  tape.reset();
  const Var<double> x2 = tape.variable(random_tensor(Shape{64, 32}, 1).view());
  const Var<double> w2 = tape.variable(random_tensor(Shape{32, 48}, 2).view());
  tape.backward(total(dca::matmul(x2, w2)));
  REQUIRE(tape.profile().contains("matmul"));
  const dca::OpProfile& matmul = tape.profile().at("matmul");
  CHECK(matmul.calls == 3);  // the product and the two sums of total()
  CHECK(matmul.forward_seconds > 0);
  CHECK(matmul.backward_seconds > 0);
  tape.set_profiling(true);  // turning it on again starts a new profile
  CHECK(tape.profile().empty());
}

TEST_CASE("a tape's redirected gradients go to the given buffers, and an unfrozen parameter without one is refused") {
  Parameter<double> w("w", random_tensor(Shape{3, 4}, 1)), other("other", random_tensor(Shape{4, 2}, 2));
  Tape<double> tape;
  Tensor<double> sink(Shape{3, 4});
  tape.redirect_gradients({{&w, sink.data()}});
  const Var<double> x = tape.constant(random_tensor(Shape{2, 3}, 3).view());
  tape.backward(total(dca::matmul(x, tape.param(w))));
  CHECK(!w.has_grad());  // its own buffer was never touched
  Tape<double> reference;
  tape.reset();
  reference.backward(total(dca::matmul(reference.constant(random_tensor(Shape{2, 3}, 3).view()), reference.param(w))));
  CHECK(dca::test::max_abs_difference(sink, w.grad()) == 0.0);
  CHECK_THROWS_WITH_AS(tape.param(other), doctest::Contains("parameter 'other' has no gradient redirect"),
                       dca::UsageError);
  other.freeze();
  CHECK_NOTHROW(tape.param(other));  // a frozen parameter has no gradient to redirect
}
