// Specification of the coprocessor: the structured training computation equals the paper's dense
// masked sequence (loss and gradients), gradients through the frozen decoder are exact, every
// variant works, and bad input is rejected.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/coproc/dense_reference.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

using dca::CoprocessorConfig;
using dca::DecoderConfig;
using dca::index_t;

namespace {

std::vector<DecoderConfig> presets() { return dca::test::tiny_presets(4); }

std::vector<index_t> tokens(index_t n, std::uint64_t seed) { return dca::test::random_tokens(n, seed); }

template <index_t NL, class O = dca::UniformAhead>
using Cop = dca::Coprocessor<double, NL, O>;

// Gradients of every coprocessor parameter after one backward of `loss`.
template <class C>
std::vector<dca::Tensor<double>> gradients(C& coprocessor) {
  std::vector<dca::Tensor<double>> out;
  for (auto* p : coprocessor.parameters()) out.push_back(p->grad());
  return out;
}

template <class C>
void zero(C& coprocessor) {
  for (auto* p : coprocessor.parameters())
    if (p->has_grad()) p->zero_grad();
}

// Structured vs dense: loss, per-position losses and every gradient.
template <class C>
void check_structured_equals_dense(C& coprocessor, dca::Decoder<double>& decoder, const std::vector<index_t>& ids,
                                   const dca::AugmentationPlan& plan) {
  zero(coprocessor);
  dca::Tape<double> tape;
  const auto structured = coprocessor.loss(tape, decoder, ids, plan);
  tape.backward(structured.loss);
  const auto g_structured = gradients(coprocessor);
  zero(coprocessor);
  dca::Tape<double> dense_tape;
  const auto dense = dca::dense_reference_loss(coprocessor, dense_tape, decoder, ids, plan);
  dense_tape.backward(dense.loss);
  const auto g_dense = gradients(coprocessor);
  CHECK(std::abs(structured.loss.item() - dense.loss.item()) <= 1e-10 * std::abs(dense.loss.item()));
  for (std::size_t n = 0; n < structured.per_position.size(); ++n)
    CHECK(std::abs(structured.per_position[n] - dense.per_position[n]) <= 1e-10 * std::abs(dense.per_position[n]));
  REQUIRE(g_structured.size() == g_dense.size());
  double worst = 0;
  for (std::size_t i = 0; i < g_dense.size(); ++i)
    worst = std::max(worst, dca::test::max_relative_difference(g_structured[i].span(), g_dense[i].span()));
  CHECK(worst <= 1e-10);
}

}  // namespace

TEST_CASE("structured training equals the paper's dense masked sequence, loss and gradients, for every preset") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 1);
    decoder.freeze();
    const auto ids = tokens(2 * 12, 3);
    const auto plan = dca::AugmentationPlan::given(2, 12, 3, {1, 6, 4, 8});
    CoprocessorConfig c;
    c.n_ahead = 3;
    c.seed = 5;
    Cop<2> coprocessor(decoder, c);
    // A non-zero latent projection, so that the coprocessor's gradient path is exercised.
    auto& w = coprocessor.parameters()[coprocessor.parameters().size() - 2]->value();
    w = dca::test::random_tensor(w.shape(), 9, -0.3, 0.3);
    check_structured_equals_dense(coprocessor, decoder, ids, plan);
  }
}

TEST_CASE("a coprocessor given its latent count at run time computes what one with the count in its type computes") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 1);
    decoder.freeze();
    const auto ids = tokens(2 * 12, 3);
    const auto plan = dca::AugmentationPlan::given(2, 12, 3, {1, 6, 4, 8});
    CoprocessorConfig c;
    c.n_ahead = 3;
    c.seed = 5;
    Cop<3> fixed(decoder, c);
    c.n_latents = 3;
    Cop<dca::dynamic_latents> dynamic(decoder, c);
    CHECK(fixed.n_latents() == 3);
    CHECK(dynamic.n_latents() == 3);
    const auto projection = dca::test::random_tensor(dca::Shape{config.hidden_size, config.hidden_size}, 9, -0.3, 0.3);
    fixed.parameters()[fixed.parameters().size() - 2]->value() = projection;
    dynamic.parameters()[dynamic.parameters().size() - 2]->value() = projection;
    dca::Tape<double> fixed_tape, dynamic_tape;
    const auto a = fixed.loss(fixed_tape, decoder, ids, plan), b = dynamic.loss(dynamic_tape, decoder, ids, plan);
    fixed_tape.backward(a.loss);
    dynamic_tape.backward(b.loss);
    CHECK(a.loss.item() == b.loss.item());
    CHECK(a.per_position == b.per_position);
    const auto ga = gradients(fixed), gb = gradients(dynamic);
    REQUIRE(ga.size() == gb.size());
    for (std::size_t i = 0; i < ga.size(); ++i) CHECK(dca::test::max_abs_difference(ga[i], gb[i]) == 0.0);
    check_structured_equals_dense(dynamic, decoder, ids, plan);
  }
}

