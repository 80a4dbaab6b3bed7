// dca/tensor/xtensor.hpp — N-d views of dca tensors through xtensor, over the same memory.
//
// Use these where N-d indexing reads better than flat arithmetic: a batch of token ids [B,T], a
// cache layer [slots, kv_heads, head_dim], a debugging print. Hot loops and contractions go
// through `matrix()` (Eigen) or raw pointers instead: xtensor's generic views are not free.
#pragma once

#include "dca/tensor/tensor.hpp"

#include <xtensor/xadapt.hpp>

#include <array>
#include <cstddef>
#include <type_traits>

namespace dca {

/// A rank-N xtensor adaptor over a view's data (no copy). The view's rank must be N.
/// `as_xtensor<3>(cache_keys)(slot, head, d)` indexes a [slots, heads, head_dim] tensor.
template <std::size_t N, class T>
auto as_xtensor(TensorView<T> view) {
  if (view.rank() != static_cast<int>(N))
    detail::fail<ShapeError>("as_xtensor<", N, ">: the tensor has rank ", view.rank(), " ", view.shape());
  std::array<std::size_t, N> shape{};
  for (std::size_t i = 0; i < N; ++i) shape[i] = static_cast<std::size_t>(view.shape()[static_cast<int>(i)]);
  return xt::adapt(view.data(), static_cast<std::size_t>(view.numel()), xt::no_ownership(), shape);
}

/// The same for an owning tensor (the tensor must outlive the adaptor).
template <std::size_t N, Scalar T>
auto as_xtensor(Tensor<T>& tensor) {
  return as_xtensor<N>(tensor.view());
}
template <std::size_t N, Scalar T>
auto as_xtensor(const Tensor<T>& tensor) {
  return as_xtensor<N>(tensor.view());
}

}  // namespace dca
