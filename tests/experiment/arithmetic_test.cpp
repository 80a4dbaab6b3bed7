#include "dca/experiment/arithmetic.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

using dca::index_t;
using dca::Operation;

// A line "<left><sign><right>=<answer>" read back with plain integer parsing.
struct ParsedLine {
  char sign = '?';
  std::int64_t left = 0, right = 0, answer = 0;
  std::string left_text, right_text, answer_text;
};

bool all_digits(std::string_view text) {
  return !text.empty() && text.size() <= 18 &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::optional<ParsedLine> parse_line(std::string_view line) {
  const std::size_t sign_at = line.find_first_of("+*");
  const std::size_t equals_at = line.find('=');
  if (sign_at == std::string_view::npos || equals_at == std::string_view::npos || equals_at < sign_at) return {};
  ParsedLine parsed;
  parsed.sign = line[sign_at];
  parsed.left_text = line.substr(0, sign_at);
  parsed.right_text = line.substr(sign_at + 1, equals_at - sign_at - 1);
  parsed.answer_text = line.substr(equals_at + 1);
  if (!all_digits(parsed.left_text) || !all_digits(parsed.right_text) || !all_digits(parsed.answer_text)) return {};
  parsed.left = std::stoll(parsed.left_text);
  parsed.right = std::stoll(parsed.right_text);
  parsed.answer = std::stoll(parsed.answer_text);
  return parsed;
}

// Whether a parsed line is a problem as the task writes it: right arithmetic, no leading zeros.
bool is_canonical_correct_problem(const ParsedLine& p) {
  const auto canonical = [](const std::string& text, std::int64_t value) { return text == std::to_string(value); };
  const std::int64_t expected = p.sign == '+' ? p.left + p.right : p.left * p.right;
  return canonical(p.left_text, p.left) && canonical(p.right_text, p.right) && canonical(p.answer_text, p.answer) &&
         p.answer == expected;
}

// The split's definition, written out independently: FNV-1a of "min<sign>max", modulo 100.
bool reference_held_out(char sign, std::int64_t left, std::int64_t right, index_t percent) {
  const std::string canonical = std::to_string(std::min(left, right)) + sign + std::to_string(std::max(left, right));
  std::uint64_t hash = 14695981039346656037ULL;
  for (const char c : canonical) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ULL;
  }
  return static_cast<index_t>(hash % 100) < percent;
}

index_t digit_count(std::int64_t value) { return static_cast<index_t>(std::to_string(value).size()); }

std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> lines;
  for (std::size_t begin = 0; begin < text.size();) {
    const std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) break;
    lines.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return lines;
}

std::vector<std::string> texts(const std::vector<dca::Problem>& problems) {
  std::vector<std::string> out;
  for (const dca::Problem& p : problems) out.push_back(p.text());
  return out;
}

}  // namespace

TEST_CASE("every generated problem is correct arithmetic with operands of the configured digit counts") {
  const dca::ArithmeticConfig config{
      .operations = {{Operation::add, 1, 4}, {Operation::multiply, 2, 3}}, .held_out_percent = 10, .seed = 7};
  dca::ArithmeticGenerator generator(config);
  std::map<char, std::set<index_t>> digits_seen;
  for (int i = 0; i < 3000; ++i) {
    const dca::Problem problem = generator.next();
    CAPTURE(problem.text());
    const std::optional<ParsedLine> parsed = parse_line(problem.prompt + problem.answer);
    REQUIRE(parsed.has_value());
    CHECK(is_canonical_correct_problem(*parsed));
    CHECK(problem.prompt.back() == '=');
    CHECK(problem.text() == problem.prompt + problem.answer + "\n");
    CHECK(parsed->left == problem.left);
    CHECK(parsed->right == problem.right);
    CHECK(parsed->sign == dca::operation_symbol(problem.operation));
    const auto [low, high] =
        parsed->sign == '+' ? std::pair<index_t, index_t>{1, 4} : std::pair<index_t, index_t>{2, 3};
    for (const std::int64_t operand : {parsed->left, parsed->right}) {
      CHECK(operand >= 1);
      CHECK(digit_count(operand) >= low);
      CHECK(digit_count(operand) <= high);
      digits_seen[parsed->sign].insert(digit_count(operand));
    }
  }
  CHECK(digits_seen['+'] == std::set<index_t>{1, 2, 3, 4});
  CHECK(digits_seen['*'] == std::set<index_t>{2, 3});
  CHECK(dca::make_problem(Operation::multiply, 37, 86).text() == "37*86=3182\n");
  CHECK(dca::make_problem(Operation::add, 4821, 937).text() == "4821+937=5758\n");
  CHECK(dca::make_problem(Operation::multiply, 999999999, 999999999).answer == "999999998000000001");
}

