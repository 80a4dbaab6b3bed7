// Specification of dca/autodiff/ops/reduce.hpp (sum, mean and their per-row / per-column forms),
// dca/autodiff/ops/activation.hpp (elementwise unary functions) and dca/autodiff/ops/softmax.hpp.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/activation.hpp"
#include "dca/autodiff/ops/reduce.hpp"
#include "dca/autodiff/ops/softmax.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

namespace {

using dca::index_t;
using dca::Shape;
using dca::Tape;
using dca::Tensor;
using dca::Var;
using dca::test::random_tensor;

Tensor<float> to_float(const Tensor<double>& t) {
  Tensor<float> f(t.shape());
  for (index_t i = 0; i < t.numel(); ++i) f[i] = static_cast<float>(t[i]);
  return f;
}

// ---- reductions -----------------------------------------------------------------------------

enum class Reduction { sum, mean, sum_over_rows, sum_over_cols, mean_over_rows, mean_over_cols };
constexpr std::array<Reduction, 6> reductions{
    Reduction::sum,           Reduction::mean,           Reduction::sum_over_rows,
    Reduction::sum_over_cols, Reduction::mean_over_rows, Reduction::mean_over_cols};

const char* name_of(Reduction r) {
  switch (r) {
    case Reduction::sum:
      return "sum";
    case Reduction::mean:
      return "mean";
    case Reduction::sum_over_rows:
      return "sum_over_rows";
    case Reduction::sum_over_cols:
      return "sum_over_cols";
    case Reduction::mean_over_rows:
      return "mean_over_rows";
    case Reduction::mean_over_cols:
      return "mean_over_cols";
  }
  return "";
}

template <class T>
Var<T> apply(Reduction r, const Var<T>& x) {
  switch (r) {
    case Reduction::sum:
      return dca::sum(x);
    case Reduction::mean:
      return dca::mean(x);
    case Reduction::sum_over_rows:
      return dca::sum_over_rows(x);
    case Reduction::sum_over_cols:
      return dca::sum_over_cols(x);
    case Reduction::mean_over_rows:
      return dca::mean_over_rows(x);
    case Reduction::mean_over_cols:
      return dca::mean_over_cols(x);
  }
  return {};
}

// The reduction computed with plain loops.
Tensor<double> reference(Reduction r, const Tensor<double>& x) {
  const index_t rows = x.rows(), cols = x.cols();
  const bool over_rows = r == Reduction::sum_over_rows || r == Reduction::mean_over_rows;
  const bool over_cols = r == Reduction::sum_over_cols || r == Reduction::mean_over_cols;
  const bool is_mean = r == Reduction::mean || r == Reduction::mean_over_rows || r == Reduction::mean_over_cols;
  Tensor<double> y(Shape{over_cols ? rows : 1, over_rows ? cols : 1});
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) y(over_cols ? i : 0, over_rows ? j : 0) += x(i, j);
  const double count = over_rows ? double(rows) : over_cols ? double(cols) : double(rows * cols);
  if (is_mean)
    for (index_t i = 0; i < y.numel(); ++i) y[i] /= count;
  return y;
}

// ---- unary activations ----------------------------------------------------------------------

enum class Activation { exp, log, tanh, sigmoid, relu, gelu_tanh, gelu_erf, silu, softcap };
constexpr std::array<Activation, 9> activations{Activation::exp,      Activation::log,  Activation::tanh,
                                                Activation::sigmoid,  Activation::relu, Activation::gelu_tanh,
                                                Activation::gelu_erf, Activation::silu, Activation::softcap};
constexpr double cap = 2.5;  // the c of softcap in these tests

const char* name_of(Activation f) {
  switch (f) {
    case Activation::exp:
      return "exp";
    case Activation::log:
      return "log";
    case Activation::tanh:
      return "tanh";
    case Activation::sigmoid:
      return "sigmoid";
    case Activation::relu:
      return "relu";
    case Activation::gelu_tanh:
      return "gelu_tanh";
    case Activation::gelu_erf:
      return "gelu_erf";
    case Activation::silu:
      return "silu";
    case Activation::softcap:
      return "softcap";
  }
  return "";
}