TEST_CASE("a run-time latent count must be given, and a count in the type cannot be contradicted") {
  dca::Decoder<double> decoder(presets()[0], 1);
  CHECK_THROWS_WITH_AS(Cop<dca::dynamic_latents>(decoder, CoprocessorConfig{}),
                       doctest::Contains("CoprocessorConfig::n_latents = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(Cop<2>(decoder, CoprocessorConfig{.n_latents = 3}),
                       doctest::Contains("n_latents = 3 differs from the type's 2 latents"), dca::RangeError);
  CHECK_THROWS_WITH_AS(Cop<2>(decoder, CoprocessorConfig{.n_latents = -1}), doctest::Contains("n_latents must be ≥ 0"),
                       dca::RangeError);
  CHECK(Cop<2>(decoder, CoprocessorConfig{.n_latents = 2}).n_latents() == 2);
  CHECK(Cop<dca::dynamic_latents>(decoder, CoprocessorConfig{.n_latents = 5}).soft_tokens().value().rows() == 5);
}

TEST_CASE("structured equals dense for every latent form, position policy and soft-token rule") {
  const auto config = presets()[2];
  dca::Decoder<double> decoder(config, 4);
  decoder.freeze();
  const auto ids = tokens(14, 5);
  const auto plan = dca::AugmentationPlan::given(1, 14, 4, {2, 5, 9});
  for (const auto form : {dca::LatentForm::residual, dca::LatentForm::normed, dca::LatentForm::final_hidden,
                          dca::LatentForm::token_mixture})
    for (const auto positions : {dca::LatentPositions::at_insertion_point, dca::LatentPositions::shifted})
      for (const auto rule : {dca::AttentionRule::causal, dca::AttentionRule::bidirectional}) {
        CAPTURE(static_cast<int>(form));
        CAPTURE(static_cast<int>(positions));
        CAPTURE(static_cast<int>(rule));
        CoprocessorConfig c;
        c.n_ahead = 4;
        c.latent_form = form;
        c.positions = positions;
        c.soft_token_rule = rule;
        Cop<3> coprocessor(decoder, c);
        check_structured_equals_dense(coprocessor, decoder, ids, plan);
      }
}

TEST_CASE("an oracle coprocessor's structured loss equals the dense masks with the same lookahead") {
  const auto config = presets()[2];  // Gemma-2: the sliding window folds into the oracle's masks too
  dca::Decoder<double> decoder(config, 8);
  decoder.freeze();
  const auto ids = tokens(2 * 13, 7);
  const auto plan = dca::AugmentationPlan::given(2, 13, 3, {1, 6, 4, 9});
  for (const dca::index_t lookahead : {1, 3}) {
    CAPTURE(lookahead);
    CoprocessorConfig c;
    c.n_ahead = 3;
    c.oracle_lookahead = lookahead;
    c.latent_form = dca::LatentForm::normed;  // latents straight from the coprocessor, so its prefix shows
    Cop<2> coprocessor(decoder, c);
    check_structured_equals_dense(coprocessor, decoder, ids, plan);
  }
}

TEST_CASE("gradients reach the soft tokens and the coprocessor's weights through the frozen decoder exactly") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 2);
    decoder.freeze();
    const auto ids = tokens(11, 6);
    const auto plan = dca::AugmentationPlan::given(1, 11, 3, {2, 6});
    CoprocessorConfig c;
    c.n_ahead = 3;
    c.latent_form = dca::LatentForm::normed;  // the residual form's zero projection would hide the coprocessor
    Cop<2> coprocessor(decoder, c);
    auto params = coprocessor.parameters();
    // The soft tokens and a sample of weights of every kind.
    std::vector<dca::Parameter<double>*> checked = {params.back(), params[1], params[params.size() / 2], params[params.size() - 2]};
    dca::GradCheckOptions options;
    options.max_elements_per_input = 6;
    const auto result = dca::check_parameter_gradients(
        options, [&](dca::Tape<double>& tape) { return coprocessor.loss(tape, decoder, ids, plan).loss; },
        std::span<dca::Parameter<double>* const>(checked));
    CHECK(result);
    for (auto* p : decoder.parameters()) CHECK_FALSE(p->has_grad());
  }
}

