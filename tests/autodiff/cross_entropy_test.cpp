// Specifications of the fused softmax cross-entropy (dca/autodiff/ops/cross_entropy.hpp): values
// against −log(softmax) computed in plain loops, PyTorch's reduction and ignore_index semantics,
// gradients against finite differences, and the error messages of bad targets and weights.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/cross_entropy.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

namespace {

using dca::test::converted;

using dca::index_t;
using dca::Shape;
using dca::Tensor;
using dca::test::random_tensor;

constexpr index_t ignored = -100;

// −log(softmax(logits[r,:])[target]) by the definition (the test logits are moderate, so the
// unshifted exponentials cannot overflow).
double reference_nll(const Tensor<double>& logits, index_t r, index_t target) {
  double total = 0;
  for (index_t c = 0; c < logits.cols(); ++c) total += std::exp(logits(r, c));
  return -std::log(std::exp(logits(r, target)) / total);
}

// PyTorch's F.cross_entropy with ignore_index −100 and per-row weights (empty: all 1).
double reference_loss(const Tensor<double>& logits, const std::vector<index_t>& targets,
                      const std::vector<double>& weights, dca::Reduction reduction) {
  double total = 0;
  double weight_sum = 0;
  for (index_t r = 0; r < logits.rows(); ++r) {
    const index_t target = targets[static_cast<std::size_t>(r)];
    if (target == ignored) continue;
    const double weight = weights.empty() ? 1.0 : weights[static_cast<std::size_t>(r)];
    total += weight * reference_nll(logits, r, target);
    weight_sum += weight;
  }
  return reduction == dca::Reduction::sum ? total : total / weight_sum;
}

}  // namespace

TEST_CASE("cross_entropy equals the mean of minus log softmax at the targets") {
  const Tensor<double> logits = random_tensor(Shape{4, 7}, 1, -3.0, 3.0);
  const std::vector<index_t> targets{6, 0, 3, 3};
  dca::Tape<double> tape;
  auto loss = dca::cross_entropy(tape.constant(logits), targets);
  REQUIRE(loss.shape() == Shape{1, 1});
  double expected = 0;
  for (index_t r = 0; r < 4; ++r) expected += reference_nll(logits, r, targets[static_cast<std::size_t>(r)]) / 4;
  CHECK(loss.item() == doctest::Approx(expected).epsilon(1e-13));
}

TEST_CASE("cross_entropy sum and mean reductions skip ignored rows and weight each row as PyTorch does") {
  const Tensor<double> logits = random_tensor(Shape{5, 6}, 2, -3.0, 3.0);
  const std::vector<index_t> targets{1, ignored, 5, 0, ignored};
  const std::vector<double> weights{0.5, 7.0, 2.0, 1.25, 3.0};
  for (dca::Reduction reduction : {dca::Reduction::mean, dca::Reduction::sum}) {
    for (bool weighted : {false, true}) {
      CAPTURE(reduction == dca::Reduction::sum);
      CAPTURE(weighted);
      const std::vector<double> used = weighted ? weights : std::vector<double>{};
      dca::Tape<double> tape;
      auto loss = dca::cross_entropy(tape.constant(logits), targets, {.reduction = reduction}, used);
      CHECK(loss.item() == doctest::Approx(reference_loss(logits, targets, used, reduction)).epsilon(1e-13));
    }
  }
  // The ignored rows' weights (7 and 3) are not in the mean's denominator.
  const double weighted_sum = 0.5 * reference_nll(logits, 0, 1) + 2.0 * reference_nll(logits, 2, 5) +
                              1.25 * reference_nll(logits, 3, 0);
  dca::Tape<double> tape;
  auto mean = dca::cross_entropy(tape.constant(logits), targets, {}, weights);
  CHECK(mean.item() == doctest::Approx(weighted_sum / 3.75).epsilon(1e-13));
}

TEST_CASE("cross_entropy honours a custom ignore_index") {
  const Tensor<double> logits = random_tensor(Shape{3, 4}, 3, -3.0, 3.0);
  const std::vector<index_t> targets{2, 0, 1};  // 0 is the ignore index here, like a padding token
  dca::Tape<double> tape;
  auto loss = dca::cross_entropy(tape.constant(logits), targets, {.ignore_index = 0});
  CHECK(loss.item() == doctest::Approx((reference_nll(logits, 0, 2) + reference_nll(logits, 2, 1)) / 2).epsilon(1e-13));
}

