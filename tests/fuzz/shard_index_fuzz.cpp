// libFuzzer target for the parser of model.safetensors.index.json (dca/io/sharded_safetensors.hpp).
// The contract: for any text, parse_shard_index either throws dca::FormatError or returns an index
// whose every shard name stays inside the index's directory, and which shard_index_to_json writes
// out as text that parses back to the same index. Anything else (a sanitizer report, another
// exception escaping, an abort from `require`) is a bug.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I include -isystem /usr/include/eigen3 \
//       tests/fuzz/shard_index_fuzz.cpp -o shard_index_fuzz && ./shard_index_fuzz tests/fuzz/index_corpus
#include "dca/io/sharded_safetensors.hpp"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string_view>

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

bool same(const dca::ShardIndex& a, const dca::ShardIndex& b) {
  return a.weight_map == b.weight_map && a.total_size == b.total_size && a.total_parameters == b.total_parameters;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::optional<dca::ShardIndex> index;
  try {
    index.emplace(dca::parse_shard_index(text, "index"));
  } catch (const dca::FormatError&) {
    return 0;
  }
  for (const std::string& shard : index->shards()) {
    const std::filesystem::path path(shard);
    require(!shard.empty() && path.is_relative());
    for (const auto& part : path) require(part != "..");
  }
  require(same(dca::parse_shard_index(dca::shard_index_to_json(*index), "written index"), *index));
  return 0;
}
