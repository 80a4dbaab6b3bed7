// Specification of dca/autodiff/ops/elementwise.hpp: the broadcasting binary ops add, sub, mul,
// div; the scalar ops scale and add_scalar; and the operators built on them.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/elementwise.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace {

using dca::test::converted;

using dca::index_t;
using dca::Shape;
using dca::Tape;
using dca::Tensor;
using dca::Var;
using dca::test::random_tensor;

enum class BinaryOp { add, sub, mul, div };
constexpr std::array<BinaryOp, 4> binary_ops{BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div};

const char* name_of(BinaryOp op) {
  switch (op) {
    case BinaryOp::add:
      return "add";
    case BinaryOp::sub:
      return "sub";
    case BinaryOp::mul:
      return "mul";
    case BinaryOp::div:
      return "div";
  }
  return "";
}

template <class T>
Var<T> apply(BinaryOp op, const Var<T>& a, const Var<T>& b) {
  switch (op) {
    case BinaryOp::add:
      return dca::add(a, b);
    case BinaryOp::sub:
      return dca::sub(a, b);
    case BinaryOp::mul:
      return dca::mul(a, b);
    case BinaryOp::div:
      return dca::div(a, b);
  }
  return {};
}

double reference(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::add:
      return a + b;
    case BinaryOp::sub:
      return a - b;
    case BinaryOp::mul:
      return a * b;
    case BinaryOp::div:
      return a / b;
  }
  return 0;
}

// The four layouts an operand of a [rows, cols] result may have: full, row, column, scalar.
std::vector<Shape> operand_layouts(index_t rows, index_t cols) {
  return {Shape{rows, cols}, Shape{1, cols}, Shape{rows, 1}, Shape{1, 1}};
}

// The element of a broadcast operand that lines up with result element (i, j).
double broadcast_at(const Tensor<double>& t, index_t i, index_t j) {
  return t(t.rows() == 1 ? 0 : i, t.cols() == 1 ? 0 : j);
}

index_t broadcast_extent(index_t a, index_t b) { return a == 1 ? b : a; }

// Divisors stay in [0.5, 2] so that div is smooth; other operands are uniform in [-1, 1].
Tensor<double> operand(BinaryOp op, bool is_b, Shape shape, std::uint64_t seed) {
  if (op == BinaryOp::div && is_b) return random_tensor(shape, seed, 0.5, 2.0);
  return random_tensor(shape, seed);
}

// Every (a layout, b layout) pair for two result shapes, including a single row and a single column.
template <class F>
void for_each_layout_pair(F&& body) {
  for (auto [rows, cols] : {std::array<index_t, 2>{3, 4}, std::array<index_t, 2>{5, 2}})
    for (const Shape& sa : operand_layouts(rows, cols))
      for (const Shape& sb : operand_layouts(rows, cols)) body(sa, sb);
}

template <class A, class B>
concept has_star_operator = requires(const A& a, const B& b) {
  a* b;
};

}  // namespace

TEST_CASE("add, sub, mul and div broadcast every operand layout and match a plain loop") {
  for (BinaryOp op : binary_ops)
    for_each_layout_pair([&](const Shape& sa, const Shape& sb) {
      INFO(name_of(op), " a ", sa, " b ", sb);
      const Tensor<double> a0 = operand(op, false, sa, 1), b0 = operand(op, true, sb, 2);
      Tape<double> tape;
      const Var<double> y = apply(op, tape.variable(a0.view()), tape.variable(b0.view()));
      REQUIRE(y.rows() == broadcast_extent(sa.rows(), sb.rows()));
      REQUIRE(y.cols() == broadcast_extent(sa.cols(), sb.cols()));
      CHECK(std::string(y.op()) == name_of(op));
      for (index_t i = 0; i < y.rows(); ++i)
        for (index_t j = 0; j < y.cols(); ++j)
          CHECK(y.value()(i, j) ==
                doctest::Approx(reference(op, broadcast_at(a0, i, j), broadcast_at(b0, i, j))).epsilon(1e-15));
    });
}

TEST_CASE("gradients of both operands of add, sub, mul and div match finite differences for every layout") {
  for (BinaryOp op : binary_ops)
    for_each_layout_pair([&](const Shape& sa, const Shape& sb) {
      INFO(name_of(op), " a ", sa, " b ", sb);
      // Both operand orders are covered: the pair (sa, sb) is visited as well as (sb, sa).
      CHECK(dca::check_gradients([op](auto a, auto b) { return apply(op, a, b); }, operand(op, false, sa, 3),
                                 operand(op, true, sb, 4)));
    });
}

