// Tests of dca::attention: forward values against a plain reference, gradients by finite
// differences, the structured (grouped, cached) formulation against the explicit-mask one, and the
// validation of every argument.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/attention.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using dca::test::converted;
using dca::test::max_abs_difference;

using dca::AttentionArgs;
using dca::AttentionGroup;
using dca::AttentionRule;
using dca::index_t;
using dca::Shape;
using dca::Tape;
using dca::Tensor;
using dca::Var;

// One attention configuration: sizes and options, everything but the cache views.
struct Case {
  const char* name = "";
  index_t n_q = 0, n_k = 0, n_cache = 0;
  index_t heads = 1, kv_heads = 1, head_dim = 1;
  AttentionRule rule = AttentionRule::causal;
  double scale = 0, softcap = 0;
  index_t window = 0;
  std::vector<AttentionGroup> groups{};
  std::vector<index_t> q_positions{}, k_positions{}, cache_positions{};
  std::vector<std::uint8_t> mask{};
};

struct Inputs {
  Tensor<double> q, k, v, cache_k, cache_v;
};

// Entries in [-2, 2), so that scores reach well beyond the softcaps used below.
Inputs make_inputs(const Case& c, std::uint64_t seed) {
  using dca::test::random_tensor;
  const index_t kv_cols = c.kv_heads * c.head_dim;
  return {random_tensor(Shape{c.n_q, c.heads * c.head_dim}, seed, -2, 2),
          random_tensor(Shape{c.n_k, kv_cols}, seed + 1, -2, 2), random_tensor(Shape{c.n_k, kv_cols}, seed + 2, -2, 2),
          random_tensor(Shape{c.n_cache, kv_cols}, seed + 3, -2, 2),
          random_tensor(Shape{c.n_cache, kv_cols}, seed + 4, -2, 2)};
}

template <dca::Scalar T>
AttentionArgs<T> args_for(const Case& c, const Tensor<T>& cache_k, const Tensor<T>& cache_v) {
  AttentionArgs<T> args;
  args.n_heads = c.heads;
  args.n_kv_heads = c.kv_heads;
  args.scale = c.scale;
  args.softcap = c.softcap;
  args.rule = c.rule;
  args.window = c.window;
  args.groups = c.groups;
  args.q_positions = c.q_positions;
  args.k_positions = c.k_positions;
  if (c.n_cache > 0) args.cache = {cache_k.view(), cache_v.view(), c.cache_positions};
  args.mask = c.mask;
  return args;
}

// The groups a case stands for: its own, or the single default group.
std::vector<AttentionGroup> groups_of(const Case& c) {
  if (!c.groups.empty()) return c.groups;
  return {AttentionGroup{0, c.n_q, 0, c.n_k, 0, c.n_cache}};
}

index_t position_or(const std::vector<index_t>& given, index_t row, index_t fallback) {
  return given.empty() ? fallback : given[static_cast<std::size_t>(row)];
}

// Whether local query i of `group` sees candidate j (cache rows first, then active keys), by the
// documented rules, written out plainly.
bool reference_visible(const Case& c, const AttentionGroup& group, index_t i, index_t j) {
  const bool from_cache = j < group.cache_count;
  const index_t row = from_cache ? group.cache_begin + j : group.k_begin + j - group.cache_count;
  const index_t q_row = group.q_begin + i;
  if (!c.mask.empty())
    return c.mask[static_cast<std::size_t>(q_row * (c.n_cache + c.n_k) + (from_cache ? row : c.n_cache + row))] != 0;
  const index_t active_index = j - group.cache_count;
  const bool by_rule =
      from_cache || c.rule == AttentionRule::bidirectional || active_index <= i + group.k_count - group.q_count;
  if (!by_rule) return false;
  if (c.window == 0) return true;
  const index_t q_pos = position_or(c.q_positions, q_row, c.n_cache + c.n_k - c.n_q + q_row);
  const index_t key_pos =
      from_cache ? position_or(c.cache_positions, row, row) : position_or(c.k_positions, row, c.n_cache + row);
  return q_pos - key_pos < c.window;
}

