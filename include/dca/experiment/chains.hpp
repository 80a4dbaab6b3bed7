// dca/experiment/chains.hpp — a reasoning task that needs serial computation: variable-chain
// programs. Each line assigns a digit to a variable and copies it along a chain of variables, with
// distractor chains beside it and the statements in random order, then asks for the chain's last
// variable:
//
//   k=5;b=k;x=2;d=b;?d=5          bare answer: d ← b ← k ← 5, three hops
//   k=5;b=k;x=2;d=b;!d=b=k=5      the same program with its worked steps written out
//
// A program of h hops needs h dependent lookups, which a transformer of few layers resolves only up
// to a depth (k-hop induction, Sanford et al. 2024); written-out steps turn each hop into one
// lookup. Pretraining text holds both forms (ChainConfig::worked_fraction), so the frozen decoder
// can learn to use steps, and an evaluation asks for a bare answer after '?' or for the steps
// after '!' unambiguously.
//
//   const dca::ChainConfig config{.max_hops = 4, .distractor_chains = 1};
//   corpus.add(dca::chain_training_source(config, 4 << 20));             // ~4 MiB of training lines
//   for (const dca::ChainProgram& p : dca::held_out_chains(config, /*hops*/ 3, 300))
//     ...  // context + p.bare_prompt() → p.answer; context + p.worked_prompt() → p.worked_answer()
//
// The split: a program is held out when the FNV-1a hash of its statements and query variable
// modulo 100 is below held_out_percent, whatever its form (bare or worked) and seed. Training text
// is '\n' followed by whole training lines, each ending in '\n' and holding no other '\n', so a
// held-out line preceded by a newline — how every evaluation prompt is placed — occurs in it only as
// a whole training line, which would have the same statements and query and so the same bucket.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/core/random.hpp"
#include "dca/data/corpus.hpp"
#include "dca/experiment/arithmetic.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace dca {

/// What programs the task has and which of them are held out.
struct ChainConfig {
  index_t max_hops = 4;           // hop counts 1..max_hops, uniform in training text
  index_t distractor_chains = 1;  // chains besides the asked one, each of 1..max_hops hops
  double worked_fraction = 0.5;   // share of training lines written with their worked steps
  index_t held_out_percent = 10;  // in [1, 99]: the share of programs reserved for evaluation
  std::uint64_t seed = 1;         // orders training lines and held-out lists; the split ignores it

  /// RangeError naming the value: max_hops ≥ 1; every chain needs its own variable per hop (26
  /// letters) and its own value (10 digits); worked_fraction in [0, 1]; held_out_percent in [1, 99].
  void validate() const {
    if (max_hops < 1) detail::fail<RangeError>("ChainConfig: max_hops = ", max_hops, " must be at least 1");
    if (distractor_chains < 0 || distractor_chains > 9)
      detail::fail<RangeError>("ChainConfig: distractor_chains = ", distractor_chains,
                               " is outside [0, 9]: every chain holds its own digit");
    if ((distractor_chains + 1) * max_hops > 26)
      detail::fail<RangeError>("ChainConfig: ", distractor_chains + 1, " chains of up to ", max_hops,
                               " hops need more than the 26 variable names a-z");
    if (!(worked_fraction >= 0 && worked_fraction <= 1))
      detail::fail<RangeError>("ChainConfig: worked_fraction = ", worked_fraction, " is outside [0, 1]");
    if (held_out_percent < 1 || held_out_percent > 99)
      detail::fail<RangeError>("ChainConfig: held_out_percent = ", held_out_percent, " is outside [1, 99]");
  }
};

/// One program. `statements` in the order written ("k=5", "b=k", ...); `chain` the asked chain's
/// variables from the one holding the value to the queried one ("kbd"); `answer` its digit.
struct ChainProgram {
  std::vector<std::string> statements;
  std::string chain;
  char answer = '0';

  index_t hops() const { return static_cast<index_t>(chain.size()); }
  char query() const { return chain.back(); }

