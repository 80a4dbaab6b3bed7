// Specification of sharded safetensors checkpoints (dca/io/sharded_safetensors.hpp): the split
// huggingface_hub computes, shard names and the index exactly as transformers writes them, and an
// index or shards that disagree rejected with a FormatError naming the file and the tensor.
#include "dca/io/sharded_safetensors.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

// Helper names are unique across the suite: the test files are compiled together (unity build).

// A shard holding [2]-float tensors `names`; tensor k holds {k + 1, -(k + 1)}.
void write_test_shard(const std::filesystem::path& path, const std::vector<std::string>& names) {
  dca::SafeTensorsWriter writer;
  writer.set_metadata("format", "pt");
  float k = 1;
  for (const std::string& name : names) {
    writer.add(name, dca::Tensor<float>(dca::Shape{2}, {k, -k}));
    ++k;
  }
  writer.write(path);
}

void write_test_index(const std::filesystem::path& directory, const std::string& weight_map) {
  std::ofstream(directory / "model.safetensors.index.json")
      << R"({"metadata": {"total_size": 24}, "weight_map": )" << weight_map << "}";
}

dca::ShardedSafeTensors read_test_index(const std::filesystem::path& directory) {
  return dca::ShardedSafeTensors::read_index(directory / "model.safetensors.index.json");
}

doctest::Contains says(const std::string& text) { return doctest::Contains(text.c_str()); }

const std::string shard1 = "model-00001-of-00002.safetensors";
const std::string shard2 = "model-00002-of-00002.safetensors";

}  // namespace

