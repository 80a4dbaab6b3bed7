// dca/tensor/shape.hpp — the extents of a row-major tensor (rank 0..6), stored inline.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <algorithm>
#include <array>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>

namespace dca {

/// The extents of a tensor, outermost first: `Shape{B, T, C}`. Row-major: the last extent is
/// contiguous. A matrix view of a tensor has `rows()` = product of all but the last extent and
/// `cols()` = the last extent.
class Shape {
 public:
  static constexpr int max_rank = 6;

  Shape() = default;
  Shape(std::initializer_list<index_t> extents) { assign(extents.begin(), extents.end()); }
  explicit Shape(std::span<const index_t> extents) { assign(extents.begin(), extents.end()); }

  int rank() const { return rank_; }
  index_t operator[](int axis) const { return extents_[static_cast<std::size_t>(axis)]; }
  std::span<const index_t> extents() const { return {extents_.data(), static_cast<std::size_t>(rank_)}; }

  /// Number of elements (1 for rank 0).
  index_t numel() const {
    index_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= extents_[static_cast<std::size_t>(i)];
    return n;
  }
  /// Product of every extent but the last (1 for rank 0 and rank 1).
  index_t rows() const {
    index_t n = 1;
    for (int i = 0; i + 1 < rank_; ++i) n *= extents_[static_cast<std::size_t>(i)];
    return n;
  }
  /// The last extent (1 for rank 0).
  index_t cols() const { return rank_ == 0 ? 1 : extents_[static_cast<std::size_t>(rank_ - 1)]; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return std::ranges::equal(a.extents(), b.extents());
  }

  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ",";
      s += std::to_string(extents_[static_cast<std::size_t>(i)]);
    }
    return s + "]";
  }
  friend std::ostream& operator<<(std::ostream& out, const Shape& s) { return out << s.str(); }

 private:
  template <class It>
  void assign(It begin, It end) {
    const auto n = std::distance(begin, end);
    if (n > max_rank) detail::fail<ShapeError>("Shape: rank ", n, " exceeds the maximum rank ", max_rank);
    rank_ = static_cast<int>(n);
    std::copy(begin, end, extents_.begin());
    for (int i = 0; i < rank_; ++i)
      if (extents_[static_cast<std::size_t>(i)] < 0)
        detail::fail<ShapeError>("Shape: extent ", extents_[static_cast<std::size_t>(i)], " at axis ", i,
                                 " is negative");
  }

  std::array<index_t, max_rank> extents_{};
  int rank_ = 0;
};

}  // namespace dca
