// Specification of the matrix products and the fused linear layer.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/matmul.hpp"
#include "dca/autodiff/ops/shape.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

using dca::index_t;
using dca::Shape;
using dca::Tensor;
using dca::Var;
using dca::test::random_tensor;

namespace {

// Plain triple loop: c = op(a)·op(b).
Tensor<double> reference_product(const Tensor<double>& a, const Tensor<double>& b, bool ta, bool tb) {
  const index_t m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols(), n = tb ? b.rows() : b.cols();
  Tensor<double> c(Shape{m, n});
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t p = 0; p < k; ++p) s += (ta ? a(p, i) : a(i, p)) * (tb ? b(j, p) : b(p, j));
      c(i, j) = s;
    }
  return c;
}

}  // namespace

TEST_CASE("matmul and its transposed variants compute the textbook products") {
  dca::Tape<double> tape;
  const auto a = random_tensor(Shape{3, 4}, 1), b = random_tensor(Shape{4, 5}, 2);
  const auto at = random_tensor(Shape{4, 3}, 3), bt = random_tensor(Shape{5, 4}, 4);
  const auto check = [](Var<double> y, const Tensor<double>& ref) {
    REQUIRE(y.shape() == ref.shape());
    CHECK(dca::test::max_relative_difference(y.value().span(), ref.span()) < 1e-14);
  };
  check(dca::matmul(tape.constant(a), tape.constant(b)), reference_product(a, b, false, false));
  check(dca::matmul_nt(tape.constant(a), tape.constant(bt)), reference_product(a, bt, false, true));
  check(dca::matmul_tn(tape.constant(at), tape.constant(b)), reference_product(at, b, true, false));
  check(dca::matmul_tt(tape.constant(at), tape.constant(bt)), reference_product(at, bt, true, true));
}

TEST_CASE("matmul gradients match finite differences for both inputs of every variant") {
  for (index_t m : {1, 3}) {
    const auto a = random_tensor(Shape{m, 4}, 10 + m), b = random_tensor(Shape{4, 2}, 20 + m);
    const auto at = random_tensor(Shape{4, m}, 30 + m), bt = random_tensor(Shape{2, 4}, 40 + m);
    CHECK(dca::check_gradients([](auto x, auto y) { return dca::matmul(x, y); }, a, b));
    CHECK(dca::check_gradients([](auto x, auto y) { return dca::matmul_nt(x, y); }, a, bt));
    CHECK(dca::check_gradients([](auto x, auto y) { return dca::matmul_tn(x, y); }, at, b));
    CHECK(dca::check_gradients([](auto x, auto y) { return dca::matmul_tt(x, y); }, at, bt));
  }
}

TEST_CASE("linear with a bias equals x·wᵀ + b and its three gradients match finite differences") {
  const auto x = random_tensor(Shape{5, 3}, 1), w = random_tensor(Shape{4, 3}, 2), b = random_tensor(Shape{1, 4}, 3);
  dca::Tape<double> tape;
  const auto y = dca::linear(tape.constant(x), tape.constant(w), tape.constant(b));
  auto ref = reference_product(x, w, false, true);
  for (index_t i = 0; i < 5; ++i)
    for (index_t j = 0; j < 4; ++j) ref(i, j) += b[j];
  CHECK(dca::test::max_relative_difference(y.value().span(), ref.span()) < 1e-14);
  CHECK(dca::check_gradients([](auto x, auto w, auto b) { return dca::linear(x, w, b); }, x, w, b));
  CHECK(dca::check_gradients([](auto x, auto w) { return dca::linear(x, w); }, x, w));
}

TEST_CASE("float matmul agrees with double") {
  const auto a = random_tensor(Shape{6, 7}, 5), b = random_tensor(Shape{7, 3}, 6);
  dca::Tape<double> td;
  dca::Tape<float> tf;
  const auto yd = dca::matmul(td.constant(a), td.constant(b));
  const auto yf = dca::matmul(tf.constant(random_tensor<float>(Shape{6, 7}, 5)),
                              tf.constant(random_tensor<float>(Shape{7, 3}, 6)));
  CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
}

TEST_CASE("matmul rejects mismatched inner dimensions and names both shapes") {
  dca::Tape<double> tape;
  const auto a = tape.constant(random_tensor(Shape{2, 3}, 1)), b = tape.constant(random_tensor(Shape{4, 5}, 2));
  CHECK_THROWS_WITH_AS(dca::matmul(a, b), doctest::Contains("matmul: inner dimensions differ: a is [2,3], b is [4,5]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::matmul_nt(a, b), doctest::Contains("b is [4,5] (transposed)"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::linear(a, b, tape.constant(random_tensor(Shape{1, 4}, 3))),
                       doctest::Contains("linear: input x is [2,3] but weight is [4,5]"), dca::ShapeError);
}

TEST_CASE("matmul with a bias equals x·w + b for an [in,out] weight and its three gradients match finite differences") {
  for (index_t n : {1, 5}) {
    const auto x = random_tensor(Shape{n, 3}, 20 + n), w = random_tensor(Shape{3, 4}, 30 + n);
    const auto b = random_tensor(Shape{1, 4}, 40 + n);
    dca::Tape<double> tape;
    const auto y = dca::matmul(tape.constant(x), tape.constant(w), tape.constant(b));
    auto ref = reference_product(x, w, false, false);
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < 4; ++j) ref(i, j) += b[j];
    CHECK(dca::test::max_relative_difference(y.value().span(), ref.span()) < 1e-14);
    CHECK(dca::check_gradients([](auto x, auto w, auto b) { return dca::matmul(x, w, b); }, x, w, b));
  }
}