// Attention computed plainly: loops over groups, heads, queries and keys, std::exp softmax.
Tensor<double> reference_attention(const Case& c, const Inputs& in) {
  const index_t D = c.head_dim, per_kv = c.heads / c.kv_heads;
  const double scale = c.scale != 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(D));
  Tensor<double> out(Shape{c.n_q, c.heads * D});
  for (const AttentionGroup& group : groups_of(c)) {
    for (index_t h = 0; h < c.heads; ++h) {
      const index_t kv = h / per_kv;
      for (index_t i = 0; i < group.q_count; ++i) {
        const index_t q_row = group.q_begin + i;
        std::vector<double> scores;
        std::vector<const double*> values;
        for (index_t j = 0; j < group.cache_count + group.k_count; ++j) {
          if (!reference_visible(c, group, i, j)) continue;
          const bool from_cache = j < group.cache_count;
          const index_t row = from_cache ? group.cache_begin + j : group.k_begin + j - group.cache_count;
          const Tensor<double>& keys = from_cache ? in.cache_k : in.k;
          const Tensor<double>& vals = from_cache ? in.cache_v : in.v;
          double s = 0;
          for (index_t d = 0; d < D; ++d) s += in.q(q_row, h * D + d) * keys(row, kv * D + d);
          s *= scale;
          if (c.softcap > 0) s = c.softcap * std::tanh(s / c.softcap);
          scores.push_back(s);
          values.push_back(&vals(row, kv * D));
        }
        if (scores.empty()) continue;
        double max = scores[0], sum = 0;
        for (double s : scores) max = std::max(max, s);
        for (double& s : scores) sum += (s = std::exp(s - max));
        for (std::size_t j = 0; j < scores.size(); ++j)
          for (index_t d = 0; d < D; ++d) out(q_row, h * D + d) += scores[j] / sum * values[j][d];
      }
    }
  }
  return out;
}

// The coprocessor pattern: groups of 2 latent queries with their own keys, each seeing a prefix
// 0..t_j of one shared cache, listed out of order; the last group continues a sequence (2 queries,
// 3 keys) and sees cache rows [2, 5), not a prefix starting at 0.
std::vector<AttentionGroup> coprocessor_groups() {
  return {AttentionGroup{4, 2, 4, 2, 0, 6}, AttentionGroup{0, 2, 0, 2, 0, 2}, AttentionGroup{6, 2, 6, 3, 2, 3},
          AttentionGroup{2, 2, 2, 2, 0, 4}};
}

Case coprocessor_case() {
  return {.name = "coprocessor groups over prefixes of a shared cache",
          .n_q = 8,
          .n_k = 9,
          .n_cache = 6,
          .heads = 4,
          .kv_heads = 2,
          .head_dim = 2,
          .groups = coprocessor_groups()};
}

// As above with a window of 2 and the latent slots of group j all at position t_j + 1: causality
// among them is by order, the window cuts the cache.
Case windowed_coprocessor_case() {
  Case c = coprocessor_case();
  c.name = "coprocessor groups with a window, shared latent positions and a softcap";
  c.window = 2;
  c.softcap = 1.5;
  c.q_positions = {2, 2, 4, 4, 6, 6, 5, 5};
  c.k_positions = {2, 2, 4, 4, 6, 6, 5, 5, 5};
  c.cache_positions = {0, 1, 2, 3, 4, 5};
  return c;
}

// Large enough (8 groups of 12 queries over a 48-row cache, 4 heads of width 16) to run on
// several threads.
Case threaded_case() {
  Case c{.name = "8 groups over a shared cache, large enough for several threads",
         .n_q = 96,
         .n_k = 96,
         .n_cache = 48,
         .heads = 4,
         .kv_heads = 2,
         .head_dim = 16,
         .softcap = 2.0};
  for (index_t j = 0; j < 8; ++j) c.groups.push_back(AttentionGroup{12 * j, 12, 12 * j, 12, 0, 6 * j + 6});
  return c;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  cases.push_back({.name = "causal self-attention", .n_q = 5, .n_k = 5, .heads = 2, .kv_heads = 2, .head_dim = 3});
  cases.push_back({.name = "causal continuation with fewer queries than keys", .n_q = 3, .n_k = 5, .head_dim = 4});
  cases.push_back({.name = "bidirectional",
                   .n_q = 4,
                   .n_k = 6,
                   .heads = 2,
                   .kv_heads = 2,
                   .head_dim = 2,
                   .rule = AttentionRule::bidirectional});
  cases.push_back({.name = "causal sliding window over cache and keys",
                   .n_q = 5,
                   .n_k = 5,
                   .n_cache = 3,
                   .heads = 2,
                   .kv_heads = 2,
                   .head_dim = 2,
                   .window = 3});
  cases.push_back({.name = "bidirectional sliding window bounds only the look-back",
                   .n_q = 5,
                   .n_k = 5,
                   .heads = 1,
                   .kv_heads = 1,
                   .head_dim = 3,
                   .rule = AttentionRule::bidirectional,
                   .window = 2});
  cases.push_back({.name = "grouped-query attention (4 heads, 2 kv heads) with a cache",
                   .n_q = 4,
                   .n_k = 4,
                   .n_cache = 2,
                   .heads = 4,
                   .kv_heads = 2,
                   .head_dim = 2});
  cases.push_back({.name = "multi-query attention (3 heads, 1 kv head)",
                   .n_q = 4,
                   .n_k = 4,
                   .heads = 3,
                   .kv_heads = 1,
                   .head_dim = 2});
  cases.push_back({.name = "softcap with a custom scale",
                   .n_q = 4,
                   .n_k = 4,
                   .n_cache = 2,
                   .heads = 2,
                   .kv_heads = 2,
                   .head_dim = 3,
                   .scale = 1.3,
                   .softcap = 0.8});
  cases.push_back({.name = "custom scale, bidirectional",
                   .n_q = 3,
                   .n_k = 4,
                   .heads = 2,
                   .kv_heads = 1,
                   .head_dim = 3,
                   .rule = AttentionRule::bidirectional,
                   .scale = 0.37});
  cases.push_back({.name = "constant cache plus active keys",
                   .n_q = 3,
                   .n_k = 3,
                   .n_cache = 4,
                   .heads = 2,
                   .kv_heads = 2,
                   .head_dim = 2});
  cases.push_back(coprocessor_case());
  cases.push_back(windowed_coprocessor_case());
  // With a mask the causal rule does not apply, so more queries than keys are fine; row 1 sees nothing.
  cases.push_back({.name = "explicit mask over cache and keys",
                   .n_q = 4,
                   .n_k = 3,
                   .n_cache = 2,
                   .heads = 2,
                   .kv_heads = 1,
                   .head_dim = 2,
                   .mask = {1, 0, 1, 0, 0,  //
                            0, 0, 0, 0, 0,  //
                            1, 1, 0, 1, 1,  //
                            0, 1, 1, 1, 0}});
  return cases;
}

