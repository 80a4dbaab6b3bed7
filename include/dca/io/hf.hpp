// dca/io/hf.hpp — Hugging Face model directories in and out: config.json plus the weights, as one
// model.safetensors or, above a size limit, as shards listed by model.safetensors.index.json.
//
// `load_hf_decoder<T>(dir)` reads a GPT-2, Llama, Qwen2 or Gemma-2 checkpoint into the matching
// preset; `save_hf_decoder(decoder, dir)` writes one that transformers can load back, sharded as
// transformers' save_pretrained shards, in the dtype the model was loaded in (or one asked for).
//
// Loading is all-or-nothing and holds one copy of the model. Every file is memory-mapped and its
// header validated, every parameter's presence, dtype and shape is checked, and every value is
// checked to be finite (a model saved from a diverged run is refused here, naming the tensor,
// rather than at the first training step), before the first value is converted; then each tensor is converted straight from the mapped file into its
// parameter, a few megabytes at a time, with the converted pages handed back to the OS. Converting
// validated data cannot fail, so a failure leaves the decoder unchanged, and the peak memory is the
// decoder's own size plus a few megabytes (measured in docs/io.md). config.json alone:
// dca/io/hf_config.hpp.
#pragma once

#include "dca/io/atomic_file.hpp"
#include "dca/io/hf_config.hpp"
#include "dca/io/safetensors.hpp"
#include "dca/io/sharded_safetensors.hpp"
#include "dca/nn/decoder.hpp"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace dca {

/// The weights file of an unsharded model directory.
inline constexpr std::string_view hf_weights_file = "model.safetensors";
/// The index of a sharded model directory; its shards are model-NNNNN-of-NNNNN.safetensors.
inline constexpr std::string_view hf_weights_index_file = "model.safetensors.index.json";

/// How save_hf_decoder stores the weights.
struct HfSaveOptions {
  /// F32, F64, BF16 or F16; nullopt: the decoder's config().storage_dtype, which is the dtype its
  /// checkpoint was loaded in (a BF16 checkpoint saves as BF16) and F32 for a model made in dca.
  std::optional<DType> dtype = std::nullopt;
  /// Bytes of tensor data per shard; above it the weights are split into shards plus an index.
  /// transformers 5's default, "50GB" (= 50·10⁹ bytes, as transformers counts); "5GB" is 5'000'000'000.
  std::uint64_t max_shard_size = 50'000'000'000;
};

namespace detail {

// "float" or "double", for messages about converting to T.
template <Scalar T>
constexpr const char* scalar_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// "[a,b,c]" for extents of any rank (a Shape cannot hold more than Shape::max_rank).
inline std::string extents_text(std::span<const index_t> extents) {
  std::string text = "[";
  for (std::size_t i = 0; i < extents.size(); ++i) text += (i ? "," : "") + std::to_string(extents[i]);
  return text + "]";
}

// How messages name the file holding tensor `name`: the checkpoint's name for a single file, the
// shard's for a sharded one.
inline const std::string& file_holding(const ShardedSafeTensors& weights, std::string_view name) {
  return weights.shards().size() == 1 ? weights.source() : weights.shard_of(name).source();
}

// Deletes `path` if it exists; IoError naming it if that fails.
inline void remove_stale_file(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::remove(path, error);
  if (error) fail<IoError>("cannot remove the stale file ", path, ": ", error.message());
}

// Deletes model-NNNNN-of-NNNNN.safetensors files in `directory` that are not in `keep`, as
// transformers' save_pretrained does, so a smaller save does not leave shards of a larger one.
inline void remove_stale_shards(const std::filesystem::path& directory, const std::set<std::string>& keep) {
  std::error_code error, unknown;  // a file whose type cannot be read is not deleted
  std::vector<std::filesystem::path> stale;
  for (const auto& item : std::filesystem::directory_iterator(directory, error)) {
    const std::string name = item.path().filename().string();
    if (is_shard_file_name(name, "model") && !keep.contains(name) && item.is_regular_file(unknown)) stale.push_back(item.path());
  }
  if (error) fail<IoError>("cannot list ", directory, ": ", error.message());
  for (const auto& path : stale) remove_stale_file(path);
}

}  // namespace detail

