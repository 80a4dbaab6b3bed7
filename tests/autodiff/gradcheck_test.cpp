// Specification of the finite-difference gradient checker, including that it catches wrong ops.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <sstream>

using dca::Shape;
using dca::Tensor;
using dca::Var;
using dca::test::random_tensor;

namespace {

// x ↦ x⊙x with a backward that claims the derivative is 3x instead of 2x: a planted bug.
template <class T>
Var<T> square_with_wrong_backward(const Var<T>& x) {
  dca::Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("wrong_square", x.rows(), x.cols(), {x});
  y.mutable_matrix() = x.matrix().array().square().matrix();
  tape.record(y, [x = x.operand(), y = y.operand()] {
    if (x.active()) x.adj().array() += y.adj().array() * 3 * x.val().array();
  });
  return y;
}

// The same op with the right derivative, to show the checker passes it.
template <class T>
Var<T> square(const Var<T>& x) {
  dca::Tape<T>& tape = x.tape();
  Var<T> y = tape.make_result("square", x.rows(), x.cols(), {x});
  y.mutable_matrix() = x.matrix().array().square().matrix();
  tape.record(y, [x = x.operand(), y = y.operand()] {
    if (x.active()) x.adj().array() += y.adj().array() * 2 * x.val().array();
  });
  return y;
}

}  // namespace

TEST_CASE("the gradient checker passes a correct backward") {
  const auto x = random_tensor(Shape{3, 4}, 1);
  const auto result = dca::check_gradients([](auto v) { return square(v); }, x);
  CHECK(result);
  CHECK(result.elements_checked == 12);
  CHECK(result.worst_error < 1e-8);
}

TEST_CASE("the gradient checker catches a planted wrong backward and reports the worst element") {
  const auto x = random_tensor(Shape{3, 4}, 2);
  const auto result = dca::check_gradients([](auto v) { return square_with_wrong_backward(v); }, x);
  CHECK_FALSE(result);
  CHECK(result.worst_input == 0);
  CHECK(result.analytic == doctest::Approx(1.5 * result.numeric).epsilon(1e-6));
  std::ostringstream message;
  message << result;
  CHECK(message.str().find("FAILED") != std::string::npos);
  CHECK(message.str().find("analytic") != std::string::npos);
}

TEST_CASE("the gradient checker names which input is wrong") {
  const auto a = random_tensor(Shape{2, 2}, 3), b = random_tensor(Shape{2, 2}, 4);
  const auto result =
      dca::check_gradients([](auto x, auto y) { return dca::matmul(x, square_with_wrong_backward(y)); }, a, b);
  CHECK_FALSE(result);
  CHECK(result.worst_input == 1);
}

TEST_CASE("the gradient checker treats a NaN gradient as a failure") {
  const auto x = random_tensor(Shape{2, 2}, 5);
  const auto result = dca::check_gradients(
      [](auto v) {
        auto& tape = v.tape();
        Var<double> y = tape.make_result("nan_backward", v.rows(), v.cols(), {v});
        y.mutable_matrix() = v.matrix();
        tape.record(y, [v = v.operand()] {
          if (v.active()) v.adj().array() += std::nan("");
        });
        return y;
      },
      x);
  CHECK_FALSE(result);
  CHECK(std::isnan(result.worst_error));
}

TEST_CASE("the gradient checker can sample a subset of a large input") {
  dca::GradCheckOptions options;
  options.max_elements_per_input = 5;
  const auto result = dca::check_gradients(options, [](auto v) { return square(v); }, random_tensor(Shape{10, 10}, 6));
  CHECK(result);
  CHECK(result.elements_checked == 5);
}
