// dca/coproc/plan.hpp — where a batch is augmented: K insertion points per sequence.
//
// A point t means: the cache holds tokens 0..t, the latents are inserted after slot t, and the
// ahead tokens x[t+1..t+N_A] are predicted (the last latent predicts x[t+1]). So a point needs
// 0 ≤ t ≤ T − 1 − N_A.
#pragma once

#include "dca/core/random.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

namespace dca {

struct AugmentationPlan {
  index_t batch = 0;                 // sequences
  index_t seq_len = 0;               // tokens per sequence, T
  index_t points_per_sequence = 0;   // K
  index_t n_ahead = 0;               // N_A
  std::vector<index_t> points;       // [batch·K]: sequence b's points at b·K .. b·K+K−1, ascending

  index_t point(index_t b, index_t j) const { return points[static_cast<std::size_t>(b * points_per_sequence + j)]; }
  index_t groups() const { return batch * points_per_sequence; }

  /// Part i of `parts`: each sequence's points j ≡ i (mod parts), ⌈(K − i)/parts⌉ of them, so that
  /// the parts together are the plan and, the points being sorted, each part's cache prefixes are
  /// about as long as the others' (equal work). RangeError unless 0 ≤ i < parts ≤ K.
  AugmentationPlan part(index_t i, index_t parts) const {
    if (parts < 1 || parts > points_per_sequence || i < 0 || i >= parts)
      detail::fail<RangeError>("AugmentationPlan::part: part ", i, " of ", parts, " of a plan with K = ",
                               points_per_sequence, " points per sequence (1 ≤ parts ≤ K)");
    const index_t count = (points_per_sequence - i + parts - 1) / parts;
    AugmentationPlan out{batch, seq_len, count, n_ahead, {}};
    for (index_t b = 0; b < batch; ++b)
      for (index_t j = i; j < points_per_sequence; j += parts) out.points.push_back(point(b, j));
    return out;
  }

  /// K distinct points per sequence, uniform over 0..T−1−N_A, drawn from `rng`.
  static AugmentationPlan random(index_t batch, index_t seq_len, index_t k, index_t n_ahead, Rng& rng) {
    check_sizes(batch, seq_len, k, n_ahead);
    AugmentationPlan plan{batch, seq_len, k, n_ahead, {}};
    const index_t available = seq_len - n_ahead;
    std::vector<index_t> all(static_cast<std::size_t>(available));
    for (index_t b = 0; b < batch; ++b) {
      for (index_t i = 0; i < available; ++i) all[static_cast<std::size_t>(i)] = i;
      for (index_t i = 0; i < k; ++i)  // partial Fisher–Yates: the first k are a uniform sample
        std::swap(all[static_cast<std::size_t>(i)], all[static_cast<std::size_t>(i + rng.below(available - i))]);
      std::sort(all.begin(), all.begin() + k);
      plan.points.insert(plan.points.end(), all.begin(), all.begin() + k);
    }
    return plan;
  }