TEST_CASE("the same seed generates the same problems and another seed different ones") {
  const auto draw = [](std::uint64_t seed) {
    dca::ArithmeticConfig config;
    config.seed = seed;
    dca::ArithmeticGenerator generator(config);
    std::vector<std::string> out;
    for (int i = 0; i < 500; ++i) out.push_back(generator.next().text());
    return out;
  };
  const std::vector<std::string> first = draw(1);
  CHECK(draw(1) == first);
  const std::vector<std::string> other = draw(2);
  index_t differing = 0;
  for (std::size_t i = 0; i < first.size(); ++i) differing += first[i] != other[i];
  CHECK(differing > 400);

  dca::ArithmeticConfig config;
  CHECK(dca::arithmetic_training_text(config, 5000) == dca::arithmetic_training_text(config, 5000));
  CHECK(texts(dca::held_out_problems(config, 300)) == texts(dca::held_out_problems(config, 300)));
  config.seed = 2;
  CHECK(dca::arithmetic_training_text(config, 5000) != dca::arithmetic_training_text({}, 5000));
  CHECK(texts(dca::held_out_problems(config, 300)) != texts(dca::held_out_problems({}, 300)));
}

TEST_CASE("the training and held-out streams for seed 1 are pinned, because every experiment's data depends on them") {
  // Regression pin, not a derivation: a change here changes the data of every recorded experiment.
  CHECK(dca::arithmetic_training_text({}, 40) == "615+41=656\n24*73=1752\n121+339=460\n27*81=2187\n");
  CHECK(texts(dca::held_out_problems({}, 4)) ==
        std::vector<std::string>{"769+7=776\n", "7*81=567\n", "72+482=554\n", "7*65=455\n"});
}

TEST_CASE("fnv1a_64 matches the published FNV-1a test vectors") {
  CHECK(dca::fnv1a_64("") == 0xcbf29ce484222325ULL);
  CHECK(dca::fnv1a_64("a") == 0xaf63dc4c8601ec8cULL);
  CHECK(dca::fnv1a_64("foobar") == 0x85944171f73967e8ULL);
}

TEST_CASE("held-out membership hashes the canonical problem: both operand orders, every seed, nested percentages") {
  index_t held_out = 0, total = 0;
  for (std::int64_t left = 10; left < 100; ++left)
    for (std::int64_t right = 10; right < 100; ++right)
      for (const Operation operation : {Operation::add, Operation::multiply}) {
        const dca::Problem problem = dca::make_problem(operation, left, right);
        const char sign = dca::operation_symbol(operation);
        CHECK(dca::is_held_out(problem, 10) == reference_held_out(sign, left, right, 10));
        CHECK(dca::is_held_out(problem, 10) == dca::is_held_out(dca::make_problem(operation, right, left), 10));
        if (dca::is_held_out(problem, 5)) CHECK(dca::is_held_out(problem, 10));
        held_out += dca::is_held_out(problem, 10);
        ++total;
      }
  const double share = static_cast<double>(held_out) / static_cast<double>(total);
  CHECK(share > 0.08);
  CHECK(share < 0.12);
}