// Output and gradients of one attention call, seeded with d(loss)/d(output) = `seed`.
template <dca::Scalar T>
struct Result {
  Tensor<T> out, dq, dk, dv;
};

template <dca::Scalar T>
Result<T> run(const AttentionArgs<T>& args, const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
              const Tensor<T>& seed) {
  Tape<T> tape;
  Var<T> qv = tape.variable(q.view()), kv = tape.variable(k.view()), vv = tape.variable(v.view());
  Var<T> y = dca::attention(qv, kv, vv, args);
  tape.backward(y, seed.view());
  return {Tensor<T>(y.value()), Tensor<T>(qv.grad()), Tensor<T>(kv.grad()), Tensor<T>(vv.grad())};
}

template <dca::Scalar T>
Result<T> run_case(const Case& c, const Inputs& in, std::uint64_t seed) {
  const Tensor<T> cache_k = converted<T>(in.cache_k), cache_v = converted<T>(in.cache_v);
  const auto direction = dca::test::random_tensor<T>(Shape{c.n_q, c.heads * c.head_dim}, seed);
  return run<T>(args_for<T>(c, cache_k, cache_v), converted<T>(in.q), converted<T>(in.k), converted<T>(in.v),
                direction);
}

// Output and every gradient of a float run within 1e-5 (relative) of the double run.
void check_float_agrees_with_double(const Result<float>& in_float, const Result<double>& in_double) {
  CHECK(dca::test::max_relative_difference(in_float.out.span(), in_double.out.span()) < 1e-5);
  CHECK(dca::test::max_relative_difference(in_float.dq.span(), in_double.dq.span()) < 1e-5);
  CHECK(dca::test::max_relative_difference(in_float.dk.span(), in_double.dk.span()) < 1e-5);
  CHECK(dca::test::max_relative_difference(in_float.dv.span(), in_double.dv.span()) < 1e-5);
}

