// Specification of coprocessor training: it lowers the augmented loss through a frozen decoder,
// evaluation compares against the frozen decoder on the same tokens, and checkpoints resume exactly.
#include "dca/coproc/trainer.hpp"
#include "dca/train/trainer.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <utility>
#include <vector>

using dca::index_t;

namespace {

using dca::test::sample_corpus;

dca::CoprocessorTrainerConfig tiny_run() {
  dca::CoprocessorTrainerConfig c;
  c.batch_size = 2;
  c.seq_len = 24;
  c.points_per_sequence = 3;
  c.optimization.warmup_steps = 2;
  c.optimization.total_steps = 30;
  c.optimization.max_lr = 1e-2;
  c.optimization.min_lr = 1e-3;
  return c;
}

// A small decoder with random weights, frozen.
dca::Decoder<float> untrained_decoder() {
  dca::Decoder<float> decoder(dca::DecoderConfig::llama({.vocab = 256, .dim = 16, .layers = 1, .heads = 2, .mlp = 32}), 1);
  decoder.freeze();
  return decoder;
}

// A small decoder pretrained briefly on the sample, then frozen: a random decoder predicts near
// uniformly whatever its inputs, so there would be nothing for a coprocessor to improve.
dca::Decoder<float> pretrained_decoder(const dca::CorpusMixture& corpus) {
  dca::Decoder<float> decoder(dca::DecoderConfig::llama({.vocab = 256, .dim = 32, .layers = 2, .heads = 2, .mlp = 64}),
                              1);
  dca::TrainerConfig run;
  run.batch_size = 4;
  run.seq_len = 32;
  run.optimization.warmup_steps = 5;
  run.optimization.total_steps = 60;
  run.optimization.max_lr = 5e-3;
  run.optimization.min_lr = 5e-4;
  dca::Trainer<float> trainer(decoder, corpus, run);
  while (trainer.step_count() < run.optimization.total_steps) trainer.step();
  decoder.freeze();
  return decoder;
}

}  // namespace

TEST_CASE("without training, the residual coprocessor's evaluation pairs every augmented point with the frozen decoder's") {
  const auto corpus = sample_corpus();
  auto decoder = untrained_decoder();
  dca::CoprocessorConfig c;
  c.n_ahead = 4;
  dca::Coprocessor<float, 2> coprocessor(decoder, c);
  dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, tiny_run());
  const auto table = trainer.evaluate(2, 5);
  CHECK(table.points == 2 * 2 * 5);
  REQUIRE(table.augmented.size() == 4);
  REQUIRE(table.baseline.size() == 4);
  // An untrained model is near uniform over 256 bytes, with and without latents.
  for (std::size_t n = 0; n < 4; ++n) {
    CHECK(table.baseline[n] == doctest::Approx(std::log(256.0)).epsilon(0.05));
    CHECK(table.augmented[n] == doctest::Approx(std::log(256.0)).epsilon(0.05));
  }
}

TEST_CASE("training the coprocessor lowers the augmented training loss through a frozen decoder") {
  const auto corpus = sample_corpus();
  auto decoder = pretrained_decoder(corpus);
  const dca::Tensor<float> before = decoder.parameters()[0]->value();
  dca::CoprocessorConfig c;
  c.n_ahead = 4;
  dca::Coprocessor<float, 2> coprocessor(decoder, c);
  auto run = tiny_run();
  run.optimization.total_steps = 40;
  dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
  double first = 0, last = 0;
  for (int i = 0; i < 40; ++i) {
    const double loss = trainer.step();
    if (i < 8) first += loss / 8;
    if (i >= 32) last += loss / 8;
  }
  MESSAGE("augmented training loss ", first, " -> ", last);
  CHECK(last < first - 0.1);
  CHECK(std::ranges::equal(decoder.parameters()[0]->value().span(), before.span()));  // the decoder never moves
}

