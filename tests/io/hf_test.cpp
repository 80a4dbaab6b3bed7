// Specification of Hugging Face model directories: config.json mapping, save/load round trips for
// every architecture and size, sharded saves as transformers shards, dtypes kept from load to
// save, and all-or-nothing loading with errors that name the problem.
#include "dca/io/hf.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
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

namespace {

// The file names in `directory`, sorted.
std::vector<std::string> hf_listing(const std::filesystem::path& directory) {
  std::vector<std::string> names;
  for (const auto& item : std::filesystem::directory_iterator(directory)) names.push_back(item.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

nlohmann::json hf_read_json(const std::filesystem::path& path) { return nlohmann::json::parse(dca::read_text_file(path)); }

// A small untied Llama: 21 tensors, about 11 kB in F32, the largest (embeddings, head) 1,104 bytes.
DecoderConfig hf_sharding_config() {
  auto config = DecoderConfig::llama({.vocab = 23, .dim = 12, .layers = 2, .heads = 3, .kv_heads = 1, .mlp = 20});
  config.tie_embeddings = false;
  return config;
}

// Every parameter's values, in order.
template <class T>
std::vector<std::vector<T>> hf_values(dca::Decoder<T>& decoder) {
  std::vector<std::vector<T>> values;
  for (auto* p : decoder.parameters()) values.emplace_back(p->value().span().begin(), p->value().span().end());
  return values;
}

}  // namespace

TEST_CASE("a decoder above max_shard_size is saved as transformers' shards plus index, and loads back identically") {
  dca::test::TempDir dir;
  dca::Decoder<double> original(hf_sharding_config(), 7);
  std::vector<std::uint64_t> sizes;
  std::uint64_t total = 0;
  for (auto* p : original.parameters()) total += sizes.emplace_back(static_cast<std::uint64_t>(p->numel()) * 4);
  const std::uint64_t limit = 1500;  // a few tensors per shard
  const auto plan = dca::plan_shards(sizes, limit);
  REQUIRE(plan.size() > 2);
  dca::save_hf_decoder(original, dir.path, {.max_shard_size = limit});

  std::vector<std::string> expected_files = {"config.json", "model.safetensors.index.json"};
  for (std::size_t s = 1; s <= plan.size(); ++s) expected_files.push_back(dca::shard_file_name("model", s, plan.size()));
  std::sort(expected_files.begin(), expected_files.end());
  CHECK(hf_listing(dir.path) == expected_files);

  const nlohmann::json index = hf_read_json(dir.path / "model.safetensors.index.json");
  CHECK(index.at("metadata").at("total_size") == total);
  CHECK(index.at("metadata").at("total_parameters") == original.parameter_count());
  const auto parameters = original.parameters();
  for (std::size_t s = 0; s < plan.size(); ++s) {
    const std::string shard = dca::shard_file_name("model", s + 1, plan.size());
    const auto file = dca::SafeTensors::read(dir.path / shard);
    CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
    std::vector<std::string> expected_names;
    for (std::size_t i : plan[s]) {
      expected_names.push_back(parameters[i]->name());
      CHECK(index.at("weight_map").at(parameters[i]->name()) == shard);
    }
    std::vector<std::string> names = file.names();
    std::sort(names.begin(), names.end());
    std::sort(expected_names.begin(), expected_names.end());
    CHECK(names == expected_names);
  }
  CHECK(index.at("weight_map").size() == parameters.size());

  auto loaded = dca::load_hf_decoder<double>(dir.path);
  dca::Decoder<double> rounded = original;  // stored as float32
  for (auto* p : rounded.parameters())
    for (index_t i = 0; i < p->numel(); ++i) p->value()[i] = static_cast<float>(p->value()[i]);
  CHECK(hf_values(loaded) == hf_values(rounded));
  const std::vector<index_t> ids = {1, 5, 22, 0, 7};
  CHECK(logits_of(loaded, ids) == logits_of(rounded, ids));
}

TEST_CASE("a save replaces an earlier one: stale shards, index or single file are removed, other files kept") {
  dca::test::TempDir dir;
  dca::Decoder<float> model(hf_sharding_config(), 3);
  std::ofstream(dir.path / "tokenizer.json") << "{}";
  std::ofstream(dir.path / "model-notes.txt") << "kept";

  dca::save_hf_decoder(model, dir.path, {.max_shard_size = 1200});
  const std::size_t many = hf_listing(dir.path).size() - 4;  // config, index, tokenizer, notes
  REQUIRE(many > 3);
  dca::save_hf_decoder(model, dir.path, {.max_shard_size = 4000});  // fewer shards: the extra ones go
  std::vector<std::string> files = hf_listing(dir.path);
  const auto shard_count = static_cast<std::size_t>(
      std::count_if(files.begin(), files.end(), [](const std::string& f) { return dca::is_shard_file_name(f, "model"); }));
  CHECK(shard_count > 1);
  CHECK(shard_count < many);
  CHECK(files.size() == shard_count + 4);
  CHECK(std::find(files.begin(), files.end(), dca::shard_file_name("model", shard_count, shard_count)) != files.end());

  dca::save_hf_decoder(model, dir.path);  // one file: index and shards go
  CHECK(hf_listing(dir.path) ==
        std::vector<std::string>{"config.json", "model-notes.txt", "model.safetensors", "tokenizer.json"});
  auto single = dca::load_hf_decoder<float>(dir.path);
  CHECK(hf_values(single) == hf_values(model));

  dca::save_hf_decoder(model, dir.path, {.max_shard_size = 4000});  // shards again: model.safetensors goes
  files = hf_listing(dir.path);
  CHECK(std::find(files.begin(), files.end(), "model.safetensors") == files.end());
  CHECK(std::find(files.begin(), files.end(), "model.safetensors.index.json") != files.end());
  auto loaded = dca::load_hf_decoder<float>(dir.path);
  CHECK(hf_values(loaded) == hf_values(model));
}

TEST_CASE("a checkpoint loads recording the dtype it was stored in, saves back in it, or in the dtype asked for") {
  const auto config = DecoderConfig::gpt2({.vocab = 19, .dim = 8, .layers = 1, .heads = 2, .max_positions = 16});
  dca::Decoder<float> original(config, 5);
  CHECK(original.config().storage_dtype == dca::DType::f32);  // a model made in dca

  for (const auto& [dtype, torch_name] : {std::pair{dca::DType::bf16, "bfloat16"}, std::pair{dca::DType::f16, "float16"}}) {
    CAPTURE(torch_name);
    dca::test::TempDir first, second, third;
    dca::save_hf_decoder(original, first.path, {.dtype = dtype});
    CHECK(hf_read_json(first.path / "config.json").at("dtype") == torch_name);
    const auto first_file = dca::SafeTensors::read(first.path / "model.safetensors");
    for (const auto& e : first_file.entries()) CHECK(e.dtype == dtype);

    auto loaded = dca::load_hf_decoder<float>(first.path);
    CHECK(loaded.config().storage_dtype == dtype);
    const auto originals = hf_values(original), values = hf_values(loaded);
    for (std::size_t p = 0; p < values.size(); ++p)
      for (std::size_t i = 0; i < values[p].size(); ++i) {
        const float v = originals[p][i];
        const float stored = dtype == dca::DType::bf16 ? dca::detail::bf16_to_float(dca::detail::float_to_bf16(v))
                                                       : dca::detail::f16_to_float(dca::detail::float_to_f16(v));
        CHECK(values[p][i] == stored);
      }

    // Saved again without options: the same dtype, and the very same bytes.
    dca::save_hf_decoder(loaded, second.path);
    CHECK(dca::read_file(second.path / "model.safetensors") == dca::read_file(first.path / "model.safetensors"));
    CHECK(hf_read_json(second.path / "config.json").at("dtype") == torch_name);

    // Asked for float32: stored so, and said so.
    dca::save_hf_decoder(loaded, third.path, {.dtype = dca::DType::f32});
    CHECK(hf_read_json(third.path / "config.json").at("dtype") == "float32");
    const auto third_file = dca::SafeTensors::read(third.path / "model.safetensors");
    for (const auto& e : third_file.entries()) CHECK(e.dtype == dca::DType::f32);
    CHECK(dca::load_hf_decoder<float>(third.path).config().storage_dtype == dca::DType::f32);
  }
  dca::test::TempDir dir;
  CHECK_THROWS_WITH_AS(dca::save_hf_decoder(original, dir.path, {.dtype = dca::DType::i32}),
                       doctest::Contains("save_hf_decoder: weights cannot be stored as I32"), dca::UsageError);
}

TEST_CASE("config.json's dtype (or torch_dtype) is read, and decides the storage dtype when the tensors' dtypes differ") {
  nlohmann::json j = dca::hf_config_to_json(DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12}));
  CHECK(j.at("dtype") == "float32");
  j["dtype"] = "bfloat16";
  CHECK(dca::hf_config_from_json(j).storage_dtype == dca::DType::bf16);
  j.erase("dtype");
  CHECK(dca::hf_config_from_json(j).storage_dtype == dca::DType::f32);
  j["torch_dtype"] = "float16";  // transformers before 4.56
  CHECK(dca::hf_config_from_json(j).storage_dtype == dca::DType::f16);
  j["dtype"] = "int8";
  CHECK_THROWS_WITH_AS(dca::hf_config_from_json(j, "c.json"),
                       doctest::Contains("c.json: dtype 'int8' is not supported (float32, float64, bfloat16, float16)"),
                       dca::FormatError);

