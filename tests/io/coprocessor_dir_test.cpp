// Specification of coprocessor directories (io/coprocessor_dir.hpp): a saved coprocessor loads back
// with its configuration and computes the same latents, for every architecture and every stored
// part; config.json and model.safetensors hold what docs/io.md says; and a directory that does not
// fit the decoder it is loaded with, or whose tensors do not fit its configuration, is refused with
// the file and the values named.
#include "dca/io/coprocessor_dir.hpp"
#include "dca/io/hf.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <utility>
#include <vector>

using dca::CoprocessorConfig;
using dca::DecoderConfig;
using dca::index_t;

namespace {

using Cop = dca::Coprocessor<float, dca::dynamic_latents>;

// Every parameter a coprocessor has — its transformer's (frozen ones too) and its own — set to
// values no initialisation produces, so that a part the directory forgot would show.
void scramble(Cop& coprocessor, std::uint64_t seed) {
  std::vector<dca::Parameter<float>*> all = coprocessor.model().parameters();
  for (auto* p : coprocessor.parameters())
    if (p->name().starts_with("coprocessor.")) all.push_back(p);
  for (auto* p : all) p->value() = dca::test::random_tensor<float>(p->shape(), seed++, -0.3, 0.3);
}

// The coprocessor's latents (and gate, if gated) after `ids`: what inference computes.
std::vector<float> latents_of(Cop& coprocessor, dca::Decoder<float>& decoder, const std::vector<index_t>& ids) {
  dca::Tape<float> tape;
  dca::NoGradGuard<float> no_grad(tape);
  std::vector<float> out;
  if (!coprocessor.config().gated) {
    const auto z = coprocessor.latents(tape, decoder, ids);
    return {z.value().span().begin(), z.value().span().end()};
  }
  const auto n = static_cast<index_t>(ids.size());
  const auto read = Cop::read_tokens(tape, decoder, ids, 1);
  const auto gated = coprocessor.gated_latents(
      tape, decoder, read.cache, dca::LatentQueries::after(coprocessor.n_latents(), n, n - 1, ids.back()), read.residual);
  out.assign(gated.latents.value().span().begin(), gated.latents.value().span().end());
  out.push_back(gated.gates.value()[0]);
  return out;
}

// The variants a directory must carry: every latent form, both position policies and soft-token
// rules, both inputs, pause tokens, LoRA with its own α, a gate, training-only fields off default.
std::vector<CoprocessorConfig> variants() {
  std::vector<CoprocessorConfig> out;
  CoprocessorConfig c;
  c.n_latents = 3;
  out.push_back(c);  // residual, the defaults
  c.latent_form = dca::LatentForm::token_mixture;
  c.positions = dca::LatentPositions::shifted;
  c.soft_token_rule = dca::AttentionRule::bidirectional;
  c.gated = true;
  out.push_back(c);
  c = {};
  c.n_latents = 2;
  c.latent_form = dca::LatentForm::final_hidden;
  c.lora_rank = 2;
  c.lora_alpha = 5;
  c.n_ahead = 4;
  c.soft_token_std = 0.5;
  c.seed = 9;
  c.init_from_decoder = false;
  out.push_back(c);
  c = {};
  c.n_latents = 2;
  c.latent_form = dca::LatentForm::normed;
  c.input = dca::CoprocessorInput::last_layer;
  out.push_back(c);
  c = {};
  c.n_latents = 4;
  c.source = dca::LatentSource::pause;
  out.push_back(c);
  return out;
}

void check_same_config(const CoprocessorConfig& a, const CoprocessorConfig& b) {
  CHECK(a.n_latents == b.n_latents);
  CHECK(a.n_ahead == b.n_ahead);
  CHECK(a.latent_form == b.latent_form);
  CHECK(a.positions == b.positions);
  CHECK(a.soft_token_rule == b.soft_token_rule);
  CHECK(a.input == b.input);
  CHECK(a.source == b.source);
  CHECK(a.init_from_decoder == b.init_from_decoder);
  CHECK(a.lora_rank == b.lora_rank);
  CHECK(a.lora_alpha == b.lora_alpha);
  CHECK(a.soft_token_std == b.soft_token_std);
  CHECK(a.seed == b.seed);
  CHECK(a.gated == b.gated);
  CHECK(a.oracle_lookahead == b.oracle_lookahead);
}

// Rewrites dir/model.safetensors from its own tensors, leaving out `drop`, storing `reshape` flat
// and adding `extra`.
void rewrite_weights(const std::filesystem::path& dir, const std::string& drop, const std::string& reshape,
                     const std::string& extra) {
  const auto path = dir / "model.safetensors";
  const auto file = dca::SafeTensors::read(path);
  dca::SafeTensorsWriter writer;
  for (const std::string& name : file.names()) {
    if (name == drop) continue;
    auto t = file.tensor<float>(name);
    if (name == reshape) t = dca::Tensor<float>(dca::Shape{t.numel()});
    writer.add(name, std::as_const(t).view());
  }
  if (!extra.empty()) writer.add(extra, dca::Tensor<float>(dca::Shape{2}));
  writer.write(path);
}

}  // namespace

