// dca/coproc/evaluate.hpp — how far a coprocessor's latents carry: the held-out loss of the n-th
// token after the insertion point, n = 1..N_A, with the latents inserted and without them (the
// frozen decoder alone on the same tokens from the same prefixes).
//
//   const auto batches = corpus.validation_batches(8, 128, 20);
//   const dca::AheadEvaluation table = dca::evaluate_ahead(decoder, coprocessor, batches, /*points*/ 16, /*seed*/ 7);
//   table.augmented[n - 1] - table.baseline[n - 1];   // negative: the latents help at n
#pragma once

#include "dca/coproc/coprocessor.hpp"
#include "dca/data/corpus.hpp"

#include <span>
#include <vector>

namespace dca {

/// Per-position held-out losses: n-th token after the insertion point, n = 1..N_A (nats/token).
struct AheadEvaluation {
  std::vector<double> augmented;  // with the coprocessor's latents inserted
  std::vector<double> baseline;   // the frozen decoder alone, on the same tokens
  index_t points = 0;             // augmentation points evaluated

  double mean_augmented() const { return mean(augmented); }
  double mean_baseline() const { return mean(baseline); }

 private:
  static double mean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0 : s / static_cast<double>(v.size());
  }
};

/// Per-position losses of `batches` with and without augmentation: each sequence augmented at
/// `points` random points drawn from `seed` (0: at every point 0..T−1−N_A), the n-th token after
/// each point scored for n = 1..N_A (the coprocessor's current horizon). Nothing is trained; the
/// frozen baseline scores the same tokens from the same prefixes.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
AheadEvaluation evaluate_ahead(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                               std::span<const Batch> batches, index_t points, std::uint64_t seed) {
  const index_t n_ahead = coprocessor.config().n_ahead;
  AheadEvaluation out;
  out.augmented.assign(static_cast<std::size_t>(n_ahead), 0.0);
  out.baseline.assign(static_cast<std::size_t>(n_ahead), 0.0);
  Rng rng(seed);
  Tape<T> tape;
  for (const Batch& batch : batches) {
    const index_t length = batch.seq_len;
    const index_t k = points > 0 ? points : length - n_ahead;
    const auto& sequences = batch.inputs;
    const AugmentationPlan plan = AugmentationPlan::random(batch.batch, length, k, n_ahead, rng);
    tape.reset();
    NoGradGuard<T> no_grad(tape);
    const AugmentedLoss<T> augmented = coprocessor.loss(tape, decoder, sequences, plan);
    const Var<T> logits = decoder.logits(tape, sequences, batch.batch);
    std::vector<index_t> targets(sequences.size(), -100);
    for (index_t b = 0; b < batch.batch; ++b)
      for (index_t i = 0; i + 1 < length; ++i)
        targets[static_cast<std::size_t>(b * length + i)] = sequences[static_cast<std::size_t>(b * length + i + 1)];
    const Var<T> each = cross_entropy_per_token(logits, targets);
    const double groups = static_cast<double>(plan.groups());
    for (index_t n = 0; n < n_ahead; ++n) {
      out.augmented[static_cast<std::size_t>(n)] += augmented.per_position[static_cast<std::size_t>(n)] * groups;
      for (index_t b = 0; b < batch.batch; ++b)
        for (index_t j = 0; j < k; ++j)  // x[t+n+1] is predicted at row t+n (n counts from 0 here)
          out.baseline[static_cast<std::size_t>(n)] +=
              static_cast<double>(each.value()[b * length + plan.point(b, j) + n]);
    }
    out.points += plan.groups();
  }
  if (out.points == 0) detail::fail<UsageError>("evaluate_ahead: no batches to evaluate");
  for (index_t n = 0; n < n_ahead; ++n) {
    out.augmented[static_cast<std::size_t>(n)] /= static_cast<double>(out.points);
    out.baseline[static_cast<std::size_t>(n)] /= static_cast<double>(out.points);
  }
  return out;
}

}  // namespace dca
