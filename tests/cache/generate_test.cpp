// Specification of cached generation: greedy decoding equals the argmax of a full recomputation at
// every step, sampling follows softmax(logits / temperature) within the top-k and nucleus sets in
// Hugging Face's order, generation is reproducible from its seed, stops where and why it says, and
// runs in memory that does not grow with the number of tokens.
#include "dca/cache/generate.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

using dca::DecoderConfig;
using dca::GenerationConfig;
using dca::index_t;
using dca::KVCache;
using dca::StopReason;
using dca::Tensor;

namespace {

// The tiny presets with a larger init_std than the default, which makes the logits decisive enough
// that greedy tokens vary.
std::vector<DecoderConfig> decisive_presets() {
  auto configs = dca::test::tiny_presets(3);
  for (auto& c : configs) c.init_std = 0.5;
  return configs;
}

DecoderConfig llama() { return decisive_presets()[1]; }

using dca::test::random_tokens;

// The lowest index of the largest value.
index_t argmax(std::span<const double> values) {
  index_t best = 0;
  for (std::size_t i = 1; i < values.size(); ++i)
    if (values[i] > values[static_cast<std::size_t>(best)]) best = static_cast<index_t>(i);
  return best;
}

std::span<const double> last_row(const Tensor<double>& t) {
  return t.span().subspan(static_cast<std::size_t>((t.rows() - 1) * t.cols()));
}

// The reference: n greedy tokens, each the argmax of the last row of one forward pass over the
// whole sequence so far (no cache).
std::vector<index_t> greedy_by_recomputation(dca::Decoder<double>& decoder, std::vector<index_t> ids, index_t n) {
  std::vector<index_t> out;
  for (index_t i = 0; i < n; ++i) {
    dca::Tape<double> tape;
    const Tensor<double> logits(decoder.logits(tape, ids).value());
    out.push_back(argmax(last_row(logits)));
    ids.push_back(out.back());
  }
  return out;
}

// The unconstrained run the stop tests cut short: sampled (so that the tokens vary), 12 tokens.
GenerationConfig sampling(std::uint64_t seed = 5) {
  GenerationConfig config;
  config.max_tokens = 12;
  config.temperature = 1.0;
  config.seed = seed;
  return config;
}

dca::GenerationResult run(dca::Decoder<double>& decoder, const GenerationConfig& config, index_t capacity = 32,
                          const std::function<bool(index_t)>& on_token = {}) {
  KVCache<double> cache(decoder.config(), capacity);
  return dca::generate(decoder, cache, random_tokens(4, 9), config, on_token);
}

std::vector<index_t> first(const std::vector<index_t>& v, std::size_t n) {
  return {v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)};
}

// softmax(logits / temperature), then the top_k most likely, then the nucleus of mass top_p among
// those, renormalised: written out plainly, as the documentation states it.
std::vector<double> expected_probabilities(const std::vector<double>& logits, double temperature, index_t top_k,
                                           double top_p) {
  const std::size_t n = logits.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(n, 0.0);
  const std::size_t k = top_k > 0 ? std::min<std::size_t>(static_cast<std::size_t>(top_k), n) : n;
  double total = 0;
  for (std::size_t r = 0; r < k; ++r) total += p[order[r]] = std::exp(logits[order[r]] / temperature);
  double mass = 0;
  std::size_t kept = 0;
  while (kept < k && (top_p >= 1 || mass < top_p)) mass += p[order[kept++]] / total;
  for (std::size_t r = kept; r < n; ++r) p[order[r]] = 0;
  const double kept_total = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= kept_total;
  return p;
}

// 0.999 quantiles of the chi-square distribution with 1..5 degrees of freedom.
double chi_square_bound(std::size_t degrees) {
  constexpr double quantiles[] = {10.83, 13.82, 16.27, 18.47, 20.52};
  return quantiles[degrees - 1];
}

}  // namespace

