// dca/tensor/tensor.hpp — the library's value type: row-major contiguous float/double data with a
// Shape. `Tensor` owns its data (deep copies); `TensorView` borrows it. Eigen does every
// contraction through `matrix()` (an Eigen::Map over the same memory, no copy); for N-d indexing
// see dca/tensor/xtensor.hpp.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/tensor/shape.hpp"

#include <Eigen/Core>

#include <initializer_list>
#include <span>
#include <type_traits>
#include <vector>

namespace dca {

/// A non-owning view of row-major contiguous data with a shape. `T` may be const.
/// Cheap to copy; the viewed memory must outlive the view.
template <class T>
  requires Scalar<std::remove_const_t<T>>
class TensorView {
 public:
  using value_type = std::remove_const_t<T>;

  /// An empty view of shape [0].
  TensorView() = default;
  TensorView(T* data, Shape shape) : data_(data), shape_(shape) {}
  /// A view of non-const data converts to a view of const data.
  template <class U>
    requires std::is_const_v<T> && std::same_as<U, value_type>
  TensorView(TensorView<U> other) : data_(other.data()), shape_(other.shape()) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  index_t numel() const { return shape_.numel(); }
  index_t rows() const { return shape_.rows(); }
  index_t cols() const { return shape_.cols(); }
  std::span<T> span() const { return {data_, static_cast<std::size_t>(numel())}; }

  /// The data as a [rows(), cols()] row-major Eigen matrix (same memory).
  Eigen::Map<std::conditional_t<std::is_const_v<T>, const RowMatrix<value_type>, RowMatrix<value_type>>> matrix()
      const {
    return {data_, rows(), cols()};
  }
  /// Element (r, c) of the matrix view.
  T& operator()(index_t r, index_t c) const { return data_[r * cols() + c]; }
  /// Element i of the flat data.
  T& operator[](index_t i) const { return data_[i]; }

  /// The same data under another shape with the same number of elements.
  TensorView reshaped(Shape shape) const {
    if (shape.numel() != numel())
      detail::fail<ShapeError>("TensorView::reshaped: cannot view ", shape_, " (", numel(), " elements) as ", shape,
                               " (", shape.numel(), " elements)");
    return {data_, shape};
  }

 private:
  T* data_ = nullptr;
  Shape shape_{0};  // empty, not a rank-0 scalar: a default view holds no data
};

/// An owning, deep-copying tensor. Storage is aligned for Eigen's vectorised kernels.
template <Scalar T>
class Tensor {
 public:
  using value_type = T;

  /// An empty tensor of shape [0].
  Tensor() = default;
  /// A zero-filled tensor of the given shape.
  explicit Tensor(Shape shape) : shape_(shape), data_(static_cast<std::size_t>(shape.numel()), T(0)) {}
  Tensor(Shape shape, T fill) : shape_(shape), data_(static_cast<std::size_t>(shape.numel()), fill) {}
  /// A tensor of the given shape holding `values` (row-major); the counts must agree.
  Tensor(Shape shape, std::initializer_list<T> values) : Tensor(shape, std::span<const T>(values.begin(), values.size())) {}
  Tensor(Shape shape, std::span<const T> values) : shape_(shape), data_(values.begin(), values.end()) {
    if (static_cast<index_t>(values.size()) != shape.numel())
      detail::fail<ShapeError>("Tensor: shape ", shape, " needs ", shape.numel(), " values, got ", values.size());
  }
  /// A copy of the data behind a view.
  explicit Tensor(TensorView<const T> view) : Tensor(view.shape(), view.span()) {}
  /// A [rows, cols] tensor holding an Eigen matrix expression's values.
  template <class Derived>
  static Tensor from_matrix(const Eigen::MatrixBase<Derived>& m) {
    Tensor t(Shape{m.rows(), m.cols()});
    t.matrix() = m;
    return t;
  }

  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  index_t numel() const { return shape_.numel(); }
  index_t rows() const { return shape_.rows(); }
  index_t cols() const { return shape_.cols(); }
  bool empty() const { return data_.empty(); }
  std::span<T> span() { return {data_.data(), data_.size()}; }
  std::span<const T> span() const { return {data_.data(), data_.size()}; }

  TensorView<T> view() { return {data(), shape_}; }
  TensorView<const T> view() const { return {data(), shape_}; }
  operator TensorView<T>() { return view(); }
  operator TensorView<const T>() const { return view(); }

  MatrixMap<T> matrix() { return {data(), rows(), cols()}; }
  ConstMatrixMap<T> matrix() const { return {data(), rows(), cols()}; }
  T& operator()(index_t r, index_t c) { return data_[static_cast<std::size_t>(r * cols() + c)]; }
  const T& operator()(index_t r, index_t c) const { return data_[static_cast<std::size_t>(r * cols() + c)]; }
  T& operator[](index_t i) { return data_[static_cast<std::size_t>(i)]; }
  const T& operator[](index_t i) const { return data_[static_cast<std::size_t>(i)]; }

  /// Changes the shape in place; the number of elements must not change.
  void reshape(Shape shape) {
    if (shape.numel() != numel())
      detail::fail<ShapeError>("Tensor::reshape: cannot reshape ", shape_, " (", numel(), " elements) to ", shape,
                               " (", shape.numel(), " elements)");
    shape_ = shape;
  }
  void fill(T value) { std::fill(data_.begin(), data_.end(), value); }

 private:
  Shape shape_{0};  // empty, not a rank-0 scalar: a default tensor holds no data
  std::vector<T, Eigen::aligned_allocator<T>> data_;
};

}  // namespace dca