TEST_CASE("an operand used on both sides receives the sum of both contributions") {
  const Tensor<double> x0 = random_tensor(Shape{3, 4}, 5, 0.5, 2.0);
  for (BinaryOp op : binary_ops) {
    INFO(name_of(op));
    CHECK(dca::check_gradients([op](auto x) { return apply(op, x, x); }, x0));
  }
  Tape<double> tape;
  const Var<double> x = tape.variable(x0.view());
  const Tensor<double> seed(Shape{3, 4}, 1.0);
  tape.backward(dca::mul(x, x), seed.view());
  for (index_t i = 0; i < x0.numel(); ++i) CHECK(x.grad()[i] == doctest::Approx(2 * x0[i]));
}

TEST_CASE("a broadcast operand's gradient is the output adjoint summed over the broadcast dimensions") {
  const Tensor<double> a0 = random_tensor(Shape{3, 4}, 6), row0 = random_tensor(Shape{1, 4}, 7);
  const Tensor<double> col0 = random_tensor(Shape{3, 1}, 8), scalar0 = random_tensor(Shape{1, 1}, 9);
  const Tensor<double> seed = random_tensor(Shape{3, 4}, 10);
  Tape<double> tape;
  const Var<double> a = tape.variable(a0.view());
  const Var<double> row = tape.variable(row0.view()), col = tape.variable(col0.view());
  const Var<double> scalar = tape.variable(scalar0.view());
  // The bias case (fast row path) with the row first, then a column and a scalar subtracted.
  tape.backward(dca::sub(dca::sub(dca::add(row, a), col), scalar), seed.view());
  double total = 0;
  for (index_t i = 0; i < 3; ++i) {
    double row_sum = 0;
    for (index_t j = 0; j < 4; ++j) {
      CHECK(a.grad()(i, j) == doctest::Approx(seed(i, j)));
      row_sum += seed(i, j);
    }
    CHECK(col.grad()(i, 0) == doctest::Approx(-row_sum));
    total += row_sum;
  }
  for (index_t j = 0; j < 4; ++j) {
    double col_sum = 0;
    for (index_t i = 0; i < 3; ++i) col_sum += seed(i, j);
    CHECK(row.grad()(0, j) == doctest::Approx(col_sum));
  }
  CHECK(scalar.grad()(0, 0) == doctest::Approx(-total));
}

TEST_CASE("a constant operand receives no gradient while the active operand does") {
  const Tensor<double> full0 = random_tensor(Shape{3, 4}, 11), row0 = random_tensor(Shape{1, 4}, 12, 0.5, 2.0);
  const Tensor<double> seed = random_tensor(Shape{3, 4}, 13);
  SUBCASE("constant first operand") {
    Tape<double> tape;
    const Var<double> c = tape.constant(full0.view()), w = tape.variable(row0.view());
    const Var<double> y = dca::mul(c, w);
    REQUIRE(y.requires_grad());
    tape.backward(y, seed.view());
    for (index_t j = 0; j < 4; ++j) {
      double expected = 0;
      for (index_t i = 0; i < 3; ++i) expected += seed(i, j) * full0(i, j);
      CHECK(w.grad()(0, j) == doctest::Approx(expected));
    }
    CHECK_THROWS_AS(c.grad(), dca::UsageError);
  }
  SUBCASE("constant second operand") {
    Tape<double> tape;
    const Var<double> x = tape.variable(full0.view()), c = tape.constant(row0.view());
    tape.backward(dca::div(x, c), seed.view());
    for (index_t i = 0; i < 3; ++i)
      for (index_t j = 0; j < 4; ++j) CHECK(x.grad()(i, j) == doctest::Approx(seed(i, j) / row0(0, j)));
    CHECK_THROWS_AS(c.grad(), dca::UsageError);
  }
  SUBCASE("two constants give a constant") {
    Tape<double> tape;
    const Var<double> y = dca::add(tape.constant(full0.view()), tape.constant(row0.view()));
    CHECK_FALSE(y.requires_grad());
    CHECK_THROWS_AS(y.grad(), dca::UsageError);
  }
}

