// Specification of Hugging Face model directories: config.json mapping, save/load round trips for
// every architecture and size, and all-or-nothing loading with errors that name the problem.
#include "dca/io/hf.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#ifndef DCA_FIXTURE_DIR
#error "DCA_FIXTURE_DIR must point at tests/data/hf"
#endif

using dca::DecoderConfig;
using dca::index_t;

namespace {

std::vector<double> logits_of(dca::Decoder<double>& decoder, const std::vector<index_t>& ids) {
  dca::Tape<double> tape;
  const auto logits = decoder.logits(tape, ids);
  return {logits.value().span().begin(), logits.value().span().end()};
}

void write_json(const std::filesystem::path& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(); }

}  // namespace

TEST_CASE("the fixtures' config.json files map onto the matching presets") {
  const auto gpt2 = dca::read_hf_config(std::string(DCA_FIXTURE_DIR) + "/gpt2/config.json");
  CHECK(gpt2.architecture == dca::Architecture::gpt2);
  CHECK(gpt2.hidden_size == 64);
  CHECK(gpt2.intermediate_size == 256);  // n_inner null: 4·d
  CHECK(gpt2.positions == dca::PositionKind::learned);
  CHECK(gpt2.max_positions == 64);
  CHECK(gpt2.tie_embeddings);

  const auto llama = dca::read_hf_config(std::string(DCA_FIXTURE_DIR) + "/llama/config.json");
  CHECK(llama.n_kv_heads == 2);
  CHECK(llama.intermediate_size == 176);
  CHECK_FALSE(llama.tie_embeddings);
  CHECK(llama.rope_theta == 10000.0);

  const auto gemma = dca::read_hf_config(std::string(DCA_FIXTURE_DIR) + "/gemma2/config.json");
  CHECK(gemma.norm == dca::NormKind::rms_norm_one_plus);
  CHECK(gemma.attention_softcap == 3.0);
  CHECK(gemma.final_softcap == 5.0);
  CHECK(gemma.query_scale == doctest::Approx(0.25));  // query_pre_attn_scalar 16
  CHECK(gemma.sliding_window == 8);
  CHECK(gemma.layer_uses_window(0));
  CHECK_FALSE(gemma.layer_uses_window(1));
  CHECK(gemma.scale_embeddings);
  CHECK(gemma.post_norms);
}

TEST_CASE("every architecture round-trips through config.json and names its parameters from the table") {
  for (const dca::HfNames& names : dca::all_hf_names()) {
    CAPTURE(names.model_type);
    const auto config =
        DecoderConfig::preset(names.architecture, {.vocab = 11, .dim = 8, .layers = 2, .heads = 2, .mlp = 12});
    const nlohmann::json j = dca::hf_config_to_json(config);
    CHECK(j.at("model_type") == names.model_type);
    CHECK(j.at("architectures").at(0) == names.model_class);
    CHECK(dca::hf_config_from_json(j).architecture == names.architecture);
    dca::Decoder<float> decoder(config);
    CHECK(decoder.parameters().front()->name() == names.token_embedding);
  }
}

TEST_CASE("a saved decoder loads back with identical logits, for every architecture and unusual sizes") {
  std::vector<DecoderConfig> configs = {
      DecoderConfig::gpt2({.vocab = 23, .dim = 12, .layers = 2, .heads = 3, .max_positions = 20}),
      DecoderConfig::llama(
          {.vocab = 23, .dim = 12, .layers = 2, .heads = 3, .kv_heads = 1, .mlp = 20}),    // kv_heads = 1, untied
      DecoderConfig::qwen2({.vocab = 23, .dim = 12, .layers = 1, .heads = 2, .mlp = 20}),  // qkv biases
      DecoderConfig::gemma2({.vocab = 23,
                             .dim = 12,
                             .layers = 3,
                             .heads = 2,
                             .kv_heads = 1,
                             .head_dim = 10,
                             .mlp = 20,
                             .window = 2}),  // head_dim 10 ≠ 12/2, three layers
  };
  configs[1].tie_embeddings = true;  // a tied Llama is legal too
  auto untied_gpt2 = DecoderConfig::gpt2({.vocab = 23, .dim = 12, .layers = 1, .heads = 2, .max_positions = 20});
  untied_gpt2.tie_embeddings = false;
  configs.push_back(untied_gpt2);
  const std::vector<index_t> ids = {1, 5, 22, 0, 7, 7, 3};
  for (auto& config : configs) {
    CAPTURE(config.architecture);
    dca::test::TempDir dir;
    dca::Decoder<double> original(config, 42);
    dca::save_hf_decoder(original, dir.path);
    CHECK(std::filesystem::exists(dir.path / "config.json"));
    auto loaded = dca::load_hf_decoder<double>(dir.path);
    CHECK(loaded.parameter_count() == original.parameter_count());
    // Weights are stored as float32: the round trip is exact for weights that are floats.
    dca::Decoder<double> rounded = original;
    for (auto* p : rounded.parameters())
      for (index_t i = 0; i < p->numel(); ++i) p->value()[i] = static_cast<float>(p->value()[i]);
    CHECK(logits_of(loaded, ids) == logits_of(rounded, ids));
  }
}