  /// "k=5;b=k;x=2;d=b;" — the statements, each followed by ';'.
  std::string body() const {
    std::string out;
    for (const std::string& s : statements) out += s + ';';
    return out;
  }
  /// The prompt of a bare answer: "k=5;b=k;x=2;d=b;?d=".
  std::string bare_prompt() const { return body() + '?' + query() + '='; }
  /// The prompt of a worked answer: "k=5;b=k;x=2;d=b;!d=".
  std::string worked_prompt() const { return body() + '!' + query() + '='; }
  /// What follows the worked prompt: the chain back to the value, "b=k=5" (one hop: "5").
  std::string worked_answer() const {
    std::string out;
    for (index_t i = hops() - 2; i >= 0; --i) out += std::string(1, chain[static_cast<std::size_t>(i)]) + '=';
    return out + answer;
  }
  /// The first `n` worked steps, each a variable and '=': "b=k=" for n = 2 of "b=k=5".
  /// RangeError unless 0 ≤ n < hops() (the last step is the answer).
  std::string worked_steps(index_t n) const {
    if (n < 0 || n >= hops())
      detail::fail<RangeError>("ChainProgram::worked_steps: n = ", n, " is outside [0, ", hops() - 1,
                               "] for a program of ", hops(), " hops");
    return worked_answer().substr(0, static_cast<std::size_t>(2 * n));
  }
  /// The program as a training line, bare or worked, ending in '\n'.
  std::string text(bool worked) const {
    return worked ? worked_prompt() + worked_answer() + '\n' : bare_prompt() + answer + '\n';
  }
};

/// A program's bucket in [0, 100): FNV-1a of its statements and query, modulo 100. Held out iff
/// below held_out_percent; the bare and the worked form share it.
inline index_t held_out_bucket(const ChainProgram& program) {
  return static_cast<index_t>(fnv1a_64(program.body() + '?' + program.query()) % 100);
}

/// Whether a program belongs to the held-out set of a config with this held_out_percent.
inline bool is_held_out(const ChainProgram& program, index_t held_out_percent) {
  return held_out_bucket(program) < held_out_percent;
}

/// Whether `generated`, the text after a worked prompt, ends its steps with the right digit: the
/// text up to the first newline (or all of it) is non-empty and its last byte is the answer.
/// The steps themselves are not checked: this is the accuracy a model reaches given that it may
/// write them.
inline bool worked_answer_matches(std::string_view generated, char answer) {
  const std::string_view line = generated.substr(0, generated.find('\n'));
  return !line.empty() && line.back() == answer;
}

/// Programs drawn from a config's distribution, reproducibly (dca::Rng): names and digits are
/// distinct within a program and random, distractor chains have 1..max_hops hops, statements are
/// shuffled.
class ChainGenerator {
 public:
  /// RangeError as ChainConfig::validate.
  explicit ChainGenerator(ChainConfig config, std::uint64_t stream = detail::training_stream)
      : config_(validated(config)), rng_(detail::stream_seed(config_.seed, stream)) {}

  /// The next program asking a chain of `hops` hops, held out or not. RangeError outside [1, max_hops].
  ChainProgram next(index_t hops) {
    if (hops < 1 || hops > config_.max_hops)
      detail::fail<RangeError>("ChainGenerator: hops = ", hops, " is outside [1, ", config_.max_hops, "]");
    std::string names = "abcdefghijklmnopqrstuvwxyz", digits = "0123456789";
    shuffle(names);
    shuffle(digits);
    ChainProgram program;
    std::size_t used = 0;
    for (index_t c = 0; c <= config_.distractor_chains; ++c) {
      const index_t length = c == 0 ? hops : 1 + rng_.below(config_.max_hops);
      const std::string chain = names.substr(used, static_cast<std::size_t>(length));
      used += chain.size();
      const char value = digits[static_cast<std::size_t>(c)];
      program.statements.push_back(std::string(1, chain[0]) + '=' + value);
      for (std::size_t i = 1; i < chain.size(); ++i) program.statements.push_back(std::string{chain[i], '=', chain[i - 1]});
      if (c == 0) {
        program.chain = chain;
        program.answer = value;
      }
    }
    shuffle(program.statements);
    return program;
  }