TEST_CASE("a saved coprocessor loads back with its configuration and computes the same latents, for every preset and variant") {
  const auto ids = dca::test::random_tokens(7, 3);
  for (const DecoderConfig& config : dca::test::tiny_presets(3)) {
    dca::Decoder<float> decoder(config, 5);
    decoder.freeze();
    std::uint64_t seed = 100;
    for (const CoprocessorConfig& variant : variants()) {
      CAPTURE(config.architecture);
      CAPTURE(static_cast<int>(variant.latent_form));
      CAPTURE(static_cast<int>(variant.source));
      dca::test::TempDir dir;
      Cop saved(decoder, variant);
      scramble(saved, seed += 50);
      dca::save_coprocessor(saved, dir.path);
      std::set<std::string> files;
      for (const auto& entry : std::filesystem::directory_iterator(dir.path)) files.insert(entry.path().filename().string());
      CHECK(files == std::set<std::string>{"config.json", "model.safetensors"});  // no temporary file left

      Cop loaded = dca::load_coprocessor(dir.path, decoder);
      check_same_config(loaded.config(), saved.config());
      const auto expected = latents_of(saved, decoder, ids);
      CHECK(latents_of(loaded, decoder, ids) == expected);  // float weights stored as F32: bit for bit
      // The comparison has teeth: an unsaved coprocessor of the same configuration computes others.
      Cop fresh(decoder, variant);
      scramble(fresh, seed + 7);
      CHECK(latents_of(fresh, decoder, ids) != expected);
    }
  }
}

TEST_CASE("a coprocessor saved as the fixed-count type loads as the run-time-count type with its latent count") {
  const auto config = dca::test::tiny_presets()[1];
  dca::Decoder<float> decoder(config, 2);
  decoder.freeze();
  dca::Coprocessor<float, 2, dca::GeometricAhead> fixed(decoder, {}, {0.5});
  for (auto* p : fixed.parameters()) p->value() = dca::test::random_tensor<float>(p->shape(), 4, -0.3, 0.3);
  dca::test::TempDir dir;
  dca::save_coprocessor(fixed, dir.path);
  Cop loaded = dca::load_coprocessor(dir.path, decoder);
  CHECK(loaded.n_latents() == 2);
  const auto ids = dca::test::random_tokens(6, 8);
  dca::Tape<float> tape;
  const auto a = fixed.latents(tape, decoder, ids), b = loaded.latents(tape, decoder, ids);
  CHECK(std::equal(a.value().span().begin(), a.value().span().end(), b.value().span().begin()));
}