TEST_CASE("token-mixture latents start as the coprocessor's next-token distribution over the decoder's embedding table") {
  for (const auto& config : presets()) {  // Gemma-2's final soft-cap shapes the distribution too
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 3);
    decoder.freeze();
    const auto ids = tokens(9, 4);
    CoprocessorConfig mixture_config;
    mixture_config.latent_form = dca::LatentForm::token_mixture;
    mixture_config.seed = 6;
    CoprocessorConfig normed_config = mixture_config;
    normed_config.latent_form = dca::LatentForm::normed;  // the same soft tokens: h, the coprocessor's normed output
    Cop<3> mixture(decoder, mixture_config), normed(decoder, normed_config);
    dca::Tape<double> tape;
    const auto z = mixture.latents(tape, decoder, ids).value();
    const auto h = normed.latents(tape, decoder, ids).value();
    const auto logits = mixture.model().head(tape, tape.constant(h)).value();  // [N_L, V]
    const auto& table = decoder.token_embedding().value();                    // [V, d]
    const index_t V = table.shape()[0], d = table.shape()[1];
    double worst = 0;
    for (index_t i = 0; i < 3; ++i) {
      double top = -1e300, total = 0;
      for (index_t v = 0; v < V; ++v) top = std::max(top, logits[i * V + v]);
      std::vector<double> p(static_cast<std::size_t>(V));
      for (index_t v = 0; v < V; ++v) total += p[static_cast<std::size_t>(v)] = std::exp(logits[i * V + v] - top);
      for (index_t k = 0; k < d; ++k) {
        double expected = 0;
        for (index_t v = 0; v < V; ++v) expected += p[static_cast<std::size_t>(v)] / total * table[v * d + k];
        worst = std::max(worst, std::abs(z[i * d + k] - expected) / (std::abs(expected) + 1e-12));
      }
    }
    CHECK(worst <= 1e-12);
    // The correction starts at zero and is trained with the new parameters.
    const auto groups = mixture.parameter_groups(10.0);
    REQUIRE(groups.size() == 2);
    const auto& fresh = groups[1].parameters;
    CHECK(std::any_of(fresh.begin(), fresh.end(), [](auto* q) { return q->name() == "coprocessor.latent_projection.weight"; }));
  }
}

TEST_CASE("gradients of token-mixture latents reach the coprocessor's head, weights and correction exactly") {
  dca::Decoder<double> decoder(presets()[0], 2);
  decoder.freeze();
  const auto ids = tokens(11, 8);
  const auto plan = dca::AugmentationPlan::given(1, 11, 3, {2, 6});
  CoprocessorConfig c;
  c.n_ahead = 3;
  c.latent_form = dca::LatentForm::token_mixture;
  Cop<2> coprocessor(decoder, c);
  auto params = coprocessor.parameters();
  auto& correction = *params[params.size() - 2];
  REQUIRE(correction.name() == "coprocessor.latent_projection.weight");
  correction.value() = dca::test::random_tensor(correction.value().shape(), 3, -0.2, 0.2);  // its input's path too
  std::vector<dca::Parameter<double>*> checked = {params.back(), params.front(), params[params.size() / 2], &correction};
  dca::GradCheckOptions options;
  options.max_elements_per_input = 6;
  const auto result = dca::check_parameter_gradients(
      options, [&](dca::Tape<double>& tape) { return coprocessor.loss(tape, decoder, ids, plan).loss; },
      std::span<dca::Parameter<double>* const>(checked));
  CHECK(result);
}

TEST_CASE("a plan preferring points takes them first, up to K, and fills the rest uniformly from the others") {
  const index_t T = 20, n_ahead = 3, K = 5, available = T - n_ahead;
  std::vector<index_t> ids(2 * T, 1);
  for (const index_t t : {2, 5, 9}) ids[t] = 7;                       // fewer preferred points than K
  for (const index_t t : {0, 1, 3, 4, 6, 10, 12, 16}) ids[T + t] = 7;  // more than K
  ids[T + 18] = 7;                                                     // past the last point: never taken
  const auto is_seven = [](std::span<const index_t> s, index_t t) { return s[t] == 7; };
  dca::Rng rng(3);
  std::vector<int> counts(static_cast<std::size_t>(2 * available), 0);
  const int draws = 2000;
  for (int d = 0; d < draws; ++d) {
    const auto plan = dca::AugmentationPlan::preferring(2, T, K, n_ahead, ids, is_seven, rng);
    REQUIRE(plan.points.size() == static_cast<std::size_t>(2 * K));
    for (index_t b = 0; b < 2; ++b) {
      index_t preferred = 0;
      for (index_t j = 0; j < K; ++j) {
        const index_t t = plan.point(b, j);
        REQUIRE((t >= 0 && t < available));
        if (j > 0) REQUIRE(t > plan.point(b, j - 1));  // distinct and ascending
        preferred += ids[static_cast<std::size_t>(b * T + t)] == 7 ? 1 : 0;
        ++counts[static_cast<std::size_t>(b * available + t)];
      }
      CHECK(preferred == (b == 0 ? 3 : K));
    }
  }
  // Sequence 0: its 3 preferred points always, each of the 14 others 2/14 of the time; sequence 1:
  // each of its 8 preferred points 5/8 of the time (±0.011 standard error), the others never.
  for (index_t t = 0; t < available; ++t) {
    CAPTURE(t);
    const double zero = counts[static_cast<std::size_t>(t)] / double(draws);
    const double one = counts[static_cast<std::size_t>(available + t)] / double(draws);
    if (ids[static_cast<std::size_t>(t)] == 7) CHECK(zero == 1.0);
    else CHECK((zero > 0.143 - 0.05 && zero < 0.143 + 0.05));
    if (ids[static_cast<std::size_t>(T + t)] == 7) CHECK((one > 0.625 - 0.05 && one < 0.625 + 0.05));
    else CHECK(one == 0.0);
  }
  // Every point preferred: the same draws as the uniform plan.
  dca::Rng a(9), b(9);
  const auto all = dca::AugmentationPlan::preferring(2, T, K, n_ahead, ids, [](auto, index_t) { return true; }, a);
  CHECK(all.points == dca::AugmentationPlan::random(2, T, K, n_ahead, b).points);
  CHECK_THROWS_WITH_AS(dca::AugmentationPlan::preferring(2, T, K, n_ahead, std::span<const index_t>(ids).first(T), is_seven, rng),
                       doctest::Contains("20 token ids for 2 sequences of 20"), dca::RangeError);
}

