// dca/cache/generate.hpp — autoregressive generation against a KV cache: the prompt is prefilled
// once, then every new token is one decoder row attending to the cached slots, so a token costs
// O(context) attention instead of a full recomputation of the context.
//
//   dca::KVCache<float> cache(model.config(), /*capacity*/ 512);
//   dca::GenerationConfig config;
//   config.temperature = 0.8;
//   config.top_p = 0.95;
//   auto result = dca::generate(model, cache, prompt_ids, config);     // result.tokens, result.reason
//   std::string text = dca::generate_text(model, "The meaning of ", config, 512);  // byte-level models
//
// Sampling applies, in this order (as Hugging Face's logits warpers do): temperature, then top-k,
// then top-p (the nucleus is taken from the top-k tokens' renormalised probabilities).
#pragma once

#include "dca/cache/kv_cache.hpp"
#include "dca/core/random.hpp"
#include "dca/data/tokenizer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dca {

/// How to choose new tokens and when to stop.
struct GenerationConfig {
  index_t max_tokens = 128;         // new tokens to produce at most
  double temperature = 1.0;         // 0: greedy (argmax, ties to the lowest id; top_k/top_p then do nothing);
                                    // > 0: sample from softmax(logits / temperature)
  index_t top_k = 0;                // 0: off; else sample among the k most likely tokens
  double top_p = 1.0;               // nucleus: the smallest set of most likely tokens with mass ≥ top_p (1: off)
  std::uint64_t seed = 0;           // same seed, same model, same prompt ⇒ same tokens
  std::vector<index_t> stop_tokens{};                // stop after producing one of these
  std::vector<std::vector<index_t>> stop_sequences{};  // stop after the new tokens end with one of these

  /// Throws RangeError naming the first field that is out of range and its value.
  void validate() const {
    if (max_tokens < 0) detail::fail<RangeError>("GenerationConfig: max_tokens must be ≥ 0, got ", max_tokens);
    if (!(temperature >= 0) || !std::isfinite(temperature))
      detail::fail<RangeError>("GenerationConfig: temperature must be finite and ≥ 0 (0: greedy), got ", temperature);
    if (top_k < 0) detail::fail<RangeError>("GenerationConfig: top_k must be ≥ 0 (0: off), got ", top_k);
    if (!(top_p > 0 && top_p <= 1))
      detail::fail<RangeError>("GenerationConfig: top_p must be in (0, 1] (1: off), got ", top_p);
    for (std::size_t i = 0; i < stop_sequences.size(); ++i)
      if (stop_sequences[i].empty())
        detail::fail<RangeError>("GenerationConfig: stop_sequences[", i, "] is empty (it would match at once)");
  }
};

/// Why generation ended. When several reasons apply to the same token, the first of stop_token,
/// stop_sequence, callback, max_tokens, cache_full is given.
enum class StopReason {
  max_tokens,     // config.max_tokens tokens were produced
  stop_token,     // the last token is one of config.stop_tokens
  stop_sequence,  // the new tokens end with one of config.stop_sequences
  callback,       // on_token returned false
  cache_full,     // no room for another slot: the cache is at capacity, or a model with learned positions is at
                  // its max_positions
};

/// The enumerator's name, e.g. "cache_full".
inline const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::max_tokens: return "max_tokens";
    case StopReason::stop_token: return "stop_token";
    case StopReason::stop_sequence: return "stop_sequence";
    case StopReason::callback: return "callback";
    case StopReason::cache_full: return "cache_full";
  }
  return "unknown";
}

/// The new tokens (including the one that triggered a stop) and why generation ended.
struct GenerationResult {
  std::vector<index_t> tokens;
  StopReason reason = StopReason::max_tokens;
};