bool bitwise_equal(const auto& a, const auto& b) {
  if (!(a.shape() == b.shape())) return false;
  for (index_t i = 0; i < a.numel(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// Runs `call`, which must throw `Error` with a message naming attention and every fragment.
template <class Error, class F>
void check_rejected(F&& call, std::initializer_list<std::string_view> fragments) {
  std::string message;
  bool thrown = false;
  try {
    call();
  } catch (const Error& e) {
    thrown = true;
    message = e.what();
  }
  CHECK_MESSAGE(thrown, "no exception of the expected type");
  INFO("message: ", message);
  CHECK(message.find("attention") != std::string::npos);
  for (std::string_view fragment : fragments) CHECK_MESSAGE(message.find(fragment) != std::string::npos, fragment);
}

}  // namespace

TEST_CASE("attention matches a plain reference for every rule, window, head layout, cache, group and mask") {
  for (const Case& c : all_cases()) {
    INFO(c.name);
    const Inputs in = make_inputs(c, 11);
    Tape<double> tape;
    const auto args = args_for<double>(c, in.cache_k, in.cache_v);
    Var<double> y =
        dca::attention(tape.variable(in.q.view()), tape.variable(in.k.view()), tape.variable(in.v.view()), args);
    CHECK(y.shape() == Shape{c.n_q, c.heads * c.head_dim});
    CHECK(max_abs_difference(y.value(), reference_attention(c, in)) < 1e-12);
  }
}

TEST_CASE("attention gradients of q, k and v match finite differences for every configuration") {
  for (const Case& c : all_cases()) {
    INFO(c.name);
    const Inputs in = make_inputs(c, 23);
    const auto args = args_for<double>(c, in.cache_k, in.cache_v);
    CHECK(
        dca::check_gradients([&](auto q, auto k, auto v) { return dca::attention(q, k, v, args); }, in.q, in.k, in.v));
  }
}

TEST_CASE("attention large enough for several threads matches the reference and finite differences") {
  const Case c = threaded_case();
  const Inputs in = make_inputs(c, 97);
  const auto args = args_for<double>(c, in.cache_k, in.cache_v);
  Tape<double> tape;
  Var<double> y =
      dca::attention(tape.variable(in.q.view()), tape.variable(in.k.view()), tape.variable(in.v.view()), args);
  CHECK(max_abs_difference(y.value(), reference_attention(c, in)) < 1e-12);
  dca::GradCheckOptions sampled;
  sampled.max_elements_per_input = 16;
  CHECK(dca::check_gradients(
      sampled, [&](auto q, auto k, auto v) { return dca::attention(q, k, v, args); }, in.q, in.k, in.v));
}

TEST_CASE("grouped attention over a shared cache equals one explicit mask over the concatenated keys") {
  for (const Case& c : {coprocessor_case(), windowed_coprocessor_case()}) {
    INFO(c.name);
    const Inputs in = make_inputs(c, 31);
    const index_t n_keys = c.n_cache + c.n_k, kv_cols = c.kv_heads * c.head_dim;
    // The explicit formulation: keys = cache rows then active rows, all active, one dense mask.
    Tensor<double> all_k(Shape{n_keys, kv_cols}), all_v(Shape{n_keys, kv_cols});
    for (index_t r = 0; r < n_keys; ++r)
      for (index_t col = 0; col < kv_cols; ++col) {
        all_k(r, col) = r < c.n_cache ? in.cache_k(r, col) : in.k(r - c.n_cache, col);
        all_v(r, col) = r < c.n_cache ? in.cache_v(r, col) : in.v(r - c.n_cache, col);
      }
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(c.n_q * n_keys), 0);
    for (const AttentionGroup& g : c.groups)
      for (index_t i = 0; i < g.q_count; ++i)
        for (index_t j = 0; j < g.cache_count + g.k_count; ++j) {
          const index_t key = j < g.cache_count ? g.cache_begin + j : c.n_cache + g.k_begin + j - g.cache_count;
          mask[static_cast<std::size_t>((g.q_begin + i) * n_keys + key)] = reference_visible(c, g, i, j);
        }
    AttentionArgs<double> explicit_args;
    explicit_args.n_heads = c.heads;
    explicit_args.n_kv_heads = c.kv_heads;
    explicit_args.softcap = c.softcap;
    explicit_args.mask = mask;

    const auto seed = dca::test::random_tensor(Shape{c.n_q, c.heads * c.head_dim}, 37);
    const auto structured = run<double>(args_for<double>(c, in.cache_k, in.cache_v), in.q, in.k, in.v, seed);
    const auto dense = run<double>(explicit_args, in.q, all_k, all_v, seed);
    CHECK(max_abs_difference(structured.out, dense.out) < 1e-12);
    CHECK(max_abs_difference(structured.dq, dense.dq) < 1e-12);
    for (index_t r = 0; r < c.n_k; ++r)
      for (index_t col = 0; col < kv_cols; ++col) {
        CHECK(std::abs(structured.dk(r, col) - dense.dk(c.n_cache + r, col)) < 1e-12);
        CHECK(std::abs(structured.dv(r, col) - dense.dv(c.n_cache + r, col)) < 1e-12);
      }
  }
}

TEST_CASE("attention output does not change when keys no query may see are changed") {
  const Case c = coprocessor_case();
  const Inputs in = make_inputs(c, 41);
  const auto output = [&](const Inputs& inputs, const Case& config) {
    Tape<double> tape;
    const auto args = args_for<double>(config, inputs.cache_k, inputs.cache_v);
    return Tensor<double>(dca::attention(tape.constant(inputs.q.view()), tape.constant(inputs.k.view()),
                                         tape.constant(inputs.v.view()), args)
                              .value());
  };
  const auto rows_equal = [](const Tensor<double>& a, const Tensor<double>& b, index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r)
      for (index_t col = 0; col < a.cols(); ++col)
        if (a(r, col) != b(r, col)) return false;
    return true;
  };
  const auto base = output(in, c);

  SUBCASE("cache rows beyond a group's prefix") {
    Inputs changed = in;
    for (index_t r = 2; r < c.n_cache; ++r)  // group 1 (q rows 0..1) sees cache rows 0..1 only
      for (index_t col = 0; col < changed.cache_k.cols(); ++col)
        changed.cache_k(r, col) += 50, changed.cache_v(r, col) -= 50;
    const auto after = output(changed, c);
    CHECK(rows_equal(base, after, 0, 2));
    CHECK_FALSE(rows_equal(base, after, 2, 4));
  }
  SUBCASE("another group's keys and a group's own causal future") {
    Inputs changed = in;
    for (index_t col = 0; col < changed.k.cols(); ++col) {
      changed.k(2, col) += 50, changed.v(2, col) -= 50;  // group 3's keys: invisible to every other group
      changed.k(5, col) += 50, changed.v(5, col) -= 50;  // group 0's second key: invisible to its first query
    }
    const auto after = output(changed, c);
    CHECK(rows_equal(base, after, 0, 2));
    CHECK(rows_equal(base, after, 4, 5));
    CHECK(rows_equal(base, after, 6, 8));
    CHECK_FALSE(rows_equal(base, after, 5, 6));
  }
  SUBCASE("cache rows outside every query's window") {
    const Case windowed = windowed_coprocessor_case();
    const auto windowed_base = output(in, windowed);
    Inputs changed = in;
    for (index_t col = 0; col < changed.cache_k.cols(); ++col)
      changed.cache_k(0, col) += 50, changed.cache_v(0, col) -= 50;
    CHECK(bitwise_equal(output(changed, windowed), windowed_base));
  }
}