TEST_CASE("a plan's parts take every parts-th point of each sequence and together are the plan") {
  const auto plan = dca::AugmentationPlan::given(2, 30, 3, {1, 4, 6, 9, 12, 0, 2, 3, 8, 20});
  for (const index_t parts : {1, 2, 3, 5}) {
    CAPTURE(parts);
    std::vector<index_t> first, second;  // the two sequences' points, gathered from the parts
    index_t groups = 0;
    for (index_t i = 0; i < parts; ++i) {
      const dca::AugmentationPlan part = plan.part(i, parts);
      CHECK(part.batch == 2);
      CHECK(part.seq_len == 30);
      CHECK(part.n_ahead == 3);
      CHECK(part.points_per_sequence == (5 - i + parts - 1) / parts);
      groups += part.groups();
      for (index_t j = 0; j < part.points_per_sequence; ++j) {
        CHECK(part.point(0, j) == plan.point(0, i + j * parts));
        first.push_back(part.point(0, j));
        second.push_back(part.point(1, j));
      }
    }
    CHECK(groups == plan.groups());
    std::sort(first.begin(), first.end());
    std::sort(second.begin(), second.end());
    CHECK(first == std::vector<index_t>{1, 4, 6, 9, 12});
    CHECK(second == std::vector<index_t>{0, 2, 3, 8, 20});
  }
  CHECK_THROWS_WITH_AS(plan.part(0, 6), doctest::Contains("part 0 of 6 of a plan with K = 5"), dca::RangeError);
  CHECK_THROWS_AS(plan.part(2, 2), dca::RangeError);
}

TEST_CASE("a plan by scores takes each sequence's K highest-scored points, equal scores drawn uniformly") {
  const index_t T = 20, n_ahead = 3, K = 4, available = T - n_ahead;
  std::vector<double> scores(2 * T, 0.0);
  scores[3] = 5.0;
  scores[8] = 2.0;
  scores[16] = 1.0;
  scores[17] = 100.0;  // past the last drawable point: never drawn
  for (index_t t = 0; t < T; ++t) scores[static_cast<std::size_t>(T + t)] = 1.0;  // sequence 1: all equal
  dca::Rng rng(4);
  const int draws = 3000;
  std::vector<int> count(2 * T, 0);
  for (int i = 0; i < draws; ++i) {
    const auto plan = dca::AugmentationPlan::top_scored(2, T, K, n_ahead, scores, rng);
    for (index_t b = 0; b < 2; ++b)
      for (index_t j = 0; j < K; ++j) {
        const index_t t = plan.point(b, j);
        REQUIRE(t < available);
        if (j > 0) REQUIRE(t > plan.point(b, j - 1));  // distinct, in order
        ++count[static_cast<std::size_t>(b * T + t)];
      }
  }
  // Sequence 0: its three scored points always, one of the 14 others 1/14 of the time each;
  // sequence 1: each point K/17 of the time (standard errors 0.005 and 0.008).
  for (index_t t = 0; t < available; ++t) {
    const double share = count[static_cast<std::size_t>(t)] / static_cast<double>(draws),
                 uniform = count[static_cast<std::size_t>(T + t)] / static_cast<double>(draws);
    CHECK(std::abs(share - (t == 3 || t == 8 || t == 16 ? 1.0 : 1.0 / 14)) < 0.02);
    CHECK(std::abs(uniform - static_cast<double>(K) / available) < 0.035);
  }
  CHECK_THROWS_WITH_AS(dca::AugmentationPlan::top_scored(2, T, K, n_ahead, std::span<const double>(scores).first(39), rng),
                       doctest::Contains("39 scores for 2 sequences of 20"), dca::RangeError);
  scores[5] = std::nan("");
  CHECK_THROWS_WITH_AS(dca::AugmentationPlan::top_scored(2, T, K, n_ahead, scores, rng), doctest::Contains("score 5 is NaN"),
                       dca::RangeError);
}