TEST_CASE("the trainer draws its points from the preferred-points rule when given one, uniformly otherwise") {
  const auto corpus = sample_corpus();
  auto decoder = untrained_decoder();
  const auto losses = [&](std::function<bool(std::span<const dca::index_t>, dca::index_t)> rule) {
    dca::CoprocessorConfig c;
    c.n_ahead = 2;
    c.latent_form = dca::LatentForm::normed;
    dca::Coprocessor<float, 1> coprocessor(decoder, c);
    auto run = tiny_run();
    run.preferred_points = std::move(rule);
    dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
    std::vector<double> out;
    for (int i = 0; i < 3; ++i) out.push_back(trainer.step());
    return out;
  };
  const auto uniform = losses({});
  CHECK(losses([](auto, dca::index_t) { return true; }) == uniform);  // every point preferred: the uniform draws
  CHECK(losses([](auto, dca::index_t t) { return t < 3; }) != uniform);  // K = 3: always the first three
}

TEST_CASE("the trainer takes the highest-scored points when given scores, and refuses scores beside a preferred rule") {
  const auto corpus = sample_corpus();
  auto decoder = untrained_decoder();
  const auto losses = [&](dca::CoprocessorTrainerConfig run) {
    dca::CoprocessorConfig c;
    c.n_ahead = 2;
    c.latent_form = dca::LatentForm::normed;
    dca::Coprocessor<float, 1> coprocessor(decoder, c);
    dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
    std::vector<double> out;
    for (int i = 0; i < 3; ++i) out.push_back(trainer.step());
    return out;
  };
  auto first_three = tiny_run();  // K = 3
  first_three.preferred_points = [](auto, dca::index_t t) { return t < 3; };
  auto scored = tiny_run();
  index_t calls = 0;
  scored.point_scores = [&](const dca::Batch& b) {
    ++calls;
    CHECK(b.inputs.size() == static_cast<std::size_t>(b.batch * b.seq_len));
    std::vector<double> scores(b.inputs.size(), 0.0);
    for (index_t i = 0; i < b.batch; ++i)
      for (index_t t = 0; t < 3; ++t) scores[static_cast<std::size_t>(i * b.seq_len + t)] = 1.0 + static_cast<double>(t);
    return scores;
  };
  CHECK(losses(scored) == losses(first_three));
  CHECK(calls == 3);
  scored.preferred_points = first_three.preferred_points;
  CHECK_THROWS_WITH_AS(losses(scored), doctest::Contains("set one"), dca::UsageError);
}

TEST_CASE("on one fixed batch the latents alone steer the frozen decoder's next-token loss well below its own") {
  // The gradient path's strength, separated from generalisation: the latents alone must be able to
  // move the frozen decoder's prediction of the token after the insertion point.
  const auto corpus = sample_corpus();
  auto decoder = pretrained_decoder(corpus);
  dca::CoprocessorConfig c;
  c.n_ahead = 4;
  dca::Coprocessor<float, 1> coprocessor(decoder, c);
  dca::BatchSampler sampler(corpus, 4);
  const dca::Batch batch = sampler.sample(2, 32);
  const auto plan = dca::AugmentationPlan::given(2, 32, 4, {3, 9, 17, 25, 5, 12, 20, 27});
  dca::Tape<float> tape;
  const auto frozen = dca::cross_entropy_per_token(decoder.logits(tape, batch.inputs, 2), batch.targets);
  double frozen_next = 0;  // the frozen decoder's loss on the same tokens x[t+1]
  for (index_t b = 0; b < 2; ++b)
    for (index_t j = 0; j < plan.points_per_sequence; ++j) frozen_next += frozen.value()[b * 32 + plan.point(b, j)] / 8;
  dca::AdamW<float> optimizer(coprocessor.parameters(), dca::AdamWConfig{1e-3, 0.9, 0.95, 1e-8, 0.0});
  double augmented_next = 0;
  for (int step = 0; step < 100; ++step) {
    tape.reset();
    const auto loss = coprocessor.loss(tape, decoder, batch.inputs, plan);
    augmented_next = loss.per_position[0];
    tape.backward(loss.loss);
    optimizer.step(1e-3);
    optimizer.zero_grad();
  }
  MESSAGE("loss of x[t+1]: frozen ", frozen_next, ", augmented after 100 steps ", augmented_next);
  CHECK(augmented_next < 0.8 * frozen_next);  // measured: 3.09 -> 2.27
}

