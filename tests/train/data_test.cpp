#include "dca/data/corpus.hpp"
#include "dca/data/tokenizer.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using dca::index_t;
using dca::test::TempDir;

void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

void write_gzip(const fs::path& path, std::string_view bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  REQUIRE(file != nullptr);
  REQUIRE(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(file) == Z_OK);
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const fs::path sample_path = fs::path(DCA_TEST_DATA_DIR) / "sample.txt";

// Every byte value 0..255 once, then UTF-8 text with 2-, 3- and 4-byte characters.
std::string awkward_bytes() {
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(static_cast<char>(b));
  return bytes + "h\xC3\xA9llo \xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82";
}

// Row r of a batch as a string of its inputs, or of its targets.
std::string row_text(const std::vector<index_t>& tokens, index_t seq_len, index_t r) {
  std::string text;
  for (index_t t = 0; t < seq_len; ++t)
    text.push_back(static_cast<char>(tokens[static_cast<std::size_t>(r * seq_len + t)]));
  return text;
}

bool inside_one(const std::vector<dca::ByteRange>& runs, index_t begin, index_t end) {
  return std::any_of(runs.begin(), runs.end(),
                     [&](const dca::ByteRange& run) { return run.begin <= begin && end <= run.end; });
}

}  // namespace

TEST_CASE("ByteTokenizer round-trips every byte value and UTF-8 text, one id per byte") {
  const dca::ByteTokenizer tokenizer;
  CHECK(tokenizer.vocab_size() == 256);
  const std::string text = awkward_bytes();
  const std::vector<index_t> ids = tokenizer.encode(text);
  REQUIRE(ids.size() == text.size());
  CHECK(ids[0] == 0x00);
  CHECK(ids[255] == 0xFF);
  CHECK(ids[257] == 0xC3);  // first byte of "é"
  CHECK(tokenizer.decode(ids) == text);
  CHECK(tokenizer.encode("").empty());
}