TEST_CASE("greedy generation picks the argmax of a full recomputation at every step, for every preset") {
  for (const auto& config : decisive_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 3);
    const auto prompt = random_tokens(4, 1);
    KVCache<double> cache(config, 32);
    GenerationConfig greedy;
    greedy.temperature = 0;
    greedy.max_tokens = 14;
    const auto result = dca::generate(decoder, cache, prompt, greedy);
    CHECK(result.reason == StopReason::max_tokens);
    CHECK(result.tokens == greedy_by_recomputation(decoder, prompt, 14));
    CHECK(cache.size() == 4 + 14 - 1);  // the last token was sampled but never run
    CHECK(std::set<index_t>(result.tokens.begin(), result.tokens.end()).size() > 1);
  }
}

TEST_CASE("the prompt is appended after what the cache already holds") {
  for (const auto& config : decisive_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 4);
    const auto history = random_tokens(5, 2), prompt = random_tokens(3, 3);
    KVCache<double> cache(config, 32);
    dca::Tape<double> tape;
    cache.append_tokens(tape, decoder, history);
    GenerationConfig greedy;
    greedy.temperature = 0;
    greedy.max_tokens = 8;
    auto both = history;
    both.insert(both.end(), prompt.begin(), prompt.end());
    CHECK(dca::generate(decoder, cache, prompt, greedy).tokens == greedy_by_recomputation(decoder, both, 8));
  }
}

TEST_CASE("generate_from continues from a latent-augmented cache exactly as a recomputation with the latents") {
  for (const auto& config : decisive_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 6);
    const auto ids = random_tokens(5, 4);
    const index_t d = config.hidden_size, n_latents = 2, t = 4;
    Tensor<double> z(dca::Shape{n_latents, d});
    dca::Rng rng(8);
    for (index_t i = 0; i < z.numel(); ++i) z[i] = rng.normal();

    dca::Tape<double> tape;
    KVCache<double> cache(config, 32);
    cache.append_tokens(tape, decoder, ids);
    const auto latents = cache.insert_latents(tape, decoder, tape.constant(z), t);
    const auto& logits = latents.logits;
    const auto next = logits.value().span().subspan(static_cast<std::size_t>((logits.rows() - 1) * logits.cols()));
    GenerationConfig greedy;
    greedy.temperature = 0;
    greedy.max_tokens = 6;
    const auto result = dca::generate_from(tape, decoder, cache, next, greedy);

    // Reference: the tokens, the latents at position t, then the generated tokens at t+1, t+2, ...
    std::vector<index_t> expected, positions{0, 1, 2, 3, 4, t, t};
    for (index_t step = 0; step < 6; ++step) {
      const auto generated_rows = dca::test::embedding_rows(decoder, expected);
      Tensor<double> rows(dca::Shape{5 + n_latents + step, d});
      const auto token_rows = dca::test::embedding_rows(decoder, ids);
      for (index_t r = 0; r < rows.rows(); ++r)
        for (index_t c = 0; c < d; ++c)
          rows(r, c) = r < 5               ? token_rows(r, c)
                       : r < 5 + n_latents ? z(r - 5, c)
                                           : generated_rows(r - 5 - n_latents, c);
      dca::Tape<double> reference;
      dca::DecoderInput<double> input;
      input.embeddings = reference.constant(rows);
      input.positions = positions;
      const Tensor<double> all(decoder.forward(reference, input).logits.value());
      expected.push_back(argmax(last_row(all)));
      positions.push_back(t + 1 + step);
    }
    CHECK(result.tokens == expected);
  }
}

TEST_CASE("the same seed gives the same tokens and another seed different ones") {
  dca::Decoder<double> decoder(llama(), 7);
  auto config = sampling(11);
  config.max_tokens = 20;
  const auto a = run(decoder, config).tokens;
  CHECK(run(decoder, config).tokens == a);
  config.seed = 12;
  CHECK(run(decoder, config).tokens != a);
}

TEST_CASE("top_k = 1 and a tiny top_p both give the greedy tokens at any temperature") {
  for (const auto& config : decisive_presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 8);
    GenerationConfig greedy;
    greedy.temperature = 0;
    greedy.max_tokens = 10;
    const auto expected = run(decoder, greedy).tokens;
    auto top1 = sampling();
    top1.max_tokens = 10;
    top1.temperature = 1.7;
    top1.top_k = 1;
    CHECK(run(decoder, top1).tokens == expected);
    auto nucleus = top1;
    nucleus.top_k = 0;
    nucleus.top_p = 1e-9;
    CHECK(run(decoder, nucleus).tokens == expected);
  }
}