TEST_CASE("float matmul with a bias agrees with double") {
  const auto x = random_tensor(Shape{6, 7}, 7), w = random_tensor(Shape{7, 3}, 8), b = random_tensor(Shape{1, 3}, 9);
  dca::Tape<double> td;
  dca::Tape<float> tf;
  const auto yd = dca::matmul(td.constant(x), td.constant(w), td.constant(b));
  const auto yf = dca::matmul(tf.constant(random_tensor<float>(Shape{6, 7}, 7)),
                              tf.constant(random_tensor<float>(Shape{7, 3}, 8)),
                              tf.constant(random_tensor<float>(Shape{1, 3}, 9)));
  CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
}

TEST_CASE("matmul with a bias rejects a weight or bias that does not fit and names the shapes") {
  dca::Tape<double> tape;
  const auto x = tape.constant(random_tensor(Shape{2, 3}, 1));
  CHECK_THROWS_WITH_AS(dca::matmul(x, tape.constant(random_tensor(Shape{4, 5}, 2)),
                                   tape.constant(random_tensor(Shape{1, 5}, 3))),
                       doctest::Contains("matmul: input x is [2,3] but weight is [4,5]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::matmul(x, tape.constant(random_tensor(Shape{3, 5}, 4)),
                                   tape.constant(random_tensor(Shape{1, 4}, 5))),
                       doctest::Contains("matmul: bias is [1,4], expected [1,5] for weight [3,5]"), dca::ShapeError);
}

TEST_CASE("matmul_cols equals columns [begin, begin+count) of x·w + b and its gradients match finite differences") {
  for (index_t n : {1, 4}) {
    const auto x = random_tensor(Shape{n, 3}, 50 + n), w = random_tensor(Shape{3, 9}, 60 + n);
    const auto b = random_tensor(Shape{1, 9}, 70 + n);
    const auto full = reference_product(x, w, false, false);
    for (index_t begin : {0, 3, 6}) {
      dca::Tape<double> tape;
      const auto y = dca::matmul_cols(tape.constant(x), tape.constant(w), tape.constant(b), begin, 3);
      const auto y_no_bias = dca::matmul_cols(tape.constant(x), tape.constant(w), begin, 3);
      Tensor<double> ref(Shape{n, 3}), ref_no_bias(Shape{n, 3});
      for (index_t i = 0; i < n; ++i)
        for (index_t j = 0; j < 3; ++j) {
          ref_no_bias(i, j) = full(i, begin + j);
          ref(i, j) = full(i, begin + j) + b[begin + j];
        }
      CHECK(dca::test::max_relative_difference(y.value().span(), ref.span()) < 1e-14);
      CHECK(dca::test::max_relative_difference(y_no_bias.value().span(), ref_no_bias.span()) < 1e-14);
      CHECK(dca::check_gradients([&](auto x, auto w, auto b) { return dca::matmul_cols(x, w, b, begin, 3); }, x, w, b));
      CHECK(dca::check_gradients([&](auto x, auto w) { return dca::matmul_cols(x, w, begin, 3); }, x, w));
    }
  }
}

TEST_CASE("matmul_cols blocks used together give the gradients of the whole product") {
  // q | k | v of one fused projection: the three blocks' weight and bias gradients tile the whole.
  const auto x = random_tensor(Shape{4, 3}, 80), w = random_tensor(Shape{3, 6}, 81), b = random_tensor(Shape{1, 6}, 82);
  const auto seed = random_tensor(Shape{4, 6}, 83);
  dca::Tape<double> whole, blocks;
  Var<double> xw = whole.variable(x), ww = whole.variable(w), bw = whole.variable(b);
  whole.backward(dca::matmul(xw, ww, bw), seed);
  Var<double> xb = blocks.variable(x), wb = blocks.variable(w), bb = blocks.variable(b);
  const Var<double> left = dca::matmul_cols(xb, wb, bb, 0, 2), right = dca::matmul_cols(xb, wb, bb, 2, 4);
  blocks.backward(dca::concat_cols({left, right}), seed);
  CHECK(dca::test::max_relative_difference(xb.grad().span(), xw.grad().span()) < 1e-14);
  CHECK(dca::test::max_relative_difference(wb.grad().span(), ww.grad().span()) < 1e-14);
  CHECK(dca::test::max_relative_difference(bb.grad().span(), bw.grad().span()) < 1e-14);
}

