// dca/io/coprocessor_dir.hpp — a trained coprocessor as a directory beside its decoder's, in the
// decoder's own format: config.json (the decoder's Hugging Face config plus a "coprocessor" object
// with every choice that changes what the coprocessor computes) and model.safetensors (its weights
// under their Hugging Face names, LoRA adapters under PEFT's, and the tensors a decoder does not
// have under "coprocessor."). python/dca_torch.py runs such a directory in plain PyTorch. The
// format, field by field: docs/io.md.
//
//   dca::save_coprocessor(coprocessor, "runs/coprocessor/coprocessor");
//   auto decoder = dca::load_hf_decoder<float>("runs/pretrain/model");
//   auto loaded = dca::load_coprocessor<float>("runs/coprocessor/coprocessor", decoder);
//
// Loading is all-or-nothing and checks everything a coprocessor needs to compute what it computed
// when it was saved: the decoder it is loaded with has the configuration it was trained with, and
// model.safetensors holds exactly the tensors the configuration implies, each of its shape.
#pragma once

#include "dca/coproc/coprocessor.hpp"
#include "dca/io/atomic_file.hpp"
#include "dca/io/hf_config.hpp"
#include "dca/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dca {

/// The version of the directory format save_coprocessor writes (config.json's
/// "coprocessor"."format_version"); load_coprocessor reads it and no later one.
inline constexpr int coprocessor_format_version = 1;

/// The "coprocessor" object of config.json for `config`: every CoprocessorConfig field, enums by
/// their C++ names ("residual", "at_insertion_point", ...).
inline nlohmann::json coprocessor_config_to_json(const CoprocessorConfig& config);

/// The CoprocessorConfig of a "coprocessor" object; FormatError naming `file` and the field when
/// a field is missing, has the wrong type, holds an unknown name or value, or is not a field.
inline CoprocessorConfig coprocessor_config_from_json(const nlohmann::json& j, const std::string& file);

/// Writes `dir`/model.safetensors (float32) and then `dir`/config.json, each atomically, creating
/// `dir` if needed: a new directory's config.json never appears before the weights it describes (a
/// save over an older one interrupted between the two leaves the new weights with the old
/// config.json, which loading refuses wherever their tensors differ). Stored: every weight of the coprocessor's transformer, frozen ones too (LoRA's base
/// weights), its LoRA adapters, the soft tokens, the latent projection (residual and
/// token-mixture forms) and the gate (gated); a pause-token coprocessor stores its soft tokens
/// only, the one thing it computes with. The ahead-token objective is a training choice and is not
/// stored. Takes the coprocessor by non-const reference because its parameters are reached through
/// the non-const accessors training uses; it is not changed.
template <Scalar T, index_t N, AheadObjective Objective>
void save_coprocessor(Coprocessor<T, N, Objective>& coprocessor, const std::filesystem::path& dir);

/// Reads a directory written by save_coprocessor into a coprocessor for `decoder`, with the
/// run-time latent count and the default objective. FormatError naming the file when the decoder's
/// configuration differs from the one the coprocessor was trained with (every differing field and
/// both values), when config.json is not a coprocessor's, or when model.safetensors lacks a tensor
/// the configuration needs, holds one it does not, or holds one of another shape (each named).
/// IoError when a file cannot be read.
template <Scalar T>
Coprocessor<T, dynamic_latents> load_coprocessor(const std::filesystem::path& dir, const Decoder<T>& decoder);

// ---- implementation ---------------------------------------------------------------------------

namespace detail {

// The names config.json gives each enum's values: the enumerators' own.
inline constexpr std::pair<LatentForm, const char*> latent_form_names[] = {{LatentForm::residual, "residual"},
                                                                           {LatentForm::normed, "normed"},
                                                                           {LatentForm::final_hidden, "final_hidden"},
                                                                           {LatentForm::token_mixture, "token_mixture"}};
inline constexpr std::pair<LatentPositions, const char*> latent_positions_names[] = {
    {LatentPositions::at_insertion_point, "at_insertion_point"}, {LatentPositions::shifted, "shifted"}};
inline constexpr std::pair<AttentionRule, const char*> attention_rule_names[] = {
    {AttentionRule::causal, "causal"}, {AttentionRule::bidirectional, "bidirectional"}};
inline constexpr std::pair<CoprocessorInput, const char*> coprocessor_input_names[] = {
    {CoprocessorInput::kv_cache, "kv_cache"}, {CoprocessorInput::last_layer, "last_layer"}};
inline constexpr std::pair<LatentSource, const char*> latent_source_names[] = {{LatentSource::coprocessor, "coprocessor"},
                                                                               {LatentSource::pause, "pause"}};

template <class Enum, std::size_t Count>
const char* enum_name(const std::pair<Enum, const char*> (&names)[Count], Enum value) {
  for (const auto& [e, name] : names)
    if (e == value) return name;
  fail<UsageError>("coprocessor config: enum value ", static_cast<int>(value), " has no name");
}

template <class Enum, std::size_t Count>
Enum enum_value(const std::pair<Enum, const char*> (&names)[Count], const nlohmann::json& j, const char* field,
                const std::string& file) {
  const auto name = hf_field<std::string>(j, field, file);
  std::string known;
  for (const auto& [e, n] : names) {
    if (name == n) return e;
    known += concat(known.empty() ? "" : ", ", n);
  }
  fail<FormatError>(file, ": coprocessor field '", field, "' is '", name, "', not one of ", known);
}

// The parameters a coprocessor directory stores, by their names in model.safetensors: see
// save_coprocessor. Names of the coprocessor's own tensors start with "coprocessor.", those of its
// transformer are Hugging Face's, so the two never collide.
template <Scalar T, index_t N, AheadObjective Objective>
std::vector<Parameter<T>*> stored_parameters(Coprocessor<T, N, Objective>& coprocessor) {
  std::vector<Parameter<T>*> out;
  if (coprocessor.config().source == LatentSource::coprocessor) out = coprocessor.model().parameters();
  for (Parameter<T>* p : coprocessor.parameters())
    if (p->name().starts_with("coprocessor.")) out.push_back(p);
  return out;
}

// "a, b and c" of up to `limit` entries, then how many more.
inline std::string list_for_message(const std::vector<std::string>& items, std::size_t limit = 8) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < limit; ++i)
    out += concat(i == 0 ? "" : (i + 1 == items.size() ? " and " : ", "), items[i]);
  if (items.size() > limit) out += concat(" and ", items.size() - limit, " more");
  return out;
}