TEST_CASE("sample_token draws from softmax(logits / temperature) restricted to the top-k and then the nucleus") {
  const std::vector<double> logits{0.3, -1.2, 1.5, 0.0, 2.1, -0.4};
  struct Case {
    double temperature;
    index_t top_k;
    double top_p;
  };
  for (const Case c : {Case{1.0, 0, 1.0}, Case{0.7, 0, 1.0}, Case{2.5, 0, 1.0}, Case{1.0, 3, 1.0}, Case{1.0, 0, 0.7},
                       Case{0.8, 4, 0.8}, Case{3.0, 0, 0.5}}) {
    CAPTURE(c.temperature);
    CAPTURE(c.top_k);
    CAPTURE(c.top_p);
    GenerationConfig config;
    config.temperature = c.temperature;
    config.top_k = c.top_k;
    config.top_p = c.top_p;
    const auto p = expected_probabilities(logits, c.temperature, c.top_k, c.top_p);
    constexpr int draws = 20000;
    std::vector<int> counts(logits.size(), 0);
    dca::Rng rng(123);
    for (int i = 0; i < draws; ++i) ++counts[static_cast<std::size_t>(dca::sample_token<double>(logits, config, rng))];
    double chi_square = 0;
    std::size_t kept = 0;
    for (std::size_t v = 0; v < logits.size(); ++v) {
      if (p[v] == 0) {
        CHECK(counts[v] == 0);  // outside the top-k or the nucleus: never drawn
        continue;
      }
      ++kept;
      const double expected = draws * p[v];
      chi_square += (counts[v] - expected) * (counts[v] - expected) / expected;
    }
    if (kept > 1) CHECK(chi_square < chi_square_bound(kept - 1));
  }
}

TEST_CASE("top-k applies before top-p and temperature before both, as in Hugging Face") {
  dca::Rng rng(3);
  const std::vector<double> four{std::log(0.4), std::log(0.3), std::log(0.2), std::log(0.1)};
  GenerationConfig config;
  config.top_k = 2;    // keeps 0.4 and 0.3, renormalised to 0.57 and 0.43
  config.top_p = 0.5;  // 0.57 ≥ 0.5: token 0 alone (top-p first would keep 0.4 + 0.3, then top-k both)
  for (int i = 0; i < 200; ++i) CHECK(dca::sample_token<double>(four, config, rng) == 0);

  const std::vector<double> three{std::log(0.45), std::log(0.35), std::log(0.2)};
  GenerationConfig cold, hot;
  cold.top_p = hot.top_p = 0.4;
  hot.temperature = 4;  // probabilities ∝ p^(1/4) ≈ 0.36, 0.34, 0.30: the nucleus of 0.4 needs two tokens
  std::vector<int> cold_counts(3, 0), hot_counts(3, 0);
  for (int i = 0; i < 400; ++i) {
    ++cold_counts[static_cast<std::size_t>(dca::sample_token<double>(three, cold, rng))];
    ++hot_counts[static_cast<std::size_t>(dca::sample_token<double>(three, hot, rng))];
  }
  CHECK(cold_counts == std::vector<int>{400, 0, 0});
  CHECK(hot_counts[0] > 0);
  CHECK(hot_counts[1] > 0);
  CHECK(hot_counts[2] == 0);
}

TEST_CASE("greedy sampling takes the lowest id among tied maxima and draws no random numbers; sampling draws one") {
  const std::vector<double> tied{1.0, 3.0, 3.0, 2.0};
  GenerationConfig greedy;
  greedy.temperature = 0;
  dca::Rng rng(4), reference(4);
  CHECK(dca::sample_token<double>(tied, greedy, rng) == 1);
  CHECK(rng.state() == reference.state());
  GenerationConfig sampled;
  sampled.top_k = 2;
  sampled.top_p = 0.9;
  dca::sample_token<double>(tied, sampled, rng);
  reference.uniform();
  CHECK(rng.state() == reference.state());
}