TEST_CASE("float and double agree on the values and gradients of every binary op and layout") {
  for (BinaryOp op : binary_ops)
    for_each_layout_pair([&](const Shape& sa, const Shape& sb) {
      INFO(name_of(op), " a ", sa, " b ", sb);
      const Tensor<double> a0 = operand(op, false, sa, 14), b0 = operand(op, true, sb, 15);
      Tape<double> tape_d;
      const Var<double> ad = tape_d.variable(a0.view()), bd = tape_d.variable(b0.view());
      const Var<double> yd = apply(op, ad, bd);
      const Tensor<double> seed = random_tensor(yd.shape(), 16);
      tape_d.backward(yd, seed.view());

      Tape<float> tape_f;
      const Tensor<float> af0 = converted<float>(a0), bf0 = converted<float>(b0), seed_f = converted<float>(seed);
      const Var<float> af = tape_f.variable(af0.view()), bf = tape_f.variable(bf0.view());
      const Var<float> yf = apply(op, af, bf);
      tape_f.backward(yf, seed_f.view());

      CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
      CHECK(dca::test::max_relative_difference(af.grad().span(), ad.grad().span()) < 1e-5);
      CHECK(dca::test::max_relative_difference(bf.grad().span(), bd.grad().span()) < 1e-5);
    });
}

TEST_CASE("operands whose shapes cannot broadcast throw ShapeError naming the op and both shapes") {
  Tape<double> tape;
  const auto var = [&](Shape s) { return tape.variable(Tensor<double>(s, 1.0).view()); };
  CHECK_THROWS_WITH_AS(dca::add(var({2, 3}), var({3, 2})),
                       doctest::Contains("add: cannot broadcast a [2,3] with b [3,2]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::sub(var({2, 3}), var({4, 3})),
                       doctest::Contains("sub: cannot broadcast a [2,3] with b [4,3]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::mul(var({2, 3}), var({2, 4})),
                       doctest::Contains("mul: cannot broadcast a [2,3] with b [2,4]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::div(var({3, 1}), var({2, 1})),
                       doctest::Contains("div: cannot broadcast a [3,1] with b [2,1]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(var({1, 3}) + var({1, 2}), doctest::Contains("add: cannot broadcast a [1,3] with b [1,2]"),
                       dca::ShapeError);
}

TEST_CASE("operands on different tapes are rejected with a UsageError naming the op") {
  Tape<double> tape_a, tape_b;
  const Tensor<double> x0(Shape{2, 2}, 1.0);
  CHECK_THROWS_WITH_AS(dca::add(tape_a.variable(x0.view()), tape_b.variable(x0.view())), doctest::Contains("add"),
                       dca::UsageError);
}

TEST_CASE("empty operands broadcast to an empty result and an empty gradient") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{0, 3}).view());
  const Var<double> row = tape.variable(random_tensor(Shape{1, 3}, 17).view());
  const Var<double> y = dca::mul(x, row);
  CHECK(y.shape() == Shape{0, 3});
  tape.backward(y, Tensor<double>(Shape{0, 3}).view());
  for (index_t j = 0; j < 3; ++j) CHECK(row.grad()(0, j) == 0.0);
}

TEST_CASE("division by zero is not an error unless the tape checks for non-finite values") {
  Tape<double> tape;
  const Tensor<double> one(Shape{1, 2}, 1.0), zero(Shape{1, 2}, 0.0);
  CHECK(std::isinf(dca::div(tape.constant(one.view()), tape.constant(zero.view())).value()[0]));
  tape.set_check_finite(true);
  CHECK_THROWS_WITH_AS(dca::div(tape.constant(one.view()), tape.constant(zero.view())), doctest::Contains("div"),
                       dca::NonFiniteError);
}

TEST_CASE("scale, add_scalar and the scalar operators match plain arithmetic") {
  const double s = 1.75;
  const Tensor<double> x0 = random_tensor(Shape{3, 4}, 18);
  Tape<double> tape;
  const Var<double> x = tape.variable(x0.view());
  const std::vector<std::pair<Var<double>, std::function<double(double)>>> cases{
      {dca::scale(x, s), [&](double v) { return s * v; }},
      {dca::add_scalar(x, s), [&](double v) { return v + s; }},
      {x + s, [&](double v) { return v + s; }},
      {s + x, [&](double v) { return s + v; }},
      {x - s, [&](double v) { return v - s; }},
      {s - x, [&](double v) { return s - v; }},
      {x * s, [&](double v) { return v * s; }},
      {s * x, [&](double v) { return s * v; }},
      {x / s, [&](double v) { return v / s; }},
      {-x, [](double v) { return -v; }},
  };
  for (const auto& [y, expected] : cases) {
    INFO(y.op());
    REQUIRE(y.shape() == x0.shape());
    for (index_t i = 0; i < x0.numel(); ++i) CHECK(y.value()[i] == doctest::Approx(expected(x0[i])).epsilon(1e-15));
  }
}

TEST_CASE("gradients of scale, add_scalar and the scalar operators match finite differences") {
  const double s = -0.6;
  const std::vector<std::pair<const char*, std::function<Var<double>(Var<double>)>>> cases{
      {"scale", [&](auto x) { return dca::scale(x, s); }},
      {"add_scalar", [&](auto x) { return dca::add_scalar(x, s); }},
      {"x + s", [&](auto x) { return x + s; }},
      {"s + x", [&](auto x) { return s + x; }},
      {"x - s", [&](auto x) { return x - s; }},
      {"s - x", [&](auto x) { return s - x; }},
      {"x * s", [&](auto x) { return x * s; }},
      {"s * x", [&](auto x) { return s * x; }},
      {"x / s", [&](auto x) { return x / s; }},
      {"-x", [](auto x) { return -x; }},
  };
  for (const auto& [name, f] : cases)
    for (Shape shape : {Shape{3, 4}, Shape{1, 6}}) {
      INFO(name, " ", shape);
      CHECK(dca::check_gradients(f, random_tensor(shape, 19)));
    }
}

TEST_CASE("scalar operators on Var<float> accept double and int literals and agree with double") {
  const Tensor<double> x0 = random_tensor(Shape{2, 3}, 20);
  Tape<double> tape_d;
  Tape<float> tape_f;
  const Tensor<float> xf0 = converted<float>(x0);
  const Var<double> xd = tape_d.variable(x0.view());
  const Var<float> xf = tape_f.variable(xf0.view());
  const Var<double> yd = (2 - xd * 0.5 + 1) / 3.0;
  const Var<float> yf = (2 - xf * 0.5 + 1) / 3.0;
  CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-6);
  const Tensor<double> seed = random_tensor(Shape{2, 3}, 21);
  const Tensor<float> seed_f = converted<float>(seed);
  tape_d.backward(yd, seed.view());
  tape_f.backward(yf, seed_f.view());
  CHECK(dca::test::max_relative_difference(xf.grad().span(), xd.grad().span()) < 1e-6);
}