// FormatError listing every field in which the decoder configuration `stored` (read from `file`)
// and `actual` (the decoder's) differ, compared as the Hugging Face config.json fields both write —
// except "dtype", how the weights are stored, which does not change the architecture (a decoder
// saved again as BF16 still takes the coprocessor trained with its float32 original).
inline void check_same_decoder(const DecoderConfig& stored, const DecoderConfig& actual, const std::string& file) {
  nlohmann::json a = hf_config_to_json(stored), b = hf_config_to_json(actual);
  a.erase("dtype");
  b.erase("dtype");
  std::vector<std::string> differences;
  for (const auto& [key, value] : a.items()) {
    if (!b.contains(key))
      differences.push_back(concat(key, " = ", value.dump(), " here, absent from the decoder's"));
    else if (b.at(key) != value)
      differences.push_back(concat(key, " = ", value.dump(), " here but ", b.at(key).dump(), " in the decoder"));
  }
  for (const auto& [key, value] : b.items())
    if (!a.contains(key)) differences.push_back(concat(key, " absent here but ", value.dump(), " in the decoder"));
  if (!differences.empty())
    fail<FormatError>(file, ": the coprocessor was trained with another decoder than the one it is loaded with: ",
                      list_for_message(differences, differences.size()));
}

}  // namespace detail

inline nlohmann::json coprocessor_config_to_json(const CoprocessorConfig& c) {
  using detail::enum_name;
  nlohmann::json j;
  j["format_version"] = coprocessor_format_version;
  // What the coprocessor computes at inference.
  j["n_latents"] = c.n_latents;
  j["latent_form"] = enum_name(detail::latent_form_names, c.latent_form);
  j["latent_positions"] = enum_name(detail::latent_positions_names, c.positions);
  j["soft_token_rule"] = enum_name(detail::attention_rule_names, c.soft_token_rule);
  j["input"] = enum_name(detail::coprocessor_input_names, c.input);
  j["source"] = enum_name(detail::latent_source_names, c.source);
  j["gated"] = c.gated;
  j["lora_rank"] = c.lora_rank;
  j["lora_alpha"] = c.lora_alpha;
  // How it was trained: no effect on what the stored weights compute, kept so that a loaded
  // coprocessor's configuration is the saved one.
  j["n_ahead"] = c.n_ahead;
  j["oracle_lookahead"] = c.oracle_lookahead;
  j["init_from_decoder"] = c.init_from_decoder;
  j["soft_token_std"] = c.soft_token_std;
  j["seed"] = c.seed;
  return j;
}