TEST_CASE("cross_entropy gradient of logits matches finite differences under mean and sum, with ignored rows and "
          "weights") {
  const std::vector<index_t> small_targets{2, ignored, 0};
  const std::vector<double> small_weights{0.5, 4.0, 1.5};
  const std::vector<index_t> large_targets{9, 0, ignored, 3, 3, ignored, 11};
  const std::vector<double> large_weights{1.0, 0.25, 2.0, 3.0, 0.0, 1.0, 0.75};
  for (dca::Reduction reduction : {dca::Reduction::mean, dca::Reduction::sum}) {
    for (bool weighted : {false, true}) {
      CAPTURE(reduction == dca::Reduction::sum);
      CAPTURE(weighted);
      const dca::CrossEntropyOptions options{.reduction = reduction};
      const std::vector<double> small_w = weighted ? small_weights : std::vector<double>{};
      const std::vector<double> large_w = weighted ? large_weights : std::vector<double>{};
      auto small = [&](auto logits) { return dca::cross_entropy(logits, small_targets, options, small_w); };
      auto large = [&](auto logits) { return dca::cross_entropy(logits, large_targets, options, large_w); };
      CHECK(dca::check_gradients(small, random_tensor(Shape{3, 4}, 4, -2.0, 2.0)));
      CHECK(dca::check_gradients(large, random_tensor(Shape{7, 12}, 5, -2.0, 2.0)));
    }
  }
}

TEST_CASE("cross_entropy mean over a batch whose targets are all ignored is 0 with zero gradient") {
  const std::vector<index_t> all_ignored{ignored, ignored, ignored};
  dca::Tape<double> tape;
  auto logits = tape.variable(random_tensor(Shape{3, 5}, 6));
  auto loss = dca::cross_entropy(logits, all_ignored);
  CHECK(loss.item() == 0);
  tape.backward(loss);
  for (index_t i = 0; i < logits.numel(); ++i) CHECK(logits.grad()[i] == 0);

  // Zero weights on every counted row leave the mean's denominator at 0 too.
  const std::vector<index_t> targets{1, ignored, 4};
  const std::vector<double> zero_weights{0.0, 1.0, 0.0};
  dca::Tape<double> weighted_tape;
  auto weighted_logits = weighted_tape.variable(random_tensor(Shape{3, 5}, 7));
  auto weighted_loss = dca::cross_entropy(weighted_logits, targets, {}, zero_weights);
  CHECK(weighted_loss.item() == 0);
  weighted_tape.backward(weighted_loss);
  for (index_t i = 0; i < weighted_logits.numel(); ++i) CHECK(weighted_logits.grad()[i] == 0);
}

TEST_CASE("cross_entropy stays finite and shift-invariant for very large logits") {
  Tensor<double> logits = random_tensor(Shape{2, 5}, 8, -3.0, 3.0);
  Tensor<double> shifted = logits;
  for (index_t i = 0; i < shifted.numel(); ++i) shifted[i] += 1e4;  // exp(1e4) overflows without the max shift
  const std::vector<index_t> targets{4, 1};
  dca::Tape<double> tape;
  auto reference = dca::cross_entropy(tape.constant(logits), targets);
  auto large = dca::cross_entropy(tape.constant(shifted), targets);
  CHECK(std::isfinite(large.item()));
  CHECK(large.item() == doctest::Approx(reference.item()).epsilon(1e-9));
}

TEST_CASE("cross_entropy in float agrees with double") {
  const Tensor<double> logits = random_tensor(Shape{6, 50}, 9, -4.0, 4.0);
  const std::vector<index_t> targets{49, 0, ignored, 17, 17, 3};
  const std::vector<double> weights{1.0, 2.0, 1.0, 0.5, 1.5, 1.0};
  const std::vector<float> weights_float(weights.begin(), weights.end());
  const Tensor<float> logits_float = converted<float>(logits);
  dca::Tape<float> tape;
  auto loss = dca::cross_entropy(tape.constant(logits_float), targets, {}, weights_float);
  CHECK(loss.item() == doctest::Approx(reference_loss(logits, targets, weights, dca::Reduction::mean)).epsilon(1e-6));
}

TEST_CASE("cross_entropy over a large vocabulary takes the threaded path with the same values and gradients") {
  const index_t vocab = index_t{1} << 15;  // 4·2^15 logits: above the threshold for threading rows
  const Tensor<double> logits = random_tensor(Shape{4, vocab}, 10, -5.0, 5.0);
  const std::vector<index_t> targets{vocab - 1, ignored, 0, 12345};
  dca::Tape<double> tape;
  auto loss = dca::cross_entropy(tape.constant(logits), targets);
  CHECK(loss.item() == doctest::Approx(reference_loss(logits, targets, {}, dca::Reduction::mean)).epsilon(1e-12));
  dca::GradCheckOptions sampled;
  sampled.max_elements_per_input = 40;
  CHECK(dca::check_gradients(sampled, [&](auto x) { return dca::cross_entropy(x, targets); }, logits));
  CHECK(dca::check_gradients(sampled, [&](auto x) { return dca::cross_entropy_per_token(x, targets); }, logits));
}

