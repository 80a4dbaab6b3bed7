// dca/autodiff/ops/attention.hpp — fused scaled-dot-product attention with a hand-written backward.
//
// Shapes: q:[Nq, H·D], k and v:[Nk, Hkv·D], an optional constant cache of keys and values
// [Nc, Hkv·D] each; the output is [Nq, H·D]. D = q.cols()/H. Query head h reads key/value head
// h / (H/Hkv): grouped-query attention, Hkv = 1 being multi-query attention.
//
// Groups. The queries are split into groups (by default one group: all q rows, all k rows and the
// whole cache). Query i of group g (local index, 0 ≤ i < q_count) has as candidate keys the group's
// cache rows [cache_begin, cache_begin + cache_count) followed by its active key rows
// [k_begin, k_begin + k_count); it never sees another group's keys. Groups own their query rows and
// their active key rows (no two groups share one), while cache rows may be shared: this is the
// coprocessor pattern, K short query groups against prefixes of one constant cache, without a mask.
// Visibility of a candidate key:
//   - the cache rows are the group's prefix, earlier than all of its queries: the rule never hides
//     them;
//   - rule `causal` is bottom-right aligned: query i sits at active key a = i + (k_count − q_count)
//     and sees active keys 0..a, so it needs q_count ≤ k_count (self-attention has them equal;
//     queries continuing a sequence whose earlier keys are active too have q_count < k_count);
//     rule `bidirectional` sees all of the group's active keys;
//   - with a window W > 0, a key is visible only if also q_pos − key_pos < W: Hugging Face's sliding
//     window, W keys including the query itself when positions are consecutive. The window bounds
//     how far back a query looks; keys after it are governed by the rule alone.
//   Causality is by order (cache rows, then active keys in row order), never by position: positions
//   only matter for the window, so several latent slots may share one position id and still be
//   causally ordered among themselves.
//   - Positions come from q_positions [Nq], k_positions [Nk] and cache.positions [Nc]. An empty span
//     takes its default, allowed only with the default single group: cache row r at position r,
//     active key r at Nc + r, query i at Nc + (Nk − Nq) + i (the position of its aligned key).
//   - An explicit `mask` [Nq, Nc + Nk] (only with the default single group, and with window 0)
//     replaces the rule and the window: query i sees key j iff mask[i·(Nc + Nk) + j] != 0, the keys
//     being the cache rows followed by the active rows.
// Scores s = scale·q_h·k_hᵀ (scale 0 means 1/√D), then s → softcap·tanh(s/softcap) if softcap > 0
// (Gemma-2), then a max-subtracted softmax over the visible keys; the output is P·v_h. A query row
// that sees no key (also a q row that no group covers) outputs zeros and passes no gradient.
//
// Errors (ShapeError or RangeError, naming "attention" and the shapes or values involved): head
// counts that do not divide, q columns that do not split into H heads, k/v/cache shapes other than
// [*, Hkv·D] or differing from each other, group ranges outside the rows of q, k or the cache, two
// groups sharing a q row or an active k row, a causal group with more queries than active keys, a
// mask of the wrong size or combined with explicit groups or a window, positions of the wrong length
// or missing where a window needs them, a negative window or softcap, a non-finite scale.
//
// Gradients flow to q, k and v where they are active, never to the cache, which is read in place:
// its memory must stay valid and unchanged until the tape is reset (as with Tape::constant_view).
//
// Implementation: one task per (group, kv head), run in parallel with OpenMP; inside a task, the
// H/Hkv query heads of that kv head run one after another with single-threaded GEMMs on
// strided head blocks (threading small per-head GEMMs makes them slower). Causal groups run in
// blocks of 32 query rows that compute only the keys their rows may see, skipping the fully hidden
// blocks above the diagonal (about half the work for self-attention). The probabilities P of
// every (group, head) are kept in the tape arena for the backward pass. Tasks write disjoint blocks
// of the output and of the adjoints (groups own their rows, kv heads their columns), so both passes
// are race-free and give the same bits on any number of threads. Calls too small to repay opening
// a parallel region run on one thread.
//
// Longer than ~400 lines because it is one fused op, written in the one pattern every op follows
// (validate, forward, stash, backward closure): the forward and the hand-written backward share the
// group, block and visibility code, and the validation names every argument that can be wrong.
#pragma once

