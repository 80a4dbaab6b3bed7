// Specifications of layer_norm and rms_norm (dca/autodiff/ops/norm.hpp) and embedding
// (dca/autodiff/ops/embedding.hpp): values against textbook loops, gradients against finite
// differences (and, for a padding id, against hand-computed sums), activity of constant inputs,
// and the error messages of bad inputs.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/embedding.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/autodiff/ops/norm.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <optional>
#include <vector>

namespace {

using dca::test::converted;
using dca::test::max_abs_difference;

using dca::index_t;
using dca::Shape;
using dca::Tensor;
using dca::test::random_tensor;

// (x − mean)/sqrt(var + eps)·w + b per row, with the biased variance, in plain loops.
Tensor<double> reference_layer_norm(const Tensor<double>& x, const Tensor<double>& w, const Tensor<double>& b,
                                    double eps) {
  Tensor<double> y(x.shape());
  const index_t n = x.cols();
  for (index_t r = 0; r < x.rows(); ++r) {
    double mean = 0;
    for (index_t c = 0; c < n; ++c) mean += x(r, c);
    mean /= static_cast<double>(n);
    double variance = 0;
    for (index_t c = 0; c < n; ++c) variance += (x(r, c) - mean) * (x(r, c) - mean);
    variance /= static_cast<double>(n);
    for (index_t c = 0; c < n; ++c) y(r, c) = (x(r, c) - mean) / std::sqrt(variance + eps) * w[c] + b[c];
  }
  return y;
}

// x / sqrt(mean(x²) + eps) · g per row with g = w or 1 + w, in plain loops.
Tensor<double> reference_rms_norm(const Tensor<double>& x, const Tensor<double>& w, double eps, bool one_plus) {
  Tensor<double> y(x.shape());
  const index_t n = x.cols();
  for (index_t r = 0; r < x.rows(); ++r) {
    double mean_square = 0;
    for (index_t c = 0; c < n; ++c) mean_square += x(r, c) * x(r, c);
    mean_square /= static_cast<double>(n);
    for (index_t c = 0; c < n; ++c) y(r, c) = x(r, c) / std::sqrt(mean_square + eps) * (one_plus ? 1 + w[c] : w[c]);
  }
  return y;
}

}  // namespace

TEST_CASE("layer_norm matches the textbook formula with the biased variance") {
  for (Shape shape : {Shape{3, 5}, Shape{2, 16}}) {
    CAPTURE(shape);
    Tensor<double> x = random_tensor(shape, 1, -2.0, 2.0);
    // A row far from zero: a one-pass E[x²] − E[x]² variance would lose its digits here.
    for (index_t c = 0; c < x.cols(); ++c) x(0, c) += 1000.0;
    const Tensor<double> w = random_tensor(Shape{1, shape.cols()}, 2);
    const Tensor<double> b = random_tensor(Shape{1, shape.cols()}, 3);
    dca::Tape<double> tape;
    auto y = dca::layer_norm(tape.constant(x), tape.constant(w), tape.constant(b), 1e-5);
    CHECK(max_abs_difference(y.value(), reference_layer_norm(x, w, b, 1e-5)) < 1e-12);
  }
}

TEST_CASE("layer_norm in float agrees with double") {
  const Tensor<double> x = random_tensor(Shape{4, 24}, 4, -3.0, 3.0);
  const Tensor<double> w = random_tensor(Shape{1, 24}, 5);
  const Tensor<double> b = random_tensor(Shape{1, 24}, 6);
  dca::Tape<float> tape;
  auto y = dca::layer_norm(tape.constant(converted<float>(x)), tape.constant(converted<float>(w)),
                           tape.constant(converted<float>(b)), 1e-5);
  CHECK(dca::test::max_relative_difference(y.value().span(), reference_layer_norm(x, w, b, 1e-5).span()) < 1e-5);
}

TEST_CASE("layer_norm gradients of input, weight and bias match finite differences") {
  for (Shape shape : {Shape{3, 5}, Shape{2, 16}}) {
    CAPTURE(shape);
    const Tensor<double> x = random_tensor(shape, 7);
    const Tensor<double> w = random_tensor(Shape{1, shape.cols()}, 8);
    const Tensor<double> b = random_tensor(Shape{1, shape.cols()}, 9);
    CHECK(dca::check_gradients([](auto x, auto w, auto b) { return dca::layer_norm(x, w, b, 1e-5); }, x, w, b));
  }
}

