// dca/nn/config.hpp — the decoder configuration: one plain aggregate with commented defaults,
// named presets for the architectures the library reproduces (GPT-2, Llama, Gemma-2, Qwen2), and
// one validation pass whose messages say what is wrong.
//
// The architecture choices (norm, activation, MLP shape, positions, Gemma-2's extra norms) are
// run-time policies, not template parameters: a config.json read at run time picks them, and a
// branch per layer costs nothing next to the layer's GEMMs, while compile-time policies would
// multiply instantiations (and compile time) by every combination a loader must support.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/dtype.hpp"
#include "dca/core/error.hpp"
#include "dca/nn/names.hpp"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace dca {

/// Which normalisation a model uses.
enum class NormKind {
  layer_norm,         // (x − mean)/σ·w + b (GPT-2)
  rms_norm,           // x/rms·w (Llama, Qwen2)
  rms_norm_one_plus,  // x/rms·(1 + w) (Gemma-2: weights stored as offsets from one)
};

/// The MLP's nonlinearity.
enum class Activation {
  gelu_tanh,  // GPT-2 "gelu_new", Gemma-2 "gelu_pytorch_tanh"
  gelu_erf,   // exact GELU
  silu,       // Llama, Qwen2
  relu,
};

/// How token positions enter the model.
enum class PositionKind {
  learned,  // a [max_positions, d] table added to the token embeddings (GPT-2)
  rotary,   // rotary embeddings applied to queries and keys (Llama, Gemma-2, Qwen2)
};

/// The sizes a preset takes, by name: `DecoderConfig::llama({.vocab = 256, .dim = 128, .layers = 4})`.
/// Each preset sets the rest of the architecture itself.
struct ModelSize {
  index_t vocab = 256;  // tokens (256: byte level)
  index_t dim = 128;    // d, the residual stream width
  index_t layers = 4;
  index_t heads = 4;             // query heads
  index_t kv_heads = 0;          // key/value heads (GQA; 1 = MQA); 0: as many as query heads
  index_t head_dim = 0;          // 0: dim / heads (Gemma-2 may differ)
  index_t mlp = 0;               // MLP width; 0: 4·dim
  index_t max_positions = 1024;  // learned positions: table rows; rotary: largest position accepted
  index_t window = 0;            // Gemma-2: the sliding window of its even layers; 0: none
};

struct DecoderConfig {
  Architecture architecture = Architecture::llama;  // parameter names and weight layout (nn/names.hpp)
  index_t vocab_size = 256;            // tokens (256: byte level)
  index_t hidden_size = 128;           // d, the residual stream width
  index_t n_layers = 4;
  index_t n_heads = 4;                 // query heads
  index_t n_kv_heads = 4;              // key/value heads; divides n_heads (GQA; 1 = MQA)
  index_t head_dim = 0;                // 0: hidden_size / n_heads (Gemma-2 may differ)
  index_t intermediate_size = 512;     // MLP width
  index_t max_positions = 1024;        // learned positions: table rows; rotary: largest position accepted
  NormKind norm = NormKind::rms_norm;
  double norm_eps = 1e-6;
  Activation activation = Activation::silu;
  bool gated_mlp = true;               // act(x·Wg)⊙(x·Wu)·Wd (SwiGLU/GeGLU) instead of act(x·W1)·W2
  PositionKind positions = PositionKind::rotary;
  double rope_theta = 10000.0;
  bool rope_float32_angles = false;    // compute rotary angles in float, as Hugging Face does (for parity)
  bool qkv_bias = false;               // biases on the query/key/value projections (GPT-2, Qwen2)
  bool out_bias = false;               // bias on the attention output projection (GPT-2)
  bool mlp_bias = false;               // biases in the MLP (GPT-2)
  double query_scale = 0;              // attention scale; 0: 1/sqrt(head_dim) (Gemma-2: 1/sqrt(query_pre_attn_scalar))
  double attention_softcap = 0;        // 0: off; Gemma-2: scores -> c·tanh(scores/c)
  double final_softcap = 0;            // 0: off; Gemma-2: logits -> c·tanh(logits/c)
  index_t sliding_window = 0;          // 0: off; else the window of the layers marked in sliding_layers
  std::vector<bool> sliding_layers;    // per layer: uses the sliding window (empty: none)
  bool post_norms = false;             // Gemma-2: norms after attention and after the MLP, before the residual add
  bool tie_embeddings = true;          // the output head reuses the token embedding matrix
  bool scale_embeddings = false;       // Gemma-2: token embeddings multiplied by sqrt(hidden_size)
  std::optional<index_t> pad_token_id; // config.json's pad_token_id (none by default). Where the
                                       // architecture's transformers class pads its embedding (Llama,
                                       // Qwen2, Gemma-2; not GPT-2), lookups of that row add no gradient
                                       // and init() zeroes it; see padding_row()
  double init_std = 0.02;              // normal init of weights and embeddings; residual outputs / sqrt(2·n_layers)
  DType storage_dtype = DType::f32;    // how save_hf_decoder stores the weights (F32, F64, BF16, F16); loading records the checkpoint's