TEST_CASE("the last-layer ablation and a randomly initialised coprocessor train through the same path") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 3);
  decoder.freeze();
  const auto ids = tokens(10, 7);
  const auto plan = dca::AugmentationPlan::given(1, 10, 2, {3, 6});
  CoprocessorConfig c;
  c.n_ahead = 2;
  c.input = dca::CoprocessorInput::last_layer;
  c.latent_form = dca::LatentForm::normed;
  c.init_from_decoder = false;
  Cop<2> coprocessor(decoder, c);
  const auto params = coprocessor.parameters();
  std::vector<dca::Parameter<double>*> checked = {params.back(), params[2]};
  dca::GradCheckOptions options;
  options.max_elements_per_input = 5;
  CHECK(dca::check_parameter_gradients(
      options, [&](dca::Tape<double>& tape) { return coprocessor.loss(tape, decoder, ids, plan).loss; },
      std::span<dca::Parameter<double>* const>(checked)));
  CHECK(coprocessor.model().parameters()[0]->value()[0] != decoder.parameters()[0]->value()[0]);
}

TEST_CASE("a LoRA coprocessor trains only its adapters, starts as its base, and its gradients are exact") {
  const auto config = presets()[0];
  dca::Decoder<double> decoder(config, 3);
  decoder.freeze();
  const auto ids = tokens(10, 8);
  const auto plan = dca::AugmentationPlan::given(1, 10, 2, {2, 5});
  CoprocessorConfig full_config, lora_config;
  full_config.n_ahead = lora_config.n_ahead = 2;
  full_config.latent_form = lora_config.latent_form = dca::LatentForm::normed;
  lora_config.lora_rank = 2;
  Cop<2> full(decoder, full_config), lora(decoder, lora_config);
  for (auto* p : lora.parameters()) {
    CAPTURE(p->name());
    CHECK((p->name().find("lora_") != std::string::npos || p->name().starts_with("coprocessor.")));
  }
  // 2 layers × (c_attn, c_proj, c_fc, mlp.c_proj) × (A, B) + soft tokens
  CHECK(lora.parameters().size() == 2 * 4 * 2 + 1);
  dca::Tape<double> tape;
  CHECK(lora.loss(tape, decoder, ids, plan).loss.item() == doctest::Approx(full.loss(tape, decoder, ids, plan).loss.item()).epsilon(1e-14));
  auto params = lora.parameters();
  for (auto* p : params)
    if (p->name().find("lora_B") != std::string::npos) p->value() = dca::test::random_tensor(p->shape(), 3, -0.2, 0.2);
  std::vector<dca::Parameter<double>*> checked = {params[0], params[1], params[5]};
  dca::GradCheckOptions options;
  options.max_elements_per_input = 6;
  CHECK(dca::check_parameter_gradients(
      options, [&](dca::Tape<double>& t) { return lora.loss(t, decoder, ids, plan).loss; },
      std::span<dca::Parameter<double>* const>(checked)));
}

TEST_CASE(
    "the new-parameter group holds the soft tokens, the latent projection and LoRA's B matrices, at its multiplier") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 3);
  decoder.freeze();
  const auto names = [](const dca::ParameterGroup<double>& g) {
    std::vector<std::string> out;
    for (auto* p : g.parameters) out.push_back(p->name());
    return out;
  };
  Cop<2> full(decoder, {.n_ahead = 2});
  const auto full_groups = full.parameter_groups(10.0);
  REQUIRE(full_groups.size() == 2);
  CHECK(full_groups[0].name == "model");
  CHECK(full_groups[0].lr_multiplier == 1.0);
  CHECK(full_groups[0].parameters.size() == full.model().parameters().size());
  CHECK(full_groups[1].name == "new");
  CHECK(full_groups[1].lr_multiplier == 10.0);
  CHECK(names(full_groups[1]) ==
        std::vector<std::string>{"coprocessor.latent_projection.weight", "coprocessor.soft_tokens"});

  Cop<2> lora(decoder, {.n_ahead = 2, .lora_rank = 2});
  const auto lora_groups = lora.parameter_groups(10.0);
  REQUIRE(lora_groups.size() == 2);
  for (const auto& name : names(lora_groups[0])) CHECK(name.find("lora_A") != std::string::npos);
  const auto fresh = names(lora_groups[1]);
  CHECK(std::ranges::count_if(fresh, [](const std::string& n) { return n.find("lora_B") != std::string::npos; }) ==
        static_cast<std::ptrdiff_t>(lora_groups[0].parameters.size()));  // one B per A
  CHECK(lora.parameters().size() == lora_groups[0].parameters.size() + fresh.size());

  Cop<2> pause(decoder, {.n_ahead = 2, .source = dca::LatentSource::pause});
  const auto pause_groups = pause.parameter_groups(3.0);
  REQUIRE(pause_groups.size() == 1);  // empty groups are left out
  CHECK(names(pause_groups[0]) == std::vector<std::string>{"coprocessor.soft_tokens"});
}

TEST_CASE("pause tokens are the same latents for every input and train only themselves") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 3);
  decoder.freeze();
  CoprocessorConfig c;
  c.n_ahead = 2;
  c.source = dca::LatentSource::pause;
  Cop<3> pause(decoder, c);
  CHECK(pause.parameters().size() == 1);
  dca::KVCache<double> a(config, 16), b(config, 16);
  dca::Tape<double> tape;
  a.append_tokens(tape, decoder, tokens(4, 1));
  b.append_tokens(tape, decoder, tokens(6, 2));
  const auto za = pause.latents(tape, decoder, a.prefix(3), 1);
  const auto zb = pause.latents(tape, decoder, b.prefix(5), 2);
  CHECK(std::ranges::equal(za.value().span(), zb.value().span()));
}