template <class T>
Var<T> apply(Activation f, const Var<T>& x) {
  switch (f) {
    case Activation::exp:
      return dca::exp(x);
    case Activation::log:
      return dca::log(x);
    case Activation::tanh:
      return dca::tanh(x);
    case Activation::sigmoid:
      return dca::sigmoid(x);
    case Activation::relu:
      return dca::relu(x);
    case Activation::gelu_tanh:
      return dca::gelu_tanh(x);
    case Activation::gelu_erf:
      return dca::gelu_erf(x);
    case Activation::silu:
      return dca::silu(x);
    case Activation::softcap:
      return dca::softcap(x, cap);
  }
  return {};
}

// The activation computed with the C++ standard library, from its textbook definition.
double reference(Activation f, double x) {
  switch (f) {
    case Activation::exp:
      return std::exp(x);
    case Activation::log:
      return std::log(x);
    case Activation::tanh:
      return std::tanh(x);
    case Activation::sigmoid:
      return 1 / (1 + std::exp(-x));
    case Activation::relu:
      return x > 0 ? x : 0;
    case Activation::gelu_tanh:
      return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
    case Activation::gelu_erf:
      return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case Activation::silu:
      return x / (1 + std::exp(-x));
    case Activation::softcap:
      return cap * std::tanh(x / cap);
  }
  return 0;
}

// Inputs inside each function's smooth domain: log gets positive values, relu stays at least 0.1
// away from its kink so that central differences never straddle it.
Tensor<double> activation_input(Activation f, Shape shape, std::uint64_t seed) {
  if (f == Activation::log) return random_tensor(shape, seed, 0.2, 3.0);
  Tensor<double> x = random_tensor(shape, seed, -3.0, 3.0);
  if (f == Activation::relu)
    for (index_t i = 0; i < x.numel(); ++i) x[i] = x[i] < 0 ? x[i] - 0.1 : x[i] + 0.1;
  return x;
}

// ---- softmax --------------------------------------------------------------------------------

// Row-wise softmax computed plainly, with the row maximum subtracted.
Tensor<double> reference_softmax(const Tensor<double>& x) {
  Tensor<double> y(x.shape());
  for (index_t i = 0; i < x.rows(); ++i) {
    double row_max = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < x.cols(); ++j) row_max = std::max(row_max, x(i, j));
    double total = 0;
    for (index_t j = 0; j < x.cols(); ++j) total += y(i, j) = std::exp(x(i, j) - row_max);
    for (index_t j = 0; j < x.cols(); ++j) y(i, j) /= total;
  }
  return y;
}

}  // namespace

// ---- reductions -----------------------------------------------------------------------------

TEST_CASE("sum, mean and the per-row and per-column reductions match plain loops") {
  for (Shape shape : {Shape{3, 4}, Shape{1, 5}, Shape{6, 1}})
    for (Reduction r : reductions) {
      INFO(name_of(r), " of ", shape);
      const Tensor<double> x0 = random_tensor(shape, 1);
      Tape<double> tape;
      const Var<double> y = apply(r, tape.variable(x0.view()));
      const Tensor<double> expected = reference(r, x0);
      REQUIRE(y.shape() == expected.shape());
      CHECK(std::string(y.op()) == name_of(r));
      for (index_t i = 0; i < expected.numel(); ++i) CHECK(y.value()[i] == doctest::Approx(expected[i]).epsilon(1e-14));
    }
}

TEST_CASE("gradients of every reduction match finite differences") {
  for (Shape shape : {Shape{3, 4}, Shape{1, 5}, Shape{6, 1}})
    for (Reduction r : reductions) {
      INFO(name_of(r), " of ", shape);
      CHECK(dca::check_gradients([r](auto x) { return apply(r, x); }, random_tensor(shape, 2)));
    }
}

TEST_CASE("float and double agree on the values and gradients of every reduction") {
  const Tensor<double> x0 = random_tensor(Shape{5, 7}, 3);
  const Tensor<float> xf0 = to_float(x0);
  for (Reduction r : reductions) {
    INFO(name_of(r));
    Tape<double> tape_d;
    Tape<float> tape_f;
    const Var<double> xd = tape_d.variable(x0.view());
    const Var<float> xf = tape_f.variable(xf0.view());
    const Var<double> yd = apply(r, xd);
    const Var<float> yf = apply(r, xf);
    const Tensor<double> seed = random_tensor(yd.shape(), 4);
    const Tensor<float> seed_f = to_float(seed);
    tape_d.backward(yd, seed.view());
    tape_f.backward(yf, seed_f.view());
    CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
    CHECK(dca::test::max_relative_difference(xf.grad().span(), xd.grad().span()) < 1e-5);
  }
}