  /// K distinct points per sequence of ids [batch·T], taking first the points `preferred(sequence,
  /// t)` accepts (a uniform sample of them when more than K) and filling the rest uniformly from the
  /// others: where a study wants the coprocessor trained more often, without leaving the others.
  template <class Predicate>
  static AugmentationPlan preferring(index_t batch, index_t seq_len, index_t k, index_t n_ahead,
                                     std::span<const index_t> ids, Predicate&& preferred, Rng& rng) {
    check_sizes(batch, seq_len, k, n_ahead);
    if (static_cast<index_t>(ids.size()) != batch * seq_len)
      detail::fail<RangeError>("AugmentationPlan::preferring: ", ids.size(), " token ids for ", batch,
                               " sequences of ", seq_len);
    AugmentationPlan plan{batch, seq_len, k, n_ahead, {}};
    const index_t available = seq_len - n_ahead;
    std::vector<index_t> order(static_cast<std::size_t>(available));
    for (index_t b = 0; b < batch; ++b) {
      const std::span<const index_t> sequence = ids.subspan(static_cast<std::size_t>(b * seq_len),
                                                            static_cast<std::size_t>(seq_len));
      for (index_t t = 0; t < available; ++t) order[static_cast<std::size_t>(t)] = t;
      const auto rest =
          std::stable_partition(order.begin(), order.end(), [&](index_t t) { return preferred(sequence, t); });
      const auto first = static_cast<index_t>(rest - order.begin());
      // Partial Fisher–Yates within each part: the preferred ones, then the others.
      for (index_t i = 0; i < k; ++i) {
        const index_t end = i < first ? first : available;
        std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(i + rng.below(end - i))]);
      }
      std::sort(order.begin(), order.begin() + k);
      plan.points.insert(plan.points.end(), order.begin(), order.begin() + k);
    }
    return plan;
  }

  /// The K drawable points of each sequence with the highest `scores` [batch·T] (one per token
  /// slot; ties in random order, so equal scores draw uniformly): where a scorer says latents can
  /// pay, e.g. a deeper decoder's advantage over the frozen one. RangeError for a score that is NaN.
  static AugmentationPlan top_scored(index_t batch, index_t seq_len, index_t k, index_t n_ahead,
                                     std::span<const double> scores, Rng& rng) {
    check_sizes(batch, seq_len, k, n_ahead);
    if (static_cast<index_t>(scores.size()) != batch * seq_len)
      detail::fail<RangeError>("AugmentationPlan::top_scored: ", scores.size(), " scores for ", batch, " sequences of ",
                               seq_len);
    for (std::size_t i = 0; i < scores.size(); ++i)
      if (std::isnan(scores[i])) detail::fail<RangeError>("AugmentationPlan::top_scored: score ", i, " is NaN");
    AugmentationPlan plan{batch, seq_len, k, n_ahead, {}};
    const index_t available = seq_len - n_ahead;
    std::vector<index_t> order(static_cast<std::size_t>(available));
    for (index_t b = 0; b < batch; ++b) {
      for (index_t t = 0; t < available; ++t) order[static_cast<std::size_t>(t)] = t;
      for (index_t i = available - 1; i > 0; --i)  // a random order first: ties fall in it
        std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(rng.below(i + 1))]);
      const auto score = [&](index_t t) { return scores[static_cast<std::size_t>(b * seq_len + t)]; };
      std::stable_sort(order.begin(), order.end(), [&](index_t x, index_t y) { return score(x) > score(y); });
      std::sort(order.begin(), order.begin() + k);
      plan.points.insert(plan.points.end(), order.begin(), order.begin() + k);
    }
    return plan;
  }

  /// Given points ([batch·K], each sequence's K points), validated.
  static AugmentationPlan given(index_t batch, index_t seq_len, index_t n_ahead, std::vector<index_t> points) {
    if (batch < 1 || points.empty() || static_cast<index_t>(points.size()) % batch != 0)
      detail::fail<RangeError>("AugmentationPlan: ", points.size(), " points do not split into ", batch,
                               " sequences of K points each");
    const index_t k = static_cast<index_t>(points.size()) / batch;
    check_sizes(batch, seq_len, k, n_ahead);
    for (std::size_t i = 0; i < points.size(); ++i)
      if (points[i] < 0 || points[i] > seq_len - 1 - n_ahead)
        detail::fail<RangeError>("AugmentationPlan: point ", points[i], " (sequence ", static_cast<index_t>(i) / k,
                                 ") is outside 0..", seq_len - 1 - n_ahead, ": with T = ", seq_len, " and N_A = ",
                                 n_ahead, " the ahead tokens would run past the sequence");
    return {batch, seq_len, k, n_ahead, std::move(points)};
  }

 private:
  static void check_sizes(index_t batch, index_t seq_len, index_t k, index_t n_ahead) {
    if (batch < 1 || k < 1 || n_ahead < 1)
      detail::fail<RangeError>("AugmentationPlan: batch ", batch, ", K ", k, " and N_A ", n_ahead, " must be ≥ 1");
    if (seq_len - n_ahead < k)
      detail::fail<RangeError>("AugmentationPlan: a sequence of ", seq_len, " tokens has ",
                               std::max<index_t>(seq_len - n_ahead, 0), " insertion points with ", n_ahead,
                               " ahead tokens after them; K = ", k, " do not fit");
  }
};

}  // namespace dca