TEST_CASE("cross_entropy gives a constant input no adjoint and an active one the softmax minus one-hot") {
  const Tensor<double> logits = random_tensor(Shape{2, 3}, 11);
  const std::vector<index_t> targets{2, 0};
  dca::Tape<double> tape;
  CHECK_FALSE(dca::cross_entropy(tape.constant(logits), targets).requires_grad());
  auto active = tape.variable(logits);
  tape.backward(dca::cross_entropy(active, targets, {.reduction = dca::Reduction::sum}));
  for (index_t r = 0; r < 2; ++r) {
    double total = 0;
    for (index_t c = 0; c < 3; ++c) total += std::exp(logits(r, c));
    for (index_t c = 0; c < 3; ++c) {
      const double onehot = c == targets[static_cast<std::size_t>(r)] ? 1.0 : 0.0;
      CHECK(active.grad()(r, c) == doctest::Approx(std::exp(logits(r, c)) / total - onehot).epsilon(1e-13));
    }
  }
}

TEST_CASE("cross_entropy_per_token gives each row's loss, 0 at ignored rows, summing to the sum reduction") {
  const Tensor<double> logits = random_tensor(Shape{4, 6}, 12, -3.0, 3.0);
  const std::vector<index_t> targets{5, ignored, 0, 2};
  dca::Tape<double> tape;
  auto per_token = dca::cross_entropy_per_token(tape.constant(logits), targets);
  REQUIRE(per_token.shape() == Shape{4, 1});
  CHECK(per_token.value()(1, 0) == 0);
  double total = 0;
  for (index_t r : {0, 2, 3}) {
    CHECK(per_token.value()(r, 0) ==
          doctest::Approx(reference_nll(logits, r, targets[static_cast<std::size_t>(r)])).epsilon(1e-13));
    total += per_token.value()(r, 0);
  }
  auto sum = dca::cross_entropy(tape.constant(logits), targets, {.reduction = dca::Reduction::sum});
  CHECK(sum.item() == doctest::Approx(total).epsilon(1e-13));

  const std::vector<index_t> padded{5, 1, 5, 2};  // 5 plays the padding token
  auto custom = dca::cross_entropy_per_token(tape.constant(logits), padded, 5);
  CHECK(custom.value()(0, 0) == 0);
  CHECK(custom.value()(1, 0) == doctest::Approx(reference_nll(logits, 1, 1)).epsilon(1e-13));
  CHECK(custom.value()(2, 0) == 0);
}

TEST_CASE("cross_entropy_per_token gradient of logits matches finite differences") {
  const std::vector<index_t> small_targets{1, ignored};
  const std::vector<index_t> large_targets{0, 8, 8, ignored, 3};
  CHECK(dca::check_gradients([&](auto logits) { return dca::cross_entropy_per_token(logits, small_targets); },
                             random_tensor(Shape{2, 3}, 13, -2.0, 2.0)));
  CHECK(dca::check_gradients([&](auto logits) { return dca::cross_entropy_per_token(logits, large_targets); },
                             random_tensor(Shape{5, 9}, 14, -2.0, 2.0)));
}

TEST_CASE("cross_entropy rejects out-of-range targets and target or weight counts that do not match the rows") {
  dca::Tape<double> tape;
  auto logits = tape.variable(random_tensor(Shape{3, 4}, 15));
  const std::vector<index_t> too_large{0, 4, 1};
  const std::vector<index_t> negative{-1, 0, 1};
  const std::vector<index_t> too_few{0, 1};
  const std::vector<index_t> good{0, 1, 2};
  const std::vector<double> two_weights{1.0, 1.0};
  CHECK_THROWS_WITH_AS(dca::cross_entropy(logits, too_large),
                       doctest::Contains("cross_entropy: target 4 at position 1 is outside [0,4)"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::cross_entropy(logits, negative),
                       doctest::Contains("cross_entropy: target -1 at position 0 is outside [0,4)"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::cross_entropy_per_token(logits, too_large),
                       doctest::Contains("cross_entropy_per_token: target 4 at position 1 is outside [0,4)"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::cross_entropy(logits, too_few),
                       doctest::Contains("cross_entropy: 2 targets for the 3 rows of logits [3,4]"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::cross_entropy(logits, good, {}, two_weights),
                       doctest::Contains("cross_entropy: 2 weights for the 3 rows of logits [3,4]"), dca::ShapeError);
}
