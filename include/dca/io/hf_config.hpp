// dca/io/hf_config.hpp — Hugging Face config.json in and out: the fields that describe a
// DecoderConfig, for GPT-2, Llama, Qwen2 and Gemma-2. `read_hf_config(path)` reads one into the
// matching preset; `hf_config_to_json(config)` writes what transformers reads back. Errors name the
// file and the field. Weights: dca/io/hf.hpp.
#pragma once

#include "dca/io/atomic_file.hpp"
#include "dca/nn/config.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dca {

namespace detail {

// Reads a required JSON field of the given type, or throws naming the field and the file.
template <class V>
V hf_field(const nlohmann::json& j, const char* field, const std::string& file) {
  if (!j.contains(field) || j.at(field).is_null())
    fail<FormatError>(file, ": required field '", field, "' is missing");
  try {
    return j.at(field).get<V>();
  } catch (const nlohmann::json::exception&) {
    fail<FormatError>(file, ": field '", field, "' has the wrong type (", j.at(field).type_name(), ")");
  }
}

// An optional field: its value, or `fallback` when absent or null.
template <class V>
V hf_optional(const nlohmann::json& j, const char* field, V fallback, const std::string& file) {
  if (!j.contains(field) || j.at(field).is_null()) return fallback;
  return hf_field<V>(j, field, file);
}

inline Activation hf_activation(const std::string& name, const std::string& file) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::gelu_tanh;
  if (name == "gelu") return Activation::gelu_erf;
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "relu") return Activation::relu;
  fail<FormatError>(file, ": activation '", name, "' is not supported (gelu_new, gelu_pytorch_tanh, gelu, silu, relu)");
}

inline const char* hf_activation_name(Activation a, Architecture architecture) {
  switch (a) {
    case Activation::gelu_tanh: return hf_names(architecture).gelu_tanh;
    case Activation::gelu_erf: return "gelu";
    case Activation::silu: return "silu";
    case Activation::relu: return "relu";
  }
  return "silu";
}

// torch's names for the dtypes a model's weights can be stored in, as config.json spells them.
inline constexpr std::pair<DType, const char*> torch_dtype_names[] = {
    {DType::f32, "float32"}, {DType::f64, "float64"}, {DType::bf16, "bfloat16"}, {DType::f16, "float16"}};

inline const char* torch_dtype_name(DType dtype) {
  for (const auto& [d, name] : torch_dtype_names)
    if (d == dtype) return name;
  fail<RangeError>("dtype ", dtype, " has no torch name for config.json (F32, F64, BF16 or F16)");
}

// The dtype config.json says the weights are stored in: "dtype" (transformers ≥ 4.56) or
// "torch_dtype" (before); float32 when neither is given.
inline DType hf_storage_dtype(const nlohmann::json& j, const std::string& file) {
  const char* field = j.contains("dtype") && !j.at("dtype").is_null() ? "dtype" : "torch_dtype";
  const auto name = hf_optional<std::string>(j, field, "float32", file);
  for (const auto& [dtype, torch_name] : torch_dtype_names)
    if (name == torch_name) return dtype;
  fail<FormatError>(file, ": ", field, " '", name, "' is not supported (float32, float64, bfloat16, float16)");
}

inline double hf_rope_theta(const nlohmann::json& j, const std::string& file) {
  // transformers ≥ 5 nests it in "rope_parameters"; older files have "rope_theta" and "rope_scaling".
  for (const char* nested : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(nested) || j.at(nested).is_null()) continue;
    const auto& r = j.at(nested);
    const std::string type = hf_optional<std::string>(r, "rope_type", hf_optional<std::string>(r, "type", "default", file), file);
    if (type != "default")
      fail<FormatError>(file, ": rope type '", type, "' is not supported (only default rotary embeddings)");
    if (r.contains("rope_theta")) return hf_field<double>(r, "rope_theta", file);
  }
  return hf_optional<double>(j, "rope_theta", 10000.0, file);
}

}  // namespace detail

