// Specification of the reproduction's measurements: the n-th-token evaluation, arithmetic scoring
// and the FLOP model give known numbers on models and sizes whose answers are known.
#include "dca/coproc/evaluate.hpp"
#include "dca/experiment/compute.hpp"
#include "dca/experiment/evaluation.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

using dca::index_t;

namespace {

// A decoder whose every weight is zero: its logits are zero whatever it reads, so every
// next-token loss is exactly ln(vocabulary) and greedy decoding always picks token 0.
dca::Decoder<double> zero_decoder() {
  dca::Decoder<double> decoder(
      dca::DecoderConfig::llama({.vocab = 256, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12}), 1);
  for (dca::Parameter<double>* p : decoder.parameters())
    for (index_t i = 0; i < p->value().numel(); ++i) p->value()[i] = 0;
  decoder.freeze();
  return decoder;
}

std::vector<dca::Batch> token_batches(index_t count, index_t batch, index_t seq_len) {
  std::vector<dca::Batch> out;
  for (index_t i = 0; i < count; ++i) {
    dca::Batch b;
    b.batch = batch;
    b.seq_len = seq_len;
    b.inputs = dca::test::random_tokens(batch * seq_len, 40 + static_cast<std::uint64_t>(i), 256);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace

TEST_CASE("a decoder with all-zero weights scores ln 256 at every ahead position, augmented or not") {
  auto decoder = zero_decoder();
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 3});
  const auto batches = token_batches(2, 2, 10);
  const auto table = dca::evaluate_ahead(decoder, coprocessor, std::span<const dca::Batch>(batches), 0, 5);
  CHECK(table.points == 2 * 2 * (10 - 3));  // every point 0..T−1−N_A of every sequence
  REQUIRE(table.augmented.size() == 3);
  for (std::size_t n = 0; n < 3; ++n) {
    CHECK(table.baseline[n] == doctest::Approx(std::log(256.0)).epsilon(1e-14));
    CHECK(table.augmented[n] == doctest::Approx(std::log(256.0)).epsilon(1e-14));
  }
}

TEST_CASE("evaluate_ahead scores the frozen baseline on exactly the tokens the augmented pass predicts") {
  // The baseline of the n-th token after point t is the decoder's own next-token loss at row
  // t+n−1; with every point evaluated, it is computed here directly from the logits.
  dca::Decoder<double> decoder(
      dca::DecoderConfig::llama({.vocab = 256, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12}), 3);
  decoder.freeze();
  dca::Coprocessor<double, 1> coprocessor(decoder, {.n_ahead = 2});
  const auto batches = token_batches(1, 1, 8);
  const auto table = dca::evaluate_ahead(decoder, coprocessor, std::span<const dca::Batch>(batches), 0, 9);
  dca::Tape<double> tape;
  const auto logits = decoder.logits(tape, batches[0].inputs, 1);
  const auto& ids = batches[0].inputs;
  for (index_t n = 0; n < 2; ++n) {
    double expected = 0;
    for (index_t t = 0; t + 2 < 8; ++t) {  // every point: t = 0..5
      const index_t row = t + n, target = ids[static_cast<std::size_t>(row + 1)];
      double max = -1e300, sum = 0;
      for (index_t v = 0; v < 256; ++v) max = std::max(max, logits.value()(row, v));
      for (index_t v = 0; v < 256; ++v) sum += std::exp(logits.value()(row, v) - max);
      expected += max + std::log(sum) - logits.value()(row, target);
    }
    CHECK(table.baseline[static_cast<std::size_t>(n)] == doctest::Approx(expected / 6).epsilon(1e-12));
  }
}

TEST_CASE("changing a coprocessor's horizon keeps the losses of the nearer ahead positions") {
  dca::Decoder<double> decoder(
      dca::DecoderConfig::llama({.vocab = 256, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12}), 4);
  decoder.freeze();
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 2});
  const auto ids = dca::test::random_tokens(2 * 12, 8, 256);
  dca::Tape<double> tape;
  const auto near = coprocessor.loss(tape, decoder, ids, dca::AugmentationPlan::given(2, 12, 2, {1, 4, 0, 3}));
  coprocessor.set_n_ahead(5);
  const auto far = coprocessor.loss(tape, decoder, ids, dca::AugmentationPlan::given(2, 12, 5, {1, 4, 0, 3}));
  REQUIRE(far.per_position.size() == 5);
  for (std::size_t n = 0; n < 2; ++n) CHECK(far.per_position[n] == doctest::Approx(near.per_position[n]).epsilon(1e-12));
  CHECK_THROWS_AS(coprocessor.set_n_ahead(0), dca::RangeError);
  CHECK(coprocessor.config().n_ahead == 5);  // a rejected horizon changes nothing
}

