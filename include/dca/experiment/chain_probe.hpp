// dca/experiment/chain_probe.hpp — a supervised diagnostic of the reasoning study: can the
// coprocessor compute a program's first worked step at all, and does the frozen decoder read it?
//
// The study's coprocessors, trained end to end on the general mixture as the paper trains them,
// learn no content on the variable-chain task (docs/coprocessor.md). This probe trains the same
// coprocessor on a task-specific target instead: after the bare prompt, its latent slots, read
// through its head (Coprocessor::written_logits), must write the program's first worked steps —
// "b=" after "…?d=" for d ← b ← k ← 5, one lookup. The probe's accuracy says whether the coprocessor
// can compute that lookup; the frozen decoder's bare answers with such latents (the token-mixture
// form) say whether it reads them as it reads written steps. A diagnostic, not the method.
//
//   const auto targets = dca::chain_step_targets(program, /*n_latents*/ 2, /*steps*/ 1);  // 'b', '='
//   dca::ChainStepLoss<float> step = dca::chain_step_loss(tape, decoder, coprocessor, context, programs, 1);
//   const auto written = dca::score_chain_steps(decoder, coprocessor, context, held_out, 1);
#pragma once

#include "dca/experiment/chain_evaluation.hpp"

#include <algorithm>
#include <span>
#include <string>
#include <vector>

namespace dca {

/// What latent slots 0..n_latents−1 should write for `program`: its first min(steps, hops − 1)
/// worked steps, byte by byte ("b=k=" for two steps of d ← b ← k ← 5), and −100 (no target) in the
/// slots beyond them — a one-hop program has no step before its answer. RangeError unless
/// n_latents ≥ 1 and steps ≥ 0.
inline std::vector<index_t> chain_step_targets(const ChainProgram& program, index_t n_latents, index_t steps) {
  if (n_latents < 1 || steps < 0)
    detail::fail<RangeError>("chain_step_targets: n_latents = ", n_latents, " and steps = ", steps,
                             " must be ≥ 1 and ≥ 0");
  const std::string written = program.worked_steps(std::min(steps, program.hops() - 1));
  std::vector<index_t> targets(static_cast<std::size_t>(n_latents), -100);
  for (std::size_t i = 0; i < written.size() && i < targets.size(); ++i)
    targets[i] = static_cast<unsigned char>(written[i]);
  return targets;
}

/// The probe's loss on one batch of programs.
template <Scalar T>
struct ChainStepLoss {
  Var<T> loss;        // mean cross-entropy of the written logits over the targeted slots
  index_t slots = 0;  // targeted slots in the batch
  index_t hits = 0;   // of them, those whose highest logit is their target
};

namespace detail {

// The coprocessor's written logits [B·N_L, V] at the latent slots after each program's bare prompt
// (context + "…?q="), inserted as chain_answers_augmented inserts them.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
Var<T> chain_written_logits(Tape<T>& tape, Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                            const ChainBatch& b) {
  const AugmentationPlan plan = AugmentationPlan::given(b.batch, b.seq_len, 1, b.prompt_ends);
  const AugmentationLayout layout =
      AugmentationLayout::of(plan, b.ids, coprocessor.n_latents(), coprocessor.config().positions, 0);
  const TokenPass<T> tokens = coprocessor.read_tokens(tape, decoder, b.ids, b.batch);
  return coprocessor.written_logits(tape, tokens.cache, layout.latents, tokens.residual);
}

inline std::vector<index_t> chain_batch_targets(std::span<const ChainProgram> programs, index_t n_latents,
                                                index_t steps) {
  std::vector<index_t> targets;
  for (const ChainProgram& p : programs) {
    const std::vector<index_t> slots = chain_step_targets(p, n_latents, steps);
    targets.insert(targets.end(), slots.begin(), slots.end());
  }
  return targets;
}

}  // namespace detail

/// The probe's loss over `programs` as one batch, each after context + its bare prompt: the mean
/// cross-entropy of the coprocessor's written logits against chain_step_targets(program, N_L,
/// steps). The decoder must be frozen (as in training). RangeError when no program has a step to
/// target (every one of one hop, or steps = 0).
template <Scalar T, index_t NumLatents, AheadObjective Objective>
ChainStepLoss<T> chain_step_loss(Tape<T>& tape, Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                                 const std::string& context, std::span<const ChainProgram> programs, index_t steps) {
  coprocessor.check_decoder(decoder, true);
  if (programs.empty()) detail::fail<RangeError>("chain_step_loss: no programs");
  const std::vector<index_t> targets = detail::chain_batch_targets(programs, coprocessor.n_latents(), steps);
  ChainStepLoss<T> out;
  out.slots = static_cast<index_t>(std::count_if(targets.begin(), targets.end(), [](index_t t) { return t >= 0; }));
  if (out.slots == 0)
    detail::fail<RangeError>("chain_step_loss: none of the ", programs.size(), " programs has a worked step to target (",
                             steps, " steps asked; one-hop programs have none)");
  const auto batches = detail::chain_batches(context, programs, static_cast<index_t>(programs.size()));
  const Var<T> logits = detail::chain_written_logits(tape, decoder, coprocessor, batches.front());
  for (std::size_t row = 0; row < targets.size(); ++row)
    if (targets[row] >= 0)
      out.hits += detail::argmax_row<T>(logits.value(), static_cast<index_t>(row)) == targets[row] ? 1 : 0;
  out.loss = cross_entropy(logits, std::span<const index_t>(targets));
  return out;
}

/// How many `programs` the coprocessor's latents write the first `steps` worked steps of, every
/// targeted slot's highest logit being its byte, `batch` programs per pass. RangeError for a
/// program with no step to target (one hop, or steps = 0).
template <Scalar T, index_t NumLatents, AheadObjective Objective>
ArithmeticScore score_chain_steps(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                                  const std::string& context, std::span<const ChainProgram> programs, index_t steps,
                                  index_t batch = 32) {
  ArithmeticScore score;
  Tape<T> tape;
  const index_t n_latents = coprocessor.n_latents();
  std::size_t first = 0;
  for (const detail::ChainBatch& b : detail::chain_batches(context, programs, batch)) {
    const auto these = programs.subspan(first, static_cast<std::size_t>(b.batch));
    first += these.size();
    const std::vector<index_t> targets = detail::chain_batch_targets(these, n_latents, steps);
    tape.reset();
    NoGradGuard<T> no_grad(tape);
    const Var<T> logits = detail::chain_written_logits(tape, decoder, coprocessor, b);
    for (index_t i = 0; i < b.batch; ++i) {
      bool all = true, any = false;
      for (index_t s = 0; s < n_latents; ++s) {
        const index_t row = i * n_latents + s, target = targets[static_cast<std::size_t>(row)];
        if (target < 0) continue;
        any = true;
        all = all && detail::argmax_row<T>(logits.value(), row) == target;
      }
      if (!any)
        detail::fail<RangeError>("score_chain_steps: a program of ", these[static_cast<std::size_t>(i)].hops(),
                                 " hops has no worked step to target with steps = ", steps);
      score.correct += all ? 1 : 0;
      ++score.total;
    }
  }
  return score;
}

}  // namespace dca