TEST_CASE(
    "a coprocessor run resumed from a checkpoint continues bit-identically, its new parameters at 1× or 10× the rate") {
  const auto corpus = sample_corpus();
  dca::test::TempDir dir;
  const auto path = dir.path / "coprocessor.safetensors";
  auto decoder = untrained_decoder();
  dca::CoprocessorConfig c;
  c.n_ahead = 3;
  for (const double multiplier : {1.0, 10.0}) {
    CAPTURE(multiplier);
    auto run = tiny_run();
    run.new_lr_multiplier = multiplier;
    std::vector<double> expected, resumed;
    {
      dca::Coprocessor<float, 2> coprocessor(decoder, c);
      dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
      for (int i = 0; i < 6; ++i) expected.push_back(trainer.step());
    }
    {
      dca::Coprocessor<float, 2> coprocessor(decoder, c);
      dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
      for (int i = 0; i < 3; ++i) resumed.push_back(trainer.step());
      trainer.save_checkpoint(path);
    }
    dca::Coprocessor<float, 2> coprocessor(decoder, c);
    dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
    trainer.load_checkpoint(path);
    for (int i = 0; i < 3; ++i) resumed.push_back(trainer.step());
    CHECK(resumed == expected);
  }
  dca::Coprocessor<float, 3> other_shape(decoder, c);
  dca::CoprocessorTrainer other(decoder, other_shape, corpus, tiny_run());
  CHECK_THROWS_WITH_AS(other.load_checkpoint(path), doctest::Contains("with 2 latents and N_A = 3, not 3 and 3"),
                       dca::FormatError);
}

TEST_CASE(
    "the new parameters' rate multiplier moves the soft tokens ten times as far, and the copied weights as before") {
  const auto corpus = sample_corpus();
  auto decoder = untrained_decoder();
  dca::CoprocessorConfig c;
  c.n_ahead = 3;
  c.latent_form =
      dca::LatentForm::normed;  // the residual form's zero projection would give the soft tokens no gradient yet
  // AdamW's first step moves an element by lr·g/(|g| + eps) ≈ ±lr: ten times the rate, ten times as far.
  const auto first_step = [&](double multiplier) {
    dca::Coprocessor<float, 2> coprocessor(decoder, c);
    auto run = tiny_run();
    run.optimization.warmup_steps = 0;
    run.new_lr_multiplier = multiplier;
    const dca::Tensor<float> soft = coprocessor.soft_tokens().value();
    const dca::Tensor<float> weight = coprocessor.model().parameters()[1]->value();
    dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
    trainer.step();
    double soft_moved = 0, weight_moved = 0;
    for (dca::index_t i = 0; i < soft.numel(); ++i)
      soft_moved = std::max<double>(soft_moved, std::abs(coprocessor.soft_tokens().value()[i] - soft[i]));
    for (dca::index_t i = 0; i < weight.numel(); ++i)
      weight_moved =
          std::max<double>(weight_moved, std::abs(coprocessor.model().parameters()[1]->value()[i] - weight[i]));
    return std::pair{soft_moved, weight_moved};
  };
  const auto [soft_1, weight_1] = first_step(1.0);
  const auto [soft_10, weight_10] = first_step(10.0);
  CHECK(soft_10 == doctest::Approx(10 * soft_1).epsilon(1e-3));
  CHECK(weight_10 == weight_1);
}

