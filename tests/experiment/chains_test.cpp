// Specification of the variable-chain task: programs mean what their text says (checked by an
// interpreter written here, not by the generator's own fields), the held-out split never leaks into
// training text, and bad configurations are refused with their values named.
#include <dca/experiment/chains.hpp>

#include <doctest/doctest.h>

#include <map>
#include <set>
#include <string>

namespace {

// Runs a program's statements: each "v=d" or "v=w" in text order is resolved after all are read
// (assignments may come before the variable they copy). Returns the query's digit and how many
// lookups it took.
std::pair<char, int> interpret(const std::string& body, char query) {
  std::map<char, char> assigned;
  for (std::size_t i = 0; i < body.size(); i += 4) {  // "x=y;" is four bytes
    REQUIRE(body[i + 1] == '=');
    REQUIRE(body[i + 3] == ';');
    REQUIRE(assigned.count(body[i]) == 0);  // every variable is assigned once
    assigned[body[i]] = body[i + 2];
  }
  char value = query;
  int hops = 0;
  while (value >= 'a' && value <= 'z') {
    REQUIRE(assigned.count(value) == 1);
    value = assigned[value];
    ++hops;
  }
  return {value, hops};
}

}  // namespace

TEST_CASE("a program's bare and worked lines say the statements, the query and the answer an interpreter finds") {
  dca::ChainGenerator generator({.max_hops = 4, .distractor_chains = 2, .seed = 3});
  for (dca::index_t hops = 1; hops <= 4; ++hops)
    for (int i = 0; i < 50; ++i) {
      const dca::ChainProgram p = generator.next(hops);
      const std::string body = p.body();
      const auto [value, lookups] = interpret(body, p.query());
      CHECK(value == p.answer);
      CHECK(lookups == hops);
      CHECK(p.text(false) == body + "?" + p.query() + "=" + p.answer + "\n");
      // The worked steps are the chain read backwards: each named variable holds the next one.
      const std::string steps = p.worked_answer();
      CHECK(p.text(true) == body + "!" + p.query() + "=" + steps + "\n");
      CHECK(steps.size() == static_cast<std::size_t>(2 * hops - 1));
      char current = p.query();
      for (std::size_t s = 0; s < steps.size(); s += 2) {
        const auto [next_value, next_hops] = interpret(body, steps[s]);
        CHECK(next_value == p.answer);
        CHECK(next_hops == interpret(body, current).second - 1);
        current = steps[s];
      }
      CHECK(steps.back() == p.answer);
      for (dca::index_t n = 0; n < hops; ++n) CHECK(p.worked_steps(n) == steps.substr(0, static_cast<std::size_t>(2 * n)));
      CHECK_THROWS_WITH_AS(p.worked_steps(hops), doctest::Contains("is outside [0, "), dca::RangeError);
      CHECK_THROWS_AS(p.worked_steps(-1), dca::RangeError);
    }
}

TEST_CASE("every chain has its own variables and its own digit, and distractors span 1..max_hops hops") {
  dca::ChainGenerator generator({.max_hops = 3, .distractor_chains = 3, .seed = 9});
  std::set<std::size_t> statement_counts;
  for (int i = 0; i < 300; ++i) {
    const dca::ChainProgram p = generator.next(2);
    std::set<char> names, digits;
    for (const std::string& s : p.statements) {
      CHECK(names.insert(s[0]).second);
      if (s[2] >= '0' && s[2] <= '9') CHECK(digits.insert(s[2]).second);
    }
    CHECK(digits.size() == 4);  // the asked chain and three distractors
    statement_counts.insert(p.statements.size());
  }
  CHECK(*statement_counts.begin() == 2 + 3 * 1);
  CHECK(*statement_counts.rbegin() == 2 + 3 * 3);
}