TEST_CASE("layer_norm gives constant weight and bias no gradient and the active input the same gradient") {
  const Tensor<double> x = random_tensor(Shape{3, 6}, 10);
  const Tensor<double> w = random_tensor(Shape{1, 6}, 11);
  const Tensor<double> b = random_tensor(Shape{1, 6}, 12);
  const Tensor<double> seed = random_tensor(Shape{3, 6}, 13);

  dca::Tape<double> all_active;
  auto xa = all_active.variable(x);
  all_active.backward(dca::layer_norm(xa, all_active.variable(w), all_active.variable(b), 1e-5), seed);

  dca::Tape<double> tape;
  auto xv = tape.variable(x);
  auto wc = tape.constant(w);
  auto bc = tape.constant(b);
  auto y = dca::layer_norm(xv, wc, bc, 1e-5);
  REQUIRE(y.requires_grad());
  tape.backward(y, seed);
  CHECK(max_abs_difference(xv.grad(), Tensor<double>(xa.grad())) == 0);
  CHECK_THROWS_AS(wc.grad(), dca::UsageError);
  CHECK_THROWS_AS(bc.grad(), dca::UsageError);
}

TEST_CASE("layer_norm rejects a weight or bias of the wrong shape, an empty row and a negative eps") {
  dca::Tape<double> tape;
  auto x = tape.variable(random_tensor(Shape{2, 4}, 14));
  auto w = tape.variable(random_tensor(Shape{1, 4}, 15));
  auto b = tape.variable(random_tensor(Shape{1, 4}, 16));
  auto wrong = tape.variable(random_tensor(Shape{1, 3}, 17));
  CHECK_THROWS_WITH_AS(dca::layer_norm(x, wrong, b, 1e-5),
                       doctest::Contains("layer_norm: weight is [1,3], expected [1,4] for input x [2,4]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::layer_norm(x, w, wrong, 1e-5),
                       doctest::Contains("layer_norm: bias is [1,3], expected [1,4] for input x [2,4]"),
                       dca::ShapeError);
  auto empty = tape.variable(Tensor<double>(Shape{0}));  // a [1,0] leaf
  CHECK_THROWS_WITH_AS(dca::layer_norm(empty, empty, empty, 1e-5), doctest::Contains("layer_norm: input x is [1,0]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::layer_norm(x, w, b, -1.0), doctest::Contains("layer_norm: eps must be finite and >= 0"),
                       dca::RangeError);
}

TEST_CASE("rms_norm matches x times rsqrt of the mean square plus eps, times w or one plus w") {
  for (Shape shape : {Shape{3, 5}, Shape{2, 16}}) {
    CAPTURE(shape);
    const Tensor<double> x = random_tensor(shape, 18, -2.0, 2.0);
    const Tensor<double> w = random_tensor(Shape{1, shape.cols()}, 19);
    dca::Tape<double> tape;
    auto llama = dca::rms_norm(tape.constant(x), tape.constant(w), 1e-6);
    auto gemma = dca::rms_norm(tape.constant(x), tape.constant(w), 1e-6, dca::RmsWeight::one_plus);
    CHECK(max_abs_difference(llama.value(), reference_rms_norm(x, w, 1e-6, false)) < 1e-12);
    CHECK(max_abs_difference(gemma.value(), reference_rms_norm(x, w, 1e-6, true)) < 1e-12);
  }
}

TEST_CASE("rms_norm in float agrees with double in both weight modes") {
  const Tensor<double> x = random_tensor(Shape{4, 24}, 20, -3.0, 3.0);
  const Tensor<double> w = random_tensor(Shape{1, 24}, 21);
  for (dca::RmsWeight mode : {dca::RmsWeight::plain, dca::RmsWeight::one_plus}) {
    dca::Tape<float> tape;
    auto y = dca::rms_norm(tape.constant(converted<float>(x)), tape.constant(converted<float>(w)), 1e-6, mode);
    const Tensor<double> expected = reference_rms_norm(x, w, 1e-6, mode == dca::RmsWeight::one_plus);
    CHECK(dca::test::max_relative_difference(y.value().span(), expected.span()) < 1e-5);
  }
}

TEST_CASE("rms_norm gradients of input and weight match finite differences in both weight modes") {
  for (dca::RmsWeight mode : {dca::RmsWeight::plain, dca::RmsWeight::one_plus}) {
    for (Shape shape : {Shape{3, 5}, Shape{2, 16}}) {
      CAPTURE(shape);
      CAPTURE(mode == dca::RmsWeight::one_plus);
      const Tensor<double> x = random_tensor(shape, 22);
      const Tensor<double> w = random_tensor(Shape{1, shape.cols()}, 23);
      CHECK(dca::check_gradients([mode](auto x, auto w) { return dca::rms_norm(x, w, 1e-6, mode); }, x, w));
    }
  }
}

TEST_CASE("rms_norm gives a constant weight no gradient and the active input the same gradient") {
  const Tensor<double> x = random_tensor(Shape{3, 6}, 24);
  const Tensor<double> w = random_tensor(Shape{1, 6}, 25);
  const Tensor<double> seed = random_tensor(Shape{3, 6}, 26);

  dca::Tape<double> all_active;
  auto xa = all_active.variable(x);
  all_active.backward(dca::rms_norm(xa, all_active.variable(w), 1e-6), seed);

  dca::Tape<double> tape;
  auto xv = tape.variable(x);
  auto wc = tape.constant(w);
  tape.backward(dca::rms_norm(xv, wc, 1e-6), seed);
  CHECK(max_abs_difference(xv.grad(), Tensor<double>(xa.grad())) == 0);
  CHECK_THROWS_AS(wc.grad(), dca::UsageError);
}

TEST_CASE("rms_norm rejects a weight of the wrong shape") {
  dca::Tape<double> tape;
  auto x = tape.variable(random_tensor(Shape{2, 4}, 27));
  auto column = tape.variable(random_tensor(Shape{4, 1}, 28));
  CHECK_THROWS_WITH_AS(dca::rms_norm(x, column, 1e-6),
                       doctest::Contains("rms_norm: weight is [4,1], expected [1,4] for input x [2,4]"),
                       dca::ShapeError);
}

TEST_CASE("embedding gathers the table rows named by the ids") {
  const Tensor<double> table = random_tensor(Shape{5, 3}, 29);
  const std::vector<index_t> ids{4, 0, 4, 2};
  dca::Tape<double> tape;
  auto y = dca::embedding(tape.constant(table), ids);
  REQUIRE(y.shape() == Shape{4, 3});
  for (index_t i = 0; i < 4; ++i)
    for (index_t c = 0; c < 3; ++c) CHECK(y.value()(i, c) == table(ids[static_cast<std::size_t>(i)], c));
  CHECK_FALSE(y.requires_grad());
}

TEST_CASE("embedding table gradient matches finite differences, including repeated ids") {
  const std::vector<index_t> short_ids{1, 3, 1};
  const std::vector<index_t> long_ids{0, 5, 5, 2, 7, 5, 0};
  CHECK(dca::check_gradients([&](auto table) { return dca::embedding(table, short_ids); },
                             random_tensor(Shape{4, 2}, 30)));
  CHECK(dca::check_gradients([&](auto table) { return dca::embedding(table, long_ids); },
                             random_tensor(Shape{8, 5}, 31)));
}

TEST_CASE("embedding backward adds the gradient of every occurrence of a repeated id") {
  const std::vector<index_t> ids{2, 0, 2, 2};
  const Tensor<double> seed(Shape{4, 2}, {1, 2, 10, 20, 100, 200, 1000, 2000});
  dca::Tape<double> tape;
  auto table = tape.variable(random_tensor(Shape{3, 2}, 32));
  tape.backward(dca::embedding(table, ids), seed);
  const auto grad = table.grad();
  CHECK(grad(0, 0) == 10);
  CHECK(grad(0, 1) == 20);
  CHECK(grad(1, 0) == 0);  // id 1 is never looked up
  CHECK(grad(1, 1) == 0);
  CHECK(grad(2, 0) == 1 + 100 + 1000);
  CHECK(grad(2, 1) == 2 + 200 + 2000);
}

TEST_CASE("embedding reads the padding id's row as usual, but its lookups add no gradient to the table") {
  const std::vector<index_t> ids{2, 0, 2, 1};
  const Tensor<double> seed(Shape{4, 2}, {1, 2, 10, 20, 100, 200, 1000, 2000});
  const Tensor<double> values = random_tensor(Shape{3, 2}, 32);
  dca::Tape<double> tape;
  auto table = tape.variable(values);
  auto y = dca::embedding(table, ids, index_t{2});
  CHECK(y.value()(0, 0) == values(2, 0));  // the padding row is still looked up
  CHECK(y.value()(2, 1) == values(2, 1));
  tape.backward(y, seed);
  const auto grad = table.grad();
  CHECK(grad(0, 0) == 10);  // other rows accumulate as without a padding id
  CHECK(grad(0, 1) == 20);
  CHECK(grad(1, 0) == 1000);
  CHECK(grad(1, 1) == 2000);
  CHECK(grad(2, 0) == 0);  // looked up twice, but it is the padding row
  CHECK(grad(2, 1) == 0);
}

TEST_CASE("a padded lookup and a tied head share a table: the padding row gets the head's gradient alone") {
  // E [3,2]; x = E[ids] with ids {0, 2} and padding id 0; logits = x·Eᵀ [2,3], seeded with G.
  // By hand: the head adds Gᵀ·x = rows [1,2], [5,6], [2,4]; the lookups add dx = G·E = rows
  // [11,14] (to row 0, the padding row: dropped) and [3,4] (to row 2).
  const Tensor<double> E(Shape{3, 2}, {1, 2, 3, 4, 5, 6});
  const Tensor<double> G(Shape{2, 3}, {1, 0, 2, 0, 1, 0});
  const std::vector<index_t> ids{0, 2};
  auto gradient = [&](std::optional<index_t> padding_id) {
    dca::Tape<double> tape;
    auto table = tape.variable(E);
    tape.backward(dca::linear(dca::embedding(table, ids, padding_id), table), G);
    return Tensor<double>(table.grad());
  };
  const Tensor<double> padded = gradient(index_t{0});
  CHECK(padded(0, 0) == 1);  // the head's [1,2] alone
  CHECK(padded(0, 1) == 2);
  CHECK(padded(1, 0) == 5);
  CHECK(padded(1, 1) == 6);
  CHECK(padded(2, 0) == 2 + 3);
  CHECK(padded(2, 1) == 4 + 4);
  const Tensor<double> plain = gradient(std::nullopt);
  CHECK(plain(0, 0) == 1 + 11);  // without a padding id, row 0's lookup counts too
  CHECK(plain(0, 1) == 2 + 14);
  CHECK(plain(2, 0) == padded(2, 0));
}

TEST_CASE("embedding rejects an out-of-range id naming the id, its position and the vocabulary size") {
  dca::Tape<double> tape;
  auto table = tape.variable(random_tensor(Shape{5, 3}, 33));
  const std::vector<index_t> too_large{0, 1, 7};
  const std::vector<index_t> negative{-1};
  CHECK_THROWS_WITH_AS(dca::embedding(table, too_large),
                       doctest::Contains("embedding: id 7 at position 2 of ids is outside [0,5)"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::embedding(table, negative),
                       doctest::Contains("embedding: id -1 at position 0 of ids is outside [0,5)"), dca::RangeError);
  const std::vector<index_t> ids{0, 1};
  CHECK_THROWS_WITH_AS(dca::embedding(table, ids, index_t{5}),
                       doctest::Contains("embedding: padding id 5 is outside [0,5)"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::embedding(table, ids, index_t{-1}),
                       doctest::Contains("embedding: padding id -1 is outside [0,5)"), dca::RangeError);
}

TEST_CASE("embedding in float gathers the same values as in double") {
  const Tensor<double> table = random_tensor(Shape{6, 4}, 34);
  const std::vector<index_t> ids{5, 1, 1};
  dca::Tape<float> tape;
  auto y = dca::embedding(tape.constant(converted<float>(table)), ids);
  for (index_t i = 0; i < 3; ++i)
    for (index_t c = 0; c < 4; ++c)
      CHECK(y.value()(i, c) == static_cast<float>(table(ids[static_cast<std::size_t>(i)], c)));
}

TEST_CASE("layer_norm over enough rows to be split across threads matches the reference and finite differences "
          "and gives the same bits on one and two threads") {
  const int previous_threads = dca::num_threads();
  // 150 rows of 256: several 32-row blocks of the weight and bias gradients, the last one partial.
  const Tensor<double> x = random_tensor(Shape{150, 256}, 30);
  const Tensor<double> w = random_tensor(Shape{1, 256}, 31);
  const Tensor<double> b = random_tensor(Shape{1, 256}, 32);
  const Tensor<double> seed = random_tensor(Shape{150, 256}, 33);
  const auto run = [&](int threads) {
    dca::set_num_threads(threads);
    dca::Tape<double> tape;
    auto xv = tape.variable(x);
    auto wv = tape.variable(w);
    auto bv = tape.variable(b);
    auto y = dca::layer_norm(xv, wv, bv, 1e-5);
    tape.backward(y, seed);
    return std::vector<Tensor<double>>{Tensor<double>(y.value()), Tensor<double>(xv.grad()), Tensor<double>(wv.grad()),
                                       Tensor<double>(bv.grad())};
  };
  const auto one = run(1), two = run(2);
  CHECK(max_abs_difference(one[0].view(), reference_layer_norm(x, w, b, 1e-5)) < 1e-12);
  for (std::size_t i = 0; i < one.size(); ++i) CHECK(max_abs_difference(one[i].view(), two[i]) == 0);
  dca::GradCheckOptions sampled;
  sampled.max_elements_per_input = 24;
  CHECK(dca::check_gradients(sampled, [](auto x, auto w, auto b) { return dca::layer_norm(x, w, b, 1e-5); }, x, w, b));
  dca::set_num_threads(previous_threads);
}
