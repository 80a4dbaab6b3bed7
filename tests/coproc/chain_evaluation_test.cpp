// Specification of the variable-chain evaluation: its batched, teacher-forced answers are what
// cached greedy decoding and the augmented inference session write first, program by program,
// whatever the batch; the shuffled control reads another program's latents; an oracle coprocessor
// sees past the insertion point in training and evaluation and is refused at inference.
#include "support.hpp"

#include <dca/coproc/session.hpp>
#include <dca/experiment/chain_evaluation.hpp>

#include <doctest/doctest.h>

#include <set>

namespace {

dca::DecoderConfig byte_decoder() {
  return dca::DecoderConfig::llama({.vocab = 256, .dim = 16, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 32});
}

// A decoder whose answers differ from program to program: weights far from their small initial scale.
dca::Decoder<double> varied_decoder(std::uint64_t seed) {
  dca::Decoder<double> decoder(byte_decoder(), seed);
  std::uint64_t i = 0;
  for (dca::Parameter<double>* p : decoder.parameters())
    if (p->value().shape().rank() == 2) p->value() = dca::test::random_tensor(p->value().shape(), seed * 100 + ++i, -0.5, 0.5);
  return decoder;
}

// A coprocessor whose latents differ from program to program: random latent projection.
template <dca::index_t N>
dca::Coprocessor<double, N> varied_coprocessor(dca::Decoder<double>& decoder, dca::CoprocessorConfig config) {
  dca::Coprocessor<double, N> coprocessor(decoder, config);
  for (dca::Parameter<double>* p : coprocessor.parameters())
    if (p->name() == "coprocessor.latent_projection.weight")
      p->value() = dca::test::random_tensor(p->value().shape(), 17, -2.0, 2.0);
  return coprocessor;
}

const dca::ChainConfig task{.max_hops = 3, .distractor_chains = 1, .seed = 2};

// The first byte cached greedy decoding writes after `text`.
dca::index_t greedy_first_byte(dca::Decoder<double>& decoder, const std::string& text) {
  dca::Tape<double> tape;
  dca::KVCache<double> cache(decoder.config(), 256);
  dca::GenerationConfig greedy;
  greedy.temperature = 0;
  greedy.max_tokens = 1;
  const auto tokens = dca::generate(tape, decoder, cache, dca::ByteTokenizer().encode(text), greedy).tokens;
  REQUIRE(tokens.size() == 1);
  return tokens[0];
}

}  // namespace

TEST_CASE("direct chain answers are greedy decoding's first byte, program by program, in any batch size") {
  auto decoder = varied_decoder(3);
  const std::string context = dca::chain_context(task, 2);
  const auto programs = dca::held_out_chains(task, 2, 11);
  const auto batched = dca::chain_answers_direct(decoder, context, programs, 4);
  CHECK(batched == dca::chain_answers_direct(decoder, context, programs, 1));
  std::set<dca::index_t> distinct;
  for (std::size_t i = 0; i < programs.size(); ++i) {
    const dca::index_t first = greedy_first_byte(decoder, context + programs[i].bare_prompt());
    CHECK(batched[i] == first);
    distinct.insert(first);
  }
  CHECK(distinct.size() > 1);  // the programs are told apart, so the comparison means something
  const auto score = dca::score_chains_direct(decoder, context, programs, 4);
  CHECK(score.total == 11);
  CHECK(score.correct == dca::score_chain_answers(programs, batched).correct);
}

TEST_CASE("answers given worked steps are greedy decoding's first byte after the bare prompt and those steps") {
  auto decoder = varied_decoder(4);
  const std::string context = dca::chain_context(task, 1);
  const auto programs = dca::held_out_chains(task, 3, 7);
  CHECK(dca::chain_answers_direct(decoder, context, programs, 3, 0) == dca::chain_answers_direct(decoder, context, programs));
  for (const dca::index_t steps : {1, 2}) {
    CAPTURE(steps);
    const auto batched = dca::chain_answers_direct(decoder, context, programs, 3, steps);
    for (std::size_t i = 0; i < programs.size(); ++i) {
      const std::string written = programs[i].worked_answer().substr(0, static_cast<std::size_t>(2 * steps));  // "b=", "b=k="
      CHECK(batched[i] == greedy_first_byte(decoder, context + programs[i].bare_prompt() + written));
    }
    CHECK(dca::score_chains_given_steps(decoder, context, programs, steps, 3).correct ==
          dca::score_chain_answers(programs, batched).correct);
  }
  CHECK_THROWS_WITH_AS(dca::score_chains_given_steps(decoder, context, programs, 3), doctest::Contains("n = 3 is outside [0, 2]"),
                       dca::RangeError);
}

TEST_CASE("augmented chain answers are what the inference session writes first after latents at the prompt's end") {
  auto decoder = varied_decoder(5);
  decoder.freeze();
  const std::string context = dca::chain_context(task, 1);
  const auto programs = dca::held_out_chains(task, 3, 9);
  for (const auto positions : {dca::LatentPositions::at_insertion_point, dca::LatentPositions::shifted}) {
    CAPTURE(static_cast<int>(positions));
    auto coprocessor = varied_coprocessor<2>(decoder, {.n_ahead = 4, .positions = positions});
    const auto batched = dca::chain_answers_augmented(decoder, coprocessor, context, programs, dca::LatentControl::own, 4);
    CHECK(coprocessor.config().n_ahead == 4);  // the trained horizon is back
    CHECK(batched == dca::chain_answers_augmented(decoder, coprocessor, context, programs, dca::LatentControl::own, 1));
    dca::AugmentedSession<double, 2, dca::UniformAhead> session(decoder, &coprocessor, 256);
    dca::GenerationConfig greedy;
    greedy.temperature = 0;
    greedy.max_tokens = 1;
    const dca::ByteTokenizer tokenizer;
    for (std::size_t i = 0; i < programs.size(); ++i) {
      const auto tokens = session.generate(tokenizer.encode(context + programs[i].bare_prompt()), greedy, {}).result.tokens;
      REQUIRE(tokens.size() == 1);
      CHECK(batched[i] == tokens[0]);
    }
    CHECK(std::set<dca::index_t>(batched.begin(), batched.end()).size() > 1);
  }
}

