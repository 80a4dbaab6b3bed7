// Specification of augmented inference: no coprocessor means the plain decoder bit for bit;
// synchronous augmentation equals inserting the latents by hand; asynchronous augmentation with a
// fixed delay equals its synchronous emulation, under repeated concurrent runs.
#include "dca/coproc/session.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <thread>
#include <tuple>
#include <vector>

using dca::index_t;

namespace {

dca::DecoderConfig small_llama() {
  return dca::DecoderConfig::llama({.vocab = 13, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12});
}

std::vector<index_t> prompt_tokens() { return {3, 1, 4, 1, 5, 9, 2, 6}; }

dca::GenerationConfig greedy(index_t n) {
  dca::GenerationConfig g;
  g.max_tokens = n;
  g.temperature = 0;
  return g;
}

template <class C>
dca::Tensor<double> latents_for(C& coprocessor, dca::Decoder<double>& decoder, const dca::KVCache<double>& cache,
                                index_t token) {
  dca::Tape<double> tape;
  dca::NoGradGuard<double> no_grad(tape);
  return dca::Tensor<double>(coprocessor.latents(tape, decoder, cache.prefix(cache.size() - 1), token).value());
}

// The reference for asynchronous augmentation with a fixed delay: latents computed from the cache at
// the augmentation point are inserted `delay` tokens later; augmentation every `every` tokens.
template <class C>
std::vector<index_t> emulate(C& coprocessor, dca::Decoder<double>& decoder, index_t n_tokens, index_t delay,
                             index_t every) {
  dca::KVCache<double> cache(decoder.config(), 128);
  dca::Tape<double> tape;
  dca::NoGradGuard<double> no_grad(tape);
  const auto prompt = prompt_tokens();
  auto logits = dca::Tensor<double>(cache.append_tokens(tape, decoder, prompt).value());
  std::vector<double> next(logits.span().end() - 13, logits.span().end());
  std::vector<index_t> out;
  std::optional<std::tuple<dca::Tensor<double>, index_t, index_t>> pending;  // latents, their point, its token
  auto request = [&](index_t generated, index_t token) {
    if (!pending) pending = std::tuple{latents_for(coprocessor, decoder, cache, token), generated, token};
  };
  request(0, prompt.back());
  while (static_cast<index_t>(out.size()) < n_tokens) {
    const index_t token = static_cast<index_t>(std::max_element(next.begin(), next.end()) - next.begin());
    out.push_back(token);
    if (static_cast<index_t>(out.size()) == n_tokens) break;
    tape.reset();
    const auto row = cache.append_tokens(tape, decoder, std::vector<index_t>{token});
    next.assign(row.value().span().begin(), row.value().span().end());
    const auto generated = static_cast<index_t>(out.size());
    if (pending && generated - std::get<1>(*pending) >= delay) {
      auto z = std::get<0>(*pending);
      if (coprocessor.config().latent_form == dca::LatentForm::residual) {  // rebased onto the token they follow
        const auto& e = decoder.token_embedding().value();
        for (index_t i = 0; i < z.rows(); ++i)
          for (index_t c = 0; c < z.cols(); ++c) z(i, c) += e(token, c) - e(std::get<2>(*pending), c);
      }
      pending.reset();
      const auto latent = cache.insert_latents(tape, decoder, tape.constant(z), cache.size() - 1).logits;
      next.assign(latent.value().span().end() - 13, latent.value().span().end());
    }
    if (every > 0 && generated % every == 0) request(generated, token);
  }
  return out;
}

}  // namespace

TEST_CASE("a session without a coprocessor is the plain decoder, bit for bit") {
  dca::Decoder<double> decoder(small_llama(), 1);
  dca::AugmentedSession<double, 2, dca::UniformAhead> session(decoder, nullptr, 64);
  const auto prompt = prompt_tokens();
  auto sampled = greedy(20);
  sampled.temperature = 0.9;
  sampled.seed = 4;
  const auto augmented = session.generate(prompt, sampled, {.after_prompt = true, .every = 3});
  dca::KVCache<double> cache(decoder.config(), 64);
  const auto plain = dca::generate(decoder, cache, prompt, sampled);
  CHECK(augmented.result.tokens == plain.tokens);
  CHECK(augmented.insertions.empty());
  CHECK(session.cache().size() == cache.size());
  for (index_t l = 0; l < 2; ++l) CHECK(std::ranges::equal(session.cache().keys(l).span(), cache.keys(l).span()));
}

TEST_CASE("synchronous augmentation after the prompt equals inserting the coprocessor's latents by hand") {
  dca::Decoder<double> decoder(small_llama(), 2);
  decoder.freeze();
  dca::CoprocessorConfig c;
  c.n_ahead = 2;
  c.latent_form = dca::LatentForm::normed;
  dca::Coprocessor<double, 3> coprocessor(decoder, c);
  dca::AugmentedSession session(decoder, &coprocessor, 64);
  const auto prompt = prompt_tokens();
  const auto augmented = session.generate(prompt, greedy(10));
  CHECK(augmented.insertions == std::vector<index_t>{0});

  dca::KVCache<double> cache(decoder.config(), 64);
  dca::Tape<double> tape;
  cache.append_tokens(tape, decoder, prompt);
  const auto z = latents_for(coprocessor, decoder, cache, prompt.back());
  const auto latent_logits = cache.insert_latents(tape, decoder, tape.constant(z), cache.size() - 1).logits;
  const auto by_hand = dca::generate_from(tape, decoder, cache, dca::detail::last_row(latent_logits), greedy(10));
  CHECK(augmented.result.tokens == by_hand.tokens);
  CHECK(session.cache().size() == cache.size());
  CHECK(session.cache().kind(prompt.size()) == dca::SlotKind::latent);
}

