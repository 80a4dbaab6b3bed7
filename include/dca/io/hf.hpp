// dca/io/hf.hpp — Hugging Face model directories (config.json + model.safetensors) in and out.
//
// `load_hf_decoder<T>(dir)` reads a GPT-2, Llama, Qwen2 or Gemma-2 checkpoint into the matching
// preset; `save_hf_decoder(decoder, dir)` writes one that transformers can load back. Loading is
// all-or-nothing: every tensor is read and checked (present, right shape, no unknown extras)
// before a decoder is returned, and errors name the file, the field or tensor, and the shapes.
// config.json alone: dca/io/hf_config.hpp.
#pragma once

#include "dca/io/atomic_file.hpp"
#include "dca/io/hf_config.hpp"
#include "dca/io/safetensors.hpp"
#include "dca/nn/decoder.hpp"

#include <filesystem>
#include <set>
#include <string>
#include <utility>

namespace dca {

/// Copies every tensor of a safetensors file into the decoder's parameters. Checks everything
/// first (each parameter present with its exact shape; no unknown tensors except a stored copy of
/// a tied head), then assigns, so a failure leaves the decoder unchanged.
template <Scalar T>
void load_hf_weights(Decoder<T>& decoder, const SafeTensors& file, const std::string& file_name) {
  std::vector<Tensor<T>> values;
  std::set<std::string> expected;
  for (Parameter<T>* p : decoder.parameters()) {
    expected.insert(p->name());
    if (!file.contains(p->name()))
      detail::fail<FormatError>(file_name, ": tensor '", p->name(), "' ", p->shape(), " is missing");
    Tensor<T> t = file.template tensor<T>(p->name());
    if (t.numel() != p->numel() || t.rank() != p->value().rank() || !(t.shape() == p->shape()))
      detail::fail<FormatError>(file_name, ": tensor '", p->name(), "' is ", t.shape(), " but the model expects ",
                                p->shape());
    values.push_back(std::move(t));
  }
  for (const std::string& name : file.names())
    if (!expected.contains(name) &&
        !(name == hf_names(decoder.config().architecture).head && decoder.config().tie_embeddings))
      detail::fail<FormatError>(file_name, ": unexpected tensor '", name, "' (not a parameter of this ",
                                decoder.config().architecture, " model)");
  std::size_t i = 0;
  for (Parameter<T>* p : decoder.parameters()) p->value() = std::move(values[i++]);
}

/// Loads a Hugging Face model directory (config.json + model.safetensors).
template <Scalar T>
Decoder<T> load_hf_decoder(const std::filesystem::path& directory) {
  Decoder<T> decoder(read_hf_config(directory / "config.json"));
  const auto weights = directory / "model.safetensors";
  load_hf_weights(decoder, SafeTensors::read(weights), weights.string());
  return decoder;
}

/// Writes config.json and model.safetensors (float32) so that transformers'
/// AutoModelForCausalLM.from_pretrained(directory) loads the same model. Each file is written
/// atomically; the directory is created if needed.
template <Scalar T>
void save_hf_decoder(Decoder<T>& decoder, const std::filesystem::path& directory) {
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) detail::fail<IoError>("cannot create directory ", directory.string(), ": ", ec.message());
  SafeTensorsWriter writer;
  for (Parameter<T>* p : decoder.parameters())
    writer.add(p->name(), std::as_const(p->value()).view(), DType::f32);
  writer.write(directory / "model.safetensors");
  write_text_atomically(directory / "config.json", hf_config_to_json(decoder.config()).dump(2) + "\n");
}

}  // namespace dca
