// dca/experiment/chain_evaluation.hpp — accuracy on held-out variable-chain programs
// (experiment/chains.hpp): the frozen decoder's bare answer, its answer when it writes the worked
// steps (the upper bound a deeper computation could reach), and the bare answer with a
// coprocessor's latents inserted once at the end of the prompt — the latents of the program itself,
// or, as a content control, those computed for another program.
//
//   const std::string context = dca::chain_context(config, 2);
//   const auto programs = dca::held_out_chains(config, /*hops*/ 3, 300);
//   const auto direct = dca::score_chains_direct(decoder, context, programs);
//   const auto worked = dca::score_chains_worked(decoder, context, programs);
//   const auto augmented = dca::score_chains_augmented(decoder, coprocessor, context, programs);
//
// Bare answers are one digit, so they are scored by the argmax of the next-token distribution after
// "?d=" (what greedy decoding would write first), many programs per forward pass; worked answers
// are decoded greedily up to a newline. The evaluation reads no held-out program into any model.
#pragma once

#include "dca/cache/generate.hpp"
#include "dca/coproc/coprocessor.hpp"
#include "dca/data/tokenizer.hpp"
#include "dca/experiment/chains.hpp"
#include "dca/experiment/evaluation.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <vector>

namespace dca {

/// Whose latents the augmented decoder reads.
enum class LatentControl {
  own,       // the latents computed for the program itself
  shuffled,  // those of the next program in the batch (content control: equal to own if latents carry nothing)
};

namespace detail {

// Programs in batches of `batch`, each as context + bare prompt + its first `steps` worked steps +
// answer, right-padded with newlines to the batch's longest: `ids` [B·T] and the row of each
// prompt's last token.
struct ChainBatch {
  std::vector<index_t> ids;
  std::vector<index_t> prompt_ends;  // [B] position of the prompt's last byte ('=')
  std::vector<index_t> answers;      // [B]
  index_t batch = 0;
  index_t seq_len = 0;
};

inline std::vector<ChainBatch> chain_batches(const std::string& context, std::span<const ChainProgram> programs,
                                             index_t batch, index_t steps = 0) {
  if (batch < 1) fail<RangeError>("chain evaluation: batch = ", batch, " must be at least 1");
  std::vector<ChainBatch> out;
  for (std::size_t begin = 0; begin < programs.size(); begin += static_cast<std::size_t>(batch)) {
    const std::size_t end = std::min(programs.size(), begin + static_cast<std::size_t>(batch));
    ChainBatch b;
    b.batch = static_cast<index_t>(end - begin);
    std::vector<std::string> texts;
    for (std::size_t i = begin; i < end; ++i) {
      texts.push_back(context + programs[i].bare_prompt() + programs[i].worked_steps(steps));
      b.prompt_ends.push_back(static_cast<index_t>(texts.back().size()) - 1);
      b.answers.push_back(static_cast<unsigned char>(programs[i].answer));
      texts.back() += programs[i].answer;
      b.seq_len = std::max<index_t>(b.seq_len, static_cast<index_t>(texts.back().size()) + 1);
    }
    for (const std::string& text : texts) {
      for (const char c : text) b.ids.push_back(static_cast<unsigned char>(c));
      b.ids.insert(b.ids.end(), static_cast<std::size_t>(b.seq_len) - text.size(), static_cast<index_t>('\n'));
    }
    out.push_back(std::move(b));
  }
  return out;
}

// The highest logit's id of row `row` of logits [N, V] (ties to the lowest id, as greedy decoding).
template <Scalar T>
index_t argmax_row(TensorView<const T> logits, index_t row) {
  const index_t V = logits.shape()[1];
  index_t best = 0;
  for (index_t v = 1; v < V; ++v)
    if (logits[row * V + v] > logits[row * V + best]) best = v;
  return best;
}

// The argmax of the mixture g·softmax(augmented row a) + (1 − g)·softmax(frozen row f): a gated
// coprocessor's prediction.
template <Scalar T>
index_t argmax_mixture(TensorView<const T> augmented, index_t a, TensorView<const T> frozen, index_t f, double g) {
  const index_t V = augmented.shape()[1];
  const auto probabilities = [V](TensorView<const T> logits, index_t row) {
    std::vector<double> p(static_cast<std::size_t>(V));
    double top = logits[row * V], sum = 0;
    for (index_t v = 1; v < V; ++v) top = std::max<double>(top, logits[row * V + v]);
    for (index_t v = 0; v < V; ++v) sum += p[static_cast<std::size_t>(v)] = std::exp(logits[row * V + v] - top);
    for (double& x : p) x /= sum;
    return p;
  };
  const std::vector<double> pa = probabilities(augmented, a), pf = probabilities(frozen, f);
  index_t best = 0;
  for (index_t v = 1; v < V; ++v)
    if (g * pa[static_cast<std::size_t>(v)] + (1 - g) * pf[static_cast<std::size_t>(v)] >
        g * pa[static_cast<std::size_t>(best)] + (1 - g) * pf[static_cast<std::size_t>(best)])
      best = v;
  return best;
}

}  // namespace detail

/// Counts the programs whose predicted first answer byte is their digit.
inline ArithmeticScore score_chain_answers(std::span<const ChainProgram> programs, std::span<const index_t> predicted) {
  if (programs.size() != predicted.size())
    detail::fail<ShapeError>("score_chain_answers: ", predicted.size(), " predictions for ", programs.size(), " programs");
  ArithmeticScore score;
  for (std::size_t i = 0; i < programs.size(); ++i)
    score.correct += predicted[i] == static_cast<unsigned char>(programs[i].answer) ? 1 : 0;
  score.total = static_cast<index_t>(programs.size());
  return score;
}

/// The frozen decoder's bare answers: for each program the byte it ranks first after
/// context + "…?q=" (what greedy decoding writes first), `batch` programs per forward pass.
/// With `steps` > 0 the program's first worked steps follow as text ("…?d=b=" for one step of
/// d ← b ← k ← 5): what latents could tell the decoder if it read them as written steps.
/// RangeError unless 0 ≤ steps < every program's hop count.
template <Scalar T>
std::vector<index_t> chain_answers_direct(Decoder<T>& decoder, const std::string& context,
                                          std::span<const ChainProgram> programs, index_t batch = 32,
                                          index_t steps = 0) {
  std::vector<index_t> predicted;
  Tape<T> tape;
  for (const detail::ChainBatch& b : detail::chain_batches(context, programs, batch, steps)) {
    tape.reset();
    NoGradGuard<T> no_grad(tape);
    const Var<T> logits = decoder.logits(tape, b.ids, b.batch);
    for (index_t i = 0; i < b.batch; ++i)
      predicted.push_back(detail::argmax_row<T>(logits.value(), i * b.seq_len + b.prompt_ends[static_cast<std::size_t>(i)]));
  }
  return predicted;
}

/// Accuracy of chain_answers_direct.
template <Scalar T>
ArithmeticScore score_chains_direct(Decoder<T>& decoder, const std::string& context,
                                    std::span<const ChainProgram> programs, index_t batch = 32) {
  const std::vector<index_t> predicted = chain_answers_direct(decoder, context, programs, batch);
  return score_chain_answers(programs, predicted);
}

/// Accuracy of the bare answers given the first `steps` worked steps as text (chain_answers_direct).
template <Scalar T>
ArithmeticScore score_chains_given_steps(Decoder<T>& decoder, const std::string& context,
                                         std::span<const ChainProgram> programs, index_t steps, index_t batch = 32) {
  const std::vector<index_t> predicted = chain_answers_direct(decoder, context, programs, batch, steps);
  return score_chain_answers(programs, predicted);
}

/// Worked answers of the frozen decoder: greedy decoding after each program's "!q=" up to a newline
/// (at most 2·max_hops + 1 bytes, the longest steps and their newline); correct when the steps end
/// in the program's digit (worked_answer_matches).
template <Scalar T>
ArithmeticScore score_chains_worked(Decoder<T>& decoder, const std::string& context,
                                    std::span<const ChainProgram> programs) {
  const ByteTokenizer tokenizer;
  GenerationConfig greedy;
  greedy.temperature = 0;
  greedy.stop_tokens = {static_cast<index_t>('\n')};
  index_t longest = 0, budget = 0;
  for (const ChainProgram& p : programs) {
    longest = std::max<index_t>(longest, static_cast<index_t>(p.worked_prompt().size()));
    budget = std::max<index_t>(budget, 2 * p.hops() + 1);
  }
  greedy.max_tokens = budget;
  KVCache<T> cache(decoder.config(), static_cast<index_t>(context.size()) + longest + budget + 1);
  Tape<T> tape;
  ArithmeticScore score;
  for (const ChainProgram& p : programs) {
    cache.reset();
    const auto tokens = generate(tape, decoder, cache, tokenizer.encode(context + p.worked_prompt()), greedy).tokens;
    score.correct += worked_answer_matches(tokenizer.decode(tokens), p.answer) ? 1 : 0;
    ++score.total;
  }
  return score;
}

/// The bare answers with `coprocessor`'s latents inserted once after each program's "?q=" (as its
/// training inserts them, at its position policy): the byte the decoder ranks first at the last
/// latent, `batch` programs per pass; for a gated coprocessor, the byte its mixture with the frozen
/// decoder ranks first (the shuffled control swaps the latents, each program keeping its own gate).
/// The coprocessor's horizon is one ahead token during the call and restored after it. UsageError
/// for the shuffled control with a batch of fewer than two programs.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
std::vector<index_t> chain_answers_augmented(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                                             const std::string& context, std::span<const ChainProgram> programs,
                                             LatentControl control = LatentControl::own, index_t batch = 32) {
  struct HorizonGuard {  // restores the trained N_A on every exit
    Coprocessor<T, NumLatents, Objective>& coprocessor;
    index_t trained = coprocessor.config().n_ahead;
    ~HorizonGuard() { coprocessor.set_n_ahead(trained); }
  } guard{coprocessor};
  coprocessor.set_n_ahead(1);
  std::vector<index_t> predicted;
  Tape<T> tape;
  for (const detail::ChainBatch& b : detail::chain_batches(context, programs, batch)) {
    if (control == LatentControl::shuffled && b.batch < 2)
      detail::fail<UsageError>("chain_answers_augmented: the shuffled control needs two programs per batch, got ",
                               b.batch);
    tape.reset();
    NoGradGuard<T> no_grad(tape);
    const AugmentationPlan plan = AugmentationPlan::given(b.batch, b.seq_len, 1, b.prompt_ends);
    const index_t n_latents = coprocessor.n_latents();
    const AugmentationLayout layout = AugmentationLayout::of(plan, b.ids, n_latents, coprocessor.config().positions,
                                                             coprocessor.config().oracle_lookahead);
    const bool gated = coprocessor.config().gated;
    const TokenPass<T> tokens = coprocessor.read_tokens(tape, decoder, b.ids, b.batch, gated);
    GatedLatents<T> read;  // ungated: the latents alone
    if (gated)
      read = coprocessor.gated_latents(tape, decoder, tokens.cache, layout.latents, tokens.residual);
    else
      read.latents = coprocessor.latents(tape, decoder, tokens.cache, layout.latents, tokens.residual);
    Var<T> z = read.latents;
    if (control == LatentControl::shuffled)  // group g reads group g+1's latents, the last the first's
      z = concat_rows(std::span<const Var<T>>(std::vector<Var<T>>{
          slice_rows(z, n_latents, (b.batch - 1) * n_latents), slice_rows(z, 0, n_latents)}));
    DecoderInput<T> in;
    in.embeddings = z;  // N_A = 1: the latents alone, the last predicting the answer
    in.positions = layout.ahead_positions;
    in.groups = layout.ahead_groups;
    in.layer_caches = tokens.cache;
    const Var<T> logits = decoder.forward(tape, in).logits;
    if (!gated) {
      for (index_t g = 0; g < b.batch; ++g)
        predicted.push_back(detail::argmax_row<T>(logits.value(), layout.target_row(g, 0)));
      continue;
    }
    for (index_t g = 0; g < b.batch; ++g)
      predicted.push_back(detail::argmax_mixture<T>(logits.value(), layout.target_row(g, 0), tokens.logits.value(),
                                                    g * b.seq_len + b.prompt_ends[static_cast<std::size_t>(g)],
                                                    static_cast<double>(read.gates.value()[g])));
  }
  return predicted;
}

/// Accuracy of chain_answers_augmented.
template <Scalar T, index_t NumLatents, AheadObjective Objective>
ArithmeticScore score_chains_augmented(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>& coprocessor,
                                       const std::string& context, std::span<const ChainProgram> programs,
                                       LatentControl control = LatentControl::own, index_t batch = 32) {
  const std::vector<index_t> predicted = chain_answers_augmented(decoder, coprocessor, context, programs, control, batch);
  return score_chain_answers(programs, predicted);
}

}  // namespace dca
