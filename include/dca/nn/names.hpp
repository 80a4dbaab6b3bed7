// dca/nn/names.hpp — the architectures the library builds and their Hugging Face names, in one
// table: config.json's model type and class, and the name of every parameter. The layers read
// their names from here, so a new architecture costs a row of this table and a preset in
// nn/config.hpp.
//
//   const dca::HfNames& names = dca::hf_names(dca::Architecture::llama);
//   names.token_embedding;   // "model.embed_tokens.weight"
#pragma once

#include "dca/core/error.hpp"

#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>

namespace dca {

/// The model families a DecoderConfig can describe: their parameter names and weight layouts.
enum class Architecture { gpt2, llama, qwen2, gemma2 };

/// How a layer's linear weights are stored: PyTorch's nn.Linear [out, in], or GPT-2's Conv1D
/// [in, out]. Only matters for Hugging Face names and shapes; the math is the same.
enum class WeightLayout { out_in, in_out };

/// One architecture's Hugging Face names. Prefixes compose: block l's attention query projection
/// is `layers` + "." + l + "." + `attention` + "." + `query` + ".weight". Null means the
/// architecture has no such parameter.
struct HfNames {
  Architecture architecture;
  const char* model_type;           // config.json "model_type"
  const char* model_class;          // config.json "architectures"
  const char* token_embedding;      // [V, d]
  const char* position_embedding;   // [max_positions, d]; null: rotary positions
  const char* final_norm;
  const char* layers;               // prefix of the blocks
  const char* attention_norm;       // before attention
  const char* mlp_norm;             // before the MLP
  const char* post_attention_norm;  // after attention, before the residual add (Gemma-2)
  const char* post_mlp_norm;        // after the MLP, before the residual add (Gemma-2)
  const char* attention;
  const char* fused_qkv;            // one [d, 3d] projection whose column blocks are q | k | v (GPT-2)
  const char* query;                // separate projections, when fused_qkv is null
  const char* key;
  const char* value;
  const char* attention_output;
  const char* mlp;
  const char* mlp_gate;             // null: a plain act(x·W1)·W2 MLP
  const char* mlp_up;
  const char* mlp_down;
  const char* head;                 // the untied output head [V, d]
  WeightLayout layout;
  const char* gelu_tanh;            // config.json's name of the tanh-approximated GELU
  bool pads_embedding;              // transformers builds the token embedding as nn.Embedding(V, d,
                                    // padding_idx=pad_token_id): lookups of the pad row add no gradient
};

namespace detail {

// Gemma-2 names the norm after attention "post_attention_layernorm", the name Llama gives the norm
// before the MLP; its norm before the MLP is "pre_feedforward_layernorm". GPT2Model's wte has no
// padding_idx; LlamaModel, Qwen2Model and Gemma2Model pass config.pad_token_id.
inline constexpr HfNames hf_names_table[] = {
    {Architecture::gpt2, "gpt2", "GPT2LMHeadModel", "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f",
     "transformer.h", "ln_1", "ln_2", nullptr, nullptr, "attn", "c_attn", nullptr, nullptr, nullptr, "c_proj", "mlp",
     nullptr, "c_fc", "c_proj", "lm_head.weight", WeightLayout::in_out, "gelu_new", false},
    {Architecture::llama, "llama", "LlamaForCausalLM", "model.embed_tokens.weight", nullptr, "model.norm", "model.layers",
     "input_layernorm", "post_attention_layernorm", nullptr, nullptr, "self_attn", nullptr, "q_proj", "k_proj", "v_proj",
     "o_proj", "mlp", "gate_proj", "up_proj", "down_proj", "lm_head.weight", WeightLayout::out_in, "gelu_pytorch_tanh", true},
    {Architecture::qwen2, "qwen2", "Qwen2ForCausalLM", "model.embed_tokens.weight", nullptr, "model.norm", "model.layers",
     "input_layernorm", "post_attention_layernorm", nullptr, nullptr, "self_attn", nullptr, "q_proj", "k_proj", "v_proj",
     "o_proj", "mlp", "gate_proj", "up_proj", "down_proj", "lm_head.weight", WeightLayout::out_in, "gelu_pytorch_tanh", true},
    {Architecture::gemma2, "gemma2", "Gemma2ForCausalLM", "model.embed_tokens.weight", nullptr, "model.norm",
     "model.layers", "input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
     "post_feedforward_layernorm", "self_attn", nullptr, "q_proj", "k_proj", "v_proj", "o_proj", "mlp", "gate_proj",
     "up_proj", "down_proj", "lm_head.weight", WeightLayout::out_in, "gelu_pytorch_tanh", true},
};

}  // namespace detail

/// Every architecture's names, in the order of the enum.
inline std::span<const HfNames> all_hf_names() { return detail::hf_names_table; }

/// The names of `architecture`; RangeError for a value outside the enum.
inline const HfNames& hf_names(Architecture architecture) {
  for (const HfNames& names : detail::hf_names_table)
    if (names.architecture == architecture) return names;
  detail::fail<RangeError>("hf_names: architecture ", static_cast<int>(architecture), " is not one of gpt2, llama, qwen2, gemma2");
}

/// The architecture whose config.json "model_type" is `model_type`, if the library builds it.
inline std::optional<Architecture> architecture_of_model_type(std::string_view model_type) {
  for (const HfNames& names : detail::hf_names_table)
    if (model_type == names.model_type) return names.architecture;
  return std::nullopt;
}

/// "gpt2", "llama", "qwen2" or "gemma2": the architecture's Hugging Face model type.
inline std::string_view to_string(Architecture architecture) { return hf_names(architecture).model_type; }

inline std::ostream& operator<<(std::ostream& out, Architecture architecture) { return out << to_string(architecture); }

/// `prefix` + "." + `name`: one step down a Hugging Face parameter path.
inline std::string hf_child(const std::string& prefix, const char* name) { return prefix + "." + name; }

}  // namespace dca
