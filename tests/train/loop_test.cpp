// Specification of the shared training loop: parameter groups resume bit-identically, a learning
// curve records what training returned without changing it, and a resumed run continues its curve
// as if it had never stopped.
#include "dca/train/loop.hpp"
#include "dca/train/trainer.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

using dca::index_t;

namespace {

using dca::test::sample_corpus;
using dca::test::TempDir;

dca::DecoderConfig one_layer_model() {
  return dca::DecoderConfig::llama({.vocab = 256, .dim = 16, .layers = 1, .heads = 2, .mlp = 32});
}

dca::OptimizationConfig tiny_schedule() {
  return {.max_lr = 5e-3, .min_lr = 5e-4, .warmup_steps = 2, .total_steps = 12};
}

// Two groups: the token embedding at 10× the rate and without weight decay, everything else.
std::vector<dca::ParameterGroup<float>> two_groups(dca::Decoder<float>& model) {
  dca::ParameterGroup<float> embedding{
      .name = "embedding", .parameters = {&model.token_embedding()}, .lr_multiplier = 10.0, .weight_decay = 0.0};
  dca::ParameterGroup<float> rest{.name = "rest"};
  for (dca::Parameter<float>* p : model.parameters())
    if (p != &model.token_embedding()) rest.parameters.push_back(p);
  return {embedding, rest};
}

// The batch of step s: fixed, so that runs differ only in what the loop does.
double step_on_batch(dca::TrainingLoop<float>& loop, dca::Decoder<float>& model, index_t s) {
  const auto ids = dca::test::random_tokens(2 * 8, 100 + static_cast<std::uint64_t>(s), 256);
  const auto targets = dca::test::random_tokens(2 * 8, 200 + static_cast<std::uint64_t>(s), 256);
  return loop.step([&](dca::Tape<float>& tape) { return model.loss(tape, ids, targets, 2); });
}

dca::TrainerConfig tiny_run(const std::filesystem::path& curve_directory) {
  dca::TrainerConfig c;
  c.batch_size = 2;
  c.seq_len = 16;
  c.optimization = tiny_schedule();
  c.curve = {.directory = curve_directory, .every = 2, .evaluate_every = 4, .eval_batches = 1};
  return c;
}

}  // namespace

TEST_CASE("parameter groups take their own rate, and a run with them resumes bit-identically") {
  TempDir dir;
  const auto path = dir.path / "checkpoint.safetensors";
  dca::Decoder<float> uninterrupted(one_layer_model(), 1);
  dca::TrainingLoop<float> reference(two_groups(uninterrupted), tiny_schedule());
  CHECK(reference.optimizer().rate(0, 1e-3) == doctest::Approx(1e-2));  // the embedding's group runs at 10×
  std::vector<double> expected, resumed;
  for (index_t s = 0; s < 6; ++s) expected.push_back(step_on_batch(reference, uninterrupted, s));
  {
    dca::Decoder<float> model(one_layer_model(), 1);
    dca::TrainingLoop<float> loop(two_groups(model), tiny_schedule());
    for (index_t s = 0; s < 3; ++s) resumed.push_back(step_on_batch(loop, model, s));
    loop.save_checkpoint(path, {});
  }
  dca::Decoder<float> model(one_layer_model(), 7);  // other initial weights: all must come from the file
  dca::TrainingLoop<float> loop(two_groups(model), tiny_schedule());
  loop.load_checkpoint(path, {}, [](const auto&) {});
  CHECK(loop.step_count() == 3);
  for (index_t s = 3; s < 6; ++s) resumed.push_back(step_on_batch(loop, model, s));
  CHECK(resumed == expected);
  const auto a = uninterrupted.parameters(), b = model.parameters();
  for (std::size_t p = 0; p < a.size(); ++p) CHECK(std::ranges::equal(a[p]->value().span(), b[p]->value().span()));
}

