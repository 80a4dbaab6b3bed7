// Specification of the matrix products and the fused linear layer.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/matmul.hpp"
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