  // Norms kept in F32 beside BF16 weights (as some checkpoints do): config.json's dtype decides.
  dca::test::TempDir dir;
  const auto config = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12});
  dca::Decoder<float> model(config, 2);
  auto write_checkpoint = [&](const char* config_dtype, bool mixed) {
    nlohmann::json c = dca::hf_config_to_json(config);
    c["dtype"] = config_dtype;
    write_json(dir.path / "config.json", c);
    dca::SafeTensorsWriter w;
    for (auto* p : model.parameters())
      w.add(p->name(), std::as_const(p->value()).view(),
            mixed && p->name().find("norm") != std::string::npos ? dca::DType::f32 : dca::DType::bf16);
    w.write(dir.path / "model.safetensors");
  };
  write_checkpoint("bfloat16", true);
  CHECK(dca::load_hf_decoder<float>(dir.path).config().storage_dtype == dca::DType::bf16);
  write_checkpoint("float16", true);
  CHECK(dca::load_hf_decoder<float>(dir.path).config().storage_dtype == dca::DType::f16);
  write_checkpoint("float32", false);  // the tensors agree: they win over config.json
  CHECK(dca::load_hf_decoder<float>(dir.path).config().storage_dtype == dca::DType::bf16);
}

TEST_CASE("a sharded checkpoint whose last shard does not fit the model is named, and nothing is loaded") {
  dca::test::TempDir dir;
  dca::Decoder<float> source(hf_sharding_config(), 1);
  dca::save_hf_decoder(source, dir.path, {.max_shard_size = 2000});
  const nlohmann::json index = hf_read_json(dir.path / "model.safetensors.index.json");
  std::string last_shard;
  for (const auto& [tensor, shard] : index.at("weight_map").items()) last_shard = std::max(last_shard, shard.get<std::string>());
  // Rewrite the last shard with one of its tensors flattened.
  const auto shard_path = dir.path / last_shard;
  const auto original_shard = dca::SafeTensors::read(shard_path);
  std::string victim;  // a matrix, so that flattening changes its shape
  for (const auto& e : original_shard.entries())
    if (victim.empty() && e.shape.size() == 2) victim = e.name;
  REQUIRE_FALSE(victim.empty());
  dca::SafeTensorsWriter w;
  for (const auto& e : original_shard.entries()) {
    auto t = original_shard.tensor<float>(e.name);
    if (e.name == victim) t = dca::Tensor<float>(dca::Shape{t.numel()}, t.span());
    w.add(e.name, t);
  }
  w.write(shard_path);

  dca::Decoder<float> target(hf_sharding_config(), 2);
  const auto before = hf_values(target);
  const std::string expected_shape = source.parameter(victim).shape().str();
  CHECK_THROWS_WITH_AS(
      dca::load_hf_weights(target, dca::open_hf_weights(dir.path)),
      doctest::Contains(("safetensors file \"" + shard_path.string() + "\": tensor '" + victim + "' is [" +
                         std::to_string(source.parameter(victim).numel()) + "] but the model expects " + expected_shape)
                            .c_str()),
      dca::FormatError);
  CHECK(hf_values(target) == before);
  CHECK_THROWS_AS(dca::load_hf_decoder<float>(dir.path), dca::FormatError);
}