TEST_CASE("inference latents equal the latents the training path computes for the same point") {
  const auto config = presets()[2];
  dca::Decoder<double> decoder(config, 8);
  decoder.freeze();
  const auto ids = tokens(10, 9);
  CoprocessorConfig c;
  c.n_ahead = 2;
  c.latent_form = dca::LatentForm::normed;
  Cop<2> coprocessor(decoder, c);
  dca::Tape<double> tape;
  dca::KVCache<double> cache(config, 16);
  cache.append_tokens(tape, decoder, std::span<const index_t>(ids).first(6));
  const auto z = coprocessor.latents(tape, decoder, cache.prefix(5), ids[5]);
  // Training path: the plan's single point t = 5 yields the same latents; compare through the
  // decoder's prediction of x[6] from the last latent (the per-position loss at n = 1).
  const auto plan = dca::AugmentationPlan::given(1, 10, 2, {5});
  const auto training = coprocessor.loss(tape, decoder, ids, plan);
  cache.insert_latents(tape, decoder, z, 5);
  const auto after = cache.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(6, 1));
  (void)after;
  const auto latent_logits = cache.fork(6).insert_latents(tape, decoder, z, 5).logits;
  const auto n1 = dca::cross_entropy(dca::slice_rows(latent_logits, 1, 1), std::vector<index_t>{ids[6]});
  CHECK(n1.item() == doctest::Approx(training.per_position[0]).epsilon(1e-12));
}

TEST_CASE("latents read from the tokens equal the training path's, for the cache input and the last-layer ablation") {
  const auto config = presets()[2];
  dca::Decoder<double> decoder(config, 8);
  decoder.freeze();
  const auto ids = tokens(10, 9);
  const auto prefix_ids = std::span<const index_t>(ids).first(6);
  for (const auto input : {dca::CoprocessorInput::kv_cache, dca::CoprocessorInput::last_layer}) {
    CAPTURE(static_cast<int>(input));
    CoprocessorConfig c;
    c.n_ahead = 2;
    c.input = input;
    c.latent_form = dca::LatentForm::normed;  // the latents are the coprocessor's output itself
    Cop<2> coprocessor(decoder, c);
    dca::Tape<double> tape;
    const auto z = coprocessor.latents(tape, decoder, prefix_ids);
    const auto training = coprocessor.loss(tape, decoder, ids, dca::AugmentationPlan::given(1, 10, 2, {5}));
    dca::KVCache<double> cache(config, 16);
    cache.append_tokens(tape, decoder, prefix_ids);
    if (input == dca::CoprocessorInput::kv_cache) {
      const auto from_cache = coprocessor.latents(tape, decoder, cache.prefix(5), ids[5]);
      CHECK(dca::test::max_relative_difference(from_cache.value().span(), z.value().span()) < 1e-13);
    } else {
      CHECK_THROWS_WITH_AS(coprocessor.latents(tape, decoder, cache.prefix(5), ids[5]),
                           doctest::Contains("pass the tokens"), dca::UsageError);
    }
    const auto latent_logits = cache.insert_latents(tape, decoder, z, 5).logits;
    const auto n1 = dca::cross_entropy(dca::slice_rows(latent_logits, 1, 1), std::vector<index_t>{ids[6]});
    CHECK(n1.item() == doctest::Approx(training.per_position[0]).epsilon(1e-12));
  }
}

TEST_CASE("the objective weights the ahead positions, and per-position losses are always reported") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 5);
  decoder.freeze();
  const auto ids = tokens(12, 4);
  const auto plan = dca::AugmentationPlan::given(1, 12, 4, {1, 5});
  CoprocessorConfig c;
  c.n_ahead = 4;
  dca::Coprocessor<double, 2, dca::GeometricAhead> geometric(decoder, c, dca::GeometricAhead{0.5});
  dca::Tape<double> tape;
  const auto out = geometric.loss(tape, decoder, ids, plan);
  REQUIRE(out.per_position.size() == 4);
  const auto w = dca::GeometricAhead{0.5}.weights(4);
  double expected = 0;
  for (std::size_t n = 0; n < 4; ++n) expected += w[n] * out.per_position[n];
  CHECK(out.loss.item() == doctest::Approx(expected).epsilon(1e-12));
  CHECK(w[0] == doctest::Approx(8.0 / 15.0));
}

