// dca/autodiff/ops/embedding.hpp — token embedding lookup: a row gather whose backward
// scatter-adds into the table's adjoint.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <span>

namespace dca {

/// table:[V,C] ids:[N] -> [N,C]
/// Row i of the result is row ids[i] of the table. Backward adds each output row's adjoint to the
/// table row it came from, sequentially, so an id that occurs several times accumulates all its
/// contributions. An id outside [0,V) throws `RangeError`.
template <Scalar T>
Var<T> embedding(const Var<T>& table, std::span<const index_t> ids) {
  const index_t vocab = table.rows();
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      detail::fail<RangeError>("embedding: id ", ids[i], " at position ", i, " of ids is outside [0,", vocab,
                               ") for a table of ", vocab, " rows ", table.shape());
  Tape<T>& tape = table.tape();
  const index_t count = static_cast<index_t>(ids.size());
  Var<T> y = tape.make_result("embedding", count, table.cols(), {table});
  auto E = table.matrix();
  auto Y = y.mutable_matrix();
  for (index_t i = 0; i < count; ++i) Y.row(i) = E.row(ids[static_cast<std::size_t>(i)]);
  tape.record(y, [table = table.operand(), y = y.operand(), ids = tape.copy(ids)] {
    if (!table.active()) return;
    auto dE = table.adj();
    auto dY = y.adj();
    for (index_t i = 0; i < y.rows; ++i) dE.row(ids[static_cast<std::size_t>(i)]) += dY.row(i);
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_EMBEDDING_INSTANCES(kind, T) \
  kind Var<T> embedding(const Var<T>&, std::span<const index_t>);
DCA_EXTERN_INSTANCES(DCA_EMBEDDING_INSTANCES)

}  // namespace dca
