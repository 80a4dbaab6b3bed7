// dca/train/schedule.hpp — learning-rate schedules: a function from the step index to the rate.
//
//   dca::WarmupCosine schedule{.max_lr = 3e-4, .min_lr = 3e-5, .warmup_steps = 100, .total_steps = 5000};
//   for (index_t step = 0; step < 5000; ++step) { ...; optimizer.step(schedule(step)); }
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <cmath>
#include <numbers>

namespace dca {

/// Linear warmup then cosine decay (nanoGPT's schedule). For the 0-based index s of the update
/// about to be applied, with W = warmup_steps and N = total_steps:
///   s < W:       max_lr·(s+1)/W             (max_lr/W at s = 0, max_lr at s = W−1: no step runs at 0)
///   W ≤ s < N:   min_lr + (max_lr − min_lr)·(1 + cos(π·(s−W)/(N−W)))/2   (max_lr at s = W)
///   s ≥ N:       min_lr                     (the cosine reaches min_lr exactly at s = N)
/// W = 0 starts the cosine at step 0.
struct WarmupCosine {
  double max_lr = 0;
  double min_lr = 0;
  index_t warmup_steps = 0;
  index_t total_steps = 0;

  /// The learning rate for update `step` (>= 0). Validates the fields first.
  double operator()(index_t step) const {
    validate();
    if (step < 0) detail::fail<RangeError>("WarmupCosine: step ", step, " is negative");
    if (step < warmup_steps) return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (step >= total_steps) return min_lr;
    const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + std::cos(std::numbers::pi * progress));
  }

  /// RangeError unless max_lr is finite and > 0, 0 <= min_lr <= max_lr and 0 <= warmup_steps <= total_steps.
  void validate() const {
    if (!std::isfinite(max_lr) || max_lr <= 0)
      detail::fail<RangeError>("WarmupCosine: max_lr = ", max_lr, " must be finite and > 0");
    if (!std::isfinite(min_lr) || min_lr < 0 || min_lr > max_lr)
      detail::fail<RangeError>("WarmupCosine: min_lr = ", min_lr, " must lie in [0, max_lr = ", max_lr, "]");
    if (warmup_steps < 0) detail::fail<RangeError>("WarmupCosine: warmup_steps = ", warmup_steps, " is negative");
    if (total_steps < warmup_steps)
      detail::fail<RangeError>("WarmupCosine: total_steps = ", total_steps,
                               " is less than warmup_steps = ", warmup_steps);
  }
};

}  // namespace dca
