// dca/experiment/evaluation.hpp — exact-match accuracy on held-out arithmetic, by the frozen
// decoder alone or with a coprocessor augmenting the cache at the end of the prompt (at once, or
// asynchronously, arriving a fixed number of tokens late).
//
//   const auto problems = dca::held_out_problems(arithmetic, 200);
//   const auto frozen = dca::score_arithmetic(decoder, arithmetic, problems);
//   const auto augmented = dca::score_arithmetic(decoder, coprocessor, arithmetic, problems, {});
//   std::printf("%.1f%% → %.1f%%\n", 100 * frozen.accuracy(), 100 * augmented.accuracy());
//
// The model reads a fixed few-shot context of training problems, one per line (the layout of the
// training text), then the held-out prompt "37*86=", and decodes greedily up to a newline or
// answer_budget(config) bytes. No task-specific training: the model saw arithmetic only as part of
// its general training mixture.
#pragma once

#include "dca/coproc/session.hpp"
#include "dca/experiment/arithmetic.hpp"
#include "dca/data/tokenizer.hpp"

#include <algorithm>
#include <functional>
#include <optional>
#include <span>
#include <string>

namespace dca {

/// Exact matches out of a number of problems.
struct ArithmeticScore {
  index_t correct = 0;
  index_t total = 0;

  double accuracy() const { return total == 0 ? 0.0 : static_cast<double>(correct) / static_cast<double>(total); }
};

/// Scores `answer(problem)` — the text a model generated after the problem's prompt — against
/// each problem's answer with exact_match.
inline ArithmeticScore score_answers(std::span<const Problem> problems,
                                     const std::function<std::string(const Problem&)>& answer) {
  ArithmeticScore score;
  for (const Problem& problem : problems) {
    score.correct += exact_match(answer(problem), problem.answer) ? 1 : 0;
    ++score.total;
  }
  return score;
}

/// The few-shot context placed before every prompt: `shots` training problems (never held out),
/// the same for every problem and every model, each ending in a newline.
inline std::string arithmetic_context(const ArithmeticConfig& config, index_t shots) {
  if (shots < 0) detail::fail<RangeError>("arithmetic_context: shots = ", shots, " is negative");
  ArithmeticConfig context_config = config;
  context_config.seed = config.seed + 0x5eed;  // not the training text's order
  ArithmeticGenerator generator(context_config);
  std::string context;
  for (index_t i = 0; i < shots; ++i) context += generator.next_training().text();
  return context;
}

namespace detail {

// Greedy answers, up to a newline or answer_budget bytes, after the few-shot context: one call of
// `answer(prompt, greedy, capacity)` per problem, which returns the generated tokens; `capacity` fits
// the longest prompt, the answer and `extra_slots` more (latents).
template <class Answer>
ArithmeticScore score_greedy(const ArithmeticConfig& config, std::span<const Problem> problems, index_t shots,
                             index_t extra_slots, Answer&& answer) {
  const ByteTokenizer tokenizer;
  const std::string context = arithmetic_context(config, shots);
  const index_t budget = answer_budget(config);
  GenerationConfig greedy;
  greedy.temperature = 0;
  greedy.max_tokens = budget;
  greedy.stop_tokens = {static_cast<index_t>('\n')};
  index_t longest_prompt = 0;
  for (const Problem& problem : problems) longest_prompt = std::max<index_t>(longest_prompt, static_cast<index_t>(problem.prompt.size()));
  const index_t capacity = static_cast<index_t>(context.size()) + longest_prompt + budget + extra_slots + 1;
  return score_answers(problems, [&](const Problem& problem) {
    return tokenizer.decode(answer(tokenizer.encode(context + problem.prompt), greedy, capacity));
  });
}

}  // namespace detail

/// Accuracy of greedy answers with the decoder augmented by `coprocessor` on `schedule` (only its
/// after_prompt, asynchronous and delay fields matter for answers this short).
template <Scalar T, index_t NumLatents, AheadObjective Objective>
ArithmeticScore score_arithmetic(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                                 const ArithmeticConfig& config, std::span<const Problem> problems,
                                 const AugmentationSchedule& schedule, index_t shots = 4) {
  std::optional<AugmentedSession<T, NumLatents, Objective>> session;
  return detail::score_greedy(
      config, problems, shots, coprocessor.n_latents(),
      [&](const std::vector<index_t>& prompt, const GenerationConfig& greedy, index_t capacity) {
        if (!session) session.emplace(decoder, &coprocessor, capacity);
        return session->generate(prompt, greedy, schedule).result.tokens;
      });
}

/// Accuracy of the frozen decoder alone: plain cached greedy decoding.
template <Scalar T>
ArithmeticScore score_arithmetic(Decoder<T>& decoder, const ArithmeticConfig& config, std::span<const Problem> problems,
                                 index_t shots = 4) {
  std::optional<KVCache<T>> cache;
  Tape<T> tape;
  return detail::score_greedy(
      config, problems, shots, 0,
      [&](const std::vector<index_t>& prompt, const GenerationConfig& greedy, index_t capacity) {
        if (!cache) cache.emplace(decoder.config(), capacity);
        cache->reset();
        return generate(tape, decoder, *cache, prompt, greedy).tokens;
      });
}

}  // namespace dca