#include "dca/autodiff/ops/matmul.hpp"
#include "dca/autodiff/tape.hpp"
#include "dca/core/instances.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

namespace dca {

/// One block of queries and the keys it may see (see the header comment for the visibility rules).
/// A group owns its q rows and its active k rows: no two groups may share one.
struct AttentionGroup {
  index_t q_begin = 0, q_count = 0;          // rows of q (and of the output)
  index_t k_begin = 0, k_count = 0;          // rows of the active k/v: the group's own keys
  index_t cache_begin = 0, cache_count = 0;  // rows of the constant cache it sees (its prefix)
};

/// How a group's queries see the group's own (active) keys.
enum class AttentionRule {
  causal,         // bottom-right aligned: query i sees active keys 0 .. i + (k_count − q_count)
  bidirectional,  // every active key of the group
};

/// Keys/values that are constants (a decoder's cache, a frozen prefix): read in place, no gradient.
/// Empty (default-constructed) views mean no cache.
template <Scalar T>
struct ConstantKV {
  TensorView<const T> keys, values;    // [Nc, Hkv·D] each
  std::span<const index_t> positions;  // [Nc]; needed only with a window
};

/// Everything about an attention call except its active inputs; see the header comment.
template <Scalar T>
struct AttentionArgs {
  index_t n_heads = 1;                         // query heads H
  index_t n_kv_heads = 1;                      // key/value heads Hkv; divides H (GQA; 1 = MQA)
  double scale = 0;                            // 0: 1/sqrt(D)
  double softcap = 0;                          // 0: off; else scores -> softcap·tanh(scores/softcap) (Gemma-2)
  AttentionRule rule = AttentionRule::causal;  // among a group's own keys
  index_t window = 0;                          // 0: unlimited; else key visible only if q_pos − k_pos < window
  std::span<const AttentionGroup> groups;      // empty: one group = all q rows, all k rows, whole cache
  std::span<const index_t> q_positions;        // [Nq]; needed only with a window
  std::span<const index_t> k_positions;        // [Nk]; needed only with a window
  ConstantKV<T> cache;                         // optional constant segment [Nc, Hkv·D]
  std::span<const std::uint8_t> mask;          // optional explicit [Nq, Nc+Nk] mask (1 = visible)
};

namespace detail {

// A position: from an explicit array, or the default `offset + row`.
struct AttentionPositions {
  const index_t* explicit_positions = nullptr;
  index_t offset = 0;

  index_t operator[](index_t row) const { return explicit_positions ? explicit_positions[row] : offset + row; }
};

// What hides keys in the forward pass; the backward pass reads visibility from the stored
// probabilities (exact zeros), so none of this outlives the call.
struct AttentionVisibility {
  AttentionRule rule = AttentionRule::causal;
  index_t window = 0;
  AttentionPositions q_positions, k_positions, cache_positions;
  const std::uint8_t* mask = nullptr;  // [Nq, Nc + Nk] (default single group only), or null
};

// Sizes, scalars and arena pointers shared by the forward and backward kernels. Trivially
// copyable, so the backward closure captures it by value.
template <Scalar T>
struct AttentionLayout {
  index_t n_heads = 1, n_kv_heads = 1, head_dim = 0;
  T scale = 1, softcap = 0;
  const AttentionGroup* groups = nullptr;
  index_t n_groups = 0;
  const T* cache_keys = nullptr;    // [Nc, Hkv·D]
  const T* cache_values = nullptr;  // [Nc, Hkv·D]
  bool causal = false;              // the causal rule decides visibility (no explicit mask)

