// Specification of the trainer: it learns, it is deterministic, and checkpoints resume exactly.
#include "dca/train/trainer.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <vector>

using dca::index_t;

namespace {

using dca::test::sample_corpus;

dca::DecoderConfig tiny_model() {
  return dca::DecoderConfig::llama({.vocab = 256, .dim = 32, .layers = 2, .heads = 2, .mlp = 64});
}

dca::TrainerConfig tiny_run() {
  dca::TrainerConfig c;
  c.batch_size = 4;
  c.seq_len = 32;
  c.optimization.warmup_steps = 5;
  c.optimization.total_steps = 40;
  c.optimization.max_lr = 5e-3;
  c.optimization.min_lr = 5e-4;
  return c;
}

}  // namespace

TEST_CASE("training a small decoder on the sample text lowers its held-out loss") {
  const auto corpus = sample_corpus();
  dca::Decoder<float> model(tiny_model(), 1);
  dca::Trainer<float> trainer(model, corpus, tiny_run());
  const double before = trainer.validation_loss(4);
  CHECK(before == doctest::Approx(std::log(256.0)).epsilon(0.05));  // an untrained model is near uniform
  for (int i = 0; i < 40; ++i) trainer.step();
  const double after = trainer.validation_loss(4);
  MESSAGE("held-out loss ", before, " -> ", after, " nats/byte after 40 steps");
  CHECK(after < before - 1.0);
  CHECK(trainer.step_count() == 40);
}

TEST_CASE("the same seed and thread count give the same losses") {
  const auto corpus = sample_corpus();
  std::vector<double> runs[2];
  for (auto& losses : runs) {
    dca::Decoder<float> model(tiny_model(), 1);
    dca::Trainer<float> trainer(model, corpus, tiny_run());
    for (int i = 0; i < 5; ++i) losses.push_back(trainer.step());
  }
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("a run resumed from a checkpoint continues bit-identically to an uninterrupted one") {
  const auto corpus = sample_corpus();
  dca::test::TempDir dir;
  const auto path = dir.path / "checkpoint.safetensors";
  dca::Decoder<float> uninterrupted(tiny_model(), 1);
  std::vector<double> expected;
  {
    dca::Trainer<float> trainer(uninterrupted, corpus, tiny_run());
    for (int i = 0; i < 6; ++i) expected.push_back(trainer.step());
  }
  std::vector<double> resumed;
  {
    dca::Decoder<float> model(tiny_model(), 1);
    dca::Trainer<float> trainer(model, corpus, tiny_run());
    for (int i = 0; i < 3; ++i) resumed.push_back(trainer.step());
    trainer.save_checkpoint(path);
  }
  dca::Decoder<float> model(tiny_model(), 99);  // different initial weights: all must come from the file
  dca::Trainer<float> trainer(model, corpus, tiny_run());
  trainer.load_checkpoint(path);
  CHECK(trainer.step_count() == 3);
  for (int i = 0; i < 3; ++i) resumed.push_back(trainer.step());
  CHECK(resumed == expected);
  auto a = uninterrupted.parameters(), b = model.parameters();
  for (std::size_t p = 0; p < a.size(); ++p) CHECK(std::ranges::equal(a[p]->value().span(), b[p]->value().span()));
}

TEST_CASE("a checkpoint of another architecture or with a missing tensor is rejected and changes nothing") {
  const auto corpus = sample_corpus();
  dca::test::TempDir dir;
  const auto path = dir.path / "checkpoint.safetensors";
  {
    dca::Decoder<float> other(dca::DecoderConfig::llama({.vocab = 256, .dim = 32, .layers = 1, .heads = 2, .mlp = 64}),
                              1);
    dca::Trainer<float> trainer(other, corpus, tiny_run());
    trainer.step();
    trainer.save_checkpoint(path);
  }
  dca::Decoder<float> model(tiny_model(), 1);
  dca::Trainer<float> trainer(model, corpus, tiny_run());
  const float before = model.parameter("model.norm.weight").value()[0];
  CHECK_THROWS_WITH_AS(trainer.load_checkpoint(path), doctest::Contains("differs from this model's"), dca::FormatError);
  CHECK(trainer.step_count() == 0);
  CHECK(model.parameter("model.norm.weight").value()[0] == before);

  const auto file = dca::SafeTensors::read(path);
  dca::SafeTensorsWriter damaged;
  for (const auto& [key, value] : file.metadata()) damaged.set_metadata(key, value);
  damaged.write(path);
  CHECK_THROWS_AS(trainer.load_checkpoint(path), dca::FormatError);
  CHECK_THROWS_AS(trainer.load_checkpoint(dir.path / "missing.safetensors"), dca::IoError);
}
