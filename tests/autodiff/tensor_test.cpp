// Specification of the tensor value types: Shape, Tensor (owning) and TensorView (borrowing).
#include "dca/tensor/tensor.hpp"
#include "dca/tensor/xtensor.hpp"

#include <doctest/doctest.h>

using dca::Shape;
using dca::Tensor;
using dca::TensorView;

TEST_CASE("a shape reports its rank, element count, and matrix rows and columns") {
  const Shape s{2, 3, 4};
  CHECK(s.rank() == 3);
  CHECK(s.numel() == 24);
  CHECK(s.rows() == 6);
  CHECK(s.cols() == 4);
  CHECK(s.str() == "[2,3,4]");
  CHECK(Shape{5}.rows() == 1);
  CHECK(Shape{5}.cols() == 5);
  CHECK(Shape{}.numel() == 1);
}

TEST_CASE("a shape rejects negative extents and ranks beyond the maximum") {
  CHECK_THROWS_WITH_AS(Shape({2, -1}), doctest::Contains("extent -1 at axis 1"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(Shape({1, 1, 1, 1, 1, 1, 1}), doctest::Contains("rank 7"), dca::ShapeError);
}

TEST_CASE("a new tensor is zero-filled and row-major") {
  Tensor<float> t(Shape{2, 3});
  for (dca::index_t i = 0; i < t.numel(); ++i) CHECK(t[i] == 0.0f);
  t(1, 2) = 5.0f;
  CHECK(t[5] == 5.0f);
}

TEST_CASE("a tensor's matrix view shares its memory") {
  Tensor<double> t(Shape{2, 2}, {1, 2, 3, 4});
  auto m = t.matrix();
  CHECK(m(1, 0) == 3);
  m(0, 1) = 7;
  CHECK(t[1] == 7);
  CHECK(m.data() == t.data());
}

TEST_CASE("copying a tensor copies its data") {
  Tensor<double> a(Shape{3}, {1, 2, 3});
  Tensor<double> b = a;
  b[0] = 9;
  CHECK(a[0] == 1);
  CHECK(b.data() != a.data());
}

TEST_CASE("a tensor built from too few values names both counts") {
  CHECK_THROWS_WITH_AS(Tensor<double>(Shape{2, 2}, {1.0, 2.0, 3.0}), doctest::Contains("[2,2] needs 4 values, got 3"),
                       dca::ShapeError);
}

TEST_CASE("a view converts to const, reshapes without copying, and rejects a wrong element count") {
  Tensor<float> t(Shape{2, 6});
  TensorView<float> v = t.view();
  TensorView<const float> c = v;
  auto r = c.reshaped(Shape{3, 4});
  CHECK(r.data() == t.data());
  CHECK(r.rows() == 3);
  CHECK_THROWS_WITH_AS(c.reshaped(Shape{5, 2}), doctest::Contains("cannot view [2,6] (12 elements) as [5,2]"),
                       dca::ShapeError);
}

TEST_CASE("the xtensor adaptor indexes the same memory in N dimensions") {
  Tensor<float> cache(Shape{4, 2, 3});  // [slots, heads, head_dim]
  for (dca::index_t i = 0; i < cache.numel(); ++i) cache[i] = static_cast<float>(i);
  auto x = dca::as_xtensor<3>(cache);
  CHECK(x(2, 1, 0) == static_cast<float>(2 * 6 + 1 * 3 + 0));
  x(0, 0, 1) = -1.0f;
  CHECK(cache[1] == -1.0f);
  CHECK_THROWS_WITH_AS(dca::as_xtensor<2>(cache), doctest::Contains("rank 3"), dca::ShapeError);
}

TEST_CASE("a default tensor and a default view are empty, not scalars") {
  const Tensor<float> t;
  const TensorView<const double> v;
  CHECK(t.numel() == 0);
  CHECK(t.empty());
  CHECK(v.numel() == 0);
  CHECK(v.data() == nullptr);
}