TEST_CASE("config.json is the decoder's Hugging Face config plus every coprocessor field, and model.safetensors holds each part") {
  const auto config = dca::test::tiny_presets(3)[0];  // GPT-2
  dca::Decoder<float> decoder(config, 1);
  CoprocessorConfig c;
  c.n_latents = 3;
  c.latent_form = dca::LatentForm::token_mixture;
  c.positions = dca::LatentPositions::shifted;
  c.lora_rank = 2;
  c.gated = true;
  Cop coprocessor(decoder, c);
  dca::test::TempDir dir;
  dca::save_coprocessor(coprocessor, dir.path);

  const auto j = nlohmann::json::parse(dca::read_text_file(dir.path / "config.json"));
  CHECK(dca::read_hf_config(dir.path / "config.json").hidden_size == config.hidden_size);  // a decoder config too
  CHECK(j.at("model_type") == "gpt2");
  const auto& k = j.at("coprocessor");
  CHECK(k.at("format_version") == 1);
  CHECK(k.at("n_latents") == 3);
  CHECK(k.at("latent_form") == "token_mixture");
  CHECK(k.at("latent_positions") == "shifted");
  CHECK(k.at("soft_token_rule") == "causal");
  CHECK(k.at("input") == "kv_cache");
  CHECK(k.at("source") == "coprocessor");
  CHECK(k.at("gated") == true);
  CHECK(k.at("lora_rank") == 2);
  CHECK(k.at("lora_alpha") == 0.0);
  CHECK(k.at("n_ahead") == 16);
  CHECK(k.size() == 15);  // the fields docs/io.md lists, no more

  const auto file = dca::SafeTensors::read(dir.path / "model.safetensors");
  CHECK(file.entry("coprocessor.soft_tokens").shape == std::vector<index_t>{3, 8});
  CHECK(file.entry("coprocessor.latent_projection.weight").shape == std::vector<index_t>{8, 8});
  CHECK(file.entry("coprocessor.gate.weight").shape == std::vector<index_t>{1, 8});
  CHECK(file.entry("coprocessor.gate.bias").shape == std::vector<index_t>{1, 1});
  CHECK(file.entry("transformer.h.1.attn.c_attn.lora_A.weight").shape == std::vector<index_t>{2, 8});
  CHECK(file.entry("transformer.h.1.attn.c_attn.lora_B.weight").shape == std::vector<index_t>{24, 2});
  CHECK(file.entry("transformer.h.0.attn.c_attn.weight").shape == std::vector<index_t>{8, 24});  // LoRA's frozen base
  CHECK(file.entry("transformer.wte.weight").dtype == dca::DType::f32);
  // every parameter of the coprocessor's transformer, and the coprocessor's own four
  CHECK(file.names().size() == coprocessor.model().parameters().size() + 4);
}

TEST_CASE("a coprocessor loaded with another decoder is refused, naming config.json and every differing value") {
  const auto config = dca::test::tiny_presets()[1];  // Llama
  dca::Decoder<float> decoder(config, 1);
  Cop coprocessor(decoder, {.n_latents = 2});
  dca::test::TempDir dir;
  dca::save_coprocessor(coprocessor, dir.path);
  auto other_config = config;
  other_config.n_layers = 3;
  other_config.rope_theta = 500.0;
  dca::Decoder<float> other(other_config, 1);
  const std::string expected = (dir.path / "config.json").string() + ": the coprocessor was trained with another decoder";
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, other), doctest::Contains(expected.c_str()), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, other),
                       doctest::Contains("num_hidden_layers = 2 here but 3 in the decoder"), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, other), doctest::Contains("rope_theta = 10000.0 here but 500.0"),
                       dca::FormatError);
  dca::Decoder<float> gpt2(dca::test::tiny_presets()[0], 1);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, gpt2), doctest::Contains("model_type = \"llama\" here but \"gpt2\""),
                       dca::FormatError);
}

