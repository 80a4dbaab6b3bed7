// dca/coproc/objective.hpp — how the losses of the N_A ahead tokens after the latents combine into
// the training loss. An objective is a policy type with `weights(n_ahead)`: one non-negative weight
// per ahead position n = 1..N_A, summing to 1. Per-position losses are reported regardless.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <cmath>
#include <concepts>
#include <vector>

namespace dca {

/// A policy for the ahead-token loss: weights over ahead positions n = 1..N_A.
template <class O>
concept AheadObjective = requires(const O& objective, index_t n_ahead) {
  { objective.weights(n_ahead) } -> std::same_as<std::vector<double>>;
};

/// The paper's objective: the mean cross-entropy of the N_A ahead tokens.
struct UniformAhead {
  std::vector<double> weights(index_t n_ahead) const {
    return std::vector<double>(static_cast<std::size_t>(n_ahead), 1.0 / static_cast<double>(n_ahead));
  }
};

/// Nearer tokens count more: w_n ∝ decay^(n−1), normalised to sum to 1.
struct GeometricAhead {
  double decay = 0.8;  // in (0, 1]; 1 is uniform

  std::vector<double> weights(index_t n_ahead) const {
    if (!(decay > 0 && decay <= 1)) detail::fail<RangeError>("GeometricAhead: decay must lie in (0, 1], got ", decay);
    std::vector<double> w(static_cast<std::size_t>(n_ahead));
    double total = 0, power = 1;
    for (auto& x : w) {
      x = power;
      total += power;
      power *= decay;
    }
    for (auto& x : w) x /= total;
    return w;
  }
};

}  // namespace dca
