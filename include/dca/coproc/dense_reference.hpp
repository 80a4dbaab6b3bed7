// dca/coproc/dense_reference.hpp — the coprocessor's training loss as the paper writes it: per
// batch row, one extended sequence [x_0 .. x_{T−1}, group_1, ..., group_K] with a boolean
// attention mask (and the matching mask for the coprocessor's soft tokens). It costs
// O((T + K·(N_L+N_A))²) per row and exists as a test oracle: tests/coproc/coprocessor_test.cpp
// holds Coprocessor::loss equal to it, loss and gradients, so the umbrella header leaves it out.
//
//   const auto dense = dca::dense_reference_loss(coprocessor, tape, decoder, ids, plan);
#pragma once

#include "dca/coproc/coprocessor.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace dca {

namespace detail {

// `mask` [queries, n_keys] with the keys farther back than the window hidden too, for window
// layers; empty without a window. Keys are the cache rows (`cache_positions`) then the active rows
// (`key_positions`).
inline std::vector<std::uint8_t> windowed(const std::vector<std::uint8_t>& mask, std::span<const index_t> q_positions,
                                          std::span<const index_t> cache_positions,
                                          std::span<const index_t> key_positions, index_t n_keys, index_t window) {
  if (window <= 0) return {};
  std::vector<std::uint8_t> out = mask;
  for (std::size_t q = 0; q < q_positions.size(); ++q)
    for (index_t c = 0; c < n_keys; ++c) {
      const auto ci = static_cast<std::size_t>(c);
      const index_t key =
          ci < cache_positions.size() ? cache_positions[ci] : key_positions[ci - cache_positions.size()];
      if (q_positions[q] - key >= window) out[q * static_cast<std::size_t>(n_keys) + ci] = 0;
    }
  return out;
}

}  // namespace detail

/// Coprocessor::loss computed with dense masks: the same value and gradients, by another route.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
AugmentedLoss<T> dense_reference_loss(Coprocessor<T, NumLatents, Objective>& coprocessor, Tape<T>& tape,
                                      Decoder<T>& decoder, std::span<const index_t> ids, const AugmentationPlan& plan) {
  coprocessor.check_decoder(decoder, true);
  coprocessor.check_plan(ids, plan);
  if (coprocessor.config().gated)
    detail::fail<UsageError>("dense_reference_loss: the paper's formulation has no gate; use an ungated coprocessor");
  if (coprocessor.config().input != CoprocessorInput::kv_cache)
    detail::fail<UsageError>("dense_reference_loss: implemented for the kv_cache input only");
  const index_t lookahead = coprocessor.config().oracle_lookahead;  // an oracle's prefix runs past t
  const index_t n_latents = coprocessor.n_latents();
  const AugmentationLayout layout = AugmentationLayout::of(plan, ids, n_latents, coprocessor.config().positions, lookahead);
  const index_t T_ = plan.seq_len, K = plan.points_per_sequence, R = layout.rows_per_group(), S = K * n_latents;
  const index_t window = decoder.config().sliding_window;
  std::vector<Var<T>> all_logits;
  for (index_t b = 0; b < plan.batch; ++b) {
    const auto seq = ids.subspan(static_cast<std::size_t>(b * T_), static_cast<std::size_t>(T_));
    const auto rows = [&](const auto& v, index_t per_group) {  // sequence b's slice of a per-group list
      return std::span(v).subspan(static_cast<std::size_t>(b * K * per_group), static_cast<std::size_t>(K * per_group));
    };
    // Coprocessor: this row's decoder K/V as the cache segment; all K·N_L soft tokens as one query
    // block, group j seeing cache 0..t_j and its own soft tokens.
    const auto tokens = Coprocessor<T, NumLatents, Objective>::read_tokens(tape, decoder, seq, 1);
    const std::span<const index_t> token_positions = tokens.cache.front().positions;  // 0..T−1
    LatentQueries queries{n_latents, {}, {}, {}, {}};
    std::vector<std::uint8_t> soft_mask(static_cast<std::size_t>(S * (T_ + S)), 0);
    for (index_t j = 0; j < K; ++j) {
      const index_t t = plan.point(b, j);
      queries.add(0, t + 1 + lookahead, t, seq[static_cast<std::size_t>(t)]);
      for (index_t i = 0; i < n_latents; ++i) {
        const index_t q = j * n_latents + i;
        for (index_t c = 0; c <= t + lookahead; ++c) soft_mask[static_cast<std::size_t>(q * (T_ + S) + c)] = 1;
        const index_t last = coprocessor.config().soft_token_rule == AttentionRule::causal ? i : n_latents - 1;
        for (index_t i2 = 0; i2 <= last; ++i2)
          soft_mask[static_cast<std::size_t>(q * (T_ + S) + T_ + j * n_latents + i2)] = 1;
      }
    }
    const auto soft_window_mask =
        detail::windowed(soft_mask, queries.soft_positions, token_positions, queries.soft_positions, T_ + S, window);
    const Var<T> z = coprocessor.latents(tape, decoder, tokens.cache, queries, {}, {soft_mask, soft_window_mask});

    // Decoder: one sequence [tokens][group_1]...[group_K] with the paper's mask.
    const index_t N = T_ + K * R;
    std::vector<index_t> positions(token_positions.begin(), token_positions.end());
    const auto group_positions = rows(layout.ahead_positions, R);
    positions.insert(positions.end(), group_positions.begin(), group_positions.end());
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(N * N), 0);
    for (index_t i = 0; i < T_; ++i)
      for (index_t c = 0; c <= i; ++c) mask[static_cast<std::size_t>(i * N + c)] = 1;
    for (index_t j = 0; j < K; ++j) {
      const index_t t = plan.point(b, j);
      for (index_t r = 0; r < R; ++r) {
        const index_t q = T_ + j * R + r;
        for (index_t c = 0; c <= t; ++c) mask[static_cast<std::size_t>(q * N + c)] = 1;
        for (index_t r2 = 0; r2 <= r; ++r2) mask[static_cast<std::size_t>(q * N + T_ + j * R + r2)] = 1;
      }
    }
    const auto window_mask = detail::windowed(mask, positions, {}, positions, N, window);
    DecoderInput<T> in;
    in.embeddings = concat_rows(
        {decoder.embed(tape, seq),
         coprocessor.ahead_inputs(tape, decoder, z, rows(layout.ahead_ids, coprocessor.config().n_ahead - 1), K)});
    in.positions = positions;
    in.mask = mask;
    in.window_mask = window_mask;
    all_logits.push_back(slice_rows(decoder.forward(tape, in).logits, T_, K * R));
  }
  return coprocessor.score(concat_rows(std::span<const Var<T>>(all_logits)), layout);
}

}  // namespace dca
