// dca/experiment/stats.hpp — summary statistics over repeated runs (seeds) of an experiment.
//
//   const std::vector<double> accuracies = {0.212, 0.227, 0.219};   // one per seed
//   const dca::MeanStd summary = dca::mean_std(accuracies);
//   // summary.mean ± summary.stddev, or ± summary.standard_error() for the mean's uncertainty
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <cmath>
#include <span>

namespace dca {

/// The mean and sample standard deviation of `count` values.
struct MeanStd {
  double mean = 0;
  double stddev = 0;  // with Bessel's correction (divides by count − 1); 0 for a single value
  index_t count = 0;

  /// The standard error of the mean, stddev / sqrt(count).
  double standard_error() const { return stddev / std::sqrt(static_cast<double>(count)); }
};

/// Mean and sample standard deviation, in two passes (deviations from the mean, so that values far
/// from zero do not lose their spread to cancellation). A NaN or infinite value propagates into
/// the result. RangeError when there are no values.
inline MeanStd mean_std(std::span<const double> values) {
  if (values.empty()) detail::fail<RangeError>("mean_std: no values (at least 1 is needed)");
  const auto count = static_cast<index_t>(values.size());
  double sum = 0;
  for (const double v : values) sum += v;
  const double mean = sum / static_cast<double>(count);
  double squares = 0;
  for (const double v : values) squares += (v - mean) * (v - mean);
  const double stddev = count > 1 ? std::sqrt(squares / static_cast<double>(count - 1)) : 0.0;
  return {mean, stddev, count};
}

}  // namespace dca
