// dca/io/sharded_safetensors.hpp — a checkpoint split across safetensors shards, as Hugging Face
// stores a model above a size limit:
//   model-00001-of-00003.safetensors, model-00002-of-00003.safetensors, model-00003-of-00003.safetensors
//   model.safetensors.index.json = {"metadata": {"total_size": <bytes>, ...},
//                                   "weight_map": {"<tensor name>": "<shard file>", ...}}
// `ShardedSafeTensors` reads the index and maps every shard, then checks that the two agree
// exactly — every listed tensor is in the shard the index names, no shard holds a tensor the index
// does not list, no tensor is in two shards — so a loader sees one set of tensors or an error.
// `plan_shards` splits tensors into shards the way transformers' save_pretrained does
// (huggingface_hub's split_state_dict_into_shards), and `shard_index_to_json` writes the index as
// transformers does.
#pragma once

#include "dca/core/error.hpp"
#include "dca/io/atomic_file.hpp"
#include "dca/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dca {

/// A model.safetensors.index.json, parsed.
struct ShardIndex {
  std::map<std::string, std::string> weight_map;  // tensor name -> shard file, relative to the index's directory
  std::optional<std::uint64_t> total_size;        // "metadata"."total_size": bytes of tensor data in all shards
  std::optional<std::uint64_t> total_parameters;  // "metadata"."total_parameters" (transformers ≥ 5)

  /// Every shard file the weight map names, once each, sorted.
  std::vector<std::string> shards() const {
    std::set<std::string> files;
    for (const auto& [tensor, file] : weight_map) files.insert(file);
    return {files.begin(), files.end()};
  }
};

namespace detail {

// An index is two levels deep (root > weight_map > file name); metadata may hold a little more.
// Refusing deeper nesting bounds what a hostile file can make the parser build.
inline constexpr int max_index_depth = 8;

// Parses an index's JSON, rejecting a key repeated within one object (nlohmann would keep the last
// silently): a tensor listed twice in "weight_map" would make its shard ambiguous.
inline nlohmann::json parse_index_json(std::string_view text, const std::string& source) {
  using Event = nlohmann::json::parse_event_t;
  struct Open {
    std::string name;  // the key a member of the root object is under ("" for others)
    std::set<std::string, std::less<>> keys;
  };
  std::vector<Open> open_objects;
  std::string last_key;
  const auto check = [&](int depth, Event event, nlohmann::json& parsed) {
    if (depth > max_index_depth)
      fail<FormatError>(source, ": the index nests JSON deeper than ", max_index_depth, " levels");
    // An object at depth 1 is a member of the root object, under the key just read.
    if (event == Event::object_start) open_objects.push_back({depth == 1 ? last_key : "", {}});
    if (event == Event::object_end) open_objects.pop_back();
    if (event == Event::key) {
      last_key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().keys.insert(last_key).second) {
        if (depth == 2 && open_objects.back().name == "weight_map")
          fail<FormatError>(source, ": tensor \"", last_key, "\" is listed twice in \"weight_map\"");
        fail<FormatError>(source, ": key \"", last_key, "\" appears twice in one object");
      }
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::exception& error) {
    fail<FormatError>(source, ": not valid JSON: ", error.what());
  }
}

// A shard's file name must stay inside the index's directory: relative, without "..".
inline void check_shard_name(const std::string& tensor, const std::string& file, const std::string& source) {
  const std::filesystem::path path(file);
  bool escapes = path.empty() || path.is_absolute() || path.has_root_path();
  for (const auto& part : path) escapes = escapes || part == "..";
  if (escapes)
    fail<FormatError>(source, ": \"weight_map\" puts tensor \"", tensor, "\" in \"", file,
                      "\", which is not a file name inside the index's directory");
}

}  // namespace detail

/// Parses the text of a model.safetensors.index.json (`source` names it in messages). FormatError
/// if it is not valid JSON, not an object, lacks a "weight_map" object or a "metadata" object
/// (transformers reads both), lists a tensor twice, maps a tensor to something other than a
/// relative file name inside the index's directory, or has a "total_size" or "total_parameters"
/// that is not a non-negative integer. Other metadata is accepted and ignored.
inline ShardIndex parse_shard_index(std::string_view text, const std::string& source) {
  const nlohmann::json json = detail::parse_index_json(text, source);
  if (!json.is_object()) detail::fail<FormatError>(source, ": an index must be a JSON object, got ", detail::describe(json));
  const auto member = [&](const char* key) -> const nlohmann::json& {
    const auto it = json.find(key);
    if (it == json.end()) detail::fail<FormatError>(source, ": \"", key, "\" is missing");
    if (!it->is_object())
      detail::fail<FormatError>(source, ": \"", key, "\" must be an object, got ", detail::describe(*it));
    return *it;
  };
  ShardIndex index;
  const nlohmann::json& metadata = member("metadata");
  for (const auto& [key, field] : {std::pair{"total_size", &index.total_size},
                                   std::pair{"total_parameters", &index.total_parameters}}) {
    const auto it = metadata.find(key);
    if (it == metadata.end()) continue;
    *field = detail::json_count(*it, detail::concat(source, ": \"metadata\".\"", key, "\""));
  }
  for (const auto& [tensor, file] : member("weight_map").items()) {
    if (!file.is_string())
      detail::fail<FormatError>(source, ": \"weight_map\" must map tensor \"", tensor,
                                "\" to a shard file name, got ", detail::describe(file));
    detail::check_shard_name(tensor, file.get<std::string>(), source);
    index.weight_map.emplace(tensor, file.get<std::string>());
  }
  return index;
}