TEST_CASE("training text holds no held-out problem anywhere, not even across problem boundaries") {
  const dca::ArithmeticConfig config{
      .operations = {{Operation::add, 1, 3}, {Operation::multiply, 1, 2}}, .held_out_percent = 30, .seed = 11};
  const index_t bytes = 200000;
  const std::string text = dca::arithmetic_training_text(config, bytes);
  REQUIRE(text.back() == '\n');
  const std::vector<std::string_view> lines = lines_of(text);
  CHECK(static_cast<index_t>(text.size()) >= bytes);
  CHECK(static_cast<index_t>(text.size() - lines.back().size() - 1) < bytes);

  // A held-out text has one newline, at its end, so any occurrence is a suffix of one line.
  index_t problems = 0, proper_suffix_problems = 0;
  for (const std::string_view line : lines) {
    const std::optional<ParsedLine> whole = parse_line(line);
    REQUIRE(whole.has_value());
    CHECK(is_canonical_correct_problem(*whole));
    CHECK_FALSE(reference_held_out(whole->sign, whole->left, whole->right, config.held_out_percent));
    ++problems;
    for (std::size_t start = 1; start < line.size(); ++start) {
      const std::optional<ParsedLine> suffix = parse_line(line.substr(start));
      if (suffix && is_canonical_correct_problem(*suffix)) ++proper_suffix_problems;
    }
  }
  CHECK(problems > 15000);
  CHECK(proper_suffix_problems == 0);

  // The validation part of a mixture holding this text is made of the same training problems.
  dca::CorpusMixture corpus({.validation_fraction = 0.1, .stripes = 4});
  corpus.add(dca::arithmetic_training_source(config, bytes));
  CHECK(corpus.source(0).bytes() == text);
  CHECK(corpus.source(0).name().find("seed 11") != std::string::npos);
  index_t validation_lines = 0;
  for (const dca::ByteRange& run : corpus.split(0).validation) {
    const std::string_view part =
        std::string_view(text).substr(static_cast<std::size_t>(run.begin), static_cast<std::size_t>(run.size()));
    const std::size_t first_newline = part.find('\n');
    for (const std::string_view line : lines_of(part.substr(first_newline + 1))) {
      const std::optional<ParsedLine> parsed = parse_line(line);
      REQUIRE(parsed.has_value());
      CHECK_FALSE(reference_held_out(parsed->sign, parsed->left, parsed->right, config.held_out_percent));
      ++validation_lines;
    }
  }
  CHECK(validation_lines > 1000);
}

TEST_CASE("held-out problems are distinct, held out, correct, and a shorter list is a prefix of a longer one") {
  const dca::ArithmeticConfig config;
  const std::vector<dca::Problem> problems = dca::held_out_problems(config, 2000);
  REQUIRE(problems.size() == 2000);
  std::set<std::string> distinct;
  for (const dca::Problem& problem : problems) {
    CAPTURE(problem.text());
    const std::optional<ParsedLine> parsed = parse_line(problem.prompt + problem.answer);
    REQUIRE(parsed.has_value());
    CHECK(is_canonical_correct_problem(*parsed));
    CHECK(reference_held_out(parsed->sign, parsed->left, parsed->right, config.held_out_percent));
    distinct.insert(problem.text());
  }
  CHECK(distinct.size() == problems.size());
  const std::vector<dca::Problem> shorter = dca::held_out_problems(config, 150);
  const std::vector<std::string> longer = texts(problems);
  CHECK(texts(shorter) == std::vector<std::string>(longer.begin(), longer.begin() + 150));
  CHECK(dca::held_out_problems(config, 0).empty());
}

TEST_CASE("held-out problems follow the training distribution over operations and digit counts") {
  // Strata of 2- and 3-digit operands hold hundreds of held-out problems each, so none runs out.
  const dca::ArithmeticConfig config{.operations = {{Operation::add, 2, 3}, {Operation::multiply, 2, 3}}};
  const std::vector<dca::Problem> problems = dca::held_out_problems(config, 2000);
  index_t sums = 0, two_digit_left = 0, two_digit_right = 0;
  for (const dca::Problem& problem : problems) {
    sums += problem.operation == Operation::add;
    two_digit_left += digit_count(problem.left) == 2;
    two_digit_right += digit_count(problem.right) == 2;
  }
  // Binomial(2000, 1/2) has standard deviation 22: these bounds are five of them.
  CHECK(sums > 890);
  CHECK(sums < 1110);
  CHECK(two_digit_left > 890);
  CHECK(two_digit_left < 1110);
  CHECK(two_digit_right > 890);
  CHECK(two_digit_right < 1110);
}

