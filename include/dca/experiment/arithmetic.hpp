// dca/experiment/arithmetic.hpp — synthetic reasoning data: multi-digit arithmetic written as text
// ("4821+937=5758\n", "37*86=3182\n"), split into training and held-out problems so that no
// held-out problem ever appears in training text, and scored by exact match of the answer.
//
//   const dca::ArithmeticConfig config;                   // a+b with 1–3 digits, a*b with 1–2, 10% held out
//   dca::CorpusMixture corpus;
//   corpus.add(dca::TextSource::from_file("prose.txt"), 3.0);
//   corpus.add(dca::arithmetic_training_source(config, 1 << 20), 1.0);   // ~1 MiB of training problems
//   index_t correct = 0;
//   for (const dca::Problem& problem : dca::held_out_problems(config, 500)) {
//     // greedy decoding after problem.prompt, answer_budget(config) bytes or up to a newline
//     const std::string generated = ...;
//     correct += dca::exact_match(generated, problem.answer);
//   }
//
// The split: a problem is held out when the FNV-1a hash of its canonical text (operands in
// ascending order, so 37*86 and 86*37 fall on the same side) modulo 100 is below
// held_out_percent. Membership depends on the problem alone, never on the seed, so runs with
// different seeds share one split, and a smaller percentage holds out a subset of a larger one.
// Training text is made of whole training problems only. No held-out problem's text can occur in it
// anywhere, even across problem boundaries: a problem's text has a single newline, at its end, so
// an occurrence would have to be a suffix of one training problem; a problem's text starts with a
// non-zero digit and holds a sign before its '=', so the suffix starts inside the left operand, and
// then it keeps the right operand (positive) and the answer with a smaller left operand, which is
// wrong arithmetic. CorpusMixture's validation runs are stretches of that same text, so they hold
// no held-out problem either.
//
// Loading TextSource needs zlib (corpus.hpp): link ZLIB::ZLIB or -lz.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/core/random.hpp"
#include "dca/data/corpus.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dca {

/// An operation of the synthetic arithmetic task.
enum class Operation { add, multiply };

/// The operation's sign in problem text: '+' or '*'.
constexpr char operation_symbol(Operation operation) { return operation == Operation::add ? '+' : '*'; }

/// One operation and how many decimal digits each of its operands has. Each operand draws its
/// digit count d uniformly from [min_digits, max_digits], then its value uniformly from
/// [10^(d-1), 10^d - 1] (1..9 for one digit), so short operands are as common as long ones.
/// Operands are positive: zero would make "5*0=0" a substring of "15*0=0" and break the split's
/// guarantee (see the header comment).
struct OperationDigits {
  Operation operation = Operation::add;
  index_t min_digits = 1;  // >= 1
  index_t max_digits = 3;  // in [min_digits, 9]: nine-digit products still fit in 64 bits
};

/// What problems the task has and which of them are held out.
struct ArithmeticConfig {
  // Each problem picks one of these uniformly; an operation may appear at most once.
  std::vector<OperationDigits> operations = {{Operation::add, 1, 3}, {Operation::multiply, 1, 2}};
  // In [1, 99]: the share of all problems reserved for evaluation (see the split in the header comment).
  index_t held_out_percent = 10;
  // Orders the problems of the training text and of the held-out list; the split does not depend on it.
  std::uint64_t seed = 1;

  /// UsageError for no operations or a repeated one; RangeError naming the operation and the
  /// values for digit counts outside 1 <= min_digits <= max_digits <= 9, and for
  /// held_out_percent outside [1, 99].
  void validate() const {
    if (operations.empty()) detail::fail<UsageError>("ArithmeticConfig: operations is empty");
    for (std::size_t i = 0; i < operations.size(); ++i) {
      const OperationDigits& spec = operations[i];
      const char symbol = operation_symbol(spec.operation);
      for (std::size_t j = 0; j < i; ++j)
        if (operations[j].operation == spec.operation)
          detail::fail<UsageError>("ArithmeticConfig: operation '", symbol, "' appears twice (entries ", j, " and ", i,
                                   ")");
      if (spec.min_digits < 1)
        detail::fail<RangeError>("ArithmeticConfig: operation '", symbol, "' has min_digits = ", spec.min_digits,
                                 "; it must be at least 1");
      if (spec.min_digits > spec.max_digits)
        detail::fail<RangeError>("ArithmeticConfig: operation '", symbol, "' has min_digits = ", spec.min_digits,
                                 " > max_digits = ", spec.max_digits);
      if (spec.max_digits > 9)
        detail::fail<RangeError>("ArithmeticConfig: operation '", symbol, "' has max_digits = ", spec.max_digits,
                                 "; at most 9 are supported (64-bit results)");
    }
    if (held_out_percent < 1 || held_out_percent > 99)
      detail::fail<RangeError>("ArithmeticConfig: held_out_percent = ", held_out_percent, " is outside [1, 99]");
  }
};