TEST_CASE("sums over no elements are zero") {
  Tape<double> tape;
  const Var<double> empty = tape.variable(Tensor<double>(Shape{0, 3}).view());
  CHECK(dca::sum(empty).item() == 0.0);
  const Var<double> column_sums = dca::sum_over_rows(empty);
  REQUIRE(column_sums.shape() == Shape{1, 3});
  for (index_t j = 0; j < 3; ++j) CHECK(column_sums.value()[j] == 0.0);
  CHECK(dca::sum_over_cols(empty).shape() == Shape{0, 1});
}

TEST_CASE("a mean over no elements throws ShapeError naming the op and the shape") {
  Tape<double> tape;
  const Var<double> no_rows = tape.variable(Tensor<double>(Shape{0, 3}).view());
  CHECK_THROWS_WITH_AS(dca::mean(no_rows), doctest::Contains("mean: input is [0,3]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::mean_over_rows(no_rows), doctest::Contains("mean_over_rows: input is [0,3]"),
                       dca::ShapeError);
  // Averaging along a non-empty dimension of an empty input is fine: there are no means to take.
  CHECK(dca::mean_over_cols(no_rows).shape() == Shape{0, 1});
}

TEST_CASE("reductions of an input with no columns give zero sums and reject means over columns") {
  Tape<double> tape;
  const Var<double> no_cols = tape.variable(Tensor<double>(Shape{2, 0}).view());
  const Var<double> row_sums = dca::sum_over_cols(no_cols);
  REQUIRE(row_sums.shape() == Shape{2, 1});
  CHECK(row_sums.value()[0] == 0.0);
  CHECK(row_sums.value()[1] == 0.0);
  CHECK_THROWS_WITH_AS(dca::mean_over_cols(no_cols), doctest::Contains("mean_over_cols: input is [2,0]"),
                       dca::ShapeError);
  CHECK(dca::mean_over_rows(no_cols).shape() == Shape{1, 0});
}

// ---- unary activations ----------------------------------------------------------------------

TEST_CASE("every activation matches its textbook definition computed with the standard library") {
  for (Shape shape : {Shape{3, 4}, Shape{2, 9}})
    for (Activation f : activations) {
      INFO(name_of(f), " of ", shape);
      const Tensor<double> x0 = activation_input(f, shape, 5);
      Tape<double> tape;
      const Var<double> y = apply(f, tape.variable(x0.view()));
      REQUIRE(y.shape() == shape);
      CHECK(std::string(y.op()) == name_of(f));
      for (index_t i = 0; i < x0.numel(); ++i)
        CHECK(y.value()[i] == doctest::Approx(reference(f, x0[i])).epsilon(1e-13));
    }
}

TEST_CASE("gradients of every activation match finite differences") {
  for (Shape shape : {Shape{3, 4}, Shape{2, 9}})
    for (Activation f : activations) {
      INFO(name_of(f), " of ", shape);
      CHECK(dca::check_gradients([f](auto x) { return apply(f, x); }, activation_input(f, shape, 6)));
    }
}

TEST_CASE("float and double agree on the values and gradients of every activation") {
  for (Activation f : activations) {
    INFO(name_of(f));
    const Tensor<double> x0 = activation_input(f, Shape{4, 8}, 7);
    const Tensor<float> xf0 = to_float(x0);
    Tape<double> tape_d;
    Tape<float> tape_f;
    const Var<double> xd = tape_d.variable(x0.view());
    const Var<float> xf = tape_f.variable(xf0.view());
    const Var<double> yd = apply(f, xd);
    const Var<float> yf = apply(f, xf);
    const Tensor<double> seed = random_tensor(Shape{4, 8}, 8);
    const Tensor<float> seed_f = to_float(seed);
    tape_d.backward(yd, seed.view());
    tape_f.backward(yf, seed_f.view());
    CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
    CHECK(dca::test::max_relative_difference(xf.grad().span(), xd.grad().span()) < 1e-5);
  }
}

TEST_CASE("bounded activations stay finite in value and gradient for inputs of magnitude 1000") {
  const Tensor<double> x0(Shape{1, 4}, {-1000.0, -30.0, 30.0, 1000.0});
  const Tensor<float> xf0 = to_float(x0);
  for (Activation f : activations) {
    if (f == Activation::exp || f == Activation::log) continue;  // unbounded or undefined there
    INFO(name_of(f));
    Tape<double> tape_d;
    Tape<float> tape_f;
    tape_d.set_check_finite(true);
    tape_f.set_check_finite(true);
    const Var<double> xd = tape_d.variable(x0.view());
    const Var<float> xf = tape_f.variable(xf0.view());
    const Var<double> yd = apply(f, xd);
    const Var<float> yf = apply(f, xf);
    tape_d.backward(yd, Tensor<double>(Shape{1, 4}, 1.0).view());
    tape_f.backward(yf, Tensor<float>(Shape{1, 4}, 1.0f).view());
    for (index_t i = 0; i < 4; ++i) {
      CHECK(yd.value()[i] == doctest::Approx(reference(f, x0[i])).epsilon(1e-12));
      CHECK(std::isfinite(xd.grad()[i]));
      CHECK(std::isfinite(xf.grad()[i]));
    }
  }
}

TEST_CASE("relu's derivative is 1 for positive inputs and 0 for negative inputs and at the kink") {
  const Tensor<double> x0(Shape{1, 4}, {-2.0, 0.0, 1e-300, 3.0});
  Tape<double> tape;
  const Var<double> x = tape.variable(x0.view());
  tape.backward(dca::relu(x), Tensor<double>(Shape{1, 4}, 1.0).view());
  CHECK(x.grad()[0] == 0.0);
  CHECK(x.grad()[1] == 0.0);
  CHECK(x.grad()[2] == 1.0);
  CHECK(x.grad()[3] == 1.0);
}

TEST_CASE("relu propagates NaN instead of hiding it as 0") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tape<double> tape;
  const Var<double> y = dca::relu(tape.constant(Tensor<double>(Shape{1, 3}, {nan, -1.0, 1.0}).view()));
  CHECK(std::isnan(y.value()[0]));
  Tape<float> tape_f;
  const float nan_f = std::numeric_limits<float>::quiet_NaN();
  // 17 elements so that Eigen's vectorised path and its scalar tail both see a NaN.
  Tensor<float> x0(Shape{1, 17}, -1.0f);
  x0[0] = nan_f;
  x0[16] = nan_f;
  const Var<float> yf = dca::relu(tape_f.constant(x0.view()));
  CHECK(std::isnan(yf.value()[0]));
  CHECK(std::isnan(yf.value()[16]));
}