TEST_CASE("the coprocessor's learning curve holds each ahead position's held-out loss with and without the latents") {
  const auto corpus = sample_corpus();
  dca::test::TempDir dir;
  auto decoder = untrained_decoder();
  dca::CoprocessorConfig c;
  c.n_ahead = 3;
  dca::Coprocessor<float, 2> curved(decoder, c), plain(decoder, c);
  auto run = tiny_run();
  run.curve = {.directory = dir.path, .every = 2, .evaluate_every = 2, .eval_batches = 1, .eval_points = 2};
  dca::CoprocessorTrainer with_curve(decoder, curved, corpus, run);
  run.curve = {};
  dca::CoprocessorTrainer without_curve(decoder, plain, corpus, run);
  for (int i = 0; i < 2; ++i) CHECK(with_curve.step() == without_curve.step());
  const dca::AheadEvaluation expected = without_curve.evaluate(1, 2);
  const dca::CsvTable table = dca::read_csv(dir.path / "learning_curve.csv");
  CHECK(table.header == dca::CsvRow{"step", "learning_rate", "train_loss", "held_out_augmented", "held_out_frozen",
                                    "held_out_augmented_n1", "held_out_augmented_n2", "held_out_augmented_n3",
                                    "held_out_frozen_n1", "held_out_frozen_n2", "held_out_frozen_n3"});
  REQUIRE(table.rows.size() == 1);
  const auto value = [&](const char* column) { return dca::parse_csv_number(table.rows[0][table.column(column)]); };
  CHECK(value("held_out_augmented") == expected.mean_augmented());
  CHECK(value("held_out_frozen") == expected.mean_baseline());
  CHECK(value("held_out_augmented_n2") == expected.augmented[1]);
  CHECK(value("held_out_frozen_n3") == expected.baseline[2]);
}

TEST_CASE("on two threads a coprocessor step splits the batch into parts and computes the whole batch's loss and update") {
  const int previous_threads = dca::num_threads();
  dca::Decoder<double> decoder(dca::DecoderConfig::llama({.vocab = 256, .dim = 16, .layers = 2, .heads = 2, .mlp = 32}), 1);
  decoder.freeze();
  const auto ids = dca::test::random_tokens(2 * 24, 3, 256);
  const auto plan = dca::AugmentationPlan::given(2, 24, 3, {1, 5, 9, 14, 2, 7, 11, 20});
  struct Run {
    dca::CoprocessorStep step;
    std::vector<dca::Tensor<double>> weights;
  };
  const auto run = [&](int threads, bool gated) {
    dca::set_num_threads(threads);
    dca::Coprocessor<double, 2> coprocessor(decoder, {.n_ahead = 3, .gated = gated});
    // A non-zero latent projection, so that every coprocessor weight has a gradient.
    for (dca::Parameter<double>* p : coprocessor.parameters())
      if (p->name() == "coprocessor.latent_projection.weight") p->value() = dca::test::random_tensor(p->shape(), 9, -0.3, 0.3);
    dca::TrainingLoop<double> loop(coprocessor.parameter_groups(), {.max_lr = 1e-3, .warmup_steps = 0, .total_steps = 10});
    Run r{dca::coprocessor_step(loop, coprocessor, decoder, std::span<const index_t>(ids), plan), {}};
    for (dca::Parameter<double>* p : coprocessor.parameters()) r.weights.push_back(p->value());
    return r;
  };
  const Run one = run(1, false), two = run(2, false);
  CHECK(one.step.parts == 1);
  CHECK(two.step.parts == 2);
  CHECK(std::abs(one.step.loss - two.step.loss) <= 1e-12 * one.step.loss);
  REQUIRE(one.step.per_position.size() == 3);
  for (std::size_t n = 0; n < 3; ++n)
    CHECK(std::abs(one.step.per_position[n] - two.step.per_position[n]) <= 1e-12 * one.step.per_position[n]);
  REQUIRE(one.weights.size() == two.weights.size());
  for (std::size_t k = 0; k < one.weights.size(); ++k)
    CHECK(dca::test::max_abs_difference(one.weights[k], two.weights[k]) <= 1e-10);
  CHECK(run(2, true).step.parts == 1);  // a gated coprocessor mixes with the token pass's logits: one tape
  dca::set_num_threads(previous_threads);
}