/// One problem: `prompt` is what the model reads ("37*86="), `answer` what it must produce
/// ("3182"). Build it with make_problem so that the text and the operands agree.
struct Problem {
  Operation operation = Operation::add;
  std::int64_t left = 0;
  std::int64_t right = 0;
  std::string prompt;
  std::string answer;

  /// The problem as it appears in training text: prompt, answer, newline.
  std::string text() const { return prompt + answer + '\n'; }
};

namespace detail {

// 10^d for d in [0, 18].
constexpr std::int64_t power_of_ten(index_t d) {
  std::int64_t value = 1;
  for (index_t i = 0; i < d; ++i) value *= 10;
  return value;
}

// The smallest positive number with `digits` decimal digits, and how many such numbers there are.
constexpr std::int64_t smallest_with_digits(index_t digits) { return power_of_ten(digits - 1); }
constexpr std::int64_t count_with_digits(index_t digits) { return 9 * power_of_ten(digits - 1); }

constexpr std::int64_t largest_operand = 999'999'999;

constexpr std::int64_t apply(Operation operation, std::int64_t left, std::int64_t right) {
  return operation == Operation::add ? left + right : left * right;
}

// SplitMix64's finaliser: a bijective 64-bit mix in which every input bit affects every output bit.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Independent generator seeds for the training stream and the held-out stream of one config seed.
constexpr std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t stream) {
  return mix64(seed + 0x9E3779B97F4A7C15ULL * (stream + 1));
}

constexpr std::uint64_t training_stream = 1;
constexpr std::uint64_t held_out_stream = 2;

// A pseudo-random permutation of [0, size): a balanced four-round Feistel network over the
// smallest power of four holding `size` (a bijection whatever the round function), walked back
// into range (at most four steps on average). Visiting i = 0, 1, 2, ... lists a stratum's
// problems in random order without repeats, so held-out sampling never redraws a problem and
// knows when a stratum is exhausted.
class IndexPermutation {
 public:
  IndexPermutation(std::uint64_t size, Rng& rng) : size_(size) {
    while ((std::uint64_t{1} << (2 * half_bits_)) < size) ++half_bits_;
    for (std::uint64_t& key : keys_) key = rng.bits();
  }

  std::uint64_t operator()(std::uint64_t index) const {
    std::uint64_t x = index;
    do x = feistel(x);
    while (x >= size_);
    return x;
  }

 private:
  std::uint64_t feistel(std::uint64_t x) const {
    const std::uint64_t mask = (std::uint64_t{1} << half_bits_) - 1;
    std::uint64_t left = x >> half_bits_, right = x & mask;
    for (const std::uint64_t key : keys_) {
      const std::uint64_t next = left ^ (mix64(right ^ key) & mask);
      left = right;
      right = next;
    }
    return (left << half_bits_) | right;
  }

  std::uint64_t size_;
  int half_bits_ = 1;
  std::array<std::uint64_t, 4> keys_{};
};

}  // namespace detail

/// The 64-bit FNV-1a hash of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3): fixed
/// by its definition, unlike std::hash, so the split is the same with every compiler.
constexpr std::uint64_t fnv1a_64(std::string_view bytes) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (const char c : bytes) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

/// The problem `left` op `right`. RangeError naming the operands unless both are in [1, 999999999].
inline Problem make_problem(Operation operation, std::int64_t left, std::int64_t right) {
  if (left < 1 || right < 1 || left > detail::largest_operand || right > detail::largest_operand)
    detail::fail<RangeError>("make_problem: operands ", left, " and ", right, " must be in [1, ",
                             detail::largest_operand, "]");
  Problem problem{operation, left, right, {}, {}};
  problem.prompt = std::to_string(left) + operation_symbol(operation) + std::to_string(right) + '=';
  problem.answer = std::to_string(detail::apply(operation, left, right));
  return problem;
}

