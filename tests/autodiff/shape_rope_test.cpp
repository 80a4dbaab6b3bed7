// Specifications of the shape ops (dca/autodiff/ops/shape.hpp) and of rotary position embedding
// (dca/autodiff/ops/rope.hpp): values against plain loops and an explicit complex rotation,
// gradients against finite differences, round trips, and the error messages of bad inputs.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/rope.hpp"
#include "dca/autodiff/ops/shape.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <vector>

namespace {

using dca::test::converted;
using dca::test::max_abs_difference;

using dca::index_t;
using dca::Shape;
using dca::Tensor;
using dca::test::random_tensor;

bool same_values(dca::TensorView<const double> a, dca::TensorView<const double> b) {
  if (!(a.shape() == b.shape())) return false;
  for (index_t i = 0; i < a.numel(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// RoPE by its definition: each head pair (x[i], x[i+D/2]) is the complex number x[i] + i·x[i+D/2],
// multiplied by e^{i·angle} with angle = p·θ^(−2i/D).
Tensor<double> reference_rope(const Tensor<double>& x, const std::vector<index_t>& positions, index_t n_heads,
                              double theta) {
  Tensor<double> y(x.shape());
  const index_t head_dim = x.cols() / n_heads;
  const index_t half = head_dim / 2;
  for (index_t r = 0; r < x.rows(); ++r)
    for (index_t h = 0; h < n_heads; ++h)
      for (index_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(positions[static_cast<std::size_t>(r)]) *
                             std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
        const index_t a = h * head_dim + i;
        const std::complex<double> z = std::complex<double>(x(r, a), x(r, a + half)) * std::polar(1.0, angle);
        y(r, a) = z.real();
        y(r, a + half) = z.imag();
      }
  return y;
}

}  // namespace

TEST_CASE("slice_rows and slice_cols copy the requested block") {
  const Tensor<double> x = random_tensor(Shape{5, 4}, 1);
  dca::Tape<double> tape;
  auto rows = dca::slice_rows(tape.constant(x), 1, 3);
  auto cols = dca::slice_cols(tape.constant(x), 2, 2);
  REQUIRE(rows.shape() == Shape{3, 4});
  REQUIRE(cols.shape() == Shape{5, 2});
  for (index_t r = 0; r < 3; ++r)
    for (index_t c = 0; c < 4; ++c) CHECK(rows.value()(r, c) == x(r + 1, c));
  for (index_t r = 0; r < 5; ++r)
    for (index_t c = 0; c < 2; ++c) CHECK(cols.value()(r, c) == x(r, c + 2));
  CHECK(dca::slice_rows(tape.constant(x), 5, 0).shape() == Shape{0, 4});
}

TEST_CASE("slice_rows and slice_cols gradients match finite differences") {
  CHECK(dca::check_gradients([](auto x) { return dca::slice_rows(x, 1, 2); }, random_tensor(Shape{4, 3}, 2)));
  CHECK(dca::check_gradients([](auto x) { return dca::slice_rows(x, 0, 6); }, random_tensor(Shape{6, 2}, 3)));
  CHECK(dca::check_gradients([](auto x) { return dca::slice_cols(x, 2, 3); }, random_tensor(Shape{3, 6}, 4)));
  CHECK(dca::check_gradients([](auto x) { return dca::slice_cols(x, 0, 1); }, random_tensor(Shape{2, 5}, 5)));
}

TEST_CASE("concat_rows and concat_cols place the parts in order") {
  const Tensor<double> a = random_tensor(Shape{2, 3}, 6);
  const Tensor<double> b = random_tensor(Shape{1, 3}, 7);
  const Tensor<double> c = random_tensor(Shape{2, 2}, 8);
  dca::Tape<double> tape;
  auto stacked = dca::concat_rows({tape.constant(a), tape.constant(b)});
  auto side_by_side = dca::concat_cols({tape.constant(a), tape.constant(c)});
  REQUIRE(stacked.shape() == Shape{3, 3});
  REQUIRE(side_by_side.shape() == Shape{2, 5});
  for (index_t j = 0; j < 3; ++j) {
    CHECK(stacked.value()(0, j) == a(0, j));
    CHECK(stacked.value()(1, j) == a(1, j));
    CHECK(stacked.value()(2, j) == b(0, j));
  }
  for (index_t r = 0; r < 2; ++r) {
    for (index_t j = 0; j < 3; ++j) CHECK(side_by_side.value()(r, j) == a(r, j));
    for (index_t j = 0; j < 2; ++j) CHECK(side_by_side.value()(r, 3 + j) == c(r, j));
  }
}

TEST_CASE("concat_rows and concat_cols gradients of every part match finite differences") {
  CHECK(dca::check_gradients([](auto a, auto b, auto c) { return dca::concat_rows({a, b, c}); },
                             random_tensor(Shape{2, 3}, 9), random_tensor(Shape{1, 3}, 10),
                             random_tensor(Shape{3, 3}, 11)));
  CHECK(dca::check_gradients([](auto a, auto b) { return dca::concat_rows({a, b}); }, random_tensor(Shape{1, 5}, 12),
                             random_tensor(Shape{1, 5}, 13)));
  CHECK(dca::check_gradients([](auto a, auto b, auto c) { return dca::concat_cols({a, b, c}); },
                             random_tensor(Shape{2, 1}, 14), random_tensor(Shape{2, 4}, 15),
                             random_tensor(Shape{2, 2}, 16)));
  CHECK(dca::check_gradients(
      [](auto a, auto b) {
        const std::vector<dca::Var<double>> parts{a, b};
        return dca::concat_cols(std::span<const dca::Var<double>>(parts));
      },
      random_tensor(Shape{3, 2}, 17), random_tensor(Shape{3, 3}, 18)));
}

TEST_CASE("concat is active if any part is and gives gradient only to its active parts") {
  const Tensor<double> seed = random_tensor(Shape{3, 2}, 19);
  dca::Tape<double> tape;
  auto constant = tape.constant(random_tensor(Shape{2, 2}, 20));
  auto variable = tape.variable(random_tensor(Shape{1, 2}, 21));
  CHECK_FALSE(dca::concat_rows({constant, constant}).requires_grad());
  auto y = dca::concat_rows({constant, variable});
  REQUIRE(y.requires_grad());
  tape.backward(y, seed);
  CHECK(variable.grad()(0, 0) == seed(2, 0));
  CHECK(variable.grad()(0, 1) == seed(2, 1));
  CHECK_THROWS_AS(constant.grad(), dca::UsageError);
}

TEST_CASE("concatenating then slicing returns each part unchanged") {
  const Tensor<double> a = random_tensor(Shape{2, 3}, 22);
  const Tensor<double> b = random_tensor(Shape{4, 3}, 23);
  const Tensor<double> c = random_tensor(Shape{4, 1}, 24);
  dca::Tape<double> tape;
  auto va = tape.variable(a);
  auto vb = tape.variable(b);
  auto vc = tape.variable(c);
  auto rows = dca::concat_rows({va, vb});
  CHECK(same_values(dca::slice_rows(rows, 0, 2).value(), a));
  CHECK(same_values(dca::slice_rows(rows, 2, 4).value(), b));
  auto cols = dca::concat_cols({vb, vc});
  CHECK(same_values(dca::slice_cols(cols, 0, 3).value(), b));
  CHECK(same_values(dca::slice_cols(cols, 3, 1).value(), c));
}

TEST_CASE("reshape keeps the row-major order and its gradient matches finite differences") {
  const Tensor<double> x = random_tensor(Shape{2, 6}, 25);
  dca::Tape<double> tape;
  auto y = dca::reshape(tape.constant(x), 3, 4);
  REQUIRE(y.shape() == Shape{3, 4});
  for (index_t i = 0; i < 12; ++i) CHECK(y.value()(i / 4, i % 4) == x(i / 6, i % 6));
  CHECK(dca::check_gradients([](auto x) { return dca::reshape(x, 3, 4); }, x));
  CHECK(dca::check_gradients([](auto x) { return dca::reshape(x, 1, 15); }, random_tensor(Shape{5, 3}, 26)));
}

TEST_CASE("transpose swaps rows and columns, twice is the identity, and its gradient matches finite differences") {
  const Tensor<double> x = random_tensor(Shape{3, 5}, 27);
  dca::Tape<double> tape;
  auto y = dca::transpose(tape.constant(x));
  REQUIRE(y.shape() == Shape{5, 3});
  for (index_t r = 0; r < 3; ++r)
    for (index_t c = 0; c < 5; ++c) CHECK(y.value()(c, r) == x(r, c));
  CHECK(same_values(dca::transpose(y).value(), x));
  CHECK(dca::check_gradients([](auto x) { return dca::transpose(x); }, x));
  CHECK(dca::check_gradients([](auto x) { return dca::transpose(x); }, random_tensor(Shape{1, 4}, 28)));
}

TEST_CASE("shape ops in float copy the same values as in double") {
  Tensor<float> x(Shape{2, 3}, {1.5f, -2.f, 3.25f, 4.f, 5.f, -6.5f});
  dca::Tape<float> tape;
  auto v = tape.constant(x);
  auto y = dca::transpose(dca::reshape(dca::concat_cols({dca::slice_cols(v, 1, 2), dca::slice_cols(v, 0, 1)}), 3, 2));
  // slice/concat give [[-2, 3.25, 1.5], [5, -6.5, 4]]; reshaped to [3,2] and transposed:
  const std::vector<float> expected{-2.f, 1.5f, -6.5f, 3.25f, 5.f, 4.f};
  for (index_t i = 0; i < 6; ++i) CHECK(y.value()[i] == expected[static_cast<std::size_t>(i)]);
}

TEST_CASE("shape ops reject out-of-range slices, mismatched concat parts and bad reshapes") {
  dca::Tape<double> tape;
  auto x = tape.variable(random_tensor(Shape{4, 3}, 29));
  auto wide = tape.variable(random_tensor(Shape{2, 5}, 30));
  CHECK_THROWS_WITH_AS(dca::slice_rows(x, 2, 3), doctest::Contains("slice_rows: rows [2,5)"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::slice_rows(x, -1, 1), doctest::Contains("outside x [4,3]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::slice_cols(x, 1, 3), doctest::Contains("slice_cols: columns [1,4)"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::concat_rows({x, wide}),
                       doctest::Contains("concat_rows: part 1 is [2,5] but part 0 is [4,3]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::concat_cols({x, wide}),
                       doctest::Contains("concat_cols: part 1 is [2,5] but part 0 is [4,3]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::concat_rows(std::span<const dca::Var<double>>{}),
                       doctest::Contains("concat_rows: no parts"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::reshape(x, 5, 2),
                       doctest::Contains("reshape: cannot reshape x [4,3] (12 elements) to [5,2]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::reshape(x, -3, -4), doctest::Contains("negative extent"), dca::ShapeError);
}

TEST_CASE("concat rejects parts from different tapes") {
  dca::Tape<double> first;
  dca::Tape<double> second;
  auto a = first.variable(random_tensor(Shape{1, 2}, 31));
  auto b = second.variable(random_tensor(Shape{1, 2}, 32));
  CHECK_THROWS_WITH_AS(dca::concat_rows({a, b}), doctest::Contains("concat_rows: part 1 belongs to another tape"),
                       dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::concat_cols({a, b}), doctest::Contains("concat_cols: part 1 belongs to another tape"),
                       dca::UsageError);
}

TEST_CASE("rope matches an explicit complex rotation of each head pair") {
  const std::vector<index_t> positions{0, 1, 7, 1000, 3};
  for (index_t n_heads : {1, 3}) {
    for (double theta : {10000.0, 500000.0}) {
      CAPTURE(n_heads);
      CAPTURE(theta);
      const Tensor<double> x = random_tensor(Shape{5, n_heads * 8}, 33);
      dca::Tape<double> tape;
      auto y = dca::rope(tape.constant(x), positions, {.n_heads = n_heads, .theta = theta});
      CHECK(max_abs_difference(y.value(), reference_rope(x, positions, n_heads, theta)) < 1e-12);
    }
  }
}

TEST_CASE("rope preserves the norm of each head pair") {
  const std::vector<index_t> positions{2, 5, 1000, 123456};
  const Tensor<double> x = random_tensor(Shape{4, 12}, 34);
  dca::Tape<double> tape;
  auto y = dca::rope(tape.constant(x), positions, {.n_heads = 2});
  const auto out = y.value();
  for (index_t r = 0; r < 4; ++r)
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 3; ++i) {
        const index_t a = h * 6 + i;
        CHECK(std::hypot(out(r, a), out(r, a + 3)) == doctest::Approx(std::hypot(x(r, a), x(r, a + 3))).epsilon(1e-14));
      }
}

TEST_CASE("rope at position 0 is the identity") {
  const Tensor<double> x = random_tensor(Shape{3, 8}, 35);
  const std::vector<index_t> zeros{0, 0, 0};
  for (bool float32_angles : {false, true}) {
    dca::Tape<double> tape;
    auto y = dca::rope(tape.constant(x), zeros, {.n_heads = 2, .float32_angles = float32_angles});
    CHECK(same_values(y.value(), x));
  }
}

TEST_CASE("rope gradient matches finite differences at positions up to 1000 for 1 and 3 heads") {
  const std::vector<index_t> positions{0, 1, 17, 1000};
  for (index_t n_heads : {1, 3}) {
    for (bool float32_angles : {false, true}) {
      CAPTURE(n_heads);
      CAPTURE(float32_angles);
      const dca::RopeConfig config{.n_heads = n_heads, .float32_angles = float32_angles};
      CHECK(dca::check_gradients([&](auto x) { return dca::rope(x, positions, config); },
                                 random_tensor(Shape{4, n_heads * 6}, 36)));
    }
  }
  const std::vector<index_t> one_position{1000};
  CHECK(dca::check_gradients([&](auto x) { return dca::rope(x, one_position, {.n_heads = 3}); },
                             random_tensor(Shape{1, 12}, 37)));
}

TEST_CASE("rope of a constant input is a constant and an active input gets the transposed rotation") {
  dca::Tape<double> tape;
  const std::vector<index_t> positions{3, 1000};
  CHECK_FALSE(dca::rope(tape.constant(random_tensor(Shape{2, 4}, 38)), positions).requires_grad());
  // The rotation is orthogonal, so rotating the seed forward and pulling it back recovers the seed.
  const Tensor<double> x = random_tensor(Shape{2, 4}, 39);
  auto v = tape.variable(x);
  auto y = dca::rope(v, positions);
  tape.backward(y, y.value());
  CHECK(max_abs_difference(v.grad(), x) < 1e-14);
}

TEST_CASE("rope with float32 angles uses single-precision cos and sin as Hugging Face does") {
  const std::vector<index_t> positions{1, 7, 1000, 4097};
  const index_t head_dim = 8;
  const Tensor<double> x = random_tensor(Shape{4, head_dim}, 40);
  // transformers: inv_freq = 1/(base ** (arange(0, D, 2).float() / D)), angle = position.float() · inv_freq,
  // cos/sin in float32, all before conversion to the model's dtype.
  Tensor<double> expected(x.shape());
  for (index_t r = 0; r < 4; ++r)
    for (index_t i = 0; i < head_dim / 2; ++i) {
      const float inv_freq = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(head_dim));
      const float angle = static_cast<float>(positions[static_cast<std::size_t>(r)]) * inv_freq;
      const double c = std::cos(angle);
      const double s = std::sin(angle);
      expected(r, i) = x(r, i) * c - x(r, i + 4) * s;
      expected(r, i + 4) = x(r, i + 4) * c + x(r, i) * s;
    }
  dca::Tape<double> tape;
  auto y = dca::rope(tape.constant(x), positions, {.float32_angles = true});
  CHECK(max_abs_difference(y.value(), expected) < 1e-15);
}

TEST_CASE("rope with float32 angles is within 1e-6 of double angles at small positions but not bit-identical") {
  const std::vector<index_t> positions{1, 2, 3, 5, 8, 13};
  const Tensor<double> x = random_tensor(Shape{6, 16}, 41);
  dca::Tape<double> tape;
  auto with_double = dca::rope(tape.constant(x), positions, {.n_heads = 2});
  auto with_float = dca::rope(tape.constant(x), positions, {.n_heads = 2, .float32_angles = true});
  CHECK(dca::test::max_relative_difference(with_float.value().span(), with_double.value().span()) <= 1e-6);
  CHECK_FALSE(same_values(with_float.value(), with_double.value()));
}

TEST_CASE("rope in float agrees with double") {
  const std::vector<index_t> positions{0, 4, 1000};
  const Tensor<double> x = random_tensor(Shape{3, 12}, 42);
  const Tensor<float> x_float = converted<float>(x);
  dca::Tape<float> tape;
  auto y = dca::rope(tape.constant(x_float), positions, {.n_heads = 3});
  CHECK(dca::test::max_relative_difference(y.value().span(), reference_rope(x, positions, 3, 10000.0).span()) < 1e-6);
}

TEST_CASE("rope rejects bad head splits, odd head sizes, wrong position counts and negative positions") {
  dca::Tape<double> tape;
  auto x = tape.variable(random_tensor(Shape{2, 6}, 43));
  const std::vector<index_t> two{0, 1};
  const std::vector<index_t> three{0, 1, 2};
  const std::vector<index_t> negative{0, -4};
  CHECK_THROWS_WITH_AS(dca::rope(x, two, {.n_heads = 4}),
                       doctest::Contains("rope: x [2,6] cannot be split into n_heads = 4 heads"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::rope(x, two, {.n_heads = 0}), doctest::Contains("n_heads = 0"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::rope(x, two, {.n_heads = 2}), doctest::Contains("rope: the head size D = 3"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::rope(x, three), doctest::Contains("rope: 3 positions for the 2 rows of x [2,6]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::rope(x, negative), doctest::Contains("rope: position -4 of row 1 is negative"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::rope(x, two, {.theta = 0.0}), doctest::Contains("rope: theta must be finite and > 0"),
                       dca::RangeError);
}
