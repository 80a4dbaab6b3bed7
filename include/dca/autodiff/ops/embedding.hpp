// dca/autodiff/ops/embedding.hpp — token embedding lookup: a row gather whose backward
// scatter-adds into the table's adjoint, except for an optional padding row (PyTorch's
// nn.Embedding padding_idx), whose lookups add nothing.
#pragma once

#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <optional>
#include <span>

namespace dca {

/// table:[V,C] ids:[N] -> [N,C]
/// Row i of the result is row ids[i] of the table. Backward adds each output row's adjoint to the
/// table row it came from, sequentially, so an id that occurs several times accumulates all its
/// contributions. An id outside [0,V) throws `RangeError`.
///
/// `padding_id`, when set, is the row that lookups pass no gradient to, as
/// `torch.nn.functional.embedding(..., padding_idx=padding_id)`: the row is still read in the
/// forward pass, but its adjoint receives nothing from this op, so other uses of the same table
/// (a tied output head) are its only gradient. Transformers builds Llama, Qwen2 and Gemma-2
/// embeddings this way with the config's pad_token_id, and Decoder::embed reproduces it. It is
/// not the true derivative, so gradient checks of it must leave that row out. Outside [0,V) it
/// throws `RangeError`.
template <Scalar T>
Var<T> embedding(const Var<T>& table, std::span<const index_t> ids, std::optional<index_t> padding_id = std::nullopt) {
  const index_t vocab = table.rows();
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      detail::fail<RangeError>("embedding: id ", ids[i], " at position ", i, " of ids is outside [0,", vocab,
                               ") for a table of ", vocab, " rows ", table.shape());
  if (padding_id && (*padding_id < 0 || *padding_id >= vocab))
    detail::fail<RangeError>("embedding: padding id ", *padding_id, " is outside [0,", vocab, ") for a table of ",
                             vocab, " rows ", table.shape());
  Tape<T>& tape = table.tape();
  const index_t count = static_cast<index_t>(ids.size());
  Var<T> y = tape.make_result("embedding", count, table.cols(), {table});
  auto E = table.matrix();
  auto Y = y.mutable_matrix();
  for (index_t i = 0; i < count; ++i) Y.row(i) = E.row(ids[static_cast<std::size_t>(i)]);
  // -1 never matches an id (all are ≥ 0): no padding row.
  const index_t skipped = padding_id.value_or(-1);
  tape.record(y, [table = table.operand(), y = y.operand(), ids = tape.copy(ids), skipped] {
    if (!table.active()) return;
    auto dE = table.adj();
    auto dY = y.adj();
    for (index_t i = 0; i < y.rows; ++i) {
      const index_t id = ids[static_cast<std::size_t>(i)];
      if (id != skipped) dE.row(id) += dY.row(i);
    }
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_EMBEDDING_INSTANCES(kind, T) \
  kind Var<T> embedding(const Var<T>&, std::span<const index_t>, std::optional<index_t>);
DCA_EXTERN_INSTANCES(DCA_EMBEDDING_INSTANCES)

}  // namespace dca
