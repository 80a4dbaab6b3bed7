// Specification of the supervised probe (experiment/chain_probe.hpp): its targets are a program's
// first worked steps slot by slot; the coprocessor's written logits are what its token-mixture
// latents mix, whatever the form; the probe's loss and score are the cross-entropy and argmax of
// those logits at the targeted slots; and training on the loss lowers it.
#include "support.hpp"

#include <dca/experiment/chain_probe.hpp>
#include <dca/train/loop.hpp>

#include <doctest/doctest.h>

#include <cmath>

namespace {

dca::Decoder<double> frozen_decoder(std::uint64_t seed) {
  dca::Decoder<double> decoder(
      dca::DecoderConfig::llama({.vocab = 256, .dim = 16, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 32}), seed);
  std::uint64_t i = 0;
  for (dca::Parameter<double>* p : decoder.parameters())
    if (p->value().shape().rank() == 2) p->value() = dca::test::random_tensor(p->value().shape(), seed * 100 + ++i, -0.5, 0.5);
  decoder.freeze();
  return decoder;
}

const dca::ChainConfig task{.max_hops = 3, .distractor_chains = 1, .seed = 3};

// d ← b ← k ← 5 with a distractor x = 2: worked answer "b=k=5".
dca::ChainProgram three_hops() { return {{"k=5", "b=k", "x=2", "d=b"}, "kbd", '5'}; }

std::vector<dca::ChainProgram> mixed_programs() {
  std::vector<dca::ChainProgram> programs;
  for (dca::index_t h = 1; h <= 3; ++h)
    for (const dca::ChainProgram& p : dca::held_out_chains(task, h, 3)) programs.push_back(p);
  return programs;
}

// What the probe reads, computed step by step: the written logits [B·N_L, V] after each prompt.
template <dca::index_t N>
dca::Tensor<double> written_logits_by_hand(dca::Tape<double>& tape, dca::Decoder<double>& decoder,
                                           dca::Coprocessor<double, N>& coprocessor, const std::string& context,
                                           const std::vector<dca::ChainProgram>& programs, dca::Tensor<double>* latents) {
  const auto b = dca::detail::chain_batches(context, programs, static_cast<dca::index_t>(programs.size())).front();
  const auto plan = dca::AugmentationPlan::given(b.batch, b.seq_len, 1, b.prompt_ends);
  const auto layout = dca::AugmentationLayout::of(plan, b.ids, N, coprocessor.config().positions);
  const auto read = coprocessor.read_tokens(tape, decoder, b.ids, b.batch);
  if (latents) *latents = dca::Tensor<double>(coprocessor.latents(tape, decoder, read.cache, layout.latents, read.residual).value());
  return dca::Tensor<double>(coprocessor.written_logits(tape, read.cache, layout.latents, read.residual).value());
}

}  // namespace