TEST_CASE("plan_shards splits as huggingface_hub does: greedily in order, an oversized tensor in a shard of its own") {
  // The example in huggingface_hub's documentation: sizes [6, 6, 2, 6, 2, 2] GB with a 10 GB limit
  // give [6], [6+2], [6+2+2], not the tighter [6+2+2], [6+2], [6].
  const std::vector<std::uint64_t> documented{6, 6, 2, 6, 2, 2};
  CHECK(dca::plan_shards(documented, 10) == std::vector<std::vector<std::size_t>>{{0}, {1, 2}, {3, 4, 5}});
  // A tensor above the limit is placed, alone, before the shard still being filled.
  const std::vector<std::uint64_t> oversized{3, 12, 4, 5};
  CHECK(dca::plan_shards(oversized, 10) == std::vector<std::vector<std::size_t>>{{1}, {0, 2}, {3}});
  // Exactly at the limit still fits.
  const std::vector<std::uint64_t> exact{4, 6, 10};
  CHECK(dca::plan_shards(exact, 10) == std::vector<std::vector<std::size_t>>{{0, 1}, {2}});
  const std::vector<std::uint64_t> small{1, 2, 3};
  CHECK(dca::plan_shards(small, 50'000'000'000).size() == 1);
  CHECK(dca::plan_shards({}, 10).empty());
}

TEST_CASE("shard files are named as transformers names them, and only such names count as shards") {
  CHECK(dca::shard_file_name("model", 2, 3) == "model-00002-of-00003.safetensors");
  CHECK(dca::shard_file_name("model", 12, 100000) == "model-00012-of-100000.safetensors");
  CHECK(dca::is_shard_file_name("model-00002-of-00003.safetensors", "model"));
  CHECK_FALSE(dca::is_shard_file_name("model.safetensors", "model"));
  CHECK_FALSE(dca::is_shard_file_name("model-0002-of-00003.safetensors", "model"));
  CHECK_FALSE(dca::is_shard_file_name("model-00002-to-00003.safetensors", "model"));
  CHECK_FALSE(dca::is_shard_file_name("model-0000a-of-00003.safetensors", "model"));
  CHECK_FALSE(dca::is_shard_file_name("model-00002-of-00003.bin", "model"));
  CHECK_FALSE(dca::is_shard_file_name("other-00002-of-00003.safetensors", "model"));
}

TEST_CASE("the index is written byte for byte as transformers writes it, and reads back") {
  dca::ShardIndex index;
  index.total_size = 28;
  index.total_parameters = 7;
  index.weight_map = {{"b.weight", "model-00002-of-00002.safetensors"},
                      {"a.weight", "model-00001-of-00002.safetensors"},
                      {"\xc3\xa9", "model-00001-of-00002.safetensors"}};
  // Python: json.dumps(index, indent=2, sort_keys=True) + "\n", as transformers' save_pretrained.
  const std::string python =
      "{\n  \"metadata\": {\n    \"total_parameters\": 7,\n    \"total_size\": 28\n  },\n  \"weight_map\": {\n    "
      "\"a.weight\": \"model-00001-of-00002.safetensors\",\n    \"b.weight\": \"model-00002-of-00002.safetensors\",\n"
      "    \"\\u00e9\": \"model-00001-of-00002.safetensors\"\n  }\n}\n";
  CHECK(dca::shard_index_to_json(index) == python);
  const dca::ShardIndex again = dca::parse_shard_index(python, "index");
  CHECK(again.weight_map == index.weight_map);
  CHECK(again.total_size == std::optional<std::uint64_t>(28));
  CHECK(again.total_parameters == std::optional<std::uint64_t>(7));
  CHECK(again.shards() == std::vector<std::string>{shard1, shard2});
  // Metadata beyond total_size and total_parameters is accepted and ignored; both are optional.
  const dca::ShardIndex minimal =
      dca::parse_shard_index(R"({"metadata": {"format": "pt", "extra": [1, {"a": 2}]}, "weight_map": {}})", "index");
  CHECK_FALSE(minimal.total_size.has_value());
  CHECK(minimal.weight_map.empty());
}

TEST_CASE("a malformed index is a FormatError naming the file and what is wrong") {
  const auto rejects = [](const std::string& text, const std::string& message) {
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(dca::parse_shard_index(text, "dir/model.safetensors.index.json"),
                         says("dir/model.safetensors.index.json: " + message), dca::FormatError);
  };
  rejects("{ not json", "not valid JSON");
  rejects("[1]", "an index must be a JSON object, got array");
  rejects(R"({"metadata": {}})", "\"weight_map\" is missing");
  rejects(R"({"weight_map": {}})", "\"metadata\" is missing");
  rejects(R"({"metadata": [], "weight_map": {}})", "\"metadata\" must be an object, got array");
  rejects(R"({"metadata": {}, "weight_map": ["a"]})", "\"weight_map\" must be an object, got array");
  rejects(R"({"metadata": {}, "weight_map": {"a": 1}})",
          "\"weight_map\" must map tensor \"a\" to a shard file name, got number 1");
  rejects(R"({"metadata": {}, "weight_map": {"a": "x.safetensors", "a": "y.safetensors"}})",
          "tensor \"a\" is listed twice in \"weight_map\"");
  rejects(R"({"metadata": {"total_size": 1, "total_size": 2}, "weight_map": {}})",
          "key \"total_size\" appears twice in one object");
  rejects(R"({"metadata": {"total_size": -1}, "weight_map": {}})", "\"metadata\".\"total_size\" is negative (-1)");
  rejects(R"({"metadata": {"total_parameters": "many"}, "weight_map": {}})",
          "\"metadata\".\"total_parameters\" must be a non-negative integer, got string");
  for (const char* escaping : {"../x.safetensors", "/tmp/x.safetensors", "", "sub/../../x.safetensors"})
    rejects(std::string(R"({"metadata": {}, "weight_map": {"a": ")") + escaping + "\"}}",
            std::string("\"weight_map\" puts tensor \"a\" in \"") + escaping +
                "\", which is not a file name inside the index's directory");
  rejects(R"({"metadata": {"a": [[[[[[[[[1]]]]]]]]]}, "weight_map": {}})", "the index nests JSON deeper than 8 levels");
}

TEST_CASE("a sharded checkpoint reads as one set of tensors, each from the shard the index names") {
  const dca::test::TempDir dir;
  write_test_shard(dir.path / shard1, {"a", "c"});
  write_test_shard(dir.path / shard2, {"b"});
  write_test_index(dir.path, R"({"a": ")" + shard1 + R"(", "b": ")" + shard2 + R"(", "c": ")" + shard1 + "\"}");
  const dca::ShardedSafeTensors weights = read_test_index(dir.path);
  CHECK(weights.source() == (dir.path / "model.safetensors.index.json").string());
  CHECK(weights.shards().size() == 2);
  CHECK(weights.names() == std::vector<std::string>{"a", "b", "c"});
  CHECK(weights.contains("b"));
  CHECK_FALSE(weights.contains("d"));
  CHECK(weights.shard_of("b").source() == "safetensors file \"" + (dir.path / shard2).string() + "\"");
  CHECK(weights.tensor<float>("c")[0] == 2.0f);
  CHECK(weights.entry("b").shape == std::vector<dca::index_t>{2});
  dca::Tensor<double> b(dca::Shape{2});
  weights.read_into("b", b.view());
  CHECK(b[1] == -1.0);
  CHECK_THROWS_WITH_AS(weights.entry("d"), says(weights.source() + ": no tensor named \"d\" (the checkpoint holds 3 tensors in 2 files)"),
                       dca::FormatError);
}

TEST_CASE("a missing shard, one shard listed under two spellings, or a malformed shard is named") {
  const dca::test::TempDir dir;
  const std::string index = (dir.path / "model.safetensors.index.json").string();
  write_test_shard(dir.path / shard1, {"a"});
  write_test_index(dir.path, R"({"a": ")" + shard1 + R"(", "b": ")" + shard2 + "\"}");
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says(index + ": shard \"" + shard2 + "\" does not exist (" + (dir.path / shard2).string() +
                            "; the index lists 1 tensor in it, e.g. \"b\")"),
                       dca::FormatError);

  write_test_shard(dir.path / shard2, {"b"});
  write_test_index(dir.path, R"({"a": ")" + shard1 + R"(", "b": "./)" + shard1 + "\"}");
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says(index + ": shard \"" + shard1 + "\" is listed twice, as \"" + shard1 + "\" and as \"./" +
                            shard1 + "\""),
                       dca::FormatError);

  std::ofstream(dir.path / shard2, std::ios::binary) << "abc";
  write_test_index(dir.path, R"({"a": ")" + shard1 + R"(", "b": ")" + shard2 + "\"}");
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says("safetensors file \"" + (dir.path / shard2).string() + "\": 3 bytes is too short"),
                       dca::FormatError);

  std::filesystem::remove(dir.path / "model.safetensors.index.json");
  CHECK_THROWS_AS(read_test_index(dir.path), dca::IoError);
}