TEST_CASE("a query that sees no key outputs zeros and gets no gradient") {
  // Group 0 sees its two keys; group 1 (q row 2) has no key at all; q row 3 belongs to no group.
  const Case c{.name = "rows without keys",
               .n_q = 4,
               .n_k = 2,
               .heads = 1,
               .kv_heads = 1,
               .head_dim = 2,
               .rule = AttentionRule::bidirectional,
               .groups = {AttentionGroup{0, 2, 0, 2, 0, 0}, AttentionGroup{2, 1, 2, 0, 0, 0}}};
  const Case masked = all_cases().back();  // its q row 1 sees nothing
  const std::vector<std::pair<Case, std::vector<index_t>>> configs_and_empty_rows{{c, {2, 3}}, {masked, {1}}};
  for (const auto& config_and_rows : configs_and_empty_rows) {
    const Case& config = config_and_rows.first;
    const std::vector<index_t>& empty_rows = config_and_rows.second;
    INFO(config.name);
    const Inputs in = make_inputs(config, 43);
    const auto result = run_case<double>(config, in, 47);
    for (index_t r : empty_rows)
      for (index_t col = 0; col < result.out.cols(); ++col) {
        CHECK(result.out(r, col) == 0);
        CHECK(result.dq(r, col) == 0);
      }
    const auto args = args_for<double>(config, in.cache_k, in.cache_v);
    CHECK(
        dca::check_gradients([&](auto q, auto k, auto v) { return dca::attention(q, k, v, args); }, in.q, in.k, in.v));
  }
}

TEST_CASE("constant keys and values get no gradient and cost fewer backward GEMMs") {
  const Case c{.name = "self-attention", .n_q = 4, .n_k = 4, .heads = 2, .kv_heads = 2, .head_dim = 3};
  const Inputs in = make_inputs(c, 53);
  const auto args = args_for<double>(c, in.cache_k, in.cache_v);
  const auto seed = dca::test::random_tensor(Shape{4, 6}, 59);

  Tape<double> all_active;
  Var<double> q = all_active.variable(in.q.view());
  all_active.backward(dca::attention(q, all_active.variable(in.k.view()), all_active.variable(in.v.view()), args),
                      seed.view());

  Tape<double> q_only;
  Var<double> q2 = q_only.variable(in.q.view()), k2 = q_only.constant(in.k.view()), v2 = q_only.constant(in.v.view());
  Var<double> y = dca::attention(q2, k2, v2, args);
  q_only.backward(y, seed.view());

  CHECK(y.requires_grad());
  CHECK_FALSE(k2.requires_grad());
  CHECK_FALSE(v2.requires_grad());
  CHECK(bitwise_equal(Tensor<double>(q2.grad()), Tensor<double>(q.grad())));
  // Per head: dP and dQ for q; dK and dV on top when k and v are active.
  CHECK(q_only.stats().backward_gemms == 2 * 2);
  CHECK(all_active.stats().backward_gemms == 4 * 2);

  Tape<double> v_only;
  Var<double> v3 = v_only.variable(in.v.view());
  v_only.backward(dca::attention(v_only.constant(in.q.view()), v_only.constant(in.k.view()), v3, args), seed.view());
  CHECK(v_only.stats().backward_gemms == 1 * 2);
}