TEST_CASE("tokens with logit -inf are never drawn, and logits without a choice are rejected") {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> masked{-inf, 0.0, -inf, 1.0};
  GenerationConfig hot;
  hot.temperature = 5;
  dca::Rng rng(5);
  for (int i = 0; i < 500; ++i) {
    const index_t token = dca::sample_token<double>(masked, hot, rng);
    CHECK((token == 1 || token == 3));
  }
  CHECK_THROWS_WITH_AS(dca::sample_token<double>(std::vector<double>{}, hot, rng), doctest::Contains("empty"),
                       dca::ShapeError);
  CHECK_THROWS_WITH_AS(dca::sample_token<double>(std::vector<double>{0.0, std::nan("")}, hot, rng),
                       doctest::Contains("logit 1 is nan"), dca::NonFiniteError);
  CHECK_THROWS_WITH_AS(dca::sample_token<double>(std::vector<double>{-inf, -inf}, hot, rng),
                       doctest::Contains("all 2 logits are -inf"), dca::RangeError);
}

TEST_CASE("a stop token ends generation right after its first occurrence") {
  dca::Decoder<double> decoder(llama(), 9);
  const auto free = run(decoder, sampling()).tokens;
  REQUIRE(free.size() == 12);
  auto config = sampling();
  config.stop_tokens = {free[5]};
  const auto first_at = static_cast<std::size_t>(std::find(free.begin(), free.end(), free[5]) - free.begin());
  std::vector<index_t> seen;
  const auto result = run(decoder, config, 32, [&](index_t token) {
    seen.push_back(token);
    return true;
  });
  CHECK(result.reason == StopReason::stop_token);
  CHECK(result.tokens == first(free, first_at + 1));
  CHECK(seen == result.tokens);  // the callback saw the stop token too
}

TEST_CASE("a stop sequence ends generation once the new tokens end with it, not counting the prompt") {
  dca::Decoder<double> decoder(llama(), 10);
  const auto free = run(decoder, sampling()).tokens;
  const std::vector<index_t> sequence{free[6], free[7]};
  std::size_t end = 2;  // the first prefix of the free run that ends with the sequence
  while (!(free[end - 2] == sequence[0] && free[end - 1] == sequence[1])) ++end;
  auto config = sampling();
  const index_t last_prompt_token = random_tokens(4, 9).back();
  config.stop_sequences = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, sequence, {last_prompt_token, free[0]}};
  std::size_t straddling_end = 2;  // the prompt's last token followed by the first new one only counts inside
  while (straddling_end <= free.size() &&
         !(free[straddling_end - 2] == last_prompt_token && free[straddling_end - 1] == free[0]))
    ++straddling_end;
  const auto result = run(decoder, config);
  CHECK(result.reason == StopReason::stop_sequence);
  CHECK(result.tokens == first(free, std::min(end, straddling_end)));
}

TEST_CASE("the callback sees every token in order and stops generation when it returns false") {
  dca::Decoder<double> decoder(llama(), 11);
  const auto free = run(decoder, sampling()).tokens;
  std::vector<index_t> seen;
  const auto result = run(decoder, sampling(), 32, [&](index_t token) {
    seen.push_back(token);
    return seen.size() < 4;
  });
  CHECK(result.reason == StopReason::callback);
  CHECK(result.tokens == first(free, 4));
  CHECK(seen == result.tokens);

  auto both = sampling();  // a stop token and the callback on the same token: the stop token is the reason
  both.stop_tokens = {free[0]};
  const auto first_token = run(decoder, both, 32, [](index_t) { return false; });
  CHECK(first_token.reason == StopReason::stop_token);
  CHECK(first_token.tokens == first(free, 1));
}