TEST_CASE(
    "the learning curve holds the mean training loss of each interval and the held-out loss, without changing "
    "training") {
  const auto corpus = sample_corpus();
  TempDir with_curve, without_curve;
  dca::Decoder<float> curved_model(one_layer_model(), 1), plain_model(one_layer_model(), 1);
  dca::Trainer<float> curved(curved_model, corpus, tiny_run(with_curve.path));
  auto plain_run = tiny_run(without_curve.path);
  plain_run.curve.every = plain_run.curve.evaluate_every = 0;
  dca::Trainer<float> plain(plain_model, corpus, plain_run);
  std::vector<double> losses, plain_losses;
  double held_out_at_4 = 0;
  for (int i = 0; i < 6; ++i) {
    losses.push_back(curved.step());
    plain_losses.push_back(plain.step());
    if (plain.step_count() == 4) held_out_at_4 = plain.validation_loss(1);
  }
  CHECK(losses == plain_losses);  // evaluations for the curve do not touch training
  CHECK_FALSE(std::filesystem::exists(without_curve.path / "learning_curve.csv"));
  const dca::CsvTable table = dca::read_csv(with_curve.path / "learning_curve.csv");
  CHECK(table.header == dca::CsvRow{"step", "learning_rate", "train_loss", "held_out_loss"});
  REQUIRE(table.rows.size() == 3);
  for (std::size_t r = 0; r < 3; ++r) {
    CAPTURE(r);
    CHECK(dca::parse_csv_number(table.rows[r][0]) == static_cast<double>(2 * r + 2));
    CHECK(dca::parse_csv_number(table.rows[r][2]) == (losses[2 * r] + losses[2 * r + 1]) / 2);
  }
  CHECK(table.rows[0][3].empty());  // held-out evaluations every 4 steps only
  CHECK(dca::parse_csv_number(table.rows[1][3]) == held_out_at_4);
  CHECK(table.rows[2][3].empty());
  CHECK(dca::read_text_file(with_curve.path / "learning_curve.svg").starts_with("<svg"));
}

TEST_CASE("a run resumed between curve rows writes the same learning curve as an uninterrupted one") {
  const auto corpus = sample_corpus();
  TempDir uninterrupted_dir, resumed_dir;
  {
    dca::Decoder<float> model(one_layer_model(), 1);
    dca::Trainer<float> trainer(model, corpus, tiny_run(uninterrupted_dir.path));
    for (int i = 0; i < 8; ++i) trainer.step();
  }
  const auto checkpoint = resumed_dir.path / "checkpoint.safetensors";
  {
    dca::Decoder<float> model(one_layer_model(), 1);
    dca::Trainer<float> trainer(model, corpus, tiny_run(resumed_dir.path));
    for (int i = 0; i < 3; ++i) trainer.step();
    trainer.save_checkpoint(checkpoint);         // step 3: one training loss counted towards the row of step 4
    for (int i = 0; i < 2; ++i) trainer.step();  // rows up to step 4 written, then the run stops
  }
  dca::Decoder<float> model(one_layer_model(), 1);
  dca::Trainer<float> trainer(model, corpus, tiny_run(resumed_dir.path));
  trainer.load_checkpoint(checkpoint);
  while (trainer.step_count() < 8) trainer.step();
  CHECK(dca::read_text_file(resumed_dir.path / "learning_curve.csv") ==
        dca::read_text_file(uninterrupted_dir.path / "learning_curve.csv"));
}