TEST_CASE("attention without gradients computes the same output as with them, as a constant") {
  const Case c = windowed_coprocessor_case();
  const Inputs in = make_inputs(c, 61);
  const auto args = args_for<double>(c, in.cache_k, in.cache_v);
  Tape<double> tape;
  Var<double> q = tape.variable(in.q.view()), k = tape.variable(in.k.view()), v = tape.variable(in.v.view());
  const Tensor<double> with_grad(dca::attention(q, k, v, args).value());
  dca::NoGradGuard<double> no_grad(tape);
  Var<double> y = dca::attention(q, k, v, args);
  CHECK_FALSE(y.requires_grad());
  CHECK(bitwise_equal(Tensor<double>(y.value()), with_grad));
}

TEST_CASE("q, k and v may be the same variable, with groups reading each other's rows") {
  // Group 0's query rows are group 1's key rows and vice versa: their gradients add to one adjoint.
  const std::vector<AttentionGroup> groups{AttentionGroup{0, 3, 3, 3, 0, 0}, AttentionGroup{3, 3, 0, 3, 0, 0}};
  AttentionArgs<double> args;
  args.n_heads = 2;
  args.n_kv_heads = 2;
  args.groups = groups;
  const auto x = dca::test::random_tensor(Shape{6, 4}, 67, -2, 2);
  CHECK(dca::check_gradients([&](auto x_var) { return dca::attention(x_var, x_var, x_var, args); }, x));
}

TEST_CASE("float attention agrees with double") {
  for (const Case& c : all_cases()) {
    INFO(c.name);
    const Inputs in = make_inputs(c, 71);
    const auto in_double = run_case<double>(c, in, 73);
    const auto in_float = run_case<float>(c, in, 73);
    check_float_agrees_with_double(in_float, in_double);
  }
}

TEST_CASE("attention on two threads gives the same bits as on one") {
  const int previous_threads = dca::num_threads();
  SUBCASE("groups over a shared cache") {
    const Case c = threaded_case();
    const Inputs in = make_inputs(c, 79);
    dca::set_num_threads(1);
    const auto one = run_case<double>(c, in, 83);
    dca::set_num_threads(2);
    const auto two = run_case<double>(c, in, 83);
    CHECK(bitwise_equal(one.out, two.out));
    CHECK(bitwise_equal(one.dq, two.dq));
    CHECK(bitwise_equal(one.dk, two.dk));
    CHECK(bitwise_equal(one.dv, two.dv));
  }
  SUBCASE("q, k and v the same variable, each group's queries being another group's keys") {
    std::vector<AttentionGroup> groups;
    for (index_t j = 0; j < 8; ++j) groups.push_back(AttentionGroup{12 * j, 12, 12 * ((j + 1) % 8), 12, 0, 0});
    AttentionArgs<double> args;
    args.n_heads = 4;
    args.n_kv_heads = 4;
    args.rule = AttentionRule::bidirectional;
    args.groups = groups;
    const auto x = dca::test::random_tensor(Shape{96, 128}, 89, -2, 2);
    const auto seed = dca::test::random_tensor(Shape{96, 128}, 97);
    const auto run_shared = [&] {  // output and gradient
      Tape<double> tape;
      Var<double> x_var = tape.variable(x.view());
      Var<double> y = dca::attention(x_var, x_var, x_var, args);
      tape.backward(y, seed.view());
      return std::pair{Tensor<double>(y.value()), Tensor<double>(x_var.grad())};
    };
    dca::set_num_threads(1);
    const auto one = run_shared();
    dca::set_num_threads(2);
    const auto two = run_shared();
    CHECK(bitwise_equal(one.first, two.first));
    CHECK(bitwise_equal(one.second, two.second));
  }
  dca::set_num_threads(previous_threads);
}

// Causal configurations long enough to span several of the kernel's 32-row query blocks, with a
// partial last block, so that skipping the hidden blocks above the diagonal is exercised.
std::vector<Case> multi_block_cases() {
  std::vector<Case> cases;
  cases.push_back({.name = "causal self-attention over 70 rows", .n_q = 70, .n_k = 70, .heads = 2, .kv_heads = 2,
                   .head_dim = 2});
  cases.push_back({.name = "causal continuation (40 queries, 75 keys) with a cache, GQA and a softcap",
                   .n_q = 40,
                   .n_k = 75,
                   .n_cache = 5,
                   .heads = 4,
                   .kv_heads = 2,
                   .head_dim = 2,
                   .softcap = 1.5});
  cases.push_back({.name = "causal sliding window over 67 rows", .n_q = 67, .n_k = 67, .heads = 1, .kv_heads = 1,
                   .head_dim = 3, .window = 20});
  cases.push_back({.name = "two causal groups of 40 rows over prefixes of a cache",
                   .n_q = 80,
                   .n_k = 80,
                   .n_cache = 6,
                   .heads = 2,
                   .kv_heads = 1,
                   .head_dim = 2,
                   .groups = {AttentionGroup{40, 40, 40, 40, 0, 6}, AttentionGroup{0, 40, 0, 40, 0, 3}}});
  return cases;
}

