// dca/coproc/layout.hpp — where every row of an augmented batch goes: an AugmentationPlan becomes
// the coprocessor's query groups, the frozen decoder's ahead groups, their positions and targets,
// and the prefix of the token cache each group reads. Index bookkeeping only — no tape, no
// weights — so it is tested on its own (tests/coproc/layout_test.cpp).
//
// For a batch of B sequences of T tokens, K points each, G = B·K groups, group g = b·K + j at
// point t = t_g of sequence b:
//   cache prefix   token rows [b·T, b·T + t + 1) of every layer's constant cache
//   coprocessor    rows [g·N_L, (g+1)·N_L): the N_L soft tokens, at positions t+1 .. t+N_L
//   decoder        rows [g·R, (g+1)·R), R = N_L + N_A − 1: [z_1 .. z_N_L, x_{t+1} .. x_{t+N_A−1}]
//                  the last latent predicts x_{t+1}, the ahead token x_{t+i} predicts x_{t+i+1}
#pragma once

#include "dca/autodiff/ops/attention.hpp"
#include "dca/cache/slots.hpp"
#include "dca/coproc/plan.hpp"

#include <span>
#include <vector>

namespace dca {

/// The coprocessor's queries: G groups of N_L soft tokens, each reading a prefix of a constant cache.
struct LatentQueries {
  index_t n_latents = 0;
  std::vector<AttentionGroup> groups;   // [G] soft-token rows g·N_L.. against the group's cache prefix
  std::vector<index_t> points;          // [G] position id of the slot each group is inserted after
  std::vector<index_t> tokens;          // [G] the token in that slot (the residual form's base)
  std::vector<index_t> soft_positions;  // [G·N_L] point + 1 + i: the soft tokens continue the prefix

  index_t size() const { return static_cast<index_t>(groups.size()); }

  /// Adds group g after `prefix_rows` cache rows starting at row `cache_begin`, the last of them at
  /// position `point` holding `token`.
  void add(index_t cache_begin, index_t prefix_rows, index_t point, index_t token) {
    const index_t g = size();
    groups.push_back({g * n_latents, n_latents, g * n_latents, n_latents, cache_begin, prefix_rows});
    points.push_back(point);
    tokens.push_back(token);
    for (index_t i = 0; i < n_latents; ++i) soft_positions.push_back(point + 1 + i);
  }

  /// One group reading a whole cache of `prefix_rows` rows (inference).
  static LatentQueries after(index_t n_latents, index_t prefix_rows, index_t point, index_t token) {
    LatentQueries queries{n_latents, {}, {}, {}, {}};
    queries.add(0, prefix_rows, point, token);
    return queries;
  }
};

/// The rows of one structured training pass (see the header comment).
struct AugmentationLayout {
  index_t n_latents = 0;                     // N_L
  index_t n_ahead = 0;                       // N_A
  LatentQueries latents;                     // step 2: the coprocessor's groups
  std::vector<index_t> ahead_ids;            // [G·(N_A−1)] x_{t+1} .. x_{t+N_A−1} of every group
  std::vector<AttentionGroup> ahead_groups;  // [G] step 3: the decoder's rows against the same prefixes
  std::vector<index_t> ahead_positions;      // [G·R]
  std::vector<index_t> targets;              // [G·R] the next token of the N_A predicting rows, −100 elsewhere

  index_t groups() const { return latents.size(); }
  index_t rows_per_group() const { return n_latents + n_ahead - 1; }
  /// The decoder row of group g that predicts its (n+1)-th ahead token, n = 0..N_A−1.
  index_t target_row(index_t g, index_t n) const { return g * rows_per_group() + n_latents - 1 + n; }

  /// The layout of `plan` over `ids` [B·T] (the plan must fit them: Coprocessor::loss checks).
  /// `positions` places the latents and the ahead tokens after them (LatentPositions).
  /// `oracle_lookahead` ≤ N_A extends the coprocessor's prefixes that many tokens past each point
  /// (CoprocessorConfig::oracle_lookahead, a diagnostic); the decoder's prefixes stay.
  static AugmentationLayout of(const AugmentationPlan& plan, std::span<const index_t> ids, index_t n_latents,
                               LatentPositions positions, index_t oracle_lookahead = 0) {
    const index_t T = plan.seq_len, R = n_latents + plan.n_ahead - 1, G = plan.groups();
    AugmentationLayout out;
    out.n_latents = n_latents;
    out.n_ahead = plan.n_ahead;
    out.latents.n_latents = n_latents;
    out.ahead_positions.resize(static_cast<std::size_t>(G * R));
    out.targets.assign(static_cast<std::size_t>(G * R), -100);
    const bool shifted = positions == LatentPositions::shifted;
    for (index_t b = 0; b < plan.batch; ++b)
      for (index_t j = 0; j < plan.points_per_sequence; ++j) {
        const index_t g = b * plan.points_per_sequence + j, t = plan.point(b, j), base = b * T;
        const auto token = [&](index_t i) { return ids[static_cast<std::size_t>(base + i)]; };
        out.latents.add(base, t + 1 + oracle_lookahead, t, token(t));
        out.ahead_groups.push_back({g * R, R, g * R, R, base, t + 1});
        for (index_t i = 1; i < plan.n_ahead; ++i) out.ahead_ids.push_back(token(t + i));
        const auto row = [&](index_t r) { return static_cast<std::size_t>(g * R + r); };
        for (index_t i = 0; i < n_latents; ++i) out.ahead_positions[row(i)] = shifted ? t + 1 + i : t;
        for (index_t i = 1; i < plan.n_ahead; ++i)
          out.ahead_positions[row(n_latents - 1 + i)] = t + i + (shifted ? n_latents : 0);
        for (index_t n = 0; n < plan.n_ahead; ++n) out.targets[row(n_latents - 1 + n)] = token(t + 1 + n);
      }
    return out;
  }
};

}  // namespace dca