TEST_CASE("held-out sampling can exhaust a small task exactly, and one more problem is an error naming the count") {
  const dca::ArithmeticConfig config{.operations = {{Operation::add, 1, 1}}, .held_out_percent = 50, .seed = 3};
  std::set<std::string> expected;
  for (std::int64_t left = 1; left <= 9; ++left)
    for (std::int64_t right = 1; right <= 9; ++right)
      if (reference_held_out('+', left, right, 50))
        expected.insert(std::to_string(left) + "+" + std::to_string(right) + "=" + std::to_string(left + right) + "\n");
  REQUIRE(expected.size() > 20);
  REQUIRE(expected.size() < 70);
  CHECK(dca::problem_count(config) == 81);
  const auto available = static_cast<index_t>(expected.size());
  const std::vector<std::string> all = texts(dca::held_out_problems(config, available));
  CHECK(std::set<std::string>(all.begin(), all.end()) == expected);
  CHECK(all.size() == expected.size());
  CHECK_THROWS_WITH_AS(dca::held_out_problems(config, available + 1),
                       doctest::Contains(("count = " + std::to_string(available + 1) + " but the config has only " +
                                          std::to_string(available) + " held-out problems")
                                             .c_str()),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::held_out_problems(config, 82), doctest::Contains("count = 82 exceeds the 81 problems"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::held_out_problems(config, -1), doctest::Contains("count = -1"), dca::RangeError);
}

TEST_CASE("invalid arithmetic configs are rejected with the offending values named") {
  const auto with = [](std::vector<dca::OperationDigits> operations, index_t percent = 10) {
    return dca::ArithmeticConfig{.operations = std::move(operations), .held_out_percent = percent};
  };
  CHECK_THROWS_WITH_AS(dca::ArithmeticGenerator(with({{Operation::add, 0, 2}})),
                       doctest::Contains("operation '+' has min_digits = 0; it must be at least 1"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::held_out_problems(with({{Operation::add, 1, 2}, {Operation::multiply, 3, 2}}), 5),
                       doctest::Contains("operation '*' has min_digits = 3 > max_digits = 2"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::arithmetic_training_source(with({{Operation::add, 1, 10}}), 100),
                       doctest::Contains("operation '+' has max_digits = 10"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ArithmeticGenerator(with({{Operation::add, 1, 2}}, 0)),
                       doctest::Contains("held_out_percent = 0 is outside [1, 99]"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::held_out_problems(with({{Operation::add, 1, 2}}, 100), 1),
                       doctest::Contains("held_out_percent = 100 is outside [1, 99]"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ArithmeticGenerator(with({})), doctest::Contains("operations is empty"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::ArithmeticGenerator(with({{Operation::add, 1, 2}, {Operation::add, 2, 3}})),
                       doctest::Contains("operation '+' appears twice"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::arithmetic_training_text({}, 0), doctest::Contains("bytes = 0 must be at least 1"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::make_problem(Operation::add, 0, 5), doctest::Contains("operands 0 and 5"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::make_problem(Operation::multiply, 3, 1000000000),
                       doctest::Contains("operands 3 and 1000000000"), dca::RangeError);
}

TEST_CASE("exact_match accepts the answer alone or followed by a newline, and nothing else") {
  CHECK(dca::exact_match("3182", "3182"));
  CHECK(dca::exact_match("3182\n", "3182"));
  CHECK(dca::exact_match("3182\n5+5=10\n", "3182"));
  CHECK_FALSE(dca::exact_match("31820", "3182"));
  CHECK_FALSE(dca::exact_match("318", "3182"));
  CHECK_FALSE(dca::exact_match(" 3182", "3182"));
  CHECK_FALSE(dca::exact_match("3182 ", "3182"));
  CHECK_FALSE(dca::exact_match("03182", "3182"));
  CHECK_FALSE(dca::exact_match("3182\r\n", "3182"));
  CHECK_FALSE(dca::exact_match("", "3182"));
  CHECK_FALSE(dca::exact_match("", ""));
  CHECK_FALSE(dca::exact_match("\n", ""));
}

TEST_CASE("answer_budget covers the longest possible answer and its newline") {
  CHECK(dca::answer_budget({}) == 5);  // 999+999 = 1998 and 99*99 = 9801: four digits, then '\n'
  const dca::ArithmeticConfig products{.operations = {{Operation::multiply, 1, 3}}};
  CHECK(dca::answer_budget(products) == 7);
  CHECK(static_cast<index_t>(dca::make_problem(Operation::multiply, 999, 999).answer.size()) + 1 == 7);
  dca::ArithmeticGenerator generator({});
  std::size_t longest = 0;
  for (int i = 0; i < 3000; ++i) longest = std::max(longest, generator.next().answer.size());
  CHECK(static_cast<index_t>(longest) + 1 <= dca::answer_budget({}));
}