TEST_CASE("causal attention over several query blocks matches the reference and finite differences") {
  for (const Case& c : multi_block_cases()) {
    INFO(c.name);
    const Inputs in = make_inputs(c, 101);
    const auto args = args_for<double>(c, in.cache_k, in.cache_v);
    Tape<double> tape;
    Var<double> y =
        dca::attention(tape.variable(in.q.view()), tape.variable(in.k.view()), tape.variable(in.v.view()), args);
    CHECK(max_abs_difference(y.value(), reference_attention(c, in)) < 1e-12);
    CHECK(
        dca::check_gradients([&](auto q, auto k, auto v) { return dca::attention(q, k, v, args); }, in.q, in.k, in.v));
    const auto in_double = run_case<double>(c, in, 103);
    const auto in_float = run_case<float>(c, in, 103);
    check_float_agrees_with_double(in_float, in_double);
  }
}

TEST_CASE("causal self-attention skips the hidden blocks: its backward runs far fewer GEMM FLOPs than the square") {
  const Case causal{.name = "causal", .n_q = 128, .n_k = 128, .heads = 2, .kv_heads = 2, .head_dim = 4};
  Case bidirectional = causal;
  bidirectional.rule = AttentionRule::bidirectional;
  const Inputs in = make_inputs(causal, 107);
  const auto seed = dca::test::random_tensor(Shape{128, 8}, 109);
  const auto backward_flops = [&](const Case& c) {
    Tape<double> tape;
    Var<double> q = tape.variable(in.q.view()), k = tape.variable(in.k.view()), v = tape.variable(in.v.view());
    tape.backward(dca::attention(q, k, v, args_for<double>(c, in.cache_k, in.cache_v)), seed.view());
    return tape.stats().backward_gemm_flops;
  };
  // Four blocks of 32 rows see 32, 64, 96 and 128 keys: 10/16 of the square.
  CHECK(backward_flops(causal) == doctest::Approx(backward_flops(bidirectional) * 10.0 / 16.0));
}