TEST_CASE("max_tokens bounds the new tokens, and zero produces none but still prefills the prompt") {
  dca::Decoder<double> decoder(llama(), 12);
  auto config = sampling();
  config.max_tokens = 7;
  const auto result = run(decoder, config);
  CHECK(result.reason == StopReason::max_tokens);
  CHECK(result.tokens.size() == 7);
  config.max_tokens = 0;
  KVCache<double> cache(llama(), 16);
  bool called = false;
  const auto none = dca::generate(decoder, cache, random_tokens(4, 9), config, [&](index_t) { return called = true; });
  CHECK(none.tokens.empty());
  CHECK(none.reason == StopReason::max_tokens);
  CHECK_FALSE(called);
  CHECK(cache.size() == 4);
}

TEST_CASE("a full cache stops generation with cache_full instead of throwing") {
  dca::Decoder<double> decoder(llama(), 13);
  const auto free = run(decoder, sampling()).tokens;
  KVCache<double> cache(llama(), 7);
  const auto result = dca::generate(decoder, cache, random_tokens(4, 9), sampling());
  CHECK(result.reason == StopReason::cache_full);
  CHECK(std::string(dca::stop_reason_name(result.reason)) == "cache_full");
  CHECK(result.tokens == first(free, 7 - 4 + 1));
  CHECK(cache.size() == 7);

  // GPT-2's learned positions end at max_positions (32), whatever the cache's capacity.
  dca::Decoder<double> gpt2(decisive_presets()[0], 13);
  KVCache<double> large(decisive_presets()[0], 64);
  const auto long_prompt = random_tokens(30, 1);
  const auto at_limit = dca::generate(gpt2, large, long_prompt, sampling());
  CHECK(at_limit.reason == StopReason::cache_full);
  CHECK(at_limit.tokens.size() == 32 - 30 + 1);
}

TEST_CASE("a prompt that does not fit is rejected and leaves the cache unchanged") {
  dca::Decoder<double> decoder(llama(), 14);
  KVCache<double> cache(llama(), 6);
  dca::Tape<double> tape;
  cache.append_tokens(tape, decoder, random_tokens(3, 1));
  CHECK_THROWS_WITH_AS(dca::generate(decoder, cache, random_tokens(4, 2), sampling()),
                       doctest::Contains("4-token prompt does not fit"), dca::RangeError);
  CHECK(cache.size() == 3);
  dca::Decoder<double> gpt2(decisive_presets()[0], 14);
  KVCache<double> large(decisive_presets()[0], 64);
  CHECK_THROWS_WITH_AS(dca::generate(gpt2, large, random_tokens(33, 1), sampling()),
                       doctest::Contains("exceeds the model's 32 learned positions"), dca::RangeError);
  CHECK(large.size() == 0);
}

TEST_CASE("invalid configurations and prompts are rejected with the offending field named") {
  dca::Decoder<double> decoder(llama(), 15);
  struct Bad {
    const char* field;
    GenerationConfig config;
  };
  std::vector<Bad> bad;
  auto with = [&](const char* field, auto change) {
    GenerationConfig c;
    change(c);
    bad.push_back({field, c});
  };
  with("temperature", [](GenerationConfig& c) { c.temperature = -0.5; });
  with("temperature", [](GenerationConfig& c) { c.temperature = std::nan(""); });
  with("top_p", [](GenerationConfig& c) { c.top_p = 0; });
  with("top_p", [](GenerationConfig& c) { c.top_p = 1.5; });
  with("top_k", [](GenerationConfig& c) { c.top_k = -1; });
  with("max_tokens", [](GenerationConfig& c) { c.max_tokens = -3; });
  with("stop_sequences[1] is empty", [](GenerationConfig& c) { c.stop_sequences = {{1}, {}}; });
  with("stop_tokens[1] = 13", [](GenerationConfig& c) { c.stop_tokens = {0, 13}; });
  with("stop_sequences[0][1] = -1", [](GenerationConfig& c) { c.stop_sequences = {{2, -1}}; });
  for (const Bad& b : bad) {
    CAPTURE(b.field);
    KVCache<double> cache(llama(), 16);
    CHECK_THROWS_WITH_AS(dca::generate(decoder, cache, random_tokens(2, 1), b.config), doctest::Contains(b.field),
                         dca::RangeError);
  }
  dca::Rng rng(1);
  GenerationConfig negative;
  negative.temperature = -1;
  CHECK_THROWS_WITH_AS(dca::sample_token<double>(std::vector<double>{1.0}, negative, rng),
                       doctest::Contains("temperature"), dca::RangeError);

  KVCache<double> empty(llama(), 16);
  CHECK_THROWS_WITH_AS(dca::generate(decoder, empty, {}, GenerationConfig{}),
                       doctest::Contains("nothing to condition on"), dca::UsageError);
  dca::Tape<double> tape;
  empty.append_tokens(tape, decoder, random_tokens(2, 1));
  CHECK_THROWS_WITH_AS(dca::generate(decoder, empty, {}, GenerationConfig{}), doctest::Contains("generate_from"),
                       dca::UsageError);
  const std::vector<double> five(5);
  CHECK_THROWS_WITH_AS(dca::generate_from(tape, decoder, empty, std::span<const double>(five), GenerationConfig{}),
                       doctest::Contains("5 next-token logits for a vocabulary of 13"), dca::ShapeError);
}