TEST_CASE("float matmul_cols agrees with double") {
  dca::Tape<double> td;
  dca::Tape<float> tf;
  const auto yd = dca::matmul_cols(td.constant(random_tensor(Shape{6, 7}, 84)), td.constant(random_tensor(Shape{7, 9}, 85)),
                                   td.constant(random_tensor(Shape{1, 9}, 86)), 3, 4);
  const auto yf = dca::matmul_cols(tf.constant(random_tensor<float>(Shape{6, 7}, 84)),
                                   tf.constant(random_tensor<float>(Shape{7, 9}, 85)),
                                   tf.constant(random_tensor<float>(Shape{1, 9}, 86)), 3, 4);
  CHECK(dca::test::max_relative_difference(yf.value().span(), yd.value().span()) < 1e-5);
}

TEST_CASE("matmul_cols rejects a weight, bias or column range that does not fit and names the shapes") {
  dca::Tape<double> tape;
  const auto x = tape.constant(random_tensor(Shape{2, 3}, 1)), w = tape.constant(random_tensor(Shape{3, 6}, 2));
  CHECK_THROWS_WITH_AS(dca::matmul_cols(x, tape.constant(random_tensor(Shape{4, 6}, 3)), 0, 2),
                       doctest::Contains("matmul_cols: input x is [2,3] but weight is [4,6]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::matmul_cols(x, w, 4, 3),
                       doctest::Contains("matmul_cols: columns [4,7) (begin 4, count 3) are outside weight [3,6]"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::matmul_cols(x, w, -1, 2), doctest::Contains("matmul_cols: columns [-1,1)"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::matmul_cols(x, w, tape.constant(random_tensor(Shape{1, 5}, 4)), 0, 2),
                       doctest::Contains("matmul_cols: bias is [1,5], expected [1,6] for weight [3,6]"),
                       dca::ShapeError);
}

TEST_CASE("a product's input and weight gradients run side by side on two threads and give the bits of one thread") {
  const int previous_threads = dca::num_threads();
  // Large enough for the two halves to be run side by side (detail::pair_min_work).
  const Tensor<float> x0 = random_tensor<float>(Shape{128, 64}, 1), w0 = random_tensor<float>(Shape{64, 96}, 2),
                      wt0 = random_tensor<float>(Shape{96, 64}, 3), b0 = random_tensor<float>(Shape{1, 96}, 4),
                      seed = random_tensor<float>(Shape{128, 96}, 5);
  using Product = Var<float> (*)(dca::Tape<float>&, const Var<float>&, const Var<float>&, const Var<float>&,
                                 const Var<float>&);
  const std::pair<const char*, Product> products[] = {
      {"matmul", [](auto&, const auto& x, const auto& w, const auto&, const auto&) { return dca::matmul(x, w); }},
      {"linear", [](auto&, const auto& x, const auto&, const auto& wt, const auto& b) { return dca::linear(x, wt, b); }},
      {"matmul with a bias", [](auto&, const auto& x, const auto& w, const auto&, const auto& b) { return dca::matmul(x, w, b); }},
      {"matmul_cols", [](auto&, const auto& x, const auto& w, const auto&, const auto& b) { return dca::matmul_cols(x, w, b, 0, 96); }},
  };
  for (const auto& [name, product] : products) {
    INFO(name);
    const auto run = [&](int threads) {
      dca::set_num_threads(threads);
      dca::Tape<float> tape;
      const Var<float> x = tape.variable(x0.view()), w = tape.variable(w0.view()), wt = tape.variable(wt0.view()),
                       b = tape.variable(b0.view());
      tape.backward(product(tape, x, w, wt, b), seed.view());
      return std::vector<Tensor<float>>{Tensor<float>(x.grad()), Tensor<float>(w.grad()), Tensor<float>(wt.grad()),
                                        Tensor<float>(b.grad())};
    };
    const auto one = run(1), two = run(2);
    for (std::size_t g = 0; g < one.size(); ++g) CHECK(dca::test::max_abs_difference(one[g], two[g]) == 0.0);
  }
  // A value multiplied by itself: both halves write one adjoint, so they run one after the other.
  const Tensor<float> square0 = random_tensor<float>(Shape{96, 96}, 6), square_seed = random_tensor<float>(Shape{96, 96}, 7);
  const auto square = [&](int threads) {
    dca::set_num_threads(threads);
    dca::Tape<float> tape;
    const Var<float> a = tape.variable(square0.view());
    tape.backward(dca::matmul(a, a), square_seed.view());
    return Tensor<float>(a.grad());
  };
  CHECK(dca::test::max_abs_difference(square(1), square(2)) == 0.0);
  dca::set_num_threads(previous_threads);
}