TEST_CASE("a last-layer coprocessor augments a session by reading the tokens in its cache") {
  dca::Decoder<double> decoder(small_llama(), 2);
  decoder.freeze();
  dca::CoprocessorConfig c;
  c.n_ahead = 2;
  c.input = dca::CoprocessorInput::last_layer;
  c.latent_form = dca::LatentForm::normed;
  dca::Coprocessor<double, 2> coprocessor(decoder, c);
  const auto prompt = prompt_tokens();
  dca::AugmentedSession session(decoder, &coprocessor, 64);
  const auto augmented = session.generate(prompt, greedy(10));
  CHECK(augmented.insertions == std::vector<index_t>{0});

  dca::KVCache<double> cache(decoder.config(), 64);
  dca::Tape<double> tape;
  cache.append_tokens(tape, decoder, prompt);
  const auto z = coprocessor.latents(tape, decoder, std::span<const index_t>(prompt));
  const auto latent_logits = cache.insert_latents(tape, decoder, z, cache.size() - 1).logits;
  const auto by_hand = dca::generate_from(tape, decoder, cache, dca::detail::last_row(latent_logits), greedy(10));
  CHECK(augmented.result.tokens == by_hand.tokens);

  // Later augmentations read the prompt and the generated tokens, asynchronously too.
  const auto late = session.generate(prompt, greedy(12), {.after_prompt = true, .every = 5, .asynchronous = true, .delay = 2});
  CHECK(late.insertions == std::vector<index_t>{2, 7});
}

TEST_CASE("asynchronous latents inserted a fixed number of tokens late equal their synchronous emulation, run after run") {
  dca::Decoder<double> decoder(small_llama(), 3);
  decoder.freeze();
  dca::CoprocessorConfig c;
  c.n_ahead = 2;
  c.latent_form = dca::LatentForm::normed;
  dca::Coprocessor<double, 2> coprocessor(decoder, c);
  for (index_t delay : {1, 2, 3})
    for (index_t every : {0, 4, 7}) {
      CAPTURE(delay);
      CAPTURE(every);
      const auto expected = emulate(coprocessor, decoder, 24, delay, every);
      for (int run = 0; run < 5; ++run) {  // repeated: the worker's timing differs from run to run
        dca::AugmentedSession session(decoder, &coprocessor, 128);
        const auto out = session.generate(prompt_tokens(), greedy(24),
                                          {.after_prompt = true, .every = every, .asynchronous = true, .delay = delay});
        CHECK(out.result.tokens == expected);
        CHECK(out.insertions.front() == delay);
      }
    }
}

TEST_CASE("asynchronous residual latents arriving late are rebased onto the token they follow, their correction kept") {
  dca::Decoder<double> decoder(small_llama(), 3);
  decoder.freeze();
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 2});  // residual latents (the default)
  for (dca::Parameter<double>* p : coprocessor.parameters())
    if (p->name() == "coprocessor.latent_projection.weight") p->value() = dca::test::random_tensor(p->value().shape(), 5, -0.3, 0.3);
  for (index_t delay : {1, 3}) {
    CAPTURE(delay);
    const auto expected = emulate(coprocessor, decoder, 16, delay, 6);
    dca::AugmentedSession session(decoder, &coprocessor, 128);
    const auto out = session.generate(prompt_tokens(), greedy(16),
                                      {.after_prompt = true, .every = 6, .asynchronous = true, .delay = delay});
    CHECK(out.result.tokens == expected);
  }
}

TEST_CASE("asynchronous latents without a delay are inserted when they arrive") {
  dca::Decoder<double> decoder(small_llama(), 4);
  decoder.freeze();
  dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 2});
  dca::AugmentedSession session(decoder, &coprocessor, 128);
  // A slow consumer (5 ms per token) gives the worker ample time to deliver while decoding goes on.
  const auto out = session.generate(prompt_tokens(), greedy(40), {.after_prompt = true, .every = 10, .asynchronous = true},
                                    [](index_t) {
                                      std::this_thread::sleep_for(std::chrono::milliseconds(5));
                                      return true;
                                    });
  CHECK(out.result.tokens.size() == 40);
  REQUIRE_FALSE(out.insertions.empty());
  for (std::size_t i = 1; i < out.insertions.size(); ++i) CHECK(out.insertions[i] > out.insertions[i - 1]);
  index_t latent_slots = 0;
  for (index_t s = 0; s < session.cache().size(); ++s) latent_slots += session.cache().kind(s) == dca::SlotKind::latent;
  CHECK(latent_slots == 2 * static_cast<index_t>(out.insertions.size()));
}

TEST_CASE("augmentation that no longer fits the cache is skipped, and bad schedules are rejected") {
  dca::Decoder<double> decoder(small_llama(), 5);
  decoder.freeze();
  dca::Coprocessor<double, 4> coprocessor(decoder, {.n_ahead = 2});
  dca::AugmentedSession session(decoder, &coprocessor, 12);  // 8 prompt + 4 latents: full
  const auto out = session.generate(prompt_tokens(), greedy(8), {.after_prompt = true, .every = 1});
  CHECK(out.insertions == std::vector<index_t>{0});
  CHECK(out.result.reason == dca::StopReason::cache_full);
  CHECK_THROWS_WITH_AS(session.generate(prompt_tokens(), greedy(4), {.delay = 2}),
                       doctest::Contains("a delay of 2 tokens needs asynchronous = true"), dca::UsageError);
  CHECK_THROWS_WITH_AS(session.generate({}, greedy(4)), doctest::Contains("the prompt is empty"), dca::UsageError);
}