/// The weights of a model directory: model.safetensors if it exists (transformers prefers it too),
/// otherwise model.safetensors.index.json and the shards it lists (ShardedSafeTensors::read_index,
/// with its checks). IoError naming both files if neither exists.
inline ShardedSafeTensors open_hf_weights(const std::filesystem::path& directory) {
  const auto file = directory / hf_weights_file;
  const auto index = directory / hf_weights_index_file;
  std::error_code error;
  if (std::filesystem::is_regular_file(file, error)) return ShardedSafeTensors::single(SafeTensors::read(file), file.string());
  if (std::filesystem::is_regular_file(index, error)) return ShardedSafeTensors::read_index(index);
  detail::fail<IoError>("cannot load weights from ", directory, ": it holds neither ", hf_weights_file, " nor ",
                        hf_weights_index_file);
}

/// The dtype a checkpoint's weights are stored in: the one all its floating-point tensors share,
/// or `fallback` (config.json's "dtype") when they differ or there are none.
inline DType stored_dtype(const ShardedSafeTensors& weights, DType fallback) {
  std::optional<DType> shared;
  for (const SafeTensors& shard : weights.shards())
    for (const TensorEntry& e : shard.entries()) {
      if (!is_floating_point(e.dtype)) continue;
      if (shared && *shared != e.dtype) return fallback;
      shared = e.dtype;
    }
  return shared.value_or(fallback);
}

/// Converts every tensor of a checkpoint into the decoder's parameters. Checks everything first —
/// each parameter present, floating-point, with its exact shape; no unknown tensors except a stored
/// copy of a tied head; every value finite as T — then converts each tensor straight into its
/// parameter, so a failure (FormatError naming the file, the tensor and the shapes, or the first
/// NaN or infinite element) leaves the decoder unchanged.
///
/// The finite check reads the mapped data once more, through a small buffer, before the conversion
/// reads it again: checking while converting would need no second read but would leave a decoder
/// half overwritten when the bad tensor comes late, and checking a converted copy would double the
/// memory. The price is one more pass over the mapped file, with no more memory than the
/// conversion holds (its pages are handed back as it goes): +0.3–0.45 s on docs/io.md's 1 GB model.
template <Scalar T>
void load_hf_weights(Decoder<T>& decoder, const ShardedSafeTensors& weights) {
  std::set<std::string, std::less<>> expected;
  for (Parameter<T>* p : decoder.parameters()) {
    expected.insert(p->name());
    if (!weights.contains(p->name()))
      detail::fail<FormatError>(weights.source(), ": tensor '", p->name(), "' ", p->shape(), " is missing");
    const TensorEntry& e = weights.entry(p->name());
    const std::string& file = detail::file_holding(weights, p->name());
    if (!is_floating_point(e.dtype))
      detail::fail<FormatError>(file, ": tensor '", p->name(), "' holds ", e.dtype, " integers, not weights");
    if (!std::ranges::equal(e.shape, p->shape().extents()))
      detail::fail<FormatError>(file, ": tensor '", p->name(), "' is ", detail::extents_text(e.shape),
                                " but the model expects ", p->shape());
  }
  const DecoderConfig& config = decoder.config();
  for (const std::string& name : weights.names())
    if (!expected.contains(name) && !(name == hf_names(config.architecture).head && config.tie_embeddings))
      detail::fail<FormatError>(detail::file_holding(weights, name), ": unexpected tensor '", name,
                                "' (not a parameter of this ", config.architecture, " model)");
  for (const Parameter<T>* p : decoder.parameters())
    if (const std::optional<NonFiniteElement> bad = weights.template first_non_finite<T>(p->name())) {
      const double value = static_cast<double>(static_cast<T>(bad->stored));
      detail::fail<FormatError>(detail::file_holding(weights, p->name()), ": tensor '", p->name(), "' holds ",
                                detail::shown(bad->stored), " at element ", bad->index,
                                std::isfinite(bad->stored) ? detail::concat(", which is ", value, " as ", detail::scalar_name<T>()) : "",
                                "; a model with non-finite weights cannot be used (was it saved from a run that diverged?)");
    }
  for (Parameter<T>* p : decoder.parameters()) weights.read_into(p->name(), p->value().view());
}

/// As above for one safetensors file; `file_name` names it in messages.
template <Scalar T>
void load_hf_weights(Decoder<T>& decoder, const SafeTensors& file, const std::string& file_name) {
  load_hf_weights(decoder, ShardedSafeTensors::single(file, file_name));
}