TEST_CASE("attention rejects inconsistent shapes, groups, masks, positions and caches with a clear message") {
  Tape<double> tape;
  const auto constant = [&](index_t rows, index_t cols) {
    return tape.constant(dca::test::random_tensor(Shape{rows, cols}, 89).view());
  };
  const Var<double> q = constant(4, 8), k = constant(4, 4), v = constant(4, 4);
  const Tensor<double> cache_k(Shape{3, 4}), cache_v(Shape{3, 4}), wide_cache(Shape{3, 6});
  const auto base = [] {
    AttentionArgs<double> args;
    args.n_heads = 4;
    args.n_kv_heads = 2;
    return args;
  };
  const auto call = [&](const AttentionArgs<double>& args, const Var<double>& qv, const Var<double>& kv,
                        const Var<double>& vv) { return [=] { dca::attention(qv, kv, vv, args); }; };
  const auto attend = [&](const AttentionArgs<double>& args) { return call(args, q, k, v); };

  SUBCASE("head counts") {
    auto args = base();
    args.n_kv_heads = 3;
    check_rejected<dca::ShapeError>(attend(args), {"n_kv_heads 3", "n_heads 4"});
    args.n_kv_heads = 0;
    check_rejected<dca::ShapeError>(attend(args), {"n_kv_heads 0"});
  }
  SUBCASE("columns") {
    auto args = base();
    args.n_heads = 3;
    args.n_kv_heads = 1;
    check_rejected<dca::ShapeError>(attend(args), {"q [4,8]", "3 heads"});
    check_rejected<dca::ShapeError>(call(base(), q, constant(4, 6), constant(4, 6)), {"k [4,6]", "[4,4]"});
    check_rejected<dca::ShapeError>(call(base(), q, k, constant(3, 4)), {"k [4,4]", "v [3,4]"});
  }
  SUBCASE("group ranges outside the rows of q, k or the cache") {
    auto args = base();
    args.rule = AttentionRule::bidirectional;
    const std::vector<AttentionGroup> past_q{AttentionGroup{2, 3, 0, 1, 0, 0}};
    args.groups = past_q;
    check_rejected<dca::RangeError>(attend(args), {"group 0", "q rows [2,5)", "q [4,8]"});
    const std::vector<AttentionGroup> past_k{AttentionGroup{0, 1, 3, 2, 0, 0}};
    args.groups = past_k;
    check_rejected<dca::RangeError>(attend(args), {"group 0", "k rows [3,5)", "k [4,4]"});
    const std::vector<AttentionGroup> negative{AttentionGroup{0, 1, 0, 1, -1, 1}};
    args.groups = negative;
    check_rejected<dca::RangeError>(attend(args), {"cache rows [-1,0)"});
    const std::vector<AttentionGroup> past_cache{AttentionGroup{0, 1, 0, 1, 1, 3}};
    args.groups = past_cache;
    args.cache = {cache_k.view(), cache_v.view(), {}};
    check_rejected<dca::RangeError>(attend(args), {"cache rows [1,4)", "cache [3,4]"});
  }
  SUBCASE("groups sharing query rows or active key rows") {
    auto args = base();
    const std::vector<AttentionGroup> shared_q{AttentionGroup{2, 2, 2, 2, 0, 0}, AttentionGroup{0, 3, 0, 2, 0, 0}};
    args.rule = AttentionRule::bidirectional;
    args.groups = shared_q;
    check_rejected<dca::RangeError>(attend(args), {"group 1 (q rows [0,3)) and group 0 (q rows [2,4)) overlap"});
    const std::vector<AttentionGroup> shared_k{AttentionGroup{0, 2, 0, 3, 0, 0}, AttentionGroup{2, 2, 2, 2, 0, 0}};
    args.groups = shared_k;
    check_rejected<dca::RangeError>(attend(args), {"group 0 (k rows [0,3)) and group 1 (k rows [2,4)) overlap"});
  }
  SUBCASE("causal groups with more queries than keys") {
    check_rejected<dca::ShapeError>(call(base(), constant(5, 8), k, v), {"5 queries", "4 active keys", "q [5,8]"});
    auto args = base();
    const std::vector<AttentionGroup> groups{AttentionGroup{0, 3, 0, 2, 0, 0}};
    args.groups = groups;
    check_rejected<dca::ShapeError>(attend(args), {"group 0", "3 queries", "2 active keys"});
  }
  SUBCASE("masks of the wrong size, with explicit groups or with a window") {
    auto args = base();
    const std::vector<std::uint8_t> mask(15, 1);
    args.mask = mask;
    check_rejected<dca::ShapeError>(attend(args), {"mask has 15 entries", "[4,4]"});
    const std::vector<std::uint8_t> right_mask(16, 1);
    args.mask = right_mask;
    const std::vector<AttentionGroup> groups{AttentionGroup{0, 4, 0, 4, 0, 0}};
    args.groups = groups;
    check_rejected<dca::ShapeError>(attend(args), {"mask", "explicit groups (got 1)"});
    args.groups = {};
    args.window = 2;
    check_rejected<dca::RangeError>(attend(args), {"mask", "window"});
  }
  SUBCASE("positions of the wrong length, or missing with a window and explicit groups") {
    auto args = base();
    const std::vector<index_t> three{0, 1, 2};
    args.q_positions = three;
    check_rejected<dca::ShapeError>(attend(args), {"q_positions has 3 entries, expected 4"});
    args.q_positions = {};
    args.k_positions = three;
    check_rejected<dca::ShapeError>(attend(args), {"k_positions has 3 entries, expected 4"});
    args.k_positions = {};
    const std::vector<index_t> two{0, 1};
    args.cache = {cache_k.view(), cache_v.view(), two};
    check_rejected<dca::ShapeError>(attend(args), {"cache.positions has 2 entries, expected 3"});
    args.cache = {};
    const std::vector<AttentionGroup> groups{AttentionGroup{0, 4, 0, 4, 0, 0}};
    args.groups = groups;
    args.window = 2;
    check_rejected<dca::ShapeError>(attend(args), {"window", "q_positions"});
  }
  SUBCASE("caches whose keys and values differ or have the wrong width") {
    auto args = base();
    args.cache = {cache_k.view(), wide_cache.view(), {}};
    check_rejected<dca::ShapeError>(attend(args), {"cache keys [3,4]", "values [3,6]"});
    args.cache = {wide_cache.view(), wide_cache.view(), {}};
    check_rejected<dca::ShapeError>(attend(args), {"cache keys [3,6]", "[Nc,4]"});
  }
  SUBCASE("negative window, negative softcap") {
    auto args = base();
    args.window = -1;
    check_rejected<dca::RangeError>(attend(args), {"window -1"});
    args.window = 0;
    args.softcap = -2;
    check_rejected<dca::RangeError>(attend(args), {"softcap -2"});
  }
}
