// dca/experiment/compute.hpp — the FLOP model behind the compute comparison of the reproduction
// (docs/results.md): one augmentation against decoding the same number of extra tokens, and the
// training steps of the decoder and the coprocessor.
//
//   const double augment = dca::augmentation_flops(decoder.config(), /*N_L*/ 16, /*context*/ 64);
//   const double decode = dca::decoding_flops(decoder.config(), /*tokens*/ 16, /*context*/ 64);
//
// FLOPs count the matrix products only (2 per multiply-add): the projections, the MLP, the
// attention scores and weighted sums, and the output head where logits are computed. Norms,
// rotary embeddings, softmax and element-wise work are left out (a few percent at these widths);
// sliding windows are ignored (every key is counted).
#pragma once

#include "dca/nn/config.hpp"

namespace dca {

/// One forward pass of `config` over `rows` new positions after `context` cached ones, causal
/// among themselves (new row i sees context + i + 1 keys), with logits for `logit_rows` rows.
inline double forward_flops(const DecoderConfig& config, index_t rows, index_t context, index_t logit_rows) {
  if (rows < 0 || context < 0 || logit_rows < 0 || logit_rows > rows)
    detail::fail<RangeError>("forward_flops: rows ", rows, ", context ", context, " and logit_rows ", logit_rows,
                             " must be ≥ 0 with logit_rows ≤ rows");
  const auto d = static_cast<double>(config.hidden_size), hd = static_cast<double>(config.resolved_head_dim());
  const auto heads = static_cast<double>(config.n_heads), kv_heads = static_cast<double>(config.n_kv_heads);
  const auto mlp = static_cast<double>(config.intermediate_size), n = static_cast<double>(rows);
  const double projections = 2 * d * heads * hd + 2 * 2 * d * kv_heads * hd + 2 * heads * hd * d;
  const double mlp_flops = (config.gated_mlp ? 3 : 2) * 2 * d * mlp;
  const double keys = n * static_cast<double>(context) + n * (n + 1) / 2;  // summed over the new rows
  const double attention = 2 * 2 * heads * hd * keys;                       // scores and weighted sums
  return static_cast<double>(config.n_layers) * (n * (projections + mlp_flops) + attention) +
         static_cast<double>(logit_rows) * 2 * d * static_cast<double>(config.vocab_size);
}

/// One augmentation after a prefix of `context` tokens: the coprocessor (the decoder's
/// architecture) over N_L soft tokens, the residual form's latent projection, then the decoder
/// over the N_L latents with logits for the last one.
inline double augmentation_flops(const DecoderConfig& config, index_t n_latents, index_t context, bool residual = true) {
  const auto d = static_cast<double>(config.hidden_size);
  return forward_flops(config, n_latents, context, 0) + (residual ? 2 * d * d * static_cast<double>(n_latents) : 0.0) +
         forward_flops(config, n_latents, context, 1);
}

/// Decoding `tokens` new tokens one at a time after `context` cached ones, with logits for each.
inline double decoding_flops(const DecoderConfig& config, index_t tokens, index_t context) {
  double total = 0;
  for (index_t i = 0; i < tokens; ++i) total += forward_flops(config, 1, context + i, 1);
  return total;
}

/// One pretraining step on `batch` sequences of `seq_len` tokens: forward and backward, the
/// backward counted as twice the forward (activation and weight gradients).
inline double pretraining_step_flops(const DecoderConfig& config, index_t batch, index_t seq_len) {
  return 3 * static_cast<double>(batch) * forward_flops(config, seq_len, 0, seq_len);
}

/// One structured coprocessor training step (docs/coprocessor.md), points at their mean position
/// (uniform over 0..T−1−N_A): the token pass forward only (constants); the coprocessor over B·K
/// groups of N_L soft tokens, forward and backward (3×); the frozen decoder over the groups'
/// N_L + N_A − 1 rows, forward and activation gradients only — its weights get none (2×).
inline double coprocessor_step_flops(const DecoderConfig& config, index_t batch, index_t seq_len, index_t points,
                                     index_t n_latents, index_t n_ahead) {
  const index_t mean_prefix = (seq_len - 1 - n_ahead) / 2 + 1;  // cache rows 0..t at the mean point
  const index_t rows = n_latents + n_ahead - 1;
  const double groups = static_cast<double>(batch) * static_cast<double>(points);
  return static_cast<double>(batch) * forward_flops(config, seq_len, 0, 0) +
         groups * 3 * forward_flops(config, n_latents, mean_prefix, 0) +
         groups * 2 * forward_flops(config, rows, mean_prefix, n_ahead);
}

}  // namespace dca