/// A problem's bucket in [0, 100): FNV-1a of its canonical text — smaller operand, sign, larger
/// operand, e.g. "37*86" for both 37*86 and 86*37 — modulo 100. Held out iff below held_out_percent.
inline index_t held_out_bucket(Operation operation, std::int64_t left, std::int64_t right) {
  std::array<char, 48> canonical{};  // two 64-bit integers of at most 20 characters and the sign
  char* end = std::to_chars(canonical.data(), canonical.data() + 20, std::min(left, right)).ptr;
  *end++ = operation_symbol(operation);
  end = std::to_chars(end, canonical.data() + canonical.size(), std::max(left, right)).ptr;
  return static_cast<index_t>(fnv1a_64(std::string_view(canonical.data(), end)) % 100);
}

/// Whether a problem belongs to the held-out set of a config with this held_out_percent.
inline bool is_held_out(const Problem& problem, index_t held_out_percent) {
  return held_out_bucket(problem.operation, problem.left, problem.right) < held_out_percent;
}

/// The number of distinct problems a config can produce, held out or not (below 2·10^18).
inline std::int64_t problem_count(const ArithmeticConfig& config) {
  config.validate();
  std::int64_t total = 0;
  for (const OperationDigits& spec : config.operations) {
    std::int64_t operands = 0;
    for (index_t d = spec.min_digits; d <= spec.max_digits; ++d) operands += detail::count_with_digits(d);
    total += operands * operands;
  }
  return total;
}

/// How many bytes to generate after a prompt before scoring it: the longest answer the config can
/// have (max_digits + 1 digits for a sum, 2·max_digits for a product) plus its newline. Generating
/// fewer could cut a wrong, longer number down to a correct-looking prefix.
inline index_t answer_budget(const ArithmeticConfig& config) {
  config.validate();
  index_t longest = 0;
  for (const OperationDigits& spec : config.operations)
    longest = std::max(longest, spec.operation == Operation::add ? spec.max_digits + 1 : 2 * spec.max_digits);
  return longest + 1;
}

/// Whether `generated`, the text a model produced right after a prompt, gives `answer`: it is
/// `answer` exactly (generation stopped there) or `answer` followed by a newline and anything.
/// "3182", "3182\n" and "3182\n5+5=10" match "3182"; "31820", "318", " 3182", "3182 ", "03182"
/// and "" do not. An empty answer matches nothing. Give the model at least answer_budget bytes, so
/// that stopping early cannot turn "31820" into "3182".
constexpr bool exact_match(std::string_view generated, std::string_view answer) {
  if (answer.empty() || !generated.starts_with(answer)) return false;
  const std::string_view rest = generated.substr(answer.size());
  return rest.empty() || rest.front() == '\n';
}

/// Problems drawn from a config's distribution, reproducibly: the same config (and seed) gives the
/// same problems on every platform (dca::Rng). Each problem picks an operation uniformly, each
/// operand's digit count uniformly, then the operand uniformly among numbers with that many digits.
class ArithmeticGenerator {
 public:
  /// RangeError / UsageError as ArithmeticConfig::validate.
  explicit ArithmeticGenerator(ArithmeticConfig config)
      : config_(std::move(config)), rng_(detail::stream_seed(config_.seed, detail::training_stream)) {
    config_.validate();
  }

  /// The next problem, held out or not.
  Problem next() {
    const OperationDigits& spec =
        config_.operations[static_cast<std::size_t>(rng_.below(static_cast<index_t>(config_.operations.size())))];
    const std::int64_t left = operand(spec);
    const std::int64_t right = operand(spec);
    return make_problem(spec.operation, left, right);
  }

  /// The next problem that is not held out.
  Problem next_training() {
    for (;;) {
      Problem problem = next();
      if (!is_held_out(problem, config_.held_out_percent)) return problem;
    }
  }

  const ArithmeticConfig& config() const { return config_; }

 private:
  std::int64_t operand(const OperationDigits& spec) {
    const index_t digits = spec.min_digits + rng_.below(spec.max_digits - spec.min_digits + 1);
    return detail::smallest_with_digits(digits) + rng_.below(detail::count_with_digits(digits));
  }

  ArithmeticConfig config_;
  Rng rng_;
};