TEST_CASE("ByteTokenizer special tokens follow the bytes, decode to their names and are never produced by text") {
  const dca::ByteTokenizer tokenizer({"<|bos|>", "<|eos|>"});
  CHECK(tokenizer.vocab_size() == 258);
  CHECK(tokenizer.special_id("<|bos|>") == 256);
  CHECK(tokenizer.special_id("<|eos|>") == 257);
  const std::vector<index_t> ids = {256, 'h', 'i', 0, 257};
  CHECK(tokenizer.decode(ids) == std::string("<|bos|>hi\0<|eos|>", 17));
  const std::vector<index_t> spelled = tokenizer.encode("<|eos|>");
  CHECK(spelled.size() == 7);
  CHECK(std::all_of(spelled.begin(), spelled.end(), [](index_t id) { return id < 256; }));

  CHECK_THROWS_WITH_AS(tokenizer.special_id("<|pad|>"),
                       doctest::Contains("no special token '<|pad|>' (special tokens: '<|bos|>', '<|eos|>')"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::ByteTokenizer({"<|a|>", "<|a|>"}), doctest::Contains("'<|a|>' is given twice"),
                       dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::ByteTokenizer({""}), doctest::Contains("empty name"), dca::UsageError);
}

TEST_CASE("ByteTokenizer::decode rejects ids outside the vocabulary, naming the id and its position") {
  const dca::ByteTokenizer tokenizer({"<|eos|>"});
  const std::vector<index_t> too_big = {65, 258};
  CHECK_THROWS_WITH_AS(tokenizer.decode(too_big), doctest::Contains("id 258 at position 1 is outside [0, 257)"),
                       dca::RangeError);
  const std::vector<index_t> negative = {-1};
  CHECK_THROWS_WITH_AS(tokenizer.decode(negative), doctest::Contains("id -1 at position 0"), dca::RangeError);
}

TEST_CASE("TextSource loads a file, a string, and a directory's files recursively in path order through a filter") {
  const dca::TextSource sample = dca::TextSource::from_file(sample_path);
  CHECK(sample.name() == sample_path.string());
  CHECK(sample.size() == 53589);
  CHECK(sample.bytes().starts_with("A banker is a fellow"));

  const dca::TextSource text("inline", awkward_bytes());
  CHECK(text.bytes() == awkward_bytes());

  TempDir dir;
  fs::create_directory(dir.path / "sub");
  write_file(dir.path / "b.txt", "second\n");
  write_file(dir.path / "a.txt", "first\n");
  write_file(dir.path / "sub" / "c.txt", "third\n");
  write_file(dir.path / "a.dat", "index");
  fs::create_symlink("missing-target", dir.path / "dangling");
  const dca::TextSource all = dca::TextSource::from_directory(dir.path);
  CHECK(all.bytes() == "indexfirst\nsecond\nthird\n");
  const dca::TextSource texts = dca::TextSource::from_directory(dir.path, dca::skip_suffixes({".dat", ".u8"}));
  CHECK(texts.name() == dir.path.string());
  CHECK(texts.bytes() == "first\nsecond\nthird\n");
}

TEST_CASE("TextSource decompresses gzip files, including one written here with zlib") {
  TempDir dir;
  std::string text;
  for (int i = 0; text.size() < 1500000; ++i) text += "line " + std::to_string(i * 7919 % 100003) + " of the corpus\n";
  text += awkward_bytes();
  write_gzip(dir.path / "corpus.txt.gz", text);
  const dca::TextSource source = dca::TextSource::from_gzip(dir.path / "corpus.txt.gz");
  CHECK(source.name() == (dir.path / "corpus.txt.gz").string());
  CHECK(source.size() == static_cast<index_t>(text.size()));
  CHECK(source.bytes() == text);
}

TEST_CASE("TextSource reports missing, unreadable, non-gzip and truncated inputs, naming the path") {
  TempDir dir;
  const fs::path missing = dir.path / "missing.txt";
  CHECK_THROWS_WITH_AS(dca::TextSource::from_file(missing),
                       doctest::Contains(("\"" + missing.string() + "\": No such file or directory").c_str()), dca::IoError);
  CHECK_THROWS_WITH_AS(dca::TextSource::from_file(dir.path),
                       doctest::Contains(("\"" + dir.path.string() + "\": not a regular file").c_str()), dca::IoError);
  CHECK_THROWS_WITH_AS(dca::TextSource::from_directory(missing), doctest::Contains(missing.c_str()), dca::IoError);
  CHECK_THROWS_WITH_AS(
      dca::TextSource::from_directory(dir.path, dca::skip_suffixes({".txt"})),
      doctest::Contains(("no regular file under '" + dir.path.string() + "' passes the filter").c_str()), dca::IoError);
  CHECK_THROWS_WITH_AS(dca::TextSource::from_gzip(missing), doctest::Contains(missing.c_str()), dca::IoError);

  write_file(dir.path / "plain.txt", "not compressed");
  CHECK_THROWS_WITH_AS(dca::TextSource::from_gzip(dir.path / "plain.txt"),
                       doctest::Contains("plain.txt' is not a gzip file"), dca::FormatError);
  write_gzip(dir.path / "whole.gz", std::string(100000, 'x') + awkward_bytes());
  const std::string compressed = read_bytes(dir.path / "whole.gz");
  write_file(dir.path / "cut.gz", std::string_view(compressed).substr(0, compressed.size() / 2));
  CHECK_THROWS_WITH_AS(dca::TextSource::from_gzip(dir.path / "cut.gz"), doctest::Contains("cut.gz' is"),
                       dca::FormatError);
}

TEST_CASE("split_source holds out the last fraction of each stripe, tiling the source exactly") {
  const dca::SourceSplit even = dca::split_source(1000, {.validation_fraction = 0.1, .stripes = 4});
  REQUIRE(even.train.size() == 4);
  REQUIRE(even.validation.size() == 4);
  for (index_t s = 0; s < 4; ++s) {
    CHECK(even.train[static_cast<std::size_t>(s)].begin == 250 * s);
    CHECK(even.train[static_cast<std::size_t>(s)].end == 250 * s + 225);
    CHECK(even.validation[static_cast<std::size_t>(s)].begin == 250 * s + 225);
    CHECK(even.validation[static_cast<std::size_t>(s)].end == 250 * (s + 1));
  }
  CHECK(even.bytes(dca::Split::validation) == 100);
  CHECK(even.window_positions(dca::Split::train, 200) == 4 * 26);

  for (const index_t size : {0, 1, 7, 1003, 99991}) {
    CAPTURE(size);
    const dca::SourceSplit split = dca::split_source(size, {.validation_fraction = 0.03, .stripes = 7});
    index_t next = 0;
    for (std::size_t s = 0; s < 7; ++s) {
      CHECK(split.train[s].begin == next);
      CHECK(split.validation[s].begin == split.train[s].end);
      CHECK(split.validation[s].size() >= 0);
      next = split.validation[s].end;
    }
    CHECK(next == size);
  }
  CHECK(dca::split_source(500, {.validation_fraction = 0, .stripes = 1}).bytes(dca::Split::train) == 500);
  CHECK_THROWS_WITH_AS(dca::split_source(10, {.validation_fraction = 1.0}),
                       doctest::Contains("validation_fraction = 1"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::split_source(10, {.stripes = 0}), doctest::Contains("stripes = 0"), dca::RangeError);
}

TEST_CASE("training windows never touch held-out text and validation windows hold nothing else") {
  // Held-out bytes are 'V', training bytes are lowercase letters, so a window's text shows its side.
  const dca::SplitOptions options{.validation_fraction = 0.1, .stripes = 4};
  const dca::SourceSplit split = dca::split_source(20000, options);
  std::string text(20000, 'V');
  for (const dca::ByteRange& run : split.train)
    for (index_t i = run.begin; i < run.end; ++i) text[static_cast<std::size_t>(i)] = static_cast<char>('a' + i % 26);
  dca::CorpusMixture corpus(options);
  corpus.add(dca::TextSource("marked", text));
  dca::BatchSampler sampler(corpus, 3);
  const index_t seq_len = 31;
  for (int b = 0; b < 300; ++b) {
    const dca::Batch train = sampler.sample(8, seq_len);
    const dca::Batch validation = sampler.sample(8, seq_len, dca::Split::validation);
    for (index_t r = 0; r < 8; ++r) {
      const std::string train_text = row_text(train.inputs, seq_len, r) + row_text(train.targets, seq_len, r);
      CHECK(train_text.find('V') == std::string::npos);
      CHECK(inside_one(split.train, train.starts[static_cast<std::size_t>(r)],
                       train.starts[static_cast<std::size_t>(r)] + seq_len + 1));
      const std::string held_out = row_text(validation.inputs, seq_len, r) + row_text(validation.targets, seq_len, r);
      CHECK(held_out == std::string(2 * seq_len, 'V'));
    }
  }
}

TEST_CASE("the sampler reaches every window position of a run, and none beyond it") {
  dca::CorpusMixture corpus({.validation_fraction = 0, .stripes = 1});
  corpus.add(dca::TextSource("forty", std::string(40, 'x')));
  dca::BatchSampler sampler(corpus, 11);
  std::set<index_t> starts;
  for (int b = 0; b < 100; ++b)
    for (const index_t start : sampler.sample(8, 31).starts) starts.insert(start);
  CHECK(starts == std::set<index_t>{0, 1, 2, 3, 4, 5, 6, 7, 8});  // 40 − 32 + 1 positions
}

TEST_CASE("batch targets are the inputs shifted by one, both read from the source at the window's start") {
  dca::CorpusMixture corpus;
  corpus.add(dca::TextSource::from_file(sample_path));
  dca::BatchSampler sampler(corpus, 5);
  const std::string_view bytes = corpus.source(0).bytes();
  const dca::Batch batch = sampler.sample(8, 128);
  CHECK(batch.batch == 8);
  CHECK(batch.seq_len == 128);
  REQUIRE(batch.inputs.size() == 8 * 128);
  REQUIRE(batch.targets.size() == 8 * 128);
  for (index_t r = 0; r < 8; ++r) {
    const auto start = static_cast<std::size_t>(batch.starts[static_cast<std::size_t>(r)]);
    CHECK(batch.sources[static_cast<std::size_t>(r)] == 0);
    CHECK(row_text(batch.inputs, 128, r) == bytes.substr(start, 128));
    CHECK(row_text(batch.targets, 128, r) == bytes.substr(start + 1, 128));
  }
}

TEST_CASE("the sampler's stream is mt19937_64 mapped by the documented rules, so batches are reproducible anywhere") {
  // One source, no validation text: every row draws a source (1 draw, unused) then a start
  // uniform in [0, 985) by rejecting draws below 2⁶⁴ mod 985 and taking the rest modulo 985.
  std::string text;
  for (int i = 0; i < 1000; ++i) text.push_back(static_cast<char>('a' + i * 7 % 26));
  dca::CorpusMixture corpus({.validation_fraction = 0, .stripes = 1});
  corpus.add(dca::TextSource("letters", text));
  dca::BatchSampler sampler(corpus, 20241223);
  std::mt19937_64 reference(20241223);
  const std::uint64_t positions = 1000 - 16 + 1;
  const std::uint64_t threshold = (std::numeric_limits<std::uint64_t>::max() - positions + 1) % positions;
  for (int b = 0; b < 4; ++b) {
    const dca::Batch batch = sampler.sample(4, 15);
    for (index_t r = 0; r < 4; ++r) {
      reference();  // the source draw
      std::uint64_t draw = reference();
      while (draw < threshold) draw = reference();
      CHECK(batch.starts[static_cast<std::size_t>(r)] == static_cast<index_t>(draw % positions));
    }
  }
}

TEST_CASE("the same seed gives the same batches and another seed different ones") {
  dca::CorpusMixture corpus;
  corpus.add(dca::TextSource::from_file(sample_path));
  corpus.add(dca::TextSource("letters", std::string(5000, 'q')), 0.5);
  dca::BatchSampler first(corpus, 42), second(corpus, 42), other(corpus, 43);
  for (int b = 0; b < 5; ++b) {
    const dca::Batch x = first.sample(8, 64), y = second.sample(8, 64), z = other.sample(8, 64);
    CHECK(x.inputs == y.inputs);
    CHECK(x.targets == y.targets);
    CHECK(x.starts == y.starts);
    CHECK(x.sources == y.sources);
    CHECK(x.starts != z.starts);
  }
}

TEST_CASE("mixture weights set the share of rows from each source, whatever the sources' sizes") {
  dca::CorpusMixture corpus({.validation_fraction = 0, .stripes = 1});
  corpus.add(dca::TextSource("a", std::string(500, 'a')), 1.0);
  corpus.add(dca::TextSource("b", std::string(3000, 'b')), 2.0);
  corpus.add(dca::TextSource("c", std::string(10000, 'c')), 5.0);
  CHECK(corpus.total_weight() == 8.0);
  dca::BatchSampler sampler(corpus, 9);
  std::array<int, 3> rows{};
  const int batches = 1250;
  for (int b = 0; b < batches; ++b) {
    const dca::Batch batch = sampler.sample(8, 8);
    for (index_t r = 0; r < 8; ++r) {
      const index_t s = batch.sources[static_cast<std::size_t>(r)];
      ++rows[static_cast<std::size_t>(s)];
      CHECK(row_text(batch.inputs, 8, r) == std::string(8, static_cast<char>('a' + s)));
    }
  }
  // 10,000 rows: the standard deviation of each share is at most 0.005; the tolerance is 3 of them.
  const double total = 8.0 * batches;
  CHECK(std::abs(rows[0] / total - 1.0 / 8) < 0.015);
  CHECK(std::abs(rows[1] / total - 2.0 / 8) < 0.015);
  CHECK(std::abs(rows[2] / total - 5.0 / 8) < 0.015);
}

TEST_CASE("validation batches walk the held-out runs in fixed windows, the same on every call") {
  std::string text;
  for (int i = 0; i < 8000; ++i) text.push_back(static_cast<char>(i * 31 % 251));
  dca::CorpusMixture corpus({.validation_fraction = 0.25, .stripes = 2});
  corpus.add(dca::TextSource("numbers", text));
  // Validation runs [3000, 4000) and [7000, 8000); windows of 100 bytes at stride 99: offsets
  // 0, 99, ..., 891 in each run (891 + 100 <= 1000 < 990 + 100), 20 windows in all.
  std::vector<index_t> expected;
  for (const index_t run : {3000, 7000})
    for (index_t k = 0; k < 10; ++k) expected.push_back(run + 99 * k);

  const std::vector<dca::Batch> all = corpus.validation_batches(8, 99, 10);
  REQUIRE(all.size() == 3);
  CHECK(all[0].batch == 8);
  CHECK(all[2].batch == 4);
  std::vector<index_t> starts;
  for (const dca::Batch& b : all) {
    starts.insert(starts.end(), b.starts.begin(), b.starts.end());
    for (index_t r = 0; r < b.batch; ++r) {
      const auto start = static_cast<std::size_t>(b.starts[static_cast<std::size_t>(r)]);
      CHECK(row_text(b.inputs, 99, r) == std::string_view(text).substr(start, 99));
      CHECK(row_text(b.targets, 99, r) == std::string_view(text).substr(start + 1, 99));
    }
  }
  CHECK(starts == expected);

  // Capped at 2 batches: 16 of the 20 windows, window j of them being floor(j·20/16).
  const std::vector<dca::Batch> capped = corpus.validation_batches(8, 99, 2);
  REQUIRE(capped.size() == 2);
  std::vector<index_t> capped_starts, capped_expected;
  for (const dca::Batch& b : capped) capped_starts.insert(capped_starts.end(), b.starts.begin(), b.starts.end());
  for (index_t j = 0; j < 16; ++j) capped_expected.push_back(expected[static_cast<std::size_t>(j * 20 / 16)]);
  CHECK(capped_starts == capped_expected);

  dca::BatchSampler sampler(corpus, 1);
  sampler.sample(8, 99);
  const std::vector<dca::Batch> again = corpus.validation_batches(8, 99, 2);
  for (std::size_t b = 0; b < 2; ++b) CHECK(again[b].inputs == capped[b].inputs);
}

TEST_CASE("the test sample supports the default split at seq_len 128 for training and validation") {
  dca::CorpusMixture corpus;
  corpus.add(dca::TextSource::from_file(sample_path));
  dca::BatchSampler sampler(corpus, 0);
  CHECK(sampler.sample(8, 128).inputs.size() == 8 * 128);
  const std::vector<dca::Batch> validation = corpus.validation_batches(8, 128, 4);
  REQUIRE(validation.size() == 1);  // 8 held-out runs of 133 bytes: one window of 129 each
  CHECK(validation[0].batch == 8);
}

TEST_CASE("corpora and samplers reject empty mixtures, bad weights, bad sizes and splits too short for a window") {
  dca::CorpusMixture corpus;
  dca::BatchSampler sampler(corpus, 1);
  CHECK_THROWS_WITH_AS(sampler.sample(8, 16), doctest::Contains("the corpus has no sources"), dca::UsageError);
  CHECK_THROWS_WITH_AS(corpus.add(dca::TextSource("zero", "abc"), 0.0),
                       doctest::Contains("weight 0 of source 'zero' must be finite and > 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(corpus.add(dca::TextSource("nan", "abc"), std::numeric_limits<double>::quiet_NaN()),
                       doctest::Contains("source 'nan'"), dca::RangeError);
  CHECK(corpus.source_count() == 0);

  corpus.add(dca::TextSource("tiny", std::string(100, 't')));
  CHECK_THROWS_WITH_AS(sampler.sample(2, 128),
                       doctest::Contains("train split of source 'tiny' (100 bytes, of which 100 in train runs of at "
                                         "most 13 bytes) has no run of seq_len + 1 = 129 bytes (seq_len 128)"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(corpus.validation_batches(2, 8, 1), doctest::Contains("validation split of source 'tiny'"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(sampler.sample(0, 4), doctest::Contains("batch = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(sampler.sample(2, 0), doctest::Contains("seq_len = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(corpus.validation_batches(2, 2, 0), doctest::Contains("max_batches = 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(corpus.source(1), doctest::Contains("source index 1 is outside [0, 1)"), dca::RangeError);
}