TEST_CASE("no held-out program occurs in training text in either form, and training text holds both forms") {
  const dca::ChainConfig config{.max_hops = 4, .distractor_chains = 1, .worked_fraction = 0.5, .held_out_percent = 10};
  const std::string text = dca::chain_training_text(config, 400'000);
  REQUIRE(text.front() == '\n');
  REQUIRE(text.back() == '\n');
  for (dca::index_t hops = 1; hops <= 4; ++hops)
    for (const dca::ChainProgram& p : dca::held_out_chains(config, hops, 200)) {
      CHECK(text.find("\n" + p.bare_prompt()) == std::string::npos);
      CHECK(text.find("\n" + p.worked_prompt()) == std::string::npos);
    }
  dca::index_t bare = 0, worked = 0;
  for (std::size_t begin = 1; begin < text.size();) {
    const std::size_t end = text.find('\n', begin);
    const std::string line = text.substr(begin, end - begin);
    (line.find('!') != std::string::npos ? worked : bare) += 1;
    CHECK((line.find('?') == std::string::npos) != (line.find('!') == std::string::npos));
    begin = end + 1;
  }
  const double share = static_cast<double>(worked) / static_cast<double>(worked + bare);
  CHECK(share > 0.45);
  CHECK(share < 0.55);
}

TEST_CASE("held-out lists are distinct, held out, of the asked hop count, and a shorter list is a prefix") {
  const dca::ChainConfig config{.max_hops = 3, .held_out_percent = 20, .seed = 4};
  const auto long_list = dca::held_out_chains(config, 3, 120);
  const auto short_list = dca::held_out_chains(config, 3, 40);
  std::set<std::string> prompts;
  for (const auto& p : long_list) {
    CHECK(dca::is_held_out(p, 20));
    CHECK(p.hops() == 3);
    CHECK(prompts.insert(p.bare_prompt()).second);
  }
  for (std::size_t i = 0; i < short_list.size(); ++i) CHECK(short_list[i].bare_prompt() == long_list[i].bare_prompt());
  // The split depends on the program only: a smaller percentage holds out a subset.
  for (const auto& p : long_list)
    if (dca::held_out_bucket(p) < 10) CHECK(dca::is_held_out(p, 10));
}

TEST_CASE("the evaluation context is a newline and whole training lines with bare answers") {
  const dca::ChainConfig config;
  const std::string context = dca::chain_context(config, 3);
  REQUIRE(context.front() == '\n');
  dca::index_t lines = 0;
  for (std::size_t begin = 1; begin < context.size(); ++lines) {
    const std::size_t end = context.find('\n', begin);
    CHECK(context.find('?', begin) < end);
    begin = end + 1;
  }
  CHECK(lines == 3);
  CHECK(context.back() == '\n');
}

TEST_CASE("a worked answer counts when its steps end in the program's digit, up to the first newline") {
  CHECK(dca::worked_answer_matches("b=k=5", '5'));
  CHECK(dca::worked_answer_matches("5\nk=1;", '5'));
  CHECK(dca::worked_answer_matches("b=q=5\n", '5'));
  CHECK_FALSE(dca::worked_answer_matches("b=k=4", '5'));
  CHECK_FALSE(dca::worked_answer_matches("b=k=5x", '5'));
  CHECK_FALSE(dca::worked_answer_matches("", '5'));
  CHECK_FALSE(dca::worked_answer_matches("\n5", '5'));
}

TEST_CASE("chain configurations out of range are refused with the values named") {
  CHECK_THROWS_WITH_AS(dca::ChainGenerator({.max_hops = 0}), doctest::Contains("max_hops = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ChainGenerator({.max_hops = 9, .distractor_chains = 2}),
                       doctest::Contains("26 variable names"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ChainGenerator({.max_hops = 1, .distractor_chains = 10}),
                       doctest::Contains("distractor_chains = 10"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ChainGenerator({.worked_fraction = 1.5}), doctest::Contains("worked_fraction = 1.5"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ChainGenerator({.held_out_percent = 0}), doctest::Contains("held_out_percent = 0"),
                       dca::RangeError);
  dca::ChainGenerator generator({.max_hops = 3});
  CHECK_THROWS_WITH_AS(generator.next(4), doctest::Contains("hops = 4"), dca::RangeError);
  CHECK_THROWS_AS(dca::chain_training_text({}, 0), dca::RangeError);
  // One hop and no distractor: 26 names × 10 digits = 260 programs, about 26 held out.
  CHECK_THROWS_WITH_AS(dca::held_out_chains({.max_hops = 1, .distractor_chains = 0}, 1, 100),
                       doctest::Contains("held-out programs of 1 hops"), dca::RangeError);
}