TEST_CASE("missing, misshaped and unexpected tensors are refused, each named with model.safetensors") {
  const auto config = dca::test::tiny_presets()[1];
  dca::Decoder<float> decoder(config, 1);
  dca::test::TempDir dir;
  const std::string mismatch = (dir.path / "model.safetensors").string() + ": the tensors do not match";
  auto save = [&](CoprocessorConfig c) {
    Cop coprocessor(decoder, c);
    dca::save_coprocessor(coprocessor, dir.path);
  };
  save({.n_latents = 2});
  rewrite_weights(dir.path, "coprocessor.latent_projection.weight", "model.layers.1.mlp.up_proj.weight",
                  "model.layers.9.extra");
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains(mismatch.c_str()),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("missing 'coprocessor.latent_projection.weight' [8,8]"), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("misshaped 'model.layers.1.mlp.up_proj.weight' is [96] but the configuration needs [12,8]"),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains("unexpected 'model.layers.9.extra'"),
                       dca::FormatError);

  // The tensors must be the configuration's: a gate saved, then the config said ungated.
  save({.n_latents = 2, .gated = true});
  auto j = nlohmann::json::parse(dca::read_text_file(dir.path / "config.json"));
  j["coprocessor"]["gated"] = false;
  dca::write_text_atomically(dir.path / "config.json", j.dump());
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("unexpected 'coprocessor.gate.bias' and 'coprocessor.gate.weight'"), dca::FormatError);
  // LoRA adapters the configuration does not announce, and a latent count the soft tokens do not have.
  save({.n_latents = 2, .lora_rank = 2});
  j = nlohmann::json::parse(dca::read_text_file(dir.path / "config.json"));
  j["coprocessor"]["lora_rank"] = 0;
  j["coprocessor"]["n_latents"] = 3;
  dca::write_text_atomically(dir.path / "config.json", j.dump());
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("misshaped 'coprocessor.soft_tokens' is [2,8] but the configuration needs [3,8]"),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("unexpected 'model.layers.0.mlp.down_proj.lora_A.weight'"), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains("and 20 more"), dca::FormatError);
}

TEST_CASE("a config.json that is not a coprocessor's, or not one this dca reads, is refused naming the field") {
  const auto config = dca::test::tiny_presets()[2];  // Gemma-2
  dca::Decoder<float> decoder(config, 1);
  dca::test::TempDir dir;
  const auto path = dir.path / "config.json";
  dca::save_hf_decoder(decoder, dir.path);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("no \"coprocessor\" object; this is not a coprocessor directory"), dca::FormatError);
  Cop coprocessor(decoder, {.n_latents = 2});
  dca::save_coprocessor(coprocessor, dir.path);
  const auto good = nlohmann::json::parse(dca::read_text_file(path));
  auto edit = [&](const char* field, nlohmann::json value) {
    auto j = good;
    if (value.is_null())
      j["coprocessor"].erase(field);
    else
      j["coprocessor"][field] = std::move(value);
    dca::write_text_atomically(path, j.dump());
  };
  edit("latent_form", "sparkling");
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("coprocessor field 'latent_form' is 'sparkling', not one of residual, normed, "
                                         "final_hidden, token_mixture"),
                       dca::FormatError);
  edit("format_version", 2);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains("format_version 2 is not one this dca reads"),
                       dca::FormatError);
  edit("latent_positions", nullptr);
  const std::string missing = path.string() + ": required field 'latent_positions' is missing";
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains(missing.c_str()), dca::FormatError);
  edit("n_latent", 4);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains("unknown coprocessor field 'n_latent'"),
                       dca::FormatError);
  edit("lora_rank", -1);
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder),
                       doctest::Contains("inconsistent coprocessor configuration: CoprocessorConfig: lora_rank must be ≥ 0"),
                       dca::FormatError);
  edit("gated", "yes");
  CHECK_THROWS_WITH_AS(dca::load_coprocessor(dir.path, decoder), doctest::Contains("field 'gated' has the wrong type"),
                       dca::FormatError);
  CHECK_THROWS_AS(dca::load_coprocessor(dir.path / "nowhere", decoder), dca::IoError);
}