namespace detail {

// One token still in the running while sampling: its score is logit / temperature.
struct TokenCandidate {
  double score;
  index_t id;
};

// The strict total order of "more likely": higher score first, the lower id on ties. Being total, it
// makes the top-k and top-p sets the same whatever order the sorting algorithms leave equal keys in.
inline bool more_likely(const TokenCandidate& a, const TokenCandidate& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

template <Scalar T>
void check_logits(std::span<const T> logits) {
  if (logits.empty()) fail<ShapeError>("sample_token: the logits are empty");
  bool any_finite = false;
  for (std::size_t v = 0; v < logits.size(); ++v) {
    if (std::isnan(logits[v]) || logits[v] == std::numeric_limits<T>::infinity())
      fail<NonFiniteError>("sample_token: logit ", v, " is ", logits[v]);
    any_finite = any_finite || logits[v] > -std::numeric_limits<T>::infinity();
  }
  if (!any_finite) fail<RangeError>("sample_token: all ", logits.size(), " logits are -inf; no token can be chosen");
}

// sample_token without validation, with caller-owned scratch so that a generation loop allocates
// it once. Draws exactly one rng.uniform() when temperature > 0 and none when greedy.
template <Scalar T>
index_t sample_token(std::span<const T> logits, const GenerationConfig& config, Rng& rng,
                     std::vector<TokenCandidate>& candidates) {
  if (config.temperature == 0) {
    std::size_t best = 0;
    for (std::size_t v = 1; v < logits.size(); ++v)
      if (logits[v] > logits[best]) best = v;  // strict: ties keep the lowest id
    return static_cast<index_t>(best);
  }
  candidates.clear();
  for (std::size_t v = 0; v < logits.size(); ++v)  // -inf logits have probability 0: never candidates
    if (logits[v] > -std::numeric_limits<T>::infinity())
      candidates.push_back({static_cast<double>(logits[v]) / config.temperature, static_cast<index_t>(v)});

  const auto count = static_cast<index_t>(candidates.size());
  if (config.top_k > 0 && config.top_k < count) {
    std::nth_element(candidates.begin(), candidates.begin() + (config.top_k - 1), candidates.end(), more_likely);
    candidates.resize(static_cast<std::size_t>(config.top_k));
  }
  if (config.top_p < 1) {
    std::sort(candidates.begin(), candidates.end(), more_likely);
    const double max = candidates.front().score;
    double total = 0;
    for (const TokenCandidate& c : candidates) total += std::exp(c.score - max);
    // Summed in the same order as `total`, the mass reaches top_p·total at the latest at the last one.
    double mass = 0;
    std::size_t keep = 0;
    while (keep < candidates.size()) {
      mass += std::exp(candidates[keep++].score - max);
      if (mass >= config.top_p * total) break;
    }
    candidates.resize(keep);
  }

  // Draw in id order, so the token a given uniform maps to is fixed by the kept set alone.
  std::sort(candidates.begin(), candidates.end(),
            [](const TokenCandidate& a, const TokenCandidate& b) { return a.id < b.id; });
  double max = -std::numeric_limits<double>::infinity();
  for (const TokenCandidate& c : candidates) max = std::max(max, c.score);
  double total = 0;
  for (TokenCandidate& c : candidates) total += c.score = std::exp(c.score - max);  // score becomes the weight
  const double u = rng.uniform() * total;
  double cumulative = 0;
  index_t last_positive = candidates.front().id;
  for (const TokenCandidate& c : candidates) {
    cumulative += c.score;
    if (c.score > 0) last_positive = c.id;
    if (u < cumulative) return c.id;
  }
  return last_positive;  // u rounded up to total: the last token that has any probability
}

// Stop ids outside the vocabulary can never be produced, which is a caller's mistake.
inline void check_stop_ids(const GenerationConfig& config, index_t vocab_size) {
  auto check = [&](index_t id, const auto&... field) {
    if (id < 0 || id >= vocab_size)
      fail<RangeError>("generate: ", field..., " = ", id, " is outside the model's vocabulary [0,", vocab_size, ")");
  };
  for (std::size_t i = 0; i < config.stop_tokens.size(); ++i) check(config.stop_tokens[i], "stop_tokens[", i, "]");
  for (std::size_t s = 0; s < config.stop_sequences.size(); ++s)
    for (std::size_t i = 0; i < config.stop_sequences[s].size(); ++i)
      check(config.stop_sequences[s][i], "stop_sequences[", s, "][", i, "]");
}

template <Scalar T>
std::span<const T> last_row(const Var<T>& logits) {
  return logits.value().span().subspan(static_cast<std::size_t>((logits.rows() - 1) * logits.cols()));
}

// After each new token has run through the cache: may change the cache (insert latents) and
// return the logits to sample the next token from; receives the token's own logits.
template <Scalar T>
using AfterToken = std::function<std::span<const T>(std::span<const T> logits, index_t tokens_so_far)>;

// The decode loop shared by generate, generate_from and augmented sessions: samples from `logits`,
// then feeds each new token back through the cache. Expects a validated config and gradients
// disabled on `tape`.
template <Scalar T>
GenerationResult decode(Tape<T>& tape, Decoder<T>& model, KVCache<T>& cache, std::span<const T> logits,
                        const GenerationConfig& config, const std::function<bool(index_t)>& on_token,
                        const AfterToken<T>& after_token = {}) {
  GenerationResult result;
  if (config.max_tokens == 0) return result;
  result.tokens.reserve(static_cast<std::size_t>(std::min(config.max_tokens, cache.capacity() - cache.size() + 1)));
  const DecoderConfig& model_config = model.config();
  const bool learned_positions = model_config.positions == PositionKind::learned;
  Rng rng(config.seed);
  std::vector<TokenCandidate> candidates;
  for (;;) {
    check_logits(logits);
    const index_t token = sample_token(logits, config, rng, candidates);
    result.tokens.push_back(token);
    const bool go_on = !on_token || on_token(token);
    const auto& tokens = result.tokens;
    auto ends_with = [&](const std::vector<index_t>& s) {
      return s.size() <= tokens.size() && std::equal(s.rbegin(), s.rend(), tokens.rbegin());
    };
    if (std::find(config.stop_tokens.begin(), config.stop_tokens.end(), token) != config.stop_tokens.end())
      result.reason = StopReason::stop_token;
    else if (std::any_of(config.stop_sequences.begin(), config.stop_sequences.end(), ends_with))
      result.reason = StopReason::stop_sequence;
    else if (!go_on)
      result.reason = StopReason::callback;
    else if (static_cast<index_t>(tokens.size()) == config.max_tokens)
      result.reason = StopReason::max_tokens;
    else if (cache.size() == cache.capacity() ||
             (learned_positions && cache.next_position() >= model_config.max_positions))
      result.reason = StopReason::cache_full;
    else {
      tape.reset();  // this step's activations replace the last one's: memory stays flat
      logits = last_row(cache.append_tokens(tape, model, std::span<const index_t>(&tokens.back(), 1)));
      if (after_token) logits = after_token(logits, static_cast<index_t>(tokens.size()));
      continue;
    }
    return result;
  }
}

}  // namespace detail

/// Chooses the next token from one row of logits [V]: the argmax when config.temperature is 0
/// (ties go to the lowest id), otherwise a draw from softmax(logits / temperature) restricted first
/// to the top_k most likely tokens, then to the nucleus of mass top_p among those (renormalised).
/// Tokens with logit -inf are never drawn. Draws exactly one rng.uniform() when sampling and none
/// when greedy. Throws RangeError for an invalid config or all-(-inf) logits, ShapeError for empty
/// logits, NonFiniteError for a NaN or +inf logit.
template <Scalar T>
index_t sample_token(std::span<const T> logits, const GenerationConfig& config, Rng& rng) {
  config.validate();
  detail::check_logits(logits);
  std::vector<detail::TokenCandidate> candidates;
  return detail::sample_token(logits, config, rng, candidates);
}

/// Prefills the cache with the prompt (appended after whatever the cache already holds) and decodes
/// token by token against it; `on_token(token)` is called for every new token as it is produced
/// (streaming), including one that triggers a stop, and may return false to stop.
///
/// Each new token is run through `cache.append_tokens` on `tape`, with gradients off; the tape is
/// reset before the prefill and before every step (so Vars on it become invalid, and its memory does
/// not grow with the number of tokens); its gradient switch is restored on return. Inference only: the cache's slots become constants
/// (`detach()`; fork first to keep an active tail). When the cache has no room for the next token
/// (capacity reached, or a learned-position model at max_positions), generation stops with
/// StopReason::cache_full instead of throwing: a cache of capacity C holding P slots after the
/// prefill yields at most C − P + 1 tokens. On return the cache holds the prompt and every new token
/// but the last, which was sampled and never run through the decoder (append it to continue).
///
/// Throws RangeError for an invalid config (see validate()), a stop id outside the vocabulary, a
/// prompt that does not fit the cache or a learned-position model's max_positions (the cache is then
/// unchanged) or a prompt id outside the vocabulary (from the decoder), and UsageError for an empty
/// prompt: an empty cache gives nothing to condition on, and a non-empty one stores keys and values
/// but not the next-token logits — continue from logits with generate_from.
template <Scalar T>
GenerationResult generate(Tape<T>& tape, Decoder<T>& model, KVCache<T>& cache, std::span<const index_t> prompt,
                          const GenerationConfig& config, const std::function<bool(index_t)>& on_token = {}) {
  config.validate();
  detail::check_stop_ids(config, model.config().vocab_size);
  if (prompt.empty()) {
    if (cache.size() == 0)
      detail::fail<UsageError>("generate: the prompt and the cache are both empty: there is nothing to condition on");
    detail::fail<UsageError>("generate: the prompt is empty; the cache's ", cache.size(),
                             " slots hold keys and values but not the next-token logits. Pass at least one token "
                             "(e.g. the last one, after crop(size() - 1)), or call generate_from with the logits");
  }
  const auto n = static_cast<index_t>(prompt.size());
  if (cache.size() + n > cache.capacity())
    detail::fail<RangeError>("generate: the ", n, "-token prompt does not fit the cache: ", cache.size(), " of ",
                             cache.capacity(), " slots are used");
  const DecoderConfig& model_config = model.config();
  if (model_config.positions == PositionKind::learned && cache.next_position() + n > model_config.max_positions)
    detail::fail<RangeError>("generate: the ", n, "-token prompt at positions ", cache.next_position(), "..",
                             cache.next_position() + n - 1, " exceeds the model's ", model_config.max_positions,
                             " learned positions");
  cache.detach();
  tape.reset();
  NoGradGuard<T> no_grad(tape);
  const auto logits = detail::last_row(cache.append_tokens(tape, model, prompt));
  return detail::decode(tape, model, cache, logits, config, on_token);
}

/// The same on a tape of its own.
template <Scalar T>
GenerationResult generate(Decoder<T>& model, KVCache<T>& cache, std::span<const index_t> prompt,
                          const GenerationConfig& config, const std::function<bool(index_t)>& on_token = {}) {
  Tape<T> tape;
  return generate(tape, model, cache, prompt, config, on_token);
}

/// Decodes after the cache's last slot from its next-token logits [V], which the caller already has:
/// e.g. the last row of `cache.insert_latents(...)`'s logits, to generate from a latent-augmented
/// cache. `next_logits` may live on `tape`: they are read before the tape is first reset. Otherwise
/// exactly as generate (which is this after prefilling the prompt); ShapeError if next_logits does
/// not have V entries.
template <Scalar T>
GenerationResult generate_from(Tape<T>& tape, Decoder<T>& model, KVCache<T>& cache, std::span<const T> next_logits,
                               const GenerationConfig& config, const std::function<bool(index_t)>& on_token = {}) {
  config.validate();
  detail::check_stop_ids(config, model.config().vocab_size);
  if (static_cast<index_t>(next_logits.size()) != model.config().vocab_size)
    detail::fail<ShapeError>("generate_from: ", next_logits.size(), " next-token logits for a vocabulary of ",
                             model.config().vocab_size);
  cache.detach();
  NoGradGuard<T> no_grad(tape);
  return detail::decode(tape, model, cache, next_logits, config, on_token);
}

/// Byte-level text generation (ByteTokenizer; the model's vocabulary must be the 256 bytes): continues
/// `prompt` in a fresh cache of `capacity` slots and returns the new text only. `stop_strings` stop
/// generation once the new text ends with one of them (the returned text includes it); `on_text`
/// receives each new token's byte as it is produced (a UTF-8 character may span several pieces) and
/// may return false to stop. Errors as generate; RangeError for an empty stop string.
template <Scalar T>
std::string generate_text(Decoder<T>& model, std::string_view prompt, GenerationConfig config, index_t capacity,
                          const std::vector<std::string>& stop_strings = {},
                          const std::function<bool(std::string_view piece)>& on_text = {}) {
  if (model.config().vocab_size != ByteTokenizer::byte_tokens)
    detail::fail<UsageError>("generate_text: needs a byte-level model (vocabulary ", ByteTokenizer::byte_tokens,
                             "), this one has ", model.config().vocab_size, " tokens; use generate with token ids");
  const ByteTokenizer tokenizer;
  for (std::size_t i = 0; i < stop_strings.size(); ++i) {
    if (stop_strings[i].empty()) detail::fail<RangeError>("generate_text: stop_strings[", i, "] is empty");
    config.stop_sequences.push_back(tokenizer.encode(stop_strings[i]));
  }
  KVCache<T> cache(model.config(), capacity);
  std::string text;
  generate(model, cache, tokenizer.encode(prompt), config, [&](index_t token) {
    text.push_back(static_cast<char>(static_cast<unsigned char>(token)));
    return !on_text || on_text(std::string_view(text).substr(text.size() - 1));
  });
  return text;
}

}  // namespace dca