/// Training problems' texts concatenated, from ArithmeticGenerator::next_training, until the text
/// holds at least `bytes` bytes (whole problems only, so it overshoots by less than one problem).
/// RangeError unless bytes >= 1; config errors as ArithmeticConfig::validate.
inline std::string arithmetic_training_text(const ArithmeticConfig& config, index_t bytes) {
  if (bytes < 1) detail::fail<RangeError>("arithmetic_training_text: bytes = ", bytes, " must be at least 1");
  ArithmeticGenerator generator(config);
  std::string text;
  text.reserve(static_cast<std::size_t>(bytes) + 32);
  while (static_cast<index_t>(text.size()) < bytes) text += generator.next_training().text();
  return text;
}

/// arithmetic_training_text as a TextSource named after the task, seed and split, for CorpusMixture.
inline TextSource arithmetic_training_source(const ArithmeticConfig& config, index_t bytes) {
  return {
      detail::concat("arithmetic training problems (seed ", config.seed, ", ", config.held_out_percent, "% held out)"),
      arithmetic_training_text(config, bytes)};
}

/// `count` distinct held-out problems, drawn like training problems: problems fall into strata
/// (operation, left digit count, right digit count) which are picked with the training
/// distribution's probabilities; within a stratum the held-out problems come without replacement
/// in a seeded random order, and an exhausted stratum drops out of the draw. The same config gives
/// the same list, and a shorter list is a prefix of a longer one. RangeError with the numbers when
/// `count` is negative, exceeds problem_count(config), or exceeds the held-out problems there are
/// (found by exhausting every stratum, so that last check costs one pass over all problems).
inline std::vector<Problem> held_out_problems(const ArithmeticConfig& config, index_t count) {
  const std::int64_t total = problem_count(config);
  if (count < 0) detail::fail<RangeError>("held_out_problems: count = ", count, " is negative");
  if (count > total)
    detail::fail<RangeError>("held_out_problems: count = ", count, " exceeds the ", total,
                             " problems the config can produce");
  struct Stratum {
    Operation operation;
    std::int64_t left_smallest, right_smallest, right_count;
    std::uint64_t size, next;
    double weight;  // 0 once exhausted
    detail::IndexPermutation order;
  };
  Rng rng(detail::stream_seed(config.seed, detail::held_out_stream));
  std::vector<Stratum> strata;
  const double operation_weight = 1.0 / static_cast<double>(config.operations.size());
  for (const OperationDigits& spec : config.operations) {
    const index_t digit_choices = spec.max_digits - spec.min_digits + 1;
    const double weight = operation_weight / static_cast<double>(digit_choices * digit_choices);
    for (index_t left = spec.min_digits; left <= spec.max_digits; ++left)
      for (index_t right = spec.min_digits; right <= spec.max_digits; ++right) {
        const auto size =
            static_cast<std::uint64_t>(detail::count_with_digits(left) * detail::count_with_digits(right));
        strata.push_back({spec.operation, detail::smallest_with_digits(left), detail::smallest_with_digits(right),
                          detail::count_with_digits(right), size, 0, weight, detail::IndexPermutation(size, rng)});
      }
  }
  std::vector<Problem> problems;
  problems.reserve(static_cast<std::size_t>(count));
  while (static_cast<index_t>(problems.size()) < count) {
    double active_weight = 0;
    for (const Stratum& s : strata) active_weight += s.weight;
    if (active_weight == 0)
      detail::fail<RangeError>("held_out_problems: count = ", count, " but the config has only ", problems.size(),
                               " held-out problems (held_out_percent ", config.held_out_percent, " of ", total,
                               " problems)");
    const double target = rng.uniform() * active_weight;
    double cumulative = 0;
    Stratum* picked = nullptr;
    for (Stratum& s : strata) {
      if (s.weight == 0) continue;
      picked = &s;  // the last active stratum also catches a target rounded up to the total
      cumulative += s.weight;
      if (target < cumulative) break;
    }
    Stratum& s = *picked;
    for (;;) {
      if (s.next == s.size) {
        s.weight = 0;
        break;
      }
      const auto index = static_cast<std::int64_t>(s.order(s.next++));
      const std::int64_t left = s.left_smallest + index / s.right_count;
      const std::int64_t right = s.right_smallest + index % s.right_count;
      if (held_out_bucket(s.operation, left, right) < config.held_out_percent) {
        problems.push_back(make_problem(s.operation, left, right));
        break;
      }
    }
  }
  return problems;
}

}  // namespace dca