  index_t q_cols() const { return n_heads * head_dim; }
  index_t kv_cols() const { return n_kv_heads * head_dim; }
  index_t heads_per_kv() const { return n_heads / n_kv_heads; }
  index_t n_tasks() const { return n_groups * n_kv_heads; }
};

// The candidate keys of a group: its cache rows, then its active keys.
inline index_t attention_keys(const AttentionGroup& g) { return g.cache_count + g.k_count; }

// Below this many score-matrix multiply-adds (Σ q_count·n_keys·D over groups and heads, about 5 µs
// of one core's GEMM work) a call runs on one thread.
inline constexpr double attention_parallel_work = 1 << 17;

// Query rows per block in causal groups. A block's products run over only the active keys its last
// row may see, so causal self-attention skips the fully hidden blocks above the diagonal: 62.5% of
// the full square's work at T = 128 (four blocks). Smaller blocks skip more, but their GEMMs
// become too small to run near peak.
inline constexpr index_t attention_causal_block = 32;

// How many of a group's active keys the queries [0, end) may see: under the causal rule query i
// sees active keys 0 .. i + (k_count − q_count); under any other rule, all of them.
inline index_t attention_keys_seen(const AttentionGroup& group, bool causal, index_t end) {
  return causal ? std::clamp<index_t>(end + group.k_count - group.q_count, 0, group.k_count) : group.k_count;
}

// Rows per query block (and keys per key block in the backward pass): `attention_causal_block` for
// causal groups, everything at once otherwise.
inline index_t attention_block_rows(bool causal, index_t count) {
  return causal ? attention_causal_block : std::max<index_t>(count, 1);
}

// Head `head` of rows [begin, begin + count) of a row-major [*, cols] matrix: a [count, D] block
// with row stride `cols`. Empty blocks never offset `data`, which may then be null.
template <Scalar T>
ConstStridedMap<T> head_block(const T* data, index_t cols, index_t begin, index_t count, index_t head, index_t d) {
  return {count > 0 ? data + begin * cols + head * d : data, count, d, Eigen::OuterStride<>(cols)};
}
template <Scalar T>
StridedMap<T> mutable_head_block(T* data, index_t cols, index_t begin, index_t count, index_t head, index_t d) {
  return {count > 0 ? data + begin * cols + head * d : data, count, d, Eigen::OuterStride<>(cols)};
}

// Turns row i of a group's scores [n_keys] into probabilities over its visible keys, in place.
// Hidden keys get an exact 0, so the backward pass needs no visibility information.
template <Scalar T>
void attention_softmax_row(T* row, index_t i, const AttentionGroup& group, const AttentionVisibility& visibility) {
  constexpr T hidden = -std::numeric_limits<T>::infinity();
  const index_t n_keys = attention_keys(group);
  // Keys from `end` on are the causal future of query i (the mask, when given, decides alone).
  const index_t end = !visibility.mask && visibility.rule == AttentionRule::causal
                          ? group.cache_count + i + (group.k_count - group.q_count) + 1
                          : n_keys;
  bool any_hidden = false;
  if (visibility.mask) {
    const std::uint8_t* visible = visibility.mask + (group.q_begin + i) * n_keys;
    for (index_t j = 0; j < end; ++j)
      if (!visible[j]) row[j] = hidden, any_hidden = true;
  } else if (visibility.window > 0) {
    const index_t q_pos = visibility.q_positions[group.q_begin + i];
    for (index_t j = 0; j < end; ++j) {
      const index_t key_pos = j < group.cache_count ? visibility.cache_positions[group.cache_begin + j]
                                                    : visibility.k_positions[group.k_begin + j - group.cache_count];
      if (q_pos - key_pos >= visibility.window) row[j] = hidden, any_hidden = true;
    }
  }
  std::fill(row + end, row + n_keys, T(0));
  Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> scores(row, end);
  const T max = end > 0 ? scores.maxCoeff() : hidden;
  if (max == hidden) {  // no visible key: the row outputs zeros
    scores.setZero();
    return;
  }
  if (any_hidden)
    scores = (scores == hidden).select(T(0), (scores - max).exp());
  else
    scores = (scores - max).exp();
  scores *= T(1) / scores.sum();
}

// Forward of one (group, query head): writes P [q_count, n_keys] into `probs`, tanh(s/softcap)
// into `capped` if it is not null (the backward pass needs it), and adds P·v_h to the output,
// whose block must be zero. Queries run in blocks (see attention_causal_block); a block computes the
// scores of the keys its rows may see and its softmax rows write exact zeros over the rest.
template <Scalar T>
void attention_forward_head(const AttentionLayout<T>& layout, const AttentionVisibility& visibility,
                            const AttentionGroup& group, index_t head, const Operand<T>& q, const Operand<T>& k,
                            const Operand<T>& v, T* output, T* probs, T* capped) {
  const index_t d = layout.head_dim, kv_head = head / layout.heads_per_kv(), kv_cols = layout.kv_cols();
  const index_t qc = group.q_count, cc = group.cache_count, kc = group.k_count, n_keys = cc + kc;
  MatrixMap<T> P(probs, qc, n_keys);
  const auto Q = head_block(q.value, layout.q_cols(), group.q_begin, qc, head, d);
  const auto cache_k = head_block(layout.cache_keys, kv_cols, group.cache_begin, cc, kv_head, d);
  const auto cache_v = head_block(layout.cache_values, kv_cols, group.cache_begin, cc, kv_head, d);
  const auto K = head_block(k.value, kv_cols, group.k_begin, kc, kv_head, d);
  const auto V = head_block(v.value, kv_cols, group.k_begin, kc, kv_head, d);
  auto O = mutable_head_block(output, layout.q_cols(), group.q_begin, qc, head, d);
  const index_t block = attention_block_rows(layout.causal, qc);
  for (index_t r0 = 0; r0 < qc; r0 += block) {
    const index_t rows = std::min(block, qc - r0);
    const index_t keys = attention_keys_seen(group, layout.causal, r0 + rows), width = cc + keys;
    auto S = P.block(r0, 0, rows, width);
    const auto Qb = Q.middleRows(r0, rows);
    if (cc > 0) gemm(S.leftCols(cc), Qb, cache_k.transpose(), layout.scale);
    if (keys > 0) gemm(S.rightCols(keys), Qb, K.topRows(keys).transpose(), layout.scale);
    if (layout.softcap > 0) {
      const T cap = layout.softcap;
      if (capped) {
        auto tanh_s = MatrixMap<T>(capped, qc, n_keys).block(r0, 0, rows, width);
        tanh_s.array() = (S.array() * (T(1) / cap)).tanh();
        S.array() = cap * tanh_s.array();
      } else {
        S.array() = cap * (S.array() * (T(1) / cap)).tanh();
      }
    }
    for (index_t i = r0; i < r0 + rows; ++i) attention_softmax_row(probs + i * n_keys, i, group, visibility);
    auto Ob = O.middleRows(r0, rows);
    if (cc > 0) gemm_add(Ob, S.leftCols(cc), cache_v);
    if (keys > 0) gemm_add(Ob, S.rightCols(keys), V.topRows(keys));
  }
}

// Backward of one (group, query head), given its stored P (and tanh(s/softcap) if capped), with
// `scratch` of q_count·n_keys elements for dS; adds to the active inputs' adjoint blocks. dS and dQ
// run over the forward's query blocks; dK and dV over blocks of keys, each with only the queries
// that see them (dS and P are exact zeros elsewhere).
template <Scalar T>
void attention_backward_head(const AttentionLayout<T>& layout, const AttentionGroup& group, index_t head,
                             const Operand<T>& q, const Operand<T>& k, const Operand<T>& v, const Operand<T>& y,
                             const T* probs, const T* capped, T* scratch, TapeStats* stats) {
  const index_t d = layout.head_dim, kv_head = head / layout.heads_per_kv(), kv_cols = layout.kv_cols();
  const index_t q_cols = layout.q_cols();
  const index_t qc = group.q_count, cc = group.cache_count, kc = group.k_count, n_keys = cc + kc;
  ConstMatrixMap<T> P(probs, qc, n_keys);
  const auto dO = head_block<T>(y.adjoint, q_cols, group.q_begin, qc, head, d);
  const auto Q = head_block(q.value, q_cols, group.q_begin, qc, head, d);
  const index_t block = attention_block_rows(layout.causal, qc);
  MatrixMap<T> dS(scratch, qc, n_keys);  // first dP = dO·vᵀ, then the score gradient in place
  if (q.active() || k.active()) {
    const auto O = head_block(y.value, q_cols, group.q_begin, qc, head, d);
    const auto cache_k = head_block(layout.cache_keys, kv_cols, group.cache_begin, cc, kv_head, d);
    const auto cache_v = head_block(layout.cache_values, kv_cols, group.cache_begin, cc, kv_head, d);
    const auto K = head_block(k.value, kv_cols, group.k_begin, kc, kv_head, d);
    const auto V = head_block(v.value, kv_cols, group.k_begin, kc, kv_head, d);
    for (index_t r0 = 0; r0 < qc; r0 += block) {
      const index_t rows = std::min(block, qc - r0);
      const index_t keys = attention_keys_seen(group, layout.causal, r0 + rows), width = cc + keys;
      auto dSb = dS.block(r0, 0, rows, width);
      const auto dOb = dO.middleRows(r0, rows);
      if (cc > 0) {
        gemm(dSb.leftCols(cc), dOb, cache_v.transpose());
        Tape<T>::count_gemm(stats, rows, cc, d);
      }
      if (keys > 0) {
        gemm(dSb.rightCols(keys), dOb, V.topRows(keys).transpose());
        Tape<T>::count_gemm(stats, rows, keys, d);
      }
      // Softmax backward dS = P⊙(dP − rowsum(dP⊙P)); rowsum(dP⊙P) = dO·(P·v) = dO·O is D wide, not n_keys.
      for (index_t i = 0; i < rows; ++i) {
        const T delta = dOb.row(i).dot(O.row(r0 + i));
        dSb.row(i).array() = P.row(r0 + i).head(width).array() * (dSb.row(i).array() - delta);
      }
      if (capped) dSb.array() *= T(1) - ConstMatrixMap<T>(capped, qc, n_keys).block(r0, 0, rows, width).array().square();
      dS.block(r0, width, rows, n_keys - width).setZero();
      if (q.active()) {
        auto dQ = mutable_head_block(q.adjoint, q_cols, group.q_begin + r0, rows, head, d);
        if (cc > 0) {
          gemm_add(dQ, dSb.leftCols(cc), cache_k, layout.scale);
          Tape<T>::count_gemm(stats, rows, d, cc);
        }
        if (keys > 0) {
          gemm_add(dQ, dSb.rightCols(keys), K.topRows(keys), layout.scale);
          Tape<T>::count_gemm(stats, rows, d, keys);
        }
      }
    }
  }
  // Query i sees active key j iff j ≤ i + (k_count − q_count) under the causal rule.
  const index_t key_block = attention_block_rows(layout.causal, kc);
  for (index_t c0 = 0; c0 < kc; c0 += key_block) {
    const index_t cols = std::min(key_block, kc - c0);
    const index_t first = layout.causal ? std::clamp<index_t>(c0 - (kc - qc), 0, qc) : 0, rows = qc - first;
    if (rows == 0) continue;
    if (k.active()) {
      gemm_add(mutable_head_block(k.adjoint, kv_cols, group.k_begin + c0, cols, kv_head, d),
               dS.block(first, cc + c0, rows, cols).transpose(), Q.middleRows(first, rows), layout.scale);
      Tape<T>::count_gemm(stats, cols, d, rows);
    }
    if (v.active()) {
      gemm_add(mutable_head_block(v.adjoint, kv_cols, group.k_begin + c0, cols, kv_head, d),
               P.block(first, cc + c0, rows, cols).transpose(), dO.middleRows(first, rows));
      Tape<T>::count_gemm(stats, cols, d, rows);
    }
  }
}

// Throws if two groups share a row of `what` (q or active k): each group owns its rows, which is
// what keeps the parallel backward race-free. `order` is scratch for n_groups indices.
inline void check_attention_groups_disjoint(std::span<const AttentionGroup> groups, index_t* order,
                                            index_t AttentionGroup::*begin, index_t AttentionGroup::*count,
                                            const char* what) {
  const auto n = static_cast<index_t>(groups.size());
  for (index_t g = 0; g < n; ++g) order[g] = g;
  const auto group = [&](index_t g) -> const AttentionGroup& { return groups[static_cast<std::size_t>(g)]; };
  std::sort(order, order + n, [&](index_t a, index_t b) { return group(a).*begin < group(b).*begin; });
  index_t previous = -1;  // the non-empty group reaching furthest so far
  for (index_t o = 0; o < n; ++o) {
    const AttentionGroup& current = group(order[o]);
    if (current.*count == 0) continue;
    if (previous >= 0 && current.*begin < group(previous).*begin + group(previous).*count)
      fail<RangeError>("attention: group ", previous, " (", what, " rows [", group(previous).*begin, ",",
                       group(previous).*begin + group(previous).*count, ")) and group ", order[o], " (", what,
                       " rows [", current.*begin, ",", current.*begin + current.*count,
                       ")) overlap; each group must own its ", what, " rows");
    if (previous < 0 || current.*begin + current.*count > group(previous).*begin + group(previous).*count)
      previous = order[o];
  }
}

// Throws unless group g's rows [begin, begin + count) of `what` lie within its `rows` rows.
inline void check_attention_range(index_t g, const char* what, index_t begin, index_t count, index_t rows,
                                  const Shape& shape) {
  if (begin < 0 || count < 0 || begin + count > rows)
    fail<RangeError>("attention: group ", g, " has ", what, " rows [", begin, ",", begin + count, ") (begin ", begin,
                     ", count ", count, ") outside the ", rows, " rows of ", what, " ", shape);
}

// Throws if `positions` is given with a length other than `rows`, or missing where it is required.
inline void check_attention_positions(const char* name, std::span<const index_t> positions, index_t rows,
                                      bool required) {
  if (!positions.empty() && static_cast<index_t>(positions.size()) != rows)
    fail<ShapeError>("attention: ", name, " has ", positions.size(), " entries, expected ", rows);
  if (required && positions.empty() && rows > 0)
    fail<ShapeError>("attention: a window with explicit groups needs ", name, " (", rows,
                     " entries); defaults exist only for the single default group");
}

}  // namespace detail

/// q:[Nq, H·D] k,v:[Nk, Hkv·D] (+ constant cache [Nc, Hkv·D]) -> [Nq, H·D]
/// Fused scaled-dot-product attention over groups of queries; see the header comment for the exact
/// visibility rules, defaults and what is validated.
template <Scalar T>
Var<T> attention(const Var<T>& q, const Var<T>& k, const Var<T>& v, const AttentionArgs<T>& args) {
  detail::check_same_tape("attention", q, k);
  detail::check_same_tape("attention", q, v);
  const index_t H = args.n_heads, Hkv = args.n_kv_heads;
  if (H < 1 || Hkv < 1 || H % Hkv != 0)
    detail::fail<ShapeError>("attention: n_kv_heads ", Hkv, " must be ≥ 1 and divide n_heads ", H);
  if (q.cols() == 0 || q.cols() % H != 0)
    detail::fail<ShapeError>("attention: q ", q.shape(), " does not split into ", H, " heads of equal nonzero width");
  const index_t D = q.cols() / H, Nq = q.rows(), Nk = k.rows();
  if (k.cols() != Hkv * D || v.shape() != k.shape())
    detail::fail<ShapeError>("attention: k ", k.shape(), " and v ", v.shape(), " must both be [", Nk, ",", Hkv * D,
                             "] (", Hkv, " kv heads of width ", D, " for q ", q.shape(), " with ", H, " heads)");
  const ConstantKV<T>& cache = args.cache;
  const bool has_cache = cache.keys.numel() > 0 || cache.values.numel() > 0;
  const index_t Nc = has_cache ? cache.keys.rows() : 0;
  if (has_cache && (cache.keys.shape() != cache.values.shape() || cache.keys.cols() != Hkv * D))
    detail::fail<ShapeError>("attention: cache keys ", cache.keys.shape(), " and values ", cache.values.shape(),
                             " must both be [Nc,", Hkv * D, "] (", Hkv, " kv heads of width ", D, ")");
  if (!(std::isfinite(args.scale) && std::isfinite(args.softcap) && args.softcap >= 0))
    detail::fail<RangeError>("attention: scale ", args.scale, " must be finite and softcap ", args.softcap,
                             " finite and ≥ 0");
  if (args.window < 0) detail::fail<RangeError>("attention: window ", args.window, " is negative");

  Tape<T>& tape = q.tape();
  const bool default_group = args.groups.empty();
  if (!args.mask.empty()) {
    if (!default_group)
      detail::fail<ShapeError>("attention: a mask [Nq, Nc+Nk] works only with the default single group, not with "
                               "explicit groups (got ", args.groups.size(), ")");
    if (static_cast<index_t>(args.mask.size()) != Nq * (Nc + Nk))
      detail::fail<ShapeError>("attention: mask has ", args.mask.size(), " entries, expected [", Nq, ",", Nc + Nk,
                               "] = ", Nq * (Nc + Nk), " for q ", q.shape(), ", k ", k.shape(), " and ", Nc,
                               " cache rows");
    if (args.window > 0)
      detail::fail<RangeError>("attention: a mask replaces the window; pass window 0 (got ", args.window,
                               ") and encode the window in the mask");
  }
  const bool needs_positions = args.window > 0 && !default_group;
  detail::check_attention_positions("q_positions", args.q_positions, Nq, needs_positions);
  detail::check_attention_positions("k_positions", args.k_positions, Nk, needs_positions);
  detail::check_attention_positions("cache.positions", cache.positions, Nc, needs_positions);

  const AttentionGroup whole{0, Nq, 0, Nk, 0, Nc};
  const std::span<const AttentionGroup> groups = tape.copy(default_group ? std::span(&whole, 1) : args.groups);
  const auto n_groups = static_cast<index_t>(groups.size());
  for (index_t g = 0; g < n_groups; ++g) {
    const AttentionGroup& group = groups[static_cast<std::size_t>(g)];
    detail::check_attention_range(g, "q", group.q_begin, group.q_count, Nq, q.shape());
    detail::check_attention_range(g, "k", group.k_begin, group.k_count, Nk, k.shape());
    detail::check_attention_range(g, "cache", group.cache_begin, group.cache_count, Nc,
                                  has_cache ? cache.keys.shape() : Shape{0, Hkv * D});
    if (args.mask.empty() && args.rule == AttentionRule::causal && group.q_count > group.k_count)
      detail::fail<ShapeError>("attention: causal group ", g, " has ", group.q_count, " queries but only ",
                               group.k_count, " active keys (q ", q.shape(), ", k ", k.shape(),
                               "); causal attention needs q_count ≤ k_count — use bidirectional for queries that "
                               "see only the cache");
  }
  index_t* order = tape.template allocate<index_t>(n_groups);
  detail::check_attention_groups_disjoint(groups, order, &AttentionGroup::q_begin, &AttentionGroup::q_count, "q");
  detail::check_attention_groups_disjoint(groups, order, &AttentionGroup::k_begin, &AttentionGroup::k_count, "k");

  detail::AttentionLayout<T> layout;
  layout.n_heads = H;
  layout.n_kv_heads = Hkv;
  layout.head_dim = D;
  layout.scale = static_cast<T>(args.scale != 0 ? args.scale : 1.0 / std::sqrt(static_cast<double>(D)));
  layout.softcap = static_cast<T>(args.softcap);
  layout.groups = groups.data();
  layout.n_groups = n_groups;
  layout.cache_keys = has_cache ? cache.keys.data() : nullptr;
  layout.cache_values = has_cache ? cache.values.data() : nullptr;
  layout.causal = args.rule == AttentionRule::causal && args.mask.empty();

  detail::AttentionVisibility visibility;
  visibility.rule = args.rule;
  visibility.window = args.window;
  visibility.q_positions = {args.q_positions.empty() ? nullptr : args.q_positions.data(), Nc + Nk - Nq};
  visibility.k_positions = {args.k_positions.empty() ? nullptr : args.k_positions.data(), Nc};
  visibility.cache_positions = {cache.positions.empty() ? nullptr : cache.positions.data(), 0};
  visibility.mask = args.mask.empty() ? nullptr : args.mask.data();

  Var<T> y = tape.make_result("attention", Nq, H * D, {q, k, v});
  const Operand<T> qo = q.operand(), ko = k.operand(), vo = v.operand(), yo = y.operand();
  const bool stored = y.requires_grad();
  // P of (group g, head h) lives at prob_offset[g] + h·q_count·n_keys; without a backward pass only
  // one head per thread is ever needed.
  index_t* prob_offset = tape.template allocate<index_t>(n_groups);
  index_t total_probs = 0, slot_size = 0;
  for (index_t g = 0; g < n_groups; ++g) {
    const index_t head_probs = layout.groups[g].q_count * detail::attention_keys(layout.groups[g]);
    prob_offset[g] = total_probs;
    total_probs += H * head_probs;
    slot_size = std::max(slot_size, head_probs);
  }
  // Small calls (a decode step of a small model, unit tests) stay on one thread: opening a parallel
  // region costs more than their work.
  const bool parallel = static_cast<double>(total_probs) * static_cast<double>(D) >= detail::attention_parallel_work;
  const int n_slots = parallel ? detail::task_threads(layout.n_tasks()) : 1;
  // A parameter used twice shares one adjoint: if q's is also k's or v's, concurrent tasks could
  // add to the same rows, so that backward runs on one thread.
  const bool shared_adjoint = qo.active() && (qo.adjoint == ko.adjoint || qo.adjoint == vo.adjoint);
  T* probs = tape.template allocate<T>(stored ? total_probs : n_slots * slot_size);
  T* capped = stored && layout.softcap > 0 ? tape.template allocate<T>(total_probs) : nullptr;

  T* output = y.mutable_data();
  std::fill(output, output + Nq * H * D, T(0));
  const index_t n_tasks = layout.n_tasks(), per_kv = layout.heads_per_kv();
  detail::parallel_tasks(n_tasks, n_slots, [&](index_t task, int slot) {
    const index_t g = task / Hkv, kv_head = task % Hkv;
    const AttentionGroup& group = layout.groups[g];
    const index_t head_probs = group.q_count * detail::attention_keys(group);
    if (head_probs == 0) return;
    for (index_t head = kv_head * per_kv; head < (kv_head + 1) * per_kv; ++head) {
      const index_t at = prob_offset[g] + head * head_probs;
      T* head_p = stored ? probs + at : probs + slot * slot_size;
      detail::attention_forward_head(layout, visibility, group, head, qo, ko, vo, output, head_p,
                                     capped ? capped + at : nullptr);
    }
  });
  // Backward scratch (dS of one head per thread) and per-thread GEMM counters, which the threads
  // must not share; allocated here because the arena is not thread-safe.
  const int backward_slots = shared_adjoint ? 1 : n_slots;
  const bool needs_scratch = stored && (qo.active() || ko.active());
  T* scratch = needs_scratch ? tape.template allocate<T>(backward_slots * slot_size) : nullptr;
  TapeStats* thread_stats = stored ? tape.template allocate<TapeStats>(backward_slots) : nullptr;
  tape.record(y, [layout, qo, ko, vo, yo, prob_offset, probs, capped, scratch, slot_size, thread_stats, backward_slots,
                  stats = &tape.stats()] {
    std::fill(thread_stats, thread_stats + backward_slots, TapeStats{});
    const index_t n_tasks = layout.n_tasks(), Hkv = layout.n_kv_heads, per_kv = layout.heads_per_kv();
    detail::parallel_tasks(n_tasks, std::min(backward_slots, detail::task_threads(n_tasks)), [&](index_t task, int slot) {
      const index_t g = task / Hkv, kv_head = task % Hkv;
      const AttentionGroup& group = layout.groups[g];
      const index_t head_probs = group.q_count * detail::attention_keys(group);
      if (head_probs == 0) return;
      for (index_t head = kv_head * per_kv; head < (kv_head + 1) * per_kv; ++head) {
        const index_t at = prob_offset[g] + head * head_probs;
        detail::attention_backward_head(layout, group, head, qo, ko, vo, yo, probs + at, capped ? capped + at : nullptr,
                                        scratch ? scratch + slot * slot_size : nullptr, &thread_stats[slot]);
      }
    });
    for (int s = 0; s < backward_slots; ++s) {
      stats->backward_gemms += thread_stats[s].backward_gemms;
      stats->backward_gemm_flops += thread_stats[s].backward_gemm_flops;
    }
  });
  return y;
}

// The float and double instances a build may compile once (dca/core/instances.hpp).
#define DCA_ATTENTION_INSTANCES(kind, T) \
  kind Var<T> attention(const Var<T>&, const Var<T>&, const Var<T>&, const AttentionArgs<T>&);
DCA_EXTERN_INSTANCES(DCA_ATTENTION_INSTANCES)

}  // namespace dca