/// Loads a Hugging Face model directory: config.json, then model.safetensors or the shards of
/// model.safetensors.index.json (open_hf_weights). The decoder's config().storage_dtype records the
/// dtype the weights were stored in (stored_dtype, falling back to config.json's "dtype"), which is
/// what save_hf_decoder writes by default; the values themselves are converted to T.
template <Scalar T>
Decoder<T> load_hf_decoder(const std::filesystem::path& directory) {
  DecoderConfig config = read_hf_config(directory / "config.json");
  const ShardedSafeTensors weights = open_hf_weights(directory);
  config.storage_dtype = stored_dtype(weights, config.storage_dtype);
  Decoder<T> decoder(std::move(config), uninitialized_weights);
  load_hf_weights(decoder, weights);
  return decoder;
}

/// Writes config.json and the weights so that transformers' AutoModelForCausalLM.from_pretrained
/// (directory) loads the same model: as model.safetensors when the tensor data fits
/// `options.max_shard_size`, otherwise as model-00001-of-0000N.safetensors ... plus
/// model.safetensors.index.json, split as transformers splits (plan_shards). Tensors are stored in
/// `options.dtype` or else the decoder's storage dtype (rounding to nearest-even when that narrows),
/// config.json's "dtype" says which, every file carries transformers' {"format": "pt"} metadata, and
/// a tied head is stored once.
///
/// Every file is written atomically, shards first and the index last; files of an earlier save that
/// no longer belong (model.safetensors or the index, shards beyond the new count) are deleted after
/// the new checkpoint is complete. A crash in between leaves a checkpoint that loads, except that a
/// sharded save over a sharded checkpoint with the same shard names may leave old and new shards
/// mixed. UsageError for an integer dtype; IoError if a file cannot be written or removed.
template <Scalar T>
void save_hf_decoder(Decoder<T>& decoder, const std::filesystem::path& directory, const HfSaveOptions& options = {}) {
  DecoderConfig config = decoder.config();
  const DType dtype = options.dtype.value_or(config.storage_dtype);
  if (!is_floating_point(dtype))
    detail::fail<UsageError>("save_hf_decoder: weights cannot be stored as ", dtype, " (F32, F64, BF16 or F16)");
  config.storage_dtype = dtype;
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) detail::fail<IoError>("cannot create directory ", directory.string(), ": ", ec.message());

  const std::vector<Parameter<T>*> parameters = decoder.parameters();
  std::vector<std::uint64_t> sizes;
  for (const Parameter<T>* p : parameters) sizes.push_back(static_cast<std::uint64_t>(p->numel()) * dtype_size(dtype));
  const std::vector<std::vector<std::size_t>> shards = plan_shards(sizes, options.max_shard_size);
  // One shard's tensors are encoded at a time, so saving holds the model plus one shard.
  const auto write_shard = [&](const std::vector<std::size_t>& members, const std::filesystem::path& path) {
    SafeTensorsWriter writer;
    writer.set_metadata("format", "pt");
    for (const std::size_t i : members) writer.add(parameters[i]->name(), std::as_const(parameters[i]->value()).view(), dtype);
    writer.write(path);
  };

  if (shards.size() <= 1) {
    write_shard(shards.empty() ? std::vector<std::size_t>{} : shards.front(), directory / hf_weights_file);
    write_text_atomically(directory / "config.json", hf_config_to_json(config).dump(2) + "\n");
    detail::remove_stale_file(directory / hf_weights_index_file);
    detail::remove_stale_shards(directory, {});
    return;
  }
  ShardIndex index;
  index.total_size = 0;
  for (const std::uint64_t size : sizes) *index.total_size += size;
  index.total_parameters = static_cast<std::uint64_t>(decoder.parameter_count());
  std::set<std::string> written;
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shard_file_name("model", s + 1, shards.size());
    write_shard(shards[s], directory / name);
    for (const std::size_t i : shards[s]) index.weight_map.emplace(parameters[i]->name(), name);
    written.insert(name);
  }
  write_text_atomically(directory / "config.json", hf_config_to_json(config).dump(2) + "\n");
  write_text_atomically(directory / hf_weights_index_file, shard_index_to_json(index));
  detail::remove_stale_file(directory / hf_weights_file);
  detail::remove_stale_shards(directory, written);
}

}  // namespace dca