TEST_CASE("log of zero and of negative values gives -inf and NaN, which the finite check reports") {
  const Tensor<double> x0(Shape{1, 3}, {1.0, 0.0, -1.0});
  Tape<double> tape;
  const Var<double> y = dca::log(tape.constant(x0.view()));
  CHECK(y.value()[0] == 0.0);
  CHECK(y.value()[1] == -std::numeric_limits<double>::infinity());
  CHECK(std::isnan(y.value()[2]));
  tape.set_check_finite(true);
  CHECK_THROWS_WITH_AS(dca::log(tape.constant(x0.view())), doctest::Contains("log"), dca::NonFiniteError);
}

TEST_CASE("softcap bounds its output by c and rejects a cap that is not positive") {
  const Tensor<double> x0(Shape{1, 3}, {-50.0, 0.5, 50.0});
  Tape<double> tape;
  const Var<double> x = tape.variable(x0.view());
  const Var<double> y = dca::softcap(x, 2.0);
  CHECK(y.value()[0] == doctest::Approx(-2.0));
  CHECK(y.value()[1] == doctest::Approx(2.0 * std::tanh(0.25)));
  CHECK(y.value()[2] == doctest::Approx(2.0));
  CHECK_THROWS_WITH_AS(dca::softcap(x, 0.0), doctest::Contains("softcap: cap c = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::softcap(x, -2.0), doctest::Contains("softcap: cap c = -2"), dca::RangeError);
  CHECK_THROWS_AS(dca::softcap(x, std::numeric_limits<double>::quiet_NaN()), dca::RangeError);
}

TEST_CASE("activations, reductions and softmax of a constant are constants") {
  const Tensor<double> x0 = random_tensor(Shape{2, 3}, 9);
  Tape<double> tape;
  const Var<double> c = tape.constant(x0.view());
  for (Activation f : activations) {
    INFO(name_of(f));
    CHECK_FALSE(apply(f, tape.constant(activation_input(f, Shape{2, 3}, 10).view())).requires_grad());
  }
  for (Reduction r : reductions) CHECK_FALSE(apply(r, c).requires_grad());
  CHECK_FALSE(dca::softmax(c).requires_grad());
  CHECK_FALSE(dca::log_softmax(c).requires_grad());
}

// ---- softmax --------------------------------------------------------------------------------

TEST_CASE("softmax rows sum to one and match a plain reference") {
  for (Shape shape : {Shape{3, 5}, Shape{1, 8}, Shape{4, 1}}) {
    INFO(shape);
    const Tensor<double> x0 = random_tensor(shape, 11, -4.0, 4.0);
    Tape<double> tape;
    const Var<double> y = dca::softmax(tape.variable(x0.view()));
    const Tensor<double> expected = reference_softmax(x0);
    REQUIRE(y.shape() == shape);
    for (index_t i = 0; i < shape.rows(); ++i) {
      double total = 0;
      for (index_t j = 0; j < shape.cols(); ++j) {
        CHECK(y.value()(i, j) == doctest::Approx(expected(i, j)).epsilon(1e-13));
        total += y.value()(i, j);
      }
      CHECK(total == doctest::Approx(1.0).epsilon(1e-14));
    }
  }
}

TEST_CASE("log_softmax equals the log of softmax") {
  for (Shape shape : {Shape{3, 5}, Shape{2, 11}}) {
    INFO(shape);
    const Tensor<double> x0 = random_tensor(shape, 12, -6.0, 6.0);
    const Tensor<double> expected = reference_softmax(x0);
    Tape<double> tape;
    const Var<double> y = dca::log_softmax(tape.variable(x0.view()));
    REQUIRE(y.shape() == shape);
    for (index_t i = 0; i < x0.numel(); ++i)
      CHECK(y.value()[i] == doctest::Approx(std::log(expected[i])).epsilon(1e-13));
  }
}

TEST_CASE("gradients of softmax and log_softmax match finite differences") {
  for (Shape shape : {Shape{3, 5}, Shape{2, 8}, Shape{4, 1}}) {
    INFO(shape);
    const Tensor<double> x0 = random_tensor(shape, 13, -3.0, 3.0);
    CHECK(dca::check_gradients([](auto x) { return dca::softmax(x); }, x0));
    CHECK(dca::check_gradients([](auto x) { return dca::log_softmax(x); }, x0));
  }
}

namespace {

// Values and gradients of softmax (log_softmax if `log`) of `x0` + `shift`, in double.
std::pair<Tensor<double>, Tensor<double>> softmax_value_and_gradient(const Tensor<double>& x0, double shift, bool log) {
  Tensor<double> shifted = x0;
  for (index_t i = 0; i < shifted.numel(); ++i) shifted[i] += shift;
  Tape<double> tape;
  tape.set_check_finite(true);
  const Var<double> x = tape.variable(shifted.view());
  const Var<double> y = log ? dca::log_softmax(x) : dca::softmax(x);
  tape.backward(y, random_tensor(x0.shape(), 15).view());
  return {Tensor<double>(y.value()), Tensor<double>(x.grad())};
}

}  // namespace

TEST_CASE("softmax and log_softmax are stable for large inputs and invariant to a shift of the input") {
  const Tensor<double> x0 = random_tensor(Shape{3, 6}, 14, -5.0, 5.0);
  for (bool log : {false, true})
    for (double shift : {1000.0, -1000.0, 1e5}) {
      INFO((log ? "log_softmax" : "softmax"), " shifted by ", shift);
      const auto [value, gradient] = softmax_value_and_gradient(x0, shift, log);
      const auto [unshifted_value, unshifted_gradient] = softmax_value_and_gradient(x0, 0.0, log);
      // The shifted input itself is only accurate to |shift|·eps, which bounds the agreement.
      for (index_t i = 0; i < x0.numel(); ++i) {
        CHECK(value[i] == doctest::Approx(unshifted_value[i]).epsilon(1e-9));
        CHECK(gradient[i] == doctest::Approx(unshifted_gradient[i]).epsilon(1e-9));
      }
    }
  // In float, 1000 + x keeps only about 4 fractional digits of x, but nothing overflows.
  Tensor<float> large = to_float(x0);
  for (index_t i = 0; i < large.numel(); ++i) large[i] += 1000.0f;
  Tape<float> tape;
  tape.set_check_finite(true);
  const Var<float> x = tape.variable(large.view());
  CHECK_NOTHROW(dca::softmax(x));
  CHECK_NOTHROW(dca::log_softmax(x));
}

TEST_CASE("softmax gives masked (-inf) entries zero probability and a finite gradient") {
  const double inf = std::numeric_limits<double>::infinity();
  const Tensor<double> x0(Shape{2, 4}, {0.5, -inf, 1.5, -inf, -inf, 2.0, -inf, -inf});
  Tape<double> tape;
  const Var<double> x = tape.variable(x0.view());
  const Var<double> p = dca::softmax(x);
  const Var<double> logp = dca::log_softmax(x);
  const double e = std::exp(1.0);
  // Eigen's vectorised exp returns ~5e-309 rather than 0 at -inf in double, hence the bound.
  CHECK(p.value()(0, 0) == doctest::Approx(1 / (1 + e)));
  CHECK(p.value()(0, 1) < 1e-300);
  CHECK(p.value()(0, 2) == doctest::Approx(e / (1 + e)));
  CHECK(p.value()(1, 1) == 1.0);
  CHECK(logp.value()(0, 1) == -inf);
  CHECK(logp.value()(1, 1) == 0.0);
  tape.backward(p, random_tensor(Shape{2, 4}, 16).view());
  for (index_t i = 0; i < x0.numel(); ++i) CHECK(std::isfinite(x.grad()[i]));
}

TEST_CASE("float and double agree on the values and gradients of softmax and log_softmax") {
  const Tensor<double> x0 = random_tensor(Shape{4, 9}, 17, -4.0, 4.0);
  const Tensor<double> seed = random_tensor(Shape{4, 9}, 18);
  const Tensor<float> xf0 = to_float(x0), seed_f = to_float(seed);
  for (bool log : {false, true}) {
    INFO((log ? "log_softmax" : "softmax"));
    Tape<double> tape_d;
    Tape<float> tape_f;
    const Var<double> xd = tape_d.variable(x0.view());
    const Var<float> xf = tape_f.variable(xf0.view());
    const Var<double> yd = log ? dca::log_softmax(xd) : dca::softmax(xd);
    const Var<float> yf = log ? dca::log_softmax(xf) : dca::softmax(xf);
    tape_d.backward(yd, seed.view());
    tape_f.backward(yf, seed_f.view());
    CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
    CHECK(dca::test::max_relative_difference(xf.grad().span(), xd.grad().span()) < 1e-5);
  }
}

TEST_CASE("activations over enough elements to be split across threads match the reference and give the same bits "
          "on one and two threads") {
  const int previous_threads = dca::num_threads();
  const Shape shape{160, 256};  // 40960 elements: several chunks, and above the threshold for threads
  const Tensor<double> seed = random_tensor(shape, 21);
  for (Activation f : activations) {
    INFO(name_of(f));
    const Tensor<double> x0 = activation_input(f, shape, 20);
    const auto run = [&](int threads) {
      dca::set_num_threads(threads);
      Tape<double> tape;
      const Var<double> x = tape.variable(x0.view());
      const Var<double> y = apply(f, x);
      tape.backward(y, seed.view());
      return std::pair{Tensor<double>(y.value()), Tensor<double>(x.grad())};
    };
    const auto one = run(1), two = run(2);
    bool same_bits = true;
    for (index_t i = 0; i < x0.numel(); ++i) {
      same_bits = same_bits && one.first[i] == two.first[i] && one.second[i] == two.second[i];
      if (i % 97 == 0) CHECK(one.first[i] == doctest::Approx(reference(f, x0[i])).epsilon(1e-13));
    }
    CHECK(same_bits);
    dca::GradCheckOptions sampled;
    sampled.max_elements_per_input = 16;
    CHECK(dca::check_gradients(sampled, [f](auto x) { return apply(f, x); }, x0));
  }
  dca::set_num_threads(previous_threads);
}