TEST_CASE("generation resets its tape every step, so its arena does not grow after the first, and restores gradients") {
  dca::Decoder<double> decoder(llama(), 16);
  dca::Tape<double> tape(2048);  // a small first block, so that steps left on the tape would need more
  KVCache<double> cache(llama(), 40);
  std::vector<std::size_t> reserved, nodes;
  auto config = sampling();
  config.max_tokens = 16;
  const auto result = dca::generate(tape, decoder, cache, random_tokens(16, 1), config, [&](index_t) {
    reserved.push_back(tape.arena().reserved_bytes());
    nodes.push_back(tape.size());
    CHECK_FALSE(tape.grad_enabled());
    return true;
  });
  REQUIRE(result.tokens.size() == 16);
  // Token 0 is sampled from the prefill's logits; the first reset merges the prefill's blocks into one.
  CHECK(std::all_of(reserved.begin() + 1, reserved.end(), [&](std::size_t r) { return r == reserved[1]; }));
  CHECK(std::all_of(nodes.begin() + 1, nodes.end(), [&](std::size_t n) { return n == nodes[1]; }));
  CHECK(tape.grad_enabled());
}

TEST_CASE("generate_text continues a prompt byte by byte, streams each byte and stops at stop strings") {
  auto config = DecoderConfig::gpt2({.vocab = 256, .dim = 16, .layers = 1, .heads = 2, .max_positions = 64});
  config.init_std = 0.5;
  dca::Decoder<float> model(config, 17);
  GenerationConfig sample;
  sample.max_tokens = 12;
  sample.seed = 3;
  std::string streamed;
  const std::string text = dca::generate_text(model, "ab", sample, 64, {}, [&](std::string_view piece) {
    CHECK(piece.size() == 1);
    streamed += piece;
    return true;
  });
  KVCache<float> cache(config, 64);
  const auto ids = dca::generate(model, cache, dca::ByteTokenizer().encode("ab"), sample).tokens;
  CHECK(text == dca::ByteTokenizer().decode(ids));
  CHECK(streamed == text);

  const std::string stop = text.substr(5, 2);
  CHECK(dca::generate_text(model, "ab", sample, 64, {"never-generated", stop}) == text.substr(0, text.find(stop) + 2));
  int pieces = 0;
  CHECK(dca::generate_text(model, "ab", sample, 64, {}, [&](std::string_view) { return ++pieces < 3; }) ==
        text.substr(0, 3));
  CHECK(dca::generate_text(model, "ab", sample, 4) == text.substr(0, 4 - 2 + 1));  // cache_full

  CHECK_THROWS_WITH_AS(dca::generate_text(model, "ab", sample, 64, {"x", ""}), doctest::Contains("stop_strings[1]"),
                       dca::RangeError);
  dca::Decoder<float> not_bytes(
      DecoderConfig::gpt2({.vocab = 300, .dim = 16, .layers = 1, .heads = 2, .max_positions = 64}), 1);
  CHECK_THROWS_WITH_AS(dca::generate_text(not_bytes, "ab", sample, 64), doctest::Contains("byte-level"),
                       dca::UsageError);
}