/// A DecoderConfig from a parsed Hugging Face config.json (`file` names it in errors).
inline DecoderConfig hf_config_from_json(const nlohmann::json& j, const std::string& file = "config.json") {
  using detail::hf_field;
  using detail::hf_optional;
  if (!j.is_object()) detail::fail<FormatError>(file, ": not a JSON object");
  const auto model_type = hf_field<std::string>(j, "model_type", file);
  const std::optional<Architecture> architecture = architecture_of_model_type(model_type);
  if (!architecture)
    detail::fail<FormatError>(file, ": model_type '", model_type, "' is not supported (gpt2, llama, qwen2, gemma2)");
  DecoderConfig c;
  if (*architecture == Architecture::gpt2) {
    const auto d = hf_field<index_t>(j, "n_embd", file);
    c = DecoderConfig::gpt2({.vocab = hf_field<index_t>(j, "vocab_size", file),
                             .dim = d,
                             .layers = hf_field<index_t>(j, "n_layer", file),
                             .heads = hf_field<index_t>(j, "n_head", file),
                             .max_positions = hf_field<index_t>(j, "n_positions", file)});
    c.intermediate_size = hf_optional<index_t>(j, "n_inner", 4 * d, file);
    c.norm_eps = hf_optional<double>(j, "layer_norm_epsilon", 1e-5, file);
    c.activation = detail::hf_activation(hf_optional<std::string>(j, "activation_function", "gelu_new", file), file);
    c.tie_embeddings = hf_optional<bool>(j, "tie_word_embeddings", true, file);
    if (!hf_optional<bool>(j, "scale_attn_weights", true, file) || hf_optional<bool>(j, "scale_attn_by_inverse_layer_idx", false, file) ||
        hf_optional<bool>(j, "reorder_and_upcast_attn", false, file))
      detail::fail<FormatError>(file, ": GPT-2 attention-scaling variants are not supported");
  } else {
    const auto heads = hf_field<index_t>(j, "num_attention_heads", file);
    c.architecture = *architecture;
    c.vocab_size = hf_field<index_t>(j, "vocab_size", file);
    c.hidden_size = hf_field<index_t>(j, "hidden_size", file);
    c.n_layers = hf_field<index_t>(j, "num_hidden_layers", file);
    c.n_heads = heads;
    c.n_kv_heads = hf_optional<index_t>(j, "num_key_value_heads", heads, file);
    c.head_dim = hf_optional<index_t>(j, "head_dim", 0, file);
    c.intermediate_size = hf_field<index_t>(j, "intermediate_size", file);
    c.max_positions = hf_optional<index_t>(j, "max_position_embeddings", 2048, file);
    c.norm_eps = hf_optional<double>(j, "rms_norm_eps", 1e-6, file);
    c.positions = PositionKind::rotary;
    c.rope_theta = detail::hf_rope_theta(j, file);
    c.gated_mlp = true;
    c.mlp_bias = hf_optional<bool>(j, "mlp_bias", false, file);
    if (*architecture == Architecture::gemma2) {
      c.norm = NormKind::rms_norm_one_plus;
      c.activation = detail::hf_activation(
          hf_optional<std::string>(j, "hidden_activation", hf_optional<std::string>(j, "hidden_act", "gelu_pytorch_tanh", file), file), file);
      c.query_scale = 1.0 / std::sqrt(hf_field<double>(j, "query_pre_attn_scalar", file));
      c.attention_softcap = hf_optional<double>(j, "attn_logit_softcapping", 0.0, file);
      c.final_softcap = hf_optional<double>(j, "final_logit_softcapping", 0.0, file);
      c.sliding_window = hf_optional<index_t>(j, "sliding_window", 0, file);
      c.sliding_layers.assign(static_cast<std::size_t>(c.n_layers), false);
      if (j.contains("layer_types") && !j.at("layer_types").is_null()) {
        const auto types = hf_field<std::vector<std::string>>(j, "layer_types", file);
        if (static_cast<index_t>(types.size()) != c.n_layers)
          detail::fail<FormatError>(file, ": layer_types has ", types.size(), " entries for ", c.n_layers, " layers");
        for (std::size_t l = 0; l < types.size(); ++l) c.sliding_layers[l] = types[l] == "sliding_attention";
      } else {
        for (index_t l = 0; l < c.n_layers; l += 2) c.sliding_layers[static_cast<std::size_t>(l)] = true;
      }
      c.post_norms = true;
      c.scale_embeddings = true;
      c.qkv_bias = c.out_bias = hf_optional<bool>(j, "attention_bias", false, file);
      c.tie_embeddings = hf_optional<bool>(j, "tie_word_embeddings", true, file);
    } else {
      c.norm = NormKind::rms_norm;
      c.activation = detail::hf_activation(hf_optional<std::string>(j, "hidden_act", "silu", file), file);
      if (*architecture == Architecture::qwen2) {
        c.qkv_bias = true;
        if (hf_optional<bool>(j, "use_sliding_window", false, file))
          detail::fail<FormatError>(file, ": Qwen2 sliding-window attention is not supported");
      } else {
        c.qkv_bias = c.out_bias = hf_optional<bool>(j, "attention_bias", false, file);
      }
      c.tie_embeddings = hf_optional<bool>(j, "tie_word_embeddings", false, file);
    }
  }
  // Every architecture's config.json may carry one; whether lookups of it add gradient is the
  // architecture's (DecoderConfig::padding_row).
  if (j.contains("pad_token_id") && !j.at("pad_token_id").is_null())
    c.pad_token_id = hf_field<index_t>(j, "pad_token_id", file);
  c.storage_dtype = detail::hf_storage_dtype(j, file);
  try {
    c.validate();
  } catch (const std::exception& e) {
    detail::fail<FormatError>(file, ": inconsistent configuration: ", e.what());
  }
  return c;
}