TEST_CASE("a directory without weights, or an integer tensor in place of a weight, is named") {
  dca::test::TempDir dir;
  const auto config = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12});
  write_json(dir.path / "config.json", dca::hf_config_to_json(config));
  CHECK_THROWS_WITH_AS(dca::load_hf_decoder<float>(dir.path),
                       doctest::Contains("holds neither model.safetensors nor model.safetensors.index.json"), dca::IoError);

  dca::Decoder<float> model(config, 1);
  dca::SafeTensorsWriter w;
  for (auto* p : model.parameters()) {
    if (p->name() == "model.norm.weight")
      w.add_integers(p->name(), std::vector<std::int64_t>(8, 1), {8});
    else
      w.add(p->name(), std::as_const(p->value()).view());
  }
  w.write(dir.path / "model.safetensors");
  CHECK_THROWS_WITH_AS(dca::load_hf_decoder<float>(dir.path),
                       doctest::Contains("model.safetensors: tensor 'model.norm.weight' holds I64 integers, not weights"),
                       dca::FormatError);
}

// Issue 15: a NaN weight used to load silently and surface as a non-finite gradient at the first
// training step. It is refused at load, naming the tensor, in every stored dtype, and a refused
// load leaves the decoder as it was — the bad tensor is the last parameter, so a check made while
// converting would already have overwritten the others.
TEST_CASE("a weight that is NaN or infinite, or that overflows when narrowed, is a FormatError naming the tensor") {
  const auto config = DecoderConfig::llama({.vocab = 11, .dim = 8, .layers = 1, .heads = 2, .mlp = 12});
  const std::string victim = dca::Decoder<float>(config, 1).parameters().back()->name();
  struct Case {
    dca::DType dtype;
    double value;
    const char* expected;
  };
  const double inf = std::numeric_limits<double>::infinity();
  for (const Case c : {Case{dca::DType::f32, std::nan(""), "holds nan at element 5"},
                       Case{dca::DType::bf16, -inf, "holds -inf at element 5"},
                       Case{dca::DType::f16, std::nan(""), "holds nan at element 5"},
                       Case{dca::DType::f64, inf, "holds inf at element 5"},
                       Case{dca::DType::f64, 1e300, "holds 1e+300 at element 5, which is inf as float"}}) {
    CAPTURE(c.dtype);
    CAPTURE(c.value);
    dca::test::TempDir dir;
    dca::Decoder<double> source(config, 1);
    source.parameter(victim).value()[5] = c.value;
    dca::save_hf_decoder(source, dir.path, {.dtype = c.dtype});
    const std::string expected = "model.safetensors: tensor '" + victim + "' " + c.expected;
    CHECK_THROWS_WITH_AS(dca::load_hf_decoder<float>(dir.path), doctest::Contains(expected.c_str()), dca::FormatError);
    dca::Decoder<float> target(config, 2);
    const auto before = hf_values(target);
    CHECK_THROWS_WITH_AS(dca::load_hf_weights(target, dca::open_hf_weights(dir.path)),
                         doctest::Contains(expected.c_str()), dca::FormatError);
    CHECK(hf_values(target) == before);
  }
}