TEST_CASE("a missing, misshapen or unexpected tensor is named, and nothing is loaded") {
  dca::test::TempDir dir;
  const auto config = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12});
  dca::Decoder<float> source(config, 1);
  dca::save_hf_decoder(source, dir.path);
  dca::Decoder<float> target(config, 2);
  const float before = target.parameter("model.norm.weight").value()[0] = 3.0f;

  auto write_without = [&](const std::string& skip, const std::string& reshape, const std::string& extra) {
    dca::SafeTensorsWriter w;
    for (auto* p : source.parameters()) {
      if (p->name() == skip) continue;
      if (p->name() == reshape) {
        dca::Tensor<float> t(dca::Shape{p->numel()});
        w.add(p->name(), std::as_const(t).view());
      } else {
        w.add(p->name(), std::as_const(p->value()).view());
      }
    }
    const dca::Tensor<float> two(dca::Shape{2});
    if (!extra.empty()) w.add(extra, two.view());
    w.write(dir.path / "model.safetensors");
    return dca::SafeTensors::read(dir.path / "model.safetensors");
  };
  CHECK_THROWS_WITH_AS(dca::load_hf_weights(target, write_without("model.layers.0.mlp.up_proj.weight", "", ""), "m"),
                       doctest::Contains("m: tensor 'model.layers.0.mlp.up_proj.weight' [12,8] is missing"),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_hf_weights(target, write_without("", "model.layers.0.self_attn.q_proj.weight", ""), "m"),
                       doctest::Contains("'model.layers.0.self_attn.q_proj.weight' is [64] but the model expects [8,8]"),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_hf_weights(target, write_without("", "", "model.layers.7.extra"), "m"),
                       doctest::Contains("unexpected tensor 'model.layers.7.extra'"), dca::FormatError);
  CHECK(target.parameter("model.norm.weight").value()[0] == before);  // untouched by the failed loads
}

TEST_CASE("config.json problems name the file and the field") {
  dca::test::TempDir dir;
  const auto path = dir.path / "config.json";
  nlohmann::json j =
      dca::hf_config_to_json(DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12}));
  j.erase("hidden_size");
  write_json(path, j);
  CHECK_THROWS_WITH_AS(dca::read_hf_config(path), doctest::Contains("required field 'hidden_size' is missing"),
                       dca::FormatError);
  j = dca::hf_config_to_json(DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12}));
  j["num_attention_heads"] = "four";
  write_json(path, j);
  CHECK_THROWS_WITH_AS(dca::read_hf_config(path), doctest::Contains("field 'num_attention_heads' has the wrong type"),
                       dca::FormatError);
  j["num_attention_heads"] = 3;
  write_json(path, j);
  CHECK_THROWS_WITH_AS(dca::read_hf_config(path), doctest::Contains("inconsistent configuration"), dca::FormatError);
  j["model_type"] = "mamba";
  write_json(path, j);
  CHECK_THROWS_WITH_AS(dca::read_hf_config(path), doctest::Contains("model_type 'mamba' is not supported"),
                       dca::FormatError);
  std::ofstream(path) << "{ not json";
  CHECK_THROWS_WITH_AS(dca::read_hf_config(path), doctest::Contains("not valid JSON"), dca::FormatError);
  CHECK_THROWS_AS(dca::read_hf_config(dir.path / "missing.json"), dca::IoError);
  j = dca::hf_config_to_json(DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12}));
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}};
  write_json(path, j);
  CHECK_THROWS_WITH_AS(dca::read_hf_config(path), doctest::Contains("rope type 'yarn' is not supported"),
                       dca::FormatError);
}
