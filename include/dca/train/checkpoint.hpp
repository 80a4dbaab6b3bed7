// dca/train/checkpoint.hpp — training checkpoints: parameters, optimizer state and string metadata
// (step counts, random states, configurations) in one safetensors file, written atomically.
//
// Tensors are stored as "model.<parameter name>" and "optimizer.<state name>" in the parameters'
// own precision, so a resumed run continues bit-identically. Reading checks everything before
// anything changes.
#pragma once

#include "dca/io/safetensors.hpp"
#include "dca/train/optimizer.hpp"

#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

namespace dca {

/// Writes `parameters`, the optimizer's state and `metadata` to `path` atomically.
template <Scalar T, class Optimizer>
void write_checkpoint(const std::filesystem::path& path, std::span<Parameter<T>* const> parameters,
                      const Optimizer& optimizer, std::map<std::string, std::string> metadata) {
  SafeTensorsWriter writer;
  for (Parameter<T>* p : parameters) writer.add("model." + p->name(), std::as_const(p->value()).view());
  for (const StateTensor<T>& s : optimizer.state()) writer.add("optimizer." + s.name, s.value);
  metadata["format"] = "dca-checkpoint-1";
  metadata["optimizer_steps"] = std::to_string(optimizer.step_count());
  for (const auto& [key, value] : metadata) writer.set_metadata(key, value);
  writer.write(path);
}

[[noreturn]] inline void fail_missing_metadata(const std::string& file, const std::string& key) {
  detail::fail<FormatError>(file, ": not a dca checkpoint (metadata '", key, "' is missing)");
}

/// A step count stored as metadata, or FormatError naming the file and the key.
inline index_t checkpoint_count(const std::string& file, const std::map<std::string, std::string>& metadata,
                                const std::string& key) {
  const auto found = metadata.find(key);
  if (found == metadata.end()) fail_missing_metadata(file, key);
  std::size_t used = 0;
  long long value = -1;
  try {
    value = std::stoll(found->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != found->second.size() || value < 0)
    detail::fail<FormatError>(file, ": metadata '", key, "' = '", found->second, "' is not a step count");
  return static_cast<index_t>(value);
}

/// Reads a checkpoint written by `write_checkpoint` into `parameters` and `optimizer`, after
/// checking that every parameter is present with its shape, that nothing unknown is stored, that
/// every metadata key in `required` exists, and that `validate(metadata)` (which should throw on
/// a mismatch) accepts the metadata. On any error nothing changes. Returns the metadata.
template <Scalar T, class Optimizer, class Validate>
std::map<std::string, std::string> read_checkpoint(const std::filesystem::path& path,
                                                   std::span<Parameter<T>* const> parameters, Optimizer& optimizer,
                                                   std::span<const std::string> required, const Validate& validate) {
  const SafeTensors file = SafeTensors::read(path);
  const std::string name = path.string();
  const auto& metadata = file.metadata();
  for (const std::string& key : required)
    if (!metadata.contains(key)) fail_missing_metadata(name, key);
  if (!metadata.contains("format") || metadata.at("format") != "dca-checkpoint-1")
    detail::fail<FormatError>(name, ": not a dca checkpoint (metadata 'format' is missing or unknown)");
  validate(metadata);
  std::vector<Tensor<T>> values;
  std::set<std::string> known;
  for (Parameter<T>* p : parameters) {
    const std::string key = "model." + p->name();
    known.insert(key);
    if (!file.contains(key)) detail::fail<FormatError>(name, ": tensor '", key, "' is missing");
    values.push_back(file.template tensor<T>(key));
    if (!(values.back().shape() == p->shape()))
      detail::fail<FormatError>(name, ": tensor '", key, "' is ", values.back().shape(), ", expected ", p->shape());
  }
  std::vector<Tensor<T>> state_values;
  std::vector<std::string> state_names;
  for (const std::string& key : file.names()) {
    if (known.contains(key)) continue;
    if (!key.starts_with("optimizer.")) detail::fail<FormatError>(name, ": unexpected tensor '", key, "'");
    state_names.push_back(key.substr(std::string("optimizer.").size()));
    state_values.push_back(file.template tensor<T>(key));
  }
  std::vector<StateTensor<T>> state;
  for (std::size_t i = 0; i < state_values.size(); ++i) state.push_back({state_names[i], state_values[i].view()});
  optimizer.load_state(state, checkpoint_count(name, metadata, "optimizer_steps"));
  std::size_t i = 0;
  for (Parameter<T>* p : parameters) p->value() = std::move(values[i++]);
  return metadata;
}

}  // namespace dca