TEST_CASE("Var operators + - / are add, sub and div, and there is no Var * Var") {
  // `a * b` would be ambiguous between matmul and the elementwise product: callers name the one
  // they mean.
  static_assert(!has_star_operator<Var<double>, Var<double>>);
  static_assert(!has_star_operator<Var<float>, Var<float>>);
  static_assert(has_star_operator<Var<double>, double>);

  const Tensor<double> a0 = random_tensor(Shape{2, 3}, 22), b0 = random_tensor(Shape{1, 3}, 23, 0.5, 2.0);
  Tape<double> tape;
  const Var<double> a = tape.variable(a0.view()), b = tape.variable(b0.view());
  const std::array<std::pair<Var<double>, Var<double>>, 3> pairs{
      {{a + b, dca::add(a, b)}, {a - b, dca::sub(a, b)}, {a / b, dca::div(a, b)}}};
  for (const auto& [by_operator, by_function] : pairs) {
    CHECK(std::string(by_operator.op()) == by_function.op());
    for (index_t i = 0; i < by_function.numel(); ++i) CHECK(by_operator.value()[i] == by_function.value()[i]);
  }
  CHECK(std::string((-a).op()) == "neg");
}

TEST_CASE("same-shape binary ops over enough elements to be split across threads match a plain loop and give the "
          "same bits on one and two threads") {
  const int previous_threads = dca::num_threads();
  const Shape shape{160, 256};  // 40960 elements: above the threshold for threads, a partial last chunk
  const Tensor<double> seed = random_tensor(shape, 42);
  for (BinaryOp op : binary_ops) {
    INFO(name_of(op));
    const Tensor<double> a0 = operand(op, false, shape, 40), b0 = operand(op, true, shape, 41);
    const auto run = [&](int threads) {
      dca::set_num_threads(threads);
      Tape<double> tape;
      const Var<double> a = tape.variable(a0.view()), b = tape.variable(b0.view());
      const Var<double> y = apply(op, a, b);
      tape.backward(y, seed.view());
      return std::vector<Tensor<double>>{Tensor<double>(y.value()), Tensor<double>(a.grad()), Tensor<double>(b.grad())};
    };
    const auto one = run(1), two = run(2);
    bool matches = true, same_bits = true;
    for (index_t i = 0; i < a0.numel(); ++i) {
      matches = matches && std::abs(one[0][i] - reference(op, a0[i], b0[i])) <= 1e-15 * std::abs(one[0][i]);
      for (std::size_t k = 0; k < one.size(); ++k) same_bits = same_bits && one[k][i] == two[k][i];
    }
    CHECK(matches);
    CHECK(same_bits);
  }
  dca::set_num_threads(previous_threads);
}