/// The index as transformers writes it (json.dumps(index, indent=2, sort_keys=True) + "\n"):
/// {"metadata": {"total_parameters": ..., "total_size": ...}, "weight_map": {...}}.
inline std::string shard_index_to_json(const ShardIndex& index) {
  nlohmann::json metadata = nlohmann::json::object();  // std::map-backed: keys sorted, as sort_keys=True
  if (index.total_size) metadata["total_size"] = *index.total_size;
  if (index.total_parameters) metadata["total_parameters"] = *index.total_parameters;
  const nlohmann::json json = {{"metadata", metadata}, {"weight_map", index.weight_map}};
  return json.dump(2, ' ', /*ensure_ascii=*/true) + "\n";  // Python's json.dumps escapes non-ASCII too
}

/// The file name of shard `shard` (from 1) of `count`: shard_file_name("model", 2, 3) is
/// "model-00002-of-00003.safetensors", transformers' pattern.
inline std::string shard_file_name(std::string_view stem, std::size_t shard, std::size_t count) {
  char numbers[40];
  std::snprintf(numbers, sizeof numbers, "-%05zu-of-%05zu", shard, count);
  return detail::concat(stem, numbers, ".safetensors");
}

/// Whether `file_name` is `<stem>-NNNNN-of-NNNNN.safetensors` (five digits each), the files
/// transformers' save_pretrained deletes as stale shards of an earlier save.
inline bool is_shard_file_name(std::string_view file_name, std::string_view stem) {
  constexpr std::string_view suffix = ".safetensors";
  constexpr std::size_t numbers = 15;  // "-00001-of-00003"
  if (file_name.size() != stem.size() + numbers + suffix.size() || !file_name.starts_with(stem) ||
      !file_name.ends_with(suffix))
    return false;
  const std::string_view middle = file_name.substr(stem.size(), numbers);  // "-NNNNN-of-NNNNN"
  if (middle[0] != '-' || middle.substr(6, 4) != "-of-") return false;
  for (const std::size_t first : {std::size_t{1}, std::size_t{10}})
    for (std::size_t i = first; i < first + 5; ++i)
      if (middle[i] < '0' || middle[i] > '9') return false;
  return true;
}

/// Splits tensors of the given byte sizes, taken in order, into shards of at most `max_shard_size`
/// bytes, as transformers' save_pretrained does (huggingface_hub's split_state_dict_into_shards):
/// a tensor that would tip the current shard over the limit starts a new shard, and a tensor
/// larger than the limit on its own gets a shard to itself, placed before the shard still being
/// filled. Returns each shard's tensor positions; nothing for no tensors.
inline std::vector<std::vector<std::size_t>> plan_shards(std::span<const std::uint64_t> sizes,
                                                         std::uint64_t max_shard_size) {
  std::vector<std::vector<std::size_t>> shards;
  std::vector<std::size_t> current;
  std::uint64_t current_size = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > max_shard_size) {
      shards.push_back({i});
      continue;
    }
    if (current_size + sizes[i] > max_shard_size) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += sizes[i];
  }
  if (!current.empty()) shards.push_back(std::move(current));
  return shards;
}