TEST_CASE("an index and shards that disagree about where a tensor is are rejected naming the tensor and both files") {
  const dca::test::TempDir dir;
  const std::string index = (dir.path / "model.safetensors.index.json").string();
  write_test_shard(dir.path / shard1, {"a", "c"});
  write_test_shard(dir.path / shard2, {"b"});
  const std::string a1 = R"("a": ")" + shard1 + "\"", c1 = R"("c": ")" + shard1 + "\"", b2 = R"("b": ")" + shard2 + "\"";

  // The index names a tensor no shard holds.
  write_test_index(dir.path, "{" + a1 + ", " + b2 + ", " + c1 + R"(, "d": ")" + shard2 + "\"}");
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says(index + ": \"weight_map\" puts tensor \"d\" in \"" + shard2 +
                            "\", which does not hold it (no shard does)"),
                       dca::FormatError);
  // The index puts a tensor in a shard other than the one holding it.
  write_test_index(dir.path, R"({"a": ")" + shard2 + "\", " + b2 + ", " + c1 + "}");
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says(index + ": \"weight_map\" puts tensor \"a\" in \"" + shard2 +
                            "\", but it is stored in \"" + shard1 + "\""),
                       dca::FormatError);
  // A shard holds a tensor the index does not list.
  write_test_shard(dir.path / shard2, {"b", "extra"});
  write_test_index(dir.path, "{" + a1 + ", " + b2 + ", " + c1 + "}");
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says("safetensors file \"" + (dir.path / shard2).string() + "\": holds tensor \"extra\", which the index " +
                            index + " does not list"),
                       dca::FormatError);
  // The same tensor is stored in two shards.
  write_test_shard(dir.path / shard2, {"b", "a"});
  CHECK_THROWS_WITH_AS(read_test_index(dir.path),
                       says(index + ": tensor \"a\" is stored in two shards, \"" + shard1 + "\" and \"" + shard2 + "\""),
                       dca::FormatError);
}

TEST_CASE("a single file is a checkpoint of one shard, named as the caller names it") {
  dca::SafeTensorsWriter writer;
  writer.add("w", dca::Tensor<float>(dca::Shape{1}, {4}));
  const auto file = dca::SafeTensors::parse(writer.bytes());
  CHECK(dca::ShardedSafeTensors::single(file).source() == "safetensors buffer");
  const auto named = dca::ShardedSafeTensors::single(file, "weights.safetensors");
  CHECK(named.source() == "weights.safetensors");
  CHECK(named.names() == std::vector<std::string>{"w"});
  CHECK(named.tensor<double>("w")[0] == 4.0);
}