TEST_CASE("bad coprocessor input is rejected with the values involved") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 5);
  CoprocessorConfig c;
  c.n_ahead = 3;
  Cop<2> coprocessor(decoder, c);
  const auto ids = tokens(10, 1);
  const auto plan = dca::AugmentationPlan::given(1, 10, 3, {2});
  dca::Tape<double> tape;
  CHECK_THROWS_WITH_AS(coprocessor.loss(tape, decoder, ids, plan), doctest::Contains("is not frozen"), dca::UsageError);
  decoder.freeze();
  CHECK_THROWS_WITH_AS(dca::AugmentationPlan::given(1, 10, 3, {7}), doctest::Contains("point 7 (sequence 0) is outside 0..6"),
                       dca::RangeError);
  dca::Rng rng(1);
  CHECK_THROWS_WITH_AS(dca::AugmentationPlan::random(1, 10, 8, 3, rng), doctest::Contains("K = 8 do not fit"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(coprocessor.loss(tape, decoder, std::span<const index_t>(ids).first(9), plan),
                       doctest::Contains("9 token ids for a plan of 1 sequences of 10"), dca::ShapeError);
  CHECK_THROWS_WITH_AS(coprocessor.loss(tape, decoder, ids, dca::AugmentationPlan::given(1, 10, 2, {2})),
                       doctest::Contains("made for N_A = 2 but the coprocessor predicts 3"), dca::RangeError);
  dca::Decoder<double> other(
      DecoderConfig::llama({.vocab = 13, .dim = 8, .layers = 3, .heads = 2, .kv_heads = 1, .mlp = 12}), 1);
  other.freeze();
  CHECK_THROWS_WITH_AS(coprocessor.loss(tape, other, ids, plan), doctest::Contains("does not match the coprocessor's architecture"),
                       dca::ShapeError);
  CoprocessorConfig bad;
  bad.n_ahead = 0;
  CHECK_THROWS_AS((Cop<2>(decoder, bad)), dca::RangeError);
}

namespace {

// A gated coprocessor with a gate that differs from group to group, and its ungated twin (the same
// soft tokens and weights). Normed latents: each group's latents are the output the gate reads.
struct GatedPair {
  Cop<2> gated, ungated;
  GatedPair(dca::Decoder<double>& decoder, CoprocessorConfig c)
      : gated(decoder, with_gate(c, true)), ungated(decoder, with_gate(c, false)) {
    for (auto* p : gated.parameters())
      if (p->name() == "coprocessor.gate.weight") p->value() = dca::test::random_tensor(p->value().shape(), 9, -3.0, 3.0);
    set_bias(0.3);
  }
  void set_bias(double b) {
    for (auto* p : gated.parameters())
      if (p->name() == "coprocessor.gate.bias") p->value()[0] = b;
  }
  double gate_parameter(const std::string& name, index_t i) {
    for (auto* p : gated.parameters())
      if (p->name() == name) return p->value()[i];
    FAIL("no parameter " << name);
    return 0;
  }
  static CoprocessorConfig with_gate(CoprocessorConfig c, bool gated) {
    c.latent_form = dca::LatentForm::normed;
    c.gated = gated;
    return c;
  }
};

// softmax(row r of logits [N, V])[target]
double probability(dca::TensorView<const double> logits, index_t r, index_t target) {
  const index_t V = logits.shape()[1];
  double top = -1e300, total = 0;
  for (index_t v = 0; v < V; ++v) top = std::max(top, logits[r * V + v]);
  for (index_t v = 0; v < V; ++v) total += std::exp(logits[r * V + v] - top);
  return std::exp(logits[r * V + target] - top) / total;
}

}  // namespace

TEST_CASE("a gated coprocessor's loss is the likelihood of its mixture with the frozen decoder, gate read from its last soft token") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 4);
    decoder.freeze();
    const index_t T = 12, n_ahead = 3;
    const auto ids = tokens(2 * T, 5);
    const auto plan = dca::AugmentationPlan::given(2, T, n_ahead, {1, 5, 8, 2, 4, 7});
    CoprocessorConfig c;
    c.n_ahead = n_ahead;
    GatedPair pair(decoder, c);
    // The expectation from parts computed without the gated path: the ungated twin's latents (its
    // normed output h) and augmented logits, the frozen decoder's logits over the tokens.
    dca::Tape<double> tape;
    const auto layout = dca::AugmentationLayout::of(plan, ids, 2, c.positions);
    const auto pass = pair.ungated.read_tokens(tape, decoder, ids, 2);
    const auto h = pair.ungated.latents(tape, decoder, pass.cache, layout.latents, pass.residual);
    const auto augmented = pair.ungated.ahead_logits(tape, decoder, h, pass.cache, layout).value();
    const auto frozen = decoder.logits(tape, ids, 2).value();
    const index_t d = config.hidden_size, G = layout.groups();
    double expected = 0;
    for (index_t g = 0; g < G; ++g) {
      double logit = pair.gate_parameter("coprocessor.gate.bias", 0);
      for (index_t k = 0; k < d; ++k)
        logit += pair.gate_parameter("coprocessor.gate.weight", k) * h.value()[(g * 2 + 1) * d + k];
      const double gate = 1 / (1 + std::exp(-logit));
      const index_t b = g / 3, t = plan.point(b, g % 3);
      for (index_t n = 0; n < n_ahead; ++n) {
        const index_t target = ids[static_cast<std::size_t>(b * T + t + n + 1)];
        const double p_augmented = probability(augmented, layout.target_row(g, n), target),
                     p_frozen = probability(frozen, b * T + t + n, target);
        expected -= std::log(gate * p_augmented + (1 - gate) * p_frozen) / static_cast<double>(G * n_ahead);
      }
    }
    dca::Tape<double> gated_tape;
    const auto loss = pair.gated.loss(gated_tape, decoder, ids, plan);
    CHECK(loss.loss.item() == doctest::Approx(expected).epsilon(1e-12));
    double mean_of_positions = 0;
    for (const double x : loss.per_position) mean_of_positions += x / static_cast<double>(n_ahead);
    CHECK(mean_of_positions == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE("a closed gate gives the frozen decoder's loss, an open one the ungated coprocessor's") {
  dca::Decoder<double> decoder(presets()[0], 6);
  decoder.freeze();
  const index_t T = 11;
  const auto ids = tokens(T, 3);
  const auto plan = dca::AugmentationPlan::given(1, T, 3, {2, 6});
  CoprocessorConfig c;
  c.n_ahead = 3;
  GatedPair pair(decoder, c);
  dca::Tape<double> tape;
  pair.set_bias(-60);  // g ≈ 1e-26 whatever the weights
  const double closed = pair.gated.loss(tape, decoder, ids, plan).loss.item();
  const auto frozen = decoder.logits(tape, ids).value();
  double expected = 0;
  for (const index_t t : {2, 6})
    for (index_t n = 0; n < 3; ++n)
      expected -= std::log(probability(frozen, t + n, ids[static_cast<std::size_t>(t + n + 1)])) / 6.0;
  CHECK(closed == doctest::Approx(expected).epsilon(1e-12));
  pair.set_bias(60);
  CHECK(pair.gated.loss(tape, decoder, ids, plan).loss.item() ==
        doctest::Approx(pair.ungated.loss(tape, decoder, ids, plan).loss.item()).epsilon(1e-12));
}

TEST_CASE("gradients of a gated coprocessor's loss reach its gate, soft tokens and weights exactly") {
  dca::Decoder<double> decoder(presets()[2], 2);
  decoder.freeze();
  const auto ids = tokens(11, 8);
  const auto plan = dca::AugmentationPlan::given(1, 11, 3, {2, 5, 7});
  CoprocessorConfig c;
  c.n_ahead = 3;
  GatedPair pair(decoder, c);
  std::vector<dca::Parameter<double>*> checked;
  auto params = pair.gated.parameters();
  for (auto* p : params)
    if (p->name().rfind("coprocessor.gate.", 0) == 0 || p->name() == "coprocessor.soft_tokens") checked.push_back(p);
  REQUIRE(checked.size() == 3);
  checked.push_back(params.front());
  checked.push_back(params[params.size() / 2]);
  dca::GradCheckOptions options;
  options.max_elements_per_input = 6;
  const auto result = dca::check_parameter_gradients(
      options, [&](dca::Tape<double>& tape) { return pair.gated.loss(tape, decoder, ids, plan).loss; },
      std::span<dca::Parameter<double>* const>(checked));
  CHECK(result);
}

TEST_CASE("the gate trains with the new parameters, and paths that do not mix refuse a gated coprocessor") {
  dca::Decoder<double> decoder(presets()[0], 2);
  decoder.freeze();
  CoprocessorConfig c;
  c.n_ahead = 2;
  c.gated = true;
  Cop<2> gated(decoder, c);
  const auto groups = gated.parameter_groups(10.0);
  REQUIRE(groups.size() == 2);
  std::vector<std::string> fresh;
  for (auto* p : groups[1].parameters) fresh.push_back(p->name());
  CHECK(std::count(fresh.begin(), fresh.end(), "coprocessor.gate.weight") == 1);
  CHECK(std::count(fresh.begin(), fresh.end(), "coprocessor.gate.bias") == 1);
  const auto ids = tokens(8, 1);
  dca::Tape<double> tape;
  CHECK_THROWS_WITH_AS(gated.latents(tape, decoder, ids), doctest::Contains("single-insertion inference"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::dense_reference_loss(gated, tape, decoder, ids, dca::AugmentationPlan::given(1, 8, 2, {3})),
                       doctest::Contains("no gate"), dca::UsageError);
  Cop<2> ungated(decoder, {});
  const auto pass = ungated.read_tokens(tape, decoder, ids, 1);
  CHECK_THROWS_WITH_AS(ungated.gated_latents(tape, decoder, pass.cache, dca::LatentQueries::after(2, 8, 7, ids.back()),
                                            pass.residual),
                       doctest::Contains("not gated"), dca::UsageError);
  c.source = dca::LatentSource::pause;
  CHECK_THROWS_WITH_AS((Cop<2>(decoder, c)), doctest::Contains("pause tokens have none"), dca::UsageError);
}