  /// The next training program (not held out), of 1..max_hops hops uniformly.
  ChainProgram next_training() {
    for (;;) {
      ChainProgram program = next(1 + rng_.below(config_.max_hops));
      if (!is_held_out(program, config_.held_out_percent)) return program;
    }
  }

  /// Whether the next training line is written with its worked steps (worked_fraction of them).
  bool next_is_worked() { return rng_.uniform() < config_.worked_fraction; }

  const ChainConfig& config() const { return config_; }

 private:
  static ChainConfig validated(const ChainConfig& config) {
    config.validate();
    return config;
  }

  template <class Sequence>
  void shuffle(Sequence& items) {
    for (index_t i = static_cast<index_t>(items.size()) - 1; i > 0; --i)
      std::swap(items[static_cast<std::size_t>(i)], items[static_cast<std::size_t>(rng_.below(i + 1))]);
  }

  ChainConfig config_;
  Rng rng_;
};

/// '\n' followed by training lines (ChainGenerator::next_training, worked with probability
/// worked_fraction), until the text holds at least `bytes` bytes. RangeError unless bytes ≥ 1.
inline std::string chain_training_text(const ChainConfig& config, index_t bytes) {
  if (bytes < 1) detail::fail<RangeError>("chain_training_text: bytes = ", bytes, " must be at least 1");
  ChainGenerator generator(config);
  std::string text = "\n";
  text.reserve(static_cast<std::size_t>(bytes) + 128);
  while (static_cast<index_t>(text.size()) < bytes) {
    const ChainProgram program = generator.next_training();
    text += program.text(generator.next_is_worked());
  }
  return text;
}

/// chain_training_text as a TextSource named after the task, for CorpusMixture.
inline TextSource chain_training_source(const ChainConfig& config, index_t bytes) {
  return {detail::concat("variable chains (1..", config.max_hops, " hops, ", config.distractor_chains,
                         " distractor chains, seed ", config.seed, ", ", config.held_out_percent, "% held out)"),
          chain_training_text(config, bytes)};
}

/// The few-shot context an evaluation places before every prompt: '\n' and `shots` training lines
/// with bare answers, the same for every program and model.
inline std::string chain_context(const ChainConfig& config, index_t shots) {
  if (shots < 0) detail::fail<RangeError>("chain_context: shots = ", shots, " is negative");
  ChainConfig context_config = config;
  context_config.seed = config.seed + 0x5eed;  // not the training text's order
  ChainGenerator generator(context_config);
  std::string context = "\n";
  for (index_t i = 0; i < shots; ++i) context += generator.next_training().text(false);
  return context;
}

/// `count` distinct held-out programs of `hops` hops, the same list for the same config (a shorter
/// list is a prefix of a longer one). RangeError for hops outside [1, max_hops], a negative count,
/// or when 100,000 draws in a row bring no new held-out program (the config has too few).
inline std::vector<ChainProgram> held_out_chains(const ChainConfig& config, index_t hops, index_t count) {
  if (count < 0) detail::fail<RangeError>("held_out_chains: count = ", count, " is negative");
  ChainGenerator generator(config, detail::held_out_stream + static_cast<std::uint64_t>(hops));
  std::vector<ChainProgram> programs;
  std::set<std::string> seen;
  for (index_t misses = 0; static_cast<index_t>(programs.size()) < count;) {
    ChainProgram program = generator.next(hops);
    if (is_held_out(program, config.held_out_percent) && seen.insert(program.bare_prompt()).second) {
      programs.push_back(std::move(program));
      misses = 0;
    } else if (++misses == 100'000) {
      detail::fail<RangeError>("held_out_chains: found only ", programs.size(), " of ", count,
                               " held-out programs of ", hops, " hops after 100000 draws without a new one");
    }
  }
  return programs;
}

}  // namespace dca