  index_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / n_heads; }
  /// The token-embedding row whose lookups add no gradient: pad_token_id for architectures whose
  /// transformers class builds nn.Embedding(V, d, padding_idx=pad_token_id), counted from the end
  /// when negative as nn.Embedding does; none for GPT-2 (its wte has no padding_idx, whatever the
  /// config says) or when no pad token is set.
  std::optional<index_t> padding_row() const {
    if (!pad_token_id || !hf_names(architecture).pads_embedding) return std::nullopt;
    return *pad_token_id < 0 ? *pad_token_id + vocab_size : *pad_token_id;
  }
  bool layer_uses_window(index_t layer) const {
    return sliding_window > 0 && layer < static_cast<index_t>(sliding_layers.size()) &&
           sliding_layers[static_cast<std::size_t>(layer)];
  }

  /// Throws ShapeError/RangeError naming the first field that is wrong and why.
  void validate() const {
    auto positive = [](const char* field, index_t value) {
      if (value < 1) detail::fail<RangeError>("DecoderConfig: ", field, " must be ≥ 1, got ", value);
    };
    const HfNames& names = hf_names(architecture);
    positive("vocab_size", vocab_size);
    positive("hidden_size", hidden_size);
    positive("n_layers", n_layers);
    positive("n_heads", n_heads);
    positive("n_kv_heads", n_kv_heads);
    positive("intermediate_size", intermediate_size);
    positive("max_positions", max_positions);
    if (head_dim < 0) detail::fail<RangeError>("DecoderConfig: head_dim must be ≥ 0 (0: hidden_size / n_heads), got ", head_dim);
    if (head_dim == 0 && hidden_size % n_heads != 0)
      detail::fail<ShapeError>("DecoderConfig: hidden_size ", hidden_size, " is not divisible by n_heads ", n_heads,
                               "; set head_dim explicitly");
    if (n_heads % n_kv_heads != 0)
      detail::fail<ShapeError>("DecoderConfig: n_kv_heads ", n_kv_heads, " must divide n_heads ", n_heads);
    if (positions == PositionKind::rotary && resolved_head_dim() % 2 != 0)
      detail::fail<ShapeError>("DecoderConfig: rotary positions need an even head_dim, got ", resolved_head_dim());
    if (!(norm_eps >= 0) || !std::isfinite(norm_eps))
      detail::fail<RangeError>("DecoderConfig: norm_eps must be finite and ≥ 0, got ", norm_eps);
    if (!(rope_theta > 0) || !std::isfinite(rope_theta))
      detail::fail<RangeError>("DecoderConfig: rope_theta must be finite and > 0, got ", rope_theta);
    for (const auto& [field, value] : {std::pair{"query_scale", query_scale}, std::pair{"attention_softcap", attention_softcap},
                                       std::pair{"final_softcap", final_softcap}, std::pair{"init_std", init_std}})
      if (!(value >= 0) || !std::isfinite(value))
        detail::fail<RangeError>("DecoderConfig: ", field, " must be finite and ≥ 0, got ", value);
    if (sliding_window < 0) detail::fail<RangeError>("DecoderConfig: sliding_window must be ≥ 0, got ", sliding_window);
    if (!is_floating_point(storage_dtype))
      detail::fail<RangeError>("DecoderConfig: storage_dtype must be F32, F64, BF16 or F16, got ", storage_dtype);
    if (!sliding_layers.empty() && static_cast<index_t>(sliding_layers.size()) != n_layers)
      detail::fail<ShapeError>("DecoderConfig: sliding_layers has ", sliding_layers.size(), " entries for ", n_layers,
                               " layers");
    // What the architecture's parameter names can hold (nn/names.hpp).
    if ((names.position_embedding != nullptr) != (positions == PositionKind::learned))
      detail::fail<RangeError>("DecoderConfig: architecture ", architecture, " uses ",
                               names.position_embedding != nullptr ? "learned" : "rotary", " positions");
    if (gated_mlp && names.mlp_gate == nullptr)
      detail::fail<RangeError>("DecoderConfig: architecture ", architecture, " has a plain MLP, not a gated one");
    if (post_norms && names.post_attention_norm == nullptr)
      detail::fail<RangeError>("DecoderConfig: architecture ", architecture,
                               " has no norms after attention and MLP (post_norms is Gemma-2's)");
    // nn.Embedding's own check: transformers cannot build such a model either.
    if (pad_token_id && names.pads_embedding && (*pad_token_id < -vocab_size || *pad_token_id >= vocab_size))
      detail::fail<RangeError>("DecoderConfig: pad_token_id ", *pad_token_id, " is outside the vocabulary [",
                               -vocab_size, ",", vocab_size, ") of this ", architecture, " model, whose token embedding pads it");
    if (architecture == Architecture::gpt2 && norm != NormKind::layer_norm)
      detail::fail<RangeError>("DecoderConfig: architecture gpt2 normalises with layer_norm (weight and bias)");
  }

  // ---- presets ----------------------------------------------------------------------------------

  /// GPT-2: learned positions, pre-LayerNorm, tanh-GELU MLP, biases everywhere, tied head.
  static DecoderConfig gpt2(const ModelSize& size) {
    DecoderConfig c = sized(Architecture::gpt2, size);
    c.norm = NormKind::layer_norm;
    c.norm_eps = 1e-5;
    c.activation = Activation::gelu_tanh;
    c.gated_mlp = false;
    c.positions = PositionKind::learned;
    c.qkv_bias = c.out_bias = c.mlp_bias = true;
    c.tie_embeddings = true;
    return c;
  }

  /// Llama: RMSNorm, rotary positions, SwiGLU, grouped-query attention, untied head.
  static DecoderConfig llama(const ModelSize& size) {
    DecoderConfig c = sized(Architecture::llama, size);
    c.norm = NormKind::rms_norm;
    c.norm_eps = 1e-6;
    c.activation = Activation::silu;
    c.gated_mlp = true;
    c.positions = PositionKind::rotary;
    c.tie_embeddings = false;
    return c;
  }

  /// Qwen2: Llama with biases on the query/key/value projections.
  static DecoderConfig qwen2(const ModelSize& size) {
    DecoderConfig c = llama(size);
    c.architecture = Architecture::qwen2;
    c.qkv_bias = true;
    return c;
  }

  /// Gemma-2 (the paper's decoder family): (1+w) RMSNorm before and after attention and MLP,
  /// GeGLU, √d-scaled embeddings, attention and final logit soft-capping, sliding-window attention
  /// on every other layer (starting with layer 0), tied head.
  static DecoderConfig gemma2(const ModelSize& size) {
    DecoderConfig c = sized(Architecture::gemma2, size);
    c.norm = NormKind::rms_norm_one_plus;
    c.norm_eps = 1e-6;
    c.activation = Activation::gelu_tanh;
    c.gated_mlp = true;
    c.positions = PositionKind::rotary;
    c.query_scale = 1.0 / std::sqrt(static_cast<double>(c.resolved_head_dim()));
    c.attention_softcap = 50.0;
    c.final_softcap = 30.0;
    c.sliding_window = size.window;
    c.sliding_layers.assign(static_cast<std::size_t>(c.n_layers), false);
    for (index_t l = 0; l < c.n_layers; l += 2) c.sliding_layers[static_cast<std::size_t>(l)] = true;
    c.post_norms = true;
    c.tie_embeddings = true;
    c.scale_embeddings = true;
    return c;
  }

  /// The preset of `architecture` at `size` (what a command line's architecture name selects).
  static DecoderConfig preset(Architecture architecture, const ModelSize& size) {
    switch (architecture) {
      case Architecture::gpt2:
        return gpt2(size);
      case Architecture::llama:
        return llama(size);
      case Architecture::qwen2:
        return qwen2(size);
      case Architecture::gemma2:
        return gemma2(size);
    }
    detail::fail<RangeError>("DecoderConfig::preset: architecture ", static_cast<int>(architecture), " has no preset");
  }

  /// The toy decoder the examples pretrain: byte-level Llama-style, d=128, 4 layers, 4 heads.
  static DecoderConfig byte_llama_small() {
    return llama({.vocab = 256, .dim = 128, .layers = 4, .heads = 4, .mlp = 384});
  }

 private:
  // The sizes every preset shares; the architecture's own choices are the preset's.
  static DecoderConfig sized(Architecture architecture, const ModelSize& size) {
    DecoderConfig c;
    c.architecture = architecture;
    c.vocab_size = size.vocab;
    c.hidden_size = size.dim;
    c.n_layers = size.layers;
    c.n_heads = size.heads;
    c.n_kv_heads = size.kv_heads > 0 ? size.kv_heads : size.heads;
    c.head_dim = size.head_dim;
    c.intermediate_size = size.mlp > 0 ? size.mlp : 4 * size.dim;
    c.max_positions = size.max_positions;
    return c;
  }
};

}  // namespace dca