TEST_CASE("chain step targets are a program's first worked steps, byte by byte, with no target beyond them") {
  const dca::ChainProgram p = three_hops();
  using V = std::vector<dca::index_t>;
  CHECK(dca::chain_step_targets(p, 2, 1) == V{'b', '='});
  CHECK(dca::chain_step_targets(p, 1, 1) == V{'b'});
  CHECK(dca::chain_step_targets(p, 4, 1) == V{'b', '=', -100, -100});
  CHECK(dca::chain_step_targets(p, 4, 2) == V{'b', '=', 'k', '='});
  CHECK(dca::chain_step_targets(p, 8, 5) == V{'b', '=', 'k', '=', -100, -100, -100, -100});  // never the answer
  CHECK(dca::chain_step_targets(p, 2, 0) == V{-100, -100});
  const dca::ChainProgram one_hop{{"k=5", "x=2"}, "k", '5'};
  CHECK(dca::chain_step_targets(one_hop, 2, 1) == V{-100, -100});
  CHECK_THROWS_WITH_AS(dca::chain_step_targets(p, 0, 1), doctest::Contains("n_latents = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::chain_step_targets(p, 2, -1), doctest::Contains("steps = -1"), dca::RangeError);
}

TEST_CASE("written logits are what token-mixture latents mix while the correction is zero, and the same for every form") {
  auto decoder = frozen_decoder(11);
  const std::string context = dca::chain_context(task, 1);
  const auto programs = mixed_programs();
  dca::Coprocessor<double, 2> mixture(decoder, {.n_ahead = 2, .latent_form = dca::LatentForm::token_mixture});
  dca::Coprocessor<double, 2> residual(decoder, {.n_ahead = 2});
  dca::Tape<double> tape;
  dca::Tensor<double> z;
  const auto logits = written_logits_by_hand(tape, decoder, mixture, context, programs, &z);
  const auto& E = decoder.token_embedding().value();
  const dca::index_t rows = logits.shape()[0], V = logits.shape()[1], d = E.shape()[1];
  REQUIRE(rows == static_cast<dca::index_t>(2 * programs.size()));
  double worst = 0;
  for (dca::index_t r = 0; r < rows; ++r) {
    double top = logits[r * V];
    for (dca::index_t v = 1; v < V; ++v) top = std::max(top, logits[r * V + v]);
    double total = 0;
    for (dca::index_t v = 0; v < V; ++v) total += std::exp(logits[r * V + v] - top);
    for (dca::index_t k = 0; k < d; ++k) {
      double mixed = 0;
      for (dca::index_t v = 0; v < V; ++v) mixed += std::exp(logits[r * V + v] - top) / total * E[v * d + k];
      worst = std::max(worst, std::abs(mixed - z[r * d + k]));
    }
  }
  CHECK(worst < 1e-12);
  tape.reset();
  const auto same = written_logits_by_hand(tape, decoder, residual, context, programs, nullptr);
  CHECK(dca::test::max_abs_difference(logits, same) < 1e-12);
  dca::Coprocessor<double, 2> pause(decoder, {.n_ahead = 2, .source = dca::LatentSource::pause});
  tape.reset();
  CHECK_THROWS_WITH_AS(written_logits_by_hand(tape, decoder, pause, context, programs, nullptr),
                       doctest::Contains("pause tokens"), dca::UsageError);
}

TEST_CASE("the step loss is the mean cross-entropy of the written logits at the targeted slots, with their argmax hits") {
  auto decoder = frozen_decoder(12);
  const std::string context = dca::chain_context(task, 2);
  const auto programs = mixed_programs();
  dca::Coprocessor<double, 4> coprocessor(decoder, {.n_ahead = 2, .positions = dca::LatentPositions::shifted});
  dca::Tape<double> tape;
  const auto step = dca::chain_step_loss(tape, decoder, coprocessor, context, programs, 2);
  const double loss = step.loss.value()[0];  // a tape's values do not survive its reset
  tape.reset();
  const auto logits = written_logits_by_hand(tape, decoder, coprocessor, context, programs, nullptr);
  const dca::index_t V = logits.shape()[1];
  double total = 0;
  dca::index_t slots = 0, hits = 0;
  for (std::size_t i = 0; i < programs.size(); ++i) {
    const auto targets = dca::chain_step_targets(programs[i], 4, 2);
    for (dca::index_t s = 0; s < 4; ++s) {
      const dca::index_t target = targets[static_cast<std::size_t>(s)], row = static_cast<dca::index_t>(i) * 4 + s;
      if (target < 0) continue;
      double top = logits[row * V];
      dca::index_t best = 0;
      for (dca::index_t v = 1; v < V; ++v)
        if (logits[row * V + v] > top) top = logits[row * V + (best = v)];
      double sum = 0;
      for (dca::index_t v = 0; v < V; ++v) sum += std::exp(logits[row * V + v] - top);
      total += top + std::log(sum) - logits[row * V + target];
      ++slots;
      hits += best == target ? 1 : 0;
    }
  }
  CHECK(step.slots == slots);
  CHECK(slots == 3 * 2 + 3 * 4);  // one step of the 2-hop programs, two of the 3-hop ones, none of the 1-hop
  CHECK(step.hits == hits);
  CHECK(loss == doctest::Approx(total / static_cast<double>(slots)).epsilon(1e-12));

  const std::vector<dca::ChainProgram> one_hop = dca::held_out_chains(task, 1, 3);
  tape.reset();
  CHECK_THROWS_WITH_AS(dca::chain_step_loss(tape, decoder, coprocessor, context, one_hop, 1),
                       doctest::Contains("none of the 3 programs"), dca::RangeError);
  auto trainable = frozen_decoder(12);
  trainable.unfreeze();
  tape.reset();
  CHECK_THROWS_AS(dca::chain_step_loss(tape, trainable, coprocessor, context, programs, 1), dca::UsageError);
}

TEST_CASE("a program's steps count as written when every targeted slot ranks its byte first, in any batch size") {
  auto decoder = frozen_decoder(13);
  const std::string context = dca::chain_context(task, 1);
  const auto programs = dca::held_out_chains(task, 3, 7);
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 2});
  // Make some programs right: train the head a little toward the targets of the first four.
  dca::TrainingLoop<double> loop(coprocessor.parameter_groups(), {.max_lr = 3e-2, .min_lr = 3e-2, .warmup_steps = 0,
                                                                   .total_steps = 20, .weight_decay = 0.0});
  const std::span<const dca::ChainProgram> first_four(programs.data(), 4);
  for (int i = 0; i < 20; ++i)
    loop.step([&](dca::Tape<double>& tape) { return dca::chain_step_loss(tape, decoder, coprocessor, context, first_four, 1).loss; });
  dca::index_t by_hand = 0;
  dca::Tape<double> tape;
  for (const dca::ChainProgram& p : programs) {
    tape.reset();
    const auto one = dca::chain_step_loss(tape, decoder, coprocessor, context, std::span<const dca::ChainProgram>(&p, 1), 1);
    by_hand += one.hits == one.slots ? 1 : 0;
  }
  const auto score = dca::score_chain_steps(decoder, coprocessor, context, programs, 1, 3);
  CHECK(score.total == 7);
  CHECK(score.correct == by_hand);
  CHECK(score.correct > 0);
  CHECK(dca::score_chain_steps(decoder, coprocessor, context, programs, 1, 1).correct == score.correct);
  CHECK_THROWS_WITH_AS(dca::score_chain_steps(decoder, coprocessor, context, dca::held_out_chains(task, 1, 2), 1),
                       doctest::Contains("1 hops has no worked step"), dca::RangeError);
}

TEST_CASE("training on the step loss lowers it") {
  auto decoder = frozen_decoder(14);
  const std::string context = dca::chain_context(task, 1);
  const auto programs = mixed_programs();
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 2, .latent_form = dca::LatentForm::token_mixture});
  dca::TrainingLoop<double> loop(coprocessor.parameter_groups(10.0), {.max_lr = 1e-2, .min_lr = 1e-2, .warmup_steps = 0,
                                                                       .total_steps = 15, .weight_decay = 0.0});
  std::vector<double> losses;
  for (int i = 0; i < 15; ++i)
    losses.push_back(
        loop.step([&](dca::Tape<double>& tape) { return dca::chain_step_loss(tape, decoder, coprocessor, context, programs, 1).loss; }));
  CHECK(losses.back() < 0.5 * losses.front());
}