TEST_CASE("score_answers counts exactly the problems whose generated text matches the answer") {
  const auto problems = dca::held_out_problems(dca::ArithmeticConfig{}, 50);
  index_t even = 0;
  for (const auto& p : problems) even += p.left % 2 == 0 ? 1 : 0;
  // Right on even left operands (followed by a newline), a wrong digit appended otherwise.
  const auto score = dca::score_answers(problems, [](const dca::Problem& p) {
    return p.left % 2 == 0 ? p.answer + "\n" : p.answer + "7";
  });
  CHECK(score.total == 50);
  CHECK(score.correct == even);
  CHECK(score.accuracy() == doctest::Approx(static_cast<double>(even) / 50));
  CHECK(dca::ArithmeticScore{}.accuracy() == 0);
}

TEST_CASE("a decoder that always emits byte 0 solves no arithmetic, augmented or not") {
  auto decoder = zero_decoder();
  dca::ArithmeticConfig config;
  const auto problems = dca::held_out_problems(config, 6);
  const auto frozen = dca::score_arithmetic(decoder, config, problems);
  CHECK(frozen.total == 6);
  CHECK(frozen.correct == 0);
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 2});
  dca::AugmentationSchedule late;
  late.asynchronous = true;
  late.delay = 1;
  for (const auto& schedule : {dca::AugmentationSchedule{}, late}) {
    const auto augmented = dca::score_arithmetic(decoder, coprocessor, config, problems, schedule);
    CHECK(augmented.total == 6);
    CHECK(augmented.correct == 0);
  }
}

TEST_CASE("the few-shot context is fixed, made of whole training problems, and never holds a held-out one") {
  dca::ArithmeticConfig config;
  const std::string context = dca::arithmetic_context(config, 5);
  CHECK(context == dca::arithmetic_context(config, 5));
  CHECK(std::count(context.begin(), context.end(), '\n') == 5);
  for (const auto& p : dca::held_out_problems(config, 200)) CHECK(context.find(p.text()) == std::string::npos);
  CHECK(dca::arithmetic_context(config, 0).empty());
  CHECK_THROWS_WITH_AS(dca::arithmetic_context(config, -1), doctest::Contains("shots = -1"), dca::RangeError);
}

TEST_CASE("forward_flops counts projections, MLP, attention and the output head as written out by hand") {
  dca::DecoderConfig c = dca::DecoderConfig::llama(
      {.vocab = 10, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 16});  // d=8, 2 heads of 4, 1 kv head
  // Per row: q 2·8·8 = 128, k and v 2·2·8·4 = 128, out 2·8·8 = 128, gated MLP 3·2·8·16 = 768 → 1152.
  // 3 rows after 5 cached: keys 3·5 + (1+2+3) = 21; scores and sums 2·2·(2·4)·21 = 672.
  // Per layer 3·1152 + 672 = 4128; two layers 8256; one logit row 2·8·10 = 160.
  CHECK(dca::forward_flops(c, 3, 5, 1) == 8416);
  CHECK(dca::forward_flops(c, 0, 5, 0) == 0);
  // Decoding: one row at a time, each with logits; an augmentation: two N_L-row passes, a projection.
  CHECK(dca::decoding_flops(c, 2, 5) == dca::forward_flops(c, 1, 5, 1) + dca::forward_flops(c, 1, 6, 1));
  CHECK(dca::augmentation_flops(c, 3, 5) ==
        dca::forward_flops(c, 3, 5, 0) + 2.0 * 8 * 8 * 3 + dca::forward_flops(c, 3, 5, 1));
  CHECK_THROWS_WITH_AS(dca::forward_flops(c, 2, 0, 3), doctest::Contains("logit_rows 3"), dca::RangeError);
}

TEST_CASE("a coprocessor step's FLOP model grows linearly in the number of augmentation points") {
  const auto c = dca::DecoderConfig::llama({.vocab = 256, .dim = 32, .layers = 2, .heads = 2, .mlp = 64});
  const double k8 = dca::coprocessor_step_flops(c, 2, 64, 8, 4, 8), k16 = dca::coprocessor_step_flops(c, 2, 64, 16, 4, 8);
  const double tokens = 2 * dca::forward_flops(c, 64, 0, 0);  // the K-independent token pass
  CHECK(k16 - tokens == doctest::Approx(2 * (k8 - tokens)).epsilon(1e-12));
  CHECK(dca::pretraining_step_flops(c, 2, 64) == 3 * 2 * dca::forward_flops(c, 64, 0, 64));
}