/// Reads and converts `path` (a config.json).
inline DecoderConfig read_hf_config(const std::filesystem::path& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    detail::fail<FormatError>(path.string(), ": not valid JSON: ", e.what());
  }
  return hf_config_from_json(j, path.string());
}

/// The Hugging Face config.json fields that describe `config`.
inline nlohmann::json hf_config_to_json(const DecoderConfig& c) {
  nlohmann::json j;
  j["dtype"] = detail::torch_dtype_name(c.storage_dtype);
  j["vocab_size"] = c.vocab_size;
  j["tie_word_embeddings"] = c.tie_embeddings;
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;  // absent: transformers' default, none
  const HfNames& names = hf_names(c.architecture);
  j["architectures"] = {names.model_class};
  j["model_type"] = names.model_type;
  if (c.architecture == Architecture::gpt2) {
    j["n_embd"] = c.hidden_size;
    j["n_layer"] = c.n_layers;
    j["n_head"] = c.n_heads;
    j["n_positions"] = c.max_positions;
    j["n_inner"] = c.intermediate_size;
    j["layer_norm_epsilon"] = c.norm_eps;
    j["activation_function"] = detail::hf_activation_name(c.activation, c.architecture);
    return j;
  }
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.resolved_head_dim();
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_positions;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};
  j["mlp_bias"] = c.mlp_bias;
  if (c.architecture == Architecture::gemma2) {
    j["hidden_activation"] = detail::hf_activation_name(c.activation, c.architecture);
    j["query_pre_attn_scalar"] = std::lround(1.0 / (c.query_scale * c.query_scale));
    j["attn_logit_softcapping"] = c.attention_softcap > 0 ? nlohmann::json(c.attention_softcap) : nlohmann::json(nullptr);
    j["final_logit_softcapping"] = c.final_softcap > 0 ? nlohmann::json(c.final_softcap) : nlohmann::json(nullptr);
    j["sliding_window"] = c.sliding_window;
    std::vector<std::string> types;
    for (index_t l = 0; l < c.n_layers; ++l) types.push_back(c.layer_uses_window(l) ? "sliding_attention" : "full_attention");
    j["layer_types"] = types;
    j["attention_bias"] = c.qkv_bias;
  } else {
    j["hidden_act"] = detail::hf_activation_name(c.activation, c.architecture);
    if (c.architecture == Architecture::llama) j["attention_bias"] = c.qkv_bias;
  }
  return j;
}

}  // namespace dca
