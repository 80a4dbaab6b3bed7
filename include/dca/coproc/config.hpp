// dca/coproc/config.hpp — what a coprocessor is: the choices the paper leaves open, as enums, and
// the configuration that picks among them (defaults and the study behind them: docs/coprocessor.md).
#pragma once

#include "dca/autodiff/ops/attention.hpp"
#include "dca/cache/slots.hpp"
#include "dca/core/error.hpp"

#include <cstdint>

namespace dca {

/// What a latent is (the paper leaves it open; see docs/coprocessor.md for the study).
enum class LatentForm {
  residual,      // default: the insertion token's embedding + (coprocessor output)·Wᵀ, W starting at zero
  normed,        // the coprocessor's final hidden state after its final norm
  final_hidden,  // the coprocessor's last residual-stream state, before the final norm (paper-literal reading)
  token_mixture, // softmax(coprocessor logits)·E (the decoder's embedding table) + (coprocessor output)·Wᵀ,
                 // W starting at zero: each latent starts as the embedding of what the coprocessor would
                 // write next, so the decoder reads it as text — e.g. a worked step it can continue from
};

/// What the coprocessor reads of the decoder.
enum class CoprocessorInput {
  kv_cache,    // default: layer l attends to the decoder's layer-l cache
  last_layer,  // ablation: the decoder's last-layer activations, concatenated before the soft tokens
};

/// Where the latents come from.
enum class LatentSource {
  coprocessor,  // default
  pause,        // baseline: the soft tokens themselves, input-independent ("pause tokens")
};

struct CoprocessorConfig {
  index_t n_latents = 0;                    // N_L for Coprocessor<T, dynamic_latents> (≥ 1); 0 where the
                                            // type fixes it (the coprocessor then reports the type's)
  index_t n_ahead = 16;                     // N_A: ahead tokens predicted after the latents (paper: 16)
  LatentForm latent_form = LatentForm::residual;
  LatentPositions positions = LatentPositions::at_insertion_point;  // decoder-side positions of latents
  AttentionRule soft_token_rule = AttentionRule::causal;  // among the soft tokens (paper silent)
  CoprocessorInput input = CoprocessorInput::kv_cache;
  LatentSource source = LatentSource::coprocessor;
  bool init_from_decoder = true;            // false: fresh random weights (the paper's ablation)
  index_t lora_rank = 0;                    // 0: full fine-tuning; r > 0: LoRA adapters of rank r on the
                                            // attention and MLP projections, everything else frozen
  double lora_alpha = 0;                    // LoRA scale α/r; 0: α = r (scale 1)
  double soft_token_std = 0.02;             // soft tokens ~ N(0, std²)
  std::uint64_t seed = 0;                   // soft tokens, random init
  // The augmented prediction as a mixture with the frozen decoder's: g·p(x | latents) + (1 − g)·p(x),
  // g = σ(w·h + b) read from the coprocessor's output h at its last soft token, w = b = 0 at start
  // (g = ½). Trained by the mixture's likelihood, the latents' gradient comes from the points where
  // they compete with the frozen decoder, and the gate closes where they do not help.
  bool gated = false;
  index_t oracle_lookahead = 0;             // diagnostic, training and evaluation only: the coprocessor's
                                            // cache prefix reaches this many tokens past the insertion
                                            // point, so it sees x[t+1 ..]; its gain bounds what N_L
                                            // latents can tell the frozen decoder. 0: the method

  void validate() const {
    if (n_latents < 0) detail::fail<RangeError>("CoprocessorConfig: n_latents must be ≥ 0, got ", n_latents);
    if (n_ahead < 1) detail::fail<RangeError>("CoprocessorConfig: n_ahead must be ≥ 1, got ", n_ahead);
    if (lora_rank < 0) detail::fail<RangeError>("CoprocessorConfig: lora_rank must be ≥ 0, got ", lora_rank);
    if (!(soft_token_std >= 0)) detail::fail<RangeError>("CoprocessorConfig: soft_token_std must be ≥ 0, got ", soft_token_std);
    if (gated && source == LatentSource::pause)
      detail::fail<UsageError>("CoprocessorConfig: a gated coprocessor reads its gate from the coprocessor's output; "
                               "pause tokens have none");
    if (oracle_lookahead < 0 || oracle_lookahead > n_ahead)
      detail::fail<RangeError>("CoprocessorConfig: oracle_lookahead = ", oracle_lookahead, " is outside [0, N_A = ",
                               n_ahead, "]: the prefix may reach at most the ahead tokens the sequence holds");
  }
};

}  // namespace dca