/// The tensors of a checkpoint stored in one or more safetensors files: the shards a
/// model.safetensors.index.json lists, or a single file. Every file is memory-mapped (SafeTensors::read),
/// and everything is checked when the checkpoint is opened, so reading a tensor afterwards can only
/// fail for asking the wrong question (a missing name, a wrong destination shape).
class ShardedSafeTensors {
 public:
  /// Reads the index at `index_path` and maps every shard it lists (relative to the index's
  /// directory), then checks that index and shards agree exactly. IoError if the index or a shard
  /// cannot be read; FormatError naming the index or shard file and the tensor for a malformed
  /// index (parse_shard_index), a shard that does not exist, one shard listed under two spellings
  /// ("a.safetensors" and "./a.safetensors"), a malformed shard, a tensor the index lists in a shard
  /// that does not hold it, a tensor a shard holds that the index does not list, or one tensor
  /// stored in two shards.
  static ShardedSafeTensors read_index(const std::filesystem::path& index_path) {
    ShardedSafeTensors result;
    result.source_ = index_path.string();
    const std::string& source = result.source_;
    const ShardIndex index = parse_shard_index(read_text_file(index_path), source);

    // Each shard once, by its lexically normal name; the name as listed for messages.
    std::map<std::string, std::string> listed;   // normal name -> name as listed
    std::map<std::string, std::string> example;  // normal name -> a tensor the index puts there
    std::map<std::string, std::size_t> count;    // normal name -> how many tensors the index puts there
    for (const auto& [tensor, file] : index.weight_map) {
      const std::string normal = std::filesystem::path(file).lexically_normal().string();
      const auto [it, inserted] = listed.emplace(normal, file);
      if (!inserted && it->second != file)
        detail::fail<FormatError>(source, ": shard \"", normal, "\" is listed twice, as \"", it->second, "\" and as \"",
                                  file, "\"");
      example.emplace(normal, tensor);
      ++count[normal];
    }

    const std::filesystem::path directory = index_path.parent_path();
    std::map<std::string, std::size_t> position;  // normal name -> position in shards_
    for (const auto& [normal, file] : listed) {
      const std::filesystem::path path = directory / normal;
      std::error_code error;
      if (!std::filesystem::exists(path, error) && !error)
        detail::fail<FormatError>(source, ": shard \"", file, "\" does not exist (", path.string(), "; the index lists ",
                                  count[normal], count[normal] == 1 ? " tensor" : " tensors", " in it, e.g. \"",
                                  example[normal], "\")");
      position.emplace(normal, result.shards_.size());
      result.shards_.push_back(SafeTensors::read(path));
      result.shard_names_.push_back(file);
    }

    for (std::size_t s = 0; s < result.shards_.size(); ++s)
      for (const TensorEntry& e : result.shards_[s].entries()) {
        const auto [it, inserted] = result.location_.emplace(e.name, s);
        if (!inserted)
          detail::fail<FormatError>(source, ": tensor \"", e.name, "\" is stored in two shards, \"",
                                    result.shard_names_[it->second], "\" and \"", result.shard_names_[s], "\"");
      }
    for (const auto& [tensor, file] : index.weight_map) {
      const auto held = result.location_.find(tensor);
      const std::size_t named = position.at(std::filesystem::path(file).lexically_normal().string());
      if (held == result.location_.end())
        detail::fail<FormatError>(source, ": \"weight_map\" puts tensor \"", tensor, "\" in \"", file,
                                  "\", which does not hold it (no shard does)");
      if (held->second != named)
        detail::fail<FormatError>(source, ": \"weight_map\" puts tensor \"", tensor, "\" in \"", file,
                                  "\", but it is stored in \"", result.shard_names_[held->second], "\"");
    }
    for (const auto& [tensor, s] : result.location_)
      if (!index.weight_map.contains(tensor))
        detail::fail<FormatError>(result.shards_[s].source(), ": holds tensor \"", tensor, "\", which the index ",
                                  source, " does not list");
    return result;
  }

  /// One safetensors file as a checkpoint of one shard. `source` names it in messages (by default
  /// the file's own source()).
  static ShardedSafeTensors single(SafeTensors file, std::string source = {}) {
    ShardedSafeTensors result;
    result.source_ = source.empty() ? file.source() : std::move(source);
    for (const TensorEntry& e : file.entries()) result.location_.emplace(e.name, 0);
    result.shard_names_.push_back(result.source_);
    result.shards_.push_back(std::move(file));
    return result;
  }

  /// The index's path, or the single file's name: how messages name the checkpoint.
  const std::string& source() const { return source_; }

  /// The shard files, in the order of their names.
  std::span<const SafeTensors> shards() const { return shards_; }

  /// Whether some shard holds tensor `name`.
  bool contains(std::string_view name) const { return location_.find(name) != location_.end(); }

  /// Every tensor's name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> names;
    names.reserve(location_.size());
    for (const auto& [name, shard] : location_) names.push_back(name);
    return names;
  }

  /// The shard that holds tensor `name`; FormatError naming the checkpoint if none does.
  const SafeTensors& shard_of(std::string_view name) const {
    const auto it = location_.find(name);
    if (it == location_.end())
      detail::fail<FormatError>(source_, ": no tensor named \"", name, "\" (the checkpoint holds ", location_.size(),
                                " tensors in ", shards_.size(), " files)");
    return shards_[it->second];
  }

  /// The header entry of tensor `name`.
  const TensorEntry& entry(std::string_view name) const { return shard_of(name).entry(name); }

  /// Tensor `name` as T (SafeTensors::tensor).
  template <Scalar T>
  Tensor<T> tensor(std::string_view name) const {
    return shard_of(name).template tensor<T>(name);
  }

  /// The first NaN or infinite element of tensor `name` read as T (SafeTensors::first_non_finite).
  template <Scalar T>
  std::optional<NonFiniteElement> first_non_finite(std::string_view name) const {
    return shard_of(name).template first_non_finite<T>(name);
  }

  /// Converts tensor `name` straight into `destination` (SafeTensors::read_into).
  template <Scalar T>
  void read_into(std::string_view name, TensorView<T> destination) const {
    shard_of(name).read_into(name, destination);
  }

 private:
  std::string source_;
  std::vector<SafeTensors> shards_;
  std::vector<std::string> shard_names_;                      // as the index lists them, for messages
  std::map<std::string, std::size_t, std::less<>> location_;  // tensor name -> position in shards_
};

}  // namespace dca