inline CoprocessorConfig coprocessor_config_from_json(const nlohmann::json& j, const std::string& file) {
  using detail::enum_value;
  using detail::hf_field;
  if (!j.is_object()) detail::fail<FormatError>(file, ": \"coprocessor\" is not a JSON object");
  const auto version = hf_field<int>(j, "format_version", file);
  if (version < 1 || version > coprocessor_format_version)
    detail::fail<FormatError>(file, ": coprocessor format_version ", version, " is not one this dca reads (1..",
                              coprocessor_format_version, "); it was written by a newer dca");
  const nlohmann::json known = coprocessor_config_to_json({});
  for (const auto& [key, value] : j.items())
    if (!known.contains(key))
      detail::fail<FormatError>(file, ": unknown coprocessor field '", key,
                                "' (a newer format, or a typo: the fields are in docs/io.md)");
  CoprocessorConfig c;
  c.n_latents = hf_field<index_t>(j, "n_latents", file);
  c.latent_form = enum_value(detail::latent_form_names, j, "latent_form", file);
  c.positions = enum_value(detail::latent_positions_names, j, "latent_positions", file);
  c.soft_token_rule = enum_value(detail::attention_rule_names, j, "soft_token_rule", file);
  c.input = enum_value(detail::coprocessor_input_names, j, "input", file);
  c.source = enum_value(detail::latent_source_names, j, "source", file);
  c.gated = hf_field<bool>(j, "gated", file);
  c.lora_rank = hf_field<index_t>(j, "lora_rank", file);
  c.lora_alpha = hf_field<double>(j, "lora_alpha", file);
  c.n_ahead = hf_field<index_t>(j, "n_ahead", file);
  c.oracle_lookahead = hf_field<index_t>(j, "oracle_lookahead", file);
  c.init_from_decoder = hf_field<bool>(j, "init_from_decoder", file);
  c.soft_token_std = hf_field<double>(j, "soft_token_std", file);
  c.seed = hf_field<std::uint64_t>(j, "seed", file);
  try {
    c.validate();
    if (c.n_latents < 1) detail::fail<RangeError>("n_latents must be ≥ 1, got ", c.n_latents);
  } catch (const std::exception& e) {
    detail::fail<FormatError>(file, ": inconsistent coprocessor configuration: ", e.what());
  }
  return c;
}

template <Scalar T, index_t N, AheadObjective Objective>
void save_coprocessor(Coprocessor<T, N, Objective>& coprocessor, const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) detail::fail<IoError>("cannot create directory ", dir.string(), ": ", ec.message());
  SafeTensorsWriter writer;
  for (Parameter<T>* p : detail::stored_parameters(coprocessor))
    writer.add(p->name(), std::as_const(p->value()).view(), DType::f32);
  writer.set_metadata("format", "dca coprocessor");
  writer.write(dir / "model.safetensors");
  nlohmann::json config = hf_config_to_json(coprocessor.model().config());
  config["dtype"] = "float32";  // how this directory's weights are stored, whatever the decoder's are
  config["coprocessor"] = coprocessor_config_to_json(coprocessor.config());
  write_text_atomically(dir / "config.json", config.dump(2) + "\n");
}

template <Scalar T>
Coprocessor<T, dynamic_latents> load_coprocessor(const std::filesystem::path& dir, const Decoder<T>& decoder) {
  const auto config_path = dir / "config.json";
  const std::string config_file = config_path.string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    detail::fail<FormatError>(config_file, ": not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("coprocessor"))
    detail::fail<FormatError>(config_file, ": no \"coprocessor\" object; this is not a coprocessor directory "
                                           "(a decoder's? save_coprocessor writes one)");
  const CoprocessorConfig config = coprocessor_config_from_json(j.at("coprocessor"), config_file);
  j.erase("coprocessor");
  detail::check_same_decoder(hf_config_from_json(j, config_file), decoder.config(), config_file);

  Coprocessor<T, dynamic_latents> coprocessor(decoder, config);
  const auto weights_path = dir / "model.safetensors";
  const std::string weights_file = weights_path.string();
  const SafeTensors file = SafeTensors::read(weights_path);
  const std::vector<Parameter<T>*> parameters = detail::stored_parameters(coprocessor);
  std::vector<std::string> missing, misshaped, extra;
  std::map<std::string, Parameter<T>*> expected;
  for (Parameter<T>* p : parameters) {
    expected.emplace(p->name(), p);
    if (!file.contains(p->name())) {
      missing.push_back(detail::concat("'", p->name(), "' ", p->shape()));
      continue;
    }
    const TensorEntry& e = file.entry(p->name());
    const bool fits = e.shape.size() == static_cast<std::size_t>(p->shape().rank()) &&
                      std::equal(e.shape.begin(), e.shape.end(), p->shape().extents().begin());
    if (!fits)
      misshaped.push_back(detail::concat("'", p->name(), "' is ", nlohmann::json(e.shape).dump(), " but the configuration needs ",
                                         p->shape()));
  }
  for (const std::string& name : file.names())
    if (!expected.contains(name)) extra.push_back(detail::concat("'", name, "'"));
  if (!missing.empty() || !misshaped.empty() || !extra.empty()) {
    std::string problems;
    if (!missing.empty()) problems += detail::concat("missing ", detail::list_for_message(missing));
    if (!misshaped.empty()) problems += detail::concat(problems.empty() ? "" : "; ", "misshaped ", detail::list_for_message(misshaped));
    if (!extra.empty())
      problems += detail::concat(problems.empty() ? "" : "; ", "unexpected ", detail::list_for_message(extra));
    detail::fail<FormatError>(weights_file, ": the tensors do not match the coprocessor that ", config_file,
                              " describes: ", problems);
  }
  std::vector<Tensor<T>> values;
  values.reserve(parameters.size());
  for (Parameter<T>* p : parameters) values.push_back(file.template tensor<T>(p->name()));
  for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i]->value() = std::move(values[i]);
  return coprocessor;
}

}  // namespace dca
