// How much memory loading a Hugging Face model directory takes (docs/io.md, "Loading memory").
// Two modes, so that `/usr/bin/time -v` measures each on its own:
//
//   hf_load_memory generate DIR   writes a 1.08 GB float32 decoder to DIR: Llama-shaped, 32000×2048
//                                 tied embeddings, 4 layers, MLP 5632 (271 M parameters)
//   hf_load_memory load DIR       loads DIR with load_hf_decoder<float> and prints what it loaded
//   hf_load_memory convert DIR OUT MAX_SHARD_BYTES F32|BF16|F16
//                                 loads DIR and saves it to OUT in shards and dtype
//   hf_load_memory phases DIR     loads DIR in its two phases, timing each: constructing the Decoder
//                                 (which initialises every weight) and converting the files into it
// (convert and phases are built only against a dca that has dca/io/sharded_safetensors.hpp.)
//
// It uses only load_hf_decoder and save_hf_decoder, which every version of dca has, so the same
// source measures the library before and after a change. It is not part of the test suite (the
// tests load small models); build it with the benchmarks (target hf_load_memory) or alone:
//
//   g++ -std=c++20 -O2 -DNDEBUG -I include -isystem /usr/include/eigen3 benchmarks/hf_load_memory.cpp -o hf_load_memory
#include "dca/io/hf.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace {

// The process's peak resident set so far (what /usr/bin/time reports as its maximum), in MiB.
double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("VmHWM:")) return std::stod(line.substr(6)) / 1024.0;
  return -1;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
#if __has_include("dca/io/sharded_safetensors.hpp")
  if (argc == 6 && std::strcmp(argv[1], "convert") == 0) {
    auto model = dca::load_hf_decoder<float>(argv[2]);
    const std::optional<dca::DType> dtype = dca::dtype_from_string(argv[5]);
    if (!dtype) return std::fprintf(stderr, "unknown dtype %s\n", argv[5]), 2;
    dca::save_hf_decoder(model, argv[3], {.dtype = dtype, .max_shard_size = std::stoull(argv[4])});
    std::printf("saved %s as %s, shards of at most %s bytes\n", argv[2], argv[5], argv[4]);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "phases") == 0) {
    const std::filesystem::path directory = argv[2];
    const auto start = std::chrono::steady_clock::now();
    dca::Decoder<float> model(dca::read_hf_config(directory / "config.json"));
    const double construct = seconds_since(start);
    const auto converting = std::chrono::steady_clock::now();
    dca::load_hf_weights(model, dca::open_hf_weights(directory));
    std::printf("constructing the decoder %.2f s, converting the weights into it %.2f s\n", construct,
                seconds_since(converting));
    return 0;
  }
#endif
  if (argc != 3 || (std::strcmp(argv[1], "generate") != 0 && std::strcmp(argv[1], "load") != 0)) {
    std::fprintf(stderr, "usage: %s generate|load DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path directory = argv[2];
  const auto start = std::chrono::steady_clock::now();
  if (std::strcmp(argv[1], "generate") == 0) {
    auto config = dca::DecoderConfig::llama(
        {.vocab = 32000, .dim = 2048, .layers = 4, .heads = 16, .mlp = 5632, .max_positions = 2048});
    config.tie_embeddings = true;
    dca::Decoder<float> model(config, 1);
    dca::save_hf_decoder(model, directory);
    std::printf("generated %td parameters (%.3f GB as float32) in %s, %.1f s, peak RSS %.0f MiB\n",
                model.parameter_count(), static_cast<double>(model.parameter_count()) * 4e-9, argv[2],
                seconds_since(start), peak_rss_mib());
    return 0;
  }
  auto model = dca::load_hf_decoder<float>(directory);
  double checksum = 0;
  for (auto* p : model.parameters()) checksum += static_cast<double>(p->value()[p->numel() / 2]);
  std::printf("loaded %td parameters (%.3f GB as float32) from %s, %.1f s, checksum %.9g, peak RSS %.0f MiB\n",
              model.parameter_count(), static_cast<double>(model.parameter_count()) * 4e-9, argv[2],
              seconds_since(start), checksum, peak_rss_mib());
  return 0;
}