TEST_CASE("the shuffled control gives each program the latents of the next one in its batch") {
  auto decoder = varied_decoder(6);
  decoder.freeze();
  const std::string context = dca::chain_context(task, 1);
  const auto programs = dca::held_out_chains(task, 1, 6);
  auto coprocessor = varied_coprocessor<1>(decoder, {.n_ahead = 2});
  const auto shuffled = dca::chain_answers_augmented(decoder, coprocessor, context, programs, dca::LatentControl::shuffled, 6);
  // By hand: program i's prompt with the latents computed for program i+1 (the last: the first's).
  dca::Tape<double> tape;
  const dca::ByteTokenizer tokenizer;
  for (std::size_t i = 0; i < programs.size(); ++i) {
    const auto own = tokenizer.encode(context + programs[i].bare_prompt());
    const auto other = tokenizer.encode(context + programs[(i + 1) % programs.size()].bare_prompt());
    tape.reset();
    const auto z = coprocessor.latents(tape, decoder, other);
    dca::KVCache<double> cache(decoder.config(), 256);
    cache.append_tokens(tape, decoder, own);
    const auto logits = cache.insert_latents(tape, decoder, z, cache.size() - 1).logits;
    CHECK(shuffled[i] == dca::detail::argmax_row<double>(logits.value(), logits.value().shape()[0] - 1));
  }
  CHECK_THROWS_WITH_AS(dca::chain_answers_augmented(decoder, coprocessor, context, programs, dca::LatentControl::shuffled, 1),
                       doctest::Contains("two programs per batch"), dca::UsageError);
}

TEST_CASE("an oracle coprocessor's structured loss reads past the insertion point, and inference refuses it") {
  auto decoder = varied_decoder(7);
  decoder.freeze();
  auto ids = dca::test::random_tokens(2 * 12, 3, 256);
  const auto plan = dca::AugmentationPlan::given(2, 12, 3, {2, 5, 4, 7});
  auto method = varied_coprocessor<2>(decoder, {.n_ahead = 3});
  auto oracle = varied_coprocessor<2>(decoder, {.n_ahead = 3, .oracle_lookahead = 1});
  const auto latents_of = [&](auto& coprocessor, const std::vector<dca::index_t>& tokens) {
    dca::Tape<double> tape;
    const auto layout = dca::AugmentationLayout::of(plan, tokens, 2, coprocessor.config().positions,
                                                    coprocessor.config().oracle_lookahead);
    const auto read = coprocessor.read_tokens(tape, decoder, tokens, 2);
    return dca::Tensor<double>(coprocessor.latents(tape, decoder, read.cache, layout.latents, read.residual).value());
  };
  auto changed = ids;
  changed[12 + 8] = (changed[12 + 8] + 1) % 256;  // x[t+1] of sequence 1's last point t = 7: no prefix holds it
  CHECK(dca::test::max_abs_difference(latents_of(method, ids), latents_of(method, changed)) == 0.0);
  CHECK(dca::test::max_abs_difference(latents_of(oracle, ids), latents_of(oracle, changed)) > 1e-6);
  dca::Tape<double> tape;
  const std::vector<dca::index_t> prompt{1, 2};
  CHECK_THROWS_WITH_AS(oracle.latents(tape, decoder, prompt), doctest::Contains("oracle"), dca::UsageError);
  CHECK_THROWS_WITH_AS((dca::Coprocessor<double, 2>(decoder, {.n_ahead = 2, .oracle_lookahead = 3})),
                       doctest::Contains("oracle_lookahead = 3"), dca::RangeError);
}

TEST_CASE("a gated coprocessor answers as the frozen decoder with its gate closed and as its latents with it open") {
  auto decoder = varied_decoder(5);
  decoder.freeze();
  const std::string context = dca::chain_context(task, 2);
  const auto programs = dca::held_out_chains(task, 2, 8);  // batches of 4: the shuffled control needs two
  dca::CoprocessorConfig config;
  config.n_ahead = 1;
  auto ungated = varied_coprocessor<2>(decoder, config);
  config.gated = true;
  auto gated = varied_coprocessor<2>(decoder, config);
  const auto set_bias = [&](double b) {
    for (dca::Parameter<double>* p : gated.parameters())
      if (p->name() == "coprocessor.gate.bias") p->value()[0] = b;
  };
  const auto direct = dca::chain_answers_direct(decoder, context, programs, 4);
  const auto augmented = dca::chain_answers_augmented(decoder, ungated, context, programs, dca::LatentControl::own, 4);
  REQUIRE(direct != augmented);  // the two limits differ, so each check below tells them apart
  set_bias(-60);
  CHECK(dca::chain_answers_augmented(decoder, gated, context, programs, dca::LatentControl::own, 4) == direct);
  CHECK(dca::chain_answers_augmented(decoder, gated, context, programs, dca::LatentControl::shuffled, 4) == direct);
  set_bias(60);
  CHECK(dca::chain_answers_augmented(decoder, gated, context, programs, dca::LatentControl::own, 4) == augmented);
  CHECK(dca::chain_answers_augmented(decoder, gated, context, programs, dca::LatentControl::shuffled, 4) ==
        dca::chain_answers_augmented(decoder, ungated, context, programs, dca::LatentControl::shuffled, 4));
}