TEST_CASE("learning-curve and optimisation settings are validated with the values named") {
  CHECK_THROWS_WITH_AS(dca::LearningCurveConfig({.every = 3, .evaluate_every = 4}).validate(),
                       doctest::Contains("evaluate_every = 4 must be a multiple of every = 3"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::OptimizationConfig({.grad_clip = -1}).validate(), doctest::Contains("grad_clip = -1"),
                       dca::RangeError);
  dca::Parameter<float> p("p", dca::Tensor<float>(dca::Shape{2}));
  CHECK_THROWS_WITH_AS(dca::AdamW<float>(std::vector<dca::ParameterGroup<float>>{{.name = "fast", .parameters = {&p}, .lr_multiplier = -2.0}}),
                       doctest::Contains("the lr_multiplier of group 'fast' = -2"), dca::RangeError);
}

TEST_CASE("a step in parts gives the same bits on one thread and on two, and the whole batch's step to rounding") {
  const int previous_threads = dca::num_threads();
  // A decoder's next-token loss over four sequences, as one batch or as two parts of two sequences
  // (each part's mean weighted by one half).
  const auto ids = dca::test::random_tokens(4 * 8, 11, 256), targets = dca::test::random_tokens(4 * 8, 12, 256);
  struct Run {
    std::vector<double> losses;
    std::vector<dca::Tensor<double>> weights;
  };
  const auto run = [&](int threads, bool in_parts) {
    dca::set_num_threads(threads);
    dca::Decoder<double> model(one_layer_model(), 1);
    dca::TrainingLoop<double> loop({{.name = "model", .parameters = model.parameters()}}, tiny_schedule());
    Run r;
    for (int s = 0; s < 3; ++s) {
      if (!in_parts) {
        r.losses.push_back(loop.step([&](dca::Tape<double>& tape) { return model.loss(tape, ids, targets, 4); }));
        continue;
      }
      r.losses.push_back(loop.step_parts(
          2, [](dca::Tape<double>&) {},
          [&](dca::Tape<double>& tape, index_t i) {
            const auto half = [&](const std::vector<index_t>& v) {
              return std::span<const index_t>(v).subspan(static_cast<std::size_t>(i * 16), 16);
            };
            return dca::scale(model.loss(tape, half(ids), half(targets), 2), 0.5);
          }));
    }
    for (dca::Parameter<double>* p : model.parameters()) r.weights.push_back(p->value());
    return r;
  };
  const Run parts_one = run(1, true), parts_two = run(2, true), whole = run(1, false);
  CHECK(parts_one.losses == parts_two.losses);
  for (std::size_t k = 0; k < parts_one.weights.size(); ++k) {
    CHECK(dca::test::max_abs_difference(parts_one.weights[k], parts_two.weights[k]) == 0.0);
    CHECK(dca::test::max_abs_difference(parts_one.weights[k], whole.weights[k]) <= 1e-10);
  }
  for (std::size_t s = 0; s < whole.losses.size(); ++s)
    CHECK(std::abs(parts_one.losses[s] - whole.losses[s]) <= 1e-12 * whole.losses[s]);
  dca::TrainingLoop<double> loop({}, tiny_schedule());
  CHECK_THROWS_AS(loop.step_parts(0, [](dca::Tape<double>&) {}, [](dca::Tape<double>& t, index_t) {
    return t.constant(dca::Tensor<double>(dca::Shape{1, 1}));
  }), dca::RangeError);
  dca::set_num_threads(previous_threads);
}

TEST_CASE("an error in one part of a step in parts reaches the caller, on two threads too") {
  const int previous_threads = dca::num_threads();
  dca::set_num_threads(2);
  dca::Decoder<double> model(one_layer_model(), 1);
  dca::TrainingLoop<double> loop({{.name = "model", .parameters = model.parameters()}}, tiny_schedule());
  const auto ids = dca::test::random_tokens(8, 1, 256);
  CHECK_THROWS_WITH_AS(loop.step_parts(
                           2, [](dca::Tape<double>&) {},
                           [&](dca::Tape<double>& tape, index_t i) {
                             if (i == 1) throw dca::UsageError("part 1 failed");
                             return model.loss(tape, ids, ids, 1);
                           }),
                       "part 1 failed", dca::UsageError);
  CHECK(loop.step_count() == 0);
  dca::set_num_threads(previous_threads);
}

// Issue 15: a run whose loss turns NaN must stop at that step, before the update and before any
// checkpoint, naming the step, the loss and the first parameter whose gradient is not finite —
// with clipping off too, where nothing else computes the gradient norm.
TEST_CASE("a loss that turns NaN stops the run at that step and leaves the last good step's checkpoint") {
  for (const double grad_clip : {0.0, 1.0}) {
    CAPTURE(grad_clip);
    TempDir dir;
    const auto path = dir.path / "checkpoint.safetensors";
    dca::OptimizationConfig schedule = tiny_schedule();
    schedule.grad_clip = grad_clip;
    dca::Decoder<float> model(one_layer_model(), 1);
    dca::TrainingLoop<float> loop({{.name = "model", .parameters = model.parameters()}}, schedule);
    const auto ids = dca::test::random_tokens(2 * 8, 3, 256);
    const index_t diverging = 4;  // the 4th step's loss is NaN
    const auto step = [&] {
      return loop.step([&](dca::Tape<float>& tape) {
        const dca::Var<float> loss = model.loss(tape, ids, ids, 2);
        return loop.step_count() + 1 == diverging ? loss * std::numeric_limits<float>::quiet_NaN() : loss;
      });
    };
    // A trainer's run: a checkpoint after every step (every N steps, with N = 1), for 6 steps.
    std::vector<dca::Tensor<float>> good;  // the weights after the last good step
    const auto run = [&] {
      for (index_t s = 1; s <= 6; ++s) {
        step();
        loop.save_checkpoint(path, {});
        if (s == diverging - 1)
          for (const dca::Parameter<float>* p : model.parameters()) good.push_back(p->value());
      }
    };
    const std::string first = model.parameters().front()->name();
    CHECK_THROWS_WITH_AS(run(),
                         doctest::Contains(("step 4: loss = nan, gradient norm = nan; the gradient of '" + first + "'").c_str()),
                         dca::DivergenceError);
    REQUIRE(good.size() == model.parameters().size());
    CHECK(loop.step_count() == diverging - 1);
    CHECK(loop.optimizer().step_count() == diverging - 1);
    const auto parameters = model.parameters();
    for (std::size_t k = 0; k < parameters.size(); ++k)
      CHECK(std::ranges::equal(parameters[k]->value().span(), good[k].span()));
    for (const dca::Parameter<float>* p : parameters)  // nothing of the refused step is left for the next one
      if (p->has_grad()) CHECK(std::ranges::all_of(p->grad().span(), [](float g) { return g == 0.0f; }));
    // The file on disk is the checkpoint of step 3, and a fresh loop resumes from it.
    dca::Decoder<float> resumed_model(one_layer_model(), 9);
    dca::TrainingLoop<float> resumed({{.name = "model", .parameters = resumed_model.parameters()}}, schedule);
    const auto metadata = resumed.load_checkpoint(path, {}, [](const auto&) {});
    CHECK(metadata.at("step") == "3");
    const auto restored = resumed_model.parameters();
    for (std::size_t k = 0; k < restored.size(); ++k)
      CHECK(std::ranges::equal(restored[k]->value().span(), good[k].span()));
  }
}

TEST_CASE("an infinite loss with finite gradients is refused too, and says the gradients are finite") {
  dca::Decoder<double> model(one_layer_model(), 1);
  dca::TrainingLoop<double> loop({{.name = "model", .parameters = model.parameters()}}, tiny_schedule());
  const auto ids = dca::test::random_tokens(8, 1, 256);
  const auto before = model.parameters().front()->value();
  CHECK_THROWS_WITH_AS(loop.step([&](dca::Tape<double>& tape) {
    return model.loss(tape, ids, ids, 1) + std::numeric_limits<double>::infinity();  // the gradient of +c is the loss's
  }),
                       doctest::Contains("step 1: loss = inf, gradient norm = "), dca::DivergenceError);
  CHECK_THROWS_WITH_AS(loop.step([&](dca::Tape<double>& tape) {
    return model.loss(tape, ids, ids, 1) + std::numeric_limits<double>::infinity();
  }),
                       doctest::Contains("every gradient is finite; the loss alone is not"), dca::DivergenceError);
  CHECK(loop.step_count() == 0);
  CHECK(std::ranges::equal(model.parameters().front()->value().span(), before.span()));
  loop.step([&](dca::Tape<double>& tape) { return model.loss(tape, ids, ids, 1); });  // a good step still runs
  CHECK(loop.step_count() == 1);
}
