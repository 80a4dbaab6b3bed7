// Tokenizers: the concept, AnyTokenizer, TextStream, corpora encoded with a tokenizer, the tokenizer
// of a Hugging Face directory and, when the suite was built with SentencePiece, a model trained here
// by Debian's spm_train on Debian's fortunes.
#include "dca/data/corpus.hpp"
#include "dca/data/hf_tokenizer.hpp"
#include "dca/data/tokenizer.hpp"
#include "support.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// A named namespace: the suite is a unity build, and other files' helpers share its translation units.
namespace tokenizer_test {

namespace fs = std::filesystem;
using dca::index_t;

// Spells every byte as two ids, its high nibble and its low one: vocabulary 16.
struct NibbleTokenizer {
  index_t vocab_size() const { return 16; }
  std::vector<index_t> encode(std::string_view text) const {
    std::vector<index_t> ids;
    for (const char c : text) {
      const auto byte = static_cast<unsigned char>(c);
      ids.insert(ids.end(), {index_t{byte >> 4}, index_t{byte & 15}});
    }
    return ids;
  }
  std::string decode(std::span<const index_t> ids) const {
    std::string text;
    for (std::size_t i = 0; i + 1 < ids.size(); i += 2) text.push_back(static_cast<char>(ids[i] * 16 + ids[i + 1]));
    return text;
  }
};

// Bytes, with id 256 before each text it is given: shows where a source was cut into pieces.
struct MarkingTokenizer {
  static constexpr index_t mark = 256;
  index_t vocab_size() const { return 257; }
  std::vector<index_t> encode(std::string_view text) const {
    std::vector<index_t> ids{mark};
    for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  }
  std::string decode(std::span<const index_t> ids) const {
    std::string text;
    for (const index_t id : ids) text.push_back(id == mark ? '|' : static_cast<char>(id));
    return text;
  }
};

// Bytes, but as SentencePiece does, an incomplete UTF-8 character at the end decodes to one U+FFFD per byte.
struct ReplacingTokenizer {
  index_t vocab_size() const { return 256; }
  std::vector<index_t> encode(std::string_view text) const { return dca::ByteTokenizer().encode(text); }
  std::string decode(std::span<const index_t> ids) const {
    std::string text = dca::ByteTokenizer().decode(ids);
    const std::size_t complete = dca::TextStream<dca::ByteTokenizer>::complete_prefix(text);
    const std::size_t partial = text.size() - complete;
    text.resize(complete);
    for (std::size_t i = 0; i < partial; ++i) text += "\xEF\xBF\xBD";
    return text;
  }
};

struct NoDecode {
  index_t vocab_size() const { return 1; }
  std::vector<index_t> encode(std::string_view) const { return {}; }
};

// The texts a corpus yields when cut into pieces by a MarkingTokenizer.
std::vector<std::string> marked_pieces(const dca::TextSource& encoded) {
  std::vector<std::string> pieces;
  for (const std::int32_t id : encoded.tokens()) {
    if (id == MarkingTokenizer::mark)
      pieces.emplace_back();
    else
      pieces.back().push_back(static_cast<char>(id));
  }
  return pieces;
}

std::string file_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  REQUIRE(out.good());
}

// A model directory holding only the Llama fixture's config.json with `vocab_size` tokens.
void write_config(const fs::path& dir, index_t vocab_size) {
  fs::create_directories(dir);
  nlohmann::json config = nlohmann::json::parse(file_text(fs::path(DCA_FIXTURE_DIR) / "llama" / "config.json"));
  config["vocab_size"] = vocab_size;
  write_text(dir / "config.json", config.dump(2));
}

// The message of the exception `call` throws, which must be an E.
template <class E, class Call>
std::string message_of(Call&& call) {
  try {
    call();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("threw another exception: ", e.what());
  }
  FAIL("did not throw");
  return {};
}

}  // namespace tokenizer_test

using namespace tokenizer_test;

TEST_CASE("the Tokenizer concept admits the byte tokenizer, AnyTokenizer and a user's own, and nothing without decode") {
  static_assert(dca::Tokenizer<dca::ByteTokenizer>);
  static_assert(dca::Tokenizer<dca::AnyTokenizer>);
  static_assert(dca::Tokenizer<NibbleTokenizer>);
  static_assert(!dca::Tokenizer<NoDecode>);
  static_assert(!dca::Tokenizer<std::string>);
  const NibbleTokenizer nibbles;
  CHECK(nibbles.encode("A") == std::vector<index_t>{4, 1});
  CHECK(nibbles.decode(nibbles.encode("h\xC3\xA9llo")) == "h\xC3\xA9llo");
}

TEST_CASE("AnyTokenizer forwards to the tokenizer it holds, hands it back by type and shares it between copies") {
  const dca::AnyTokenizer bytes;
  CHECK(bytes.vocab_size() == 256);
  CHECK(bytes.get<dca::ByteTokenizer>() != nullptr);

  const dca::AnyTokenizer any = dca::ByteTokenizer({"<|eos|>"});
  CHECK(any.vocab_size() == 257);
  CHECK(any.encode("h\xC3\xA9") == std::vector<index_t>{104, 195, 169});
  CHECK(any.decode(std::vector<index_t>{104, 256}) == "h<|eos|>");
  CHECK_THROWS_AS(any.decode(std::vector<index_t>{257}), dca::RangeError);
  REQUIRE(any.get<dca::ByteTokenizer>() != nullptr);
  CHECK(any.get<dca::ByteTokenizer>()->special_id("<|eos|>") == 256);
  CHECK(any.get<NibbleTokenizer>() == nullptr);
  const dca::AnyTokenizer copy = any;  // NOLINT: the copy is the point
  CHECK(copy.get<dca::ByteTokenizer>() == any.get<dca::ByteTokenizer>());

  const dca::AnyTokenizer nibbles = NibbleTokenizer{};
  CHECK(nibbles.vocab_size() == 16);
  CHECK(nibbles.encode("A") == std::vector<index_t>{4, 1});
  CHECK(nibbles.get<dca::ByteTokenizer>() == nullptr);
}

TEST_CASE("TextStream returns each token's text once, holding back a UTF-8 character until its last byte") {
  const dca::ByteTokenizer bytes;
  const std::string text = "h\xC3\xA9llo \xE2\x9C\x93 \xF0\x9F\x99\x82!";  // 2-, 3- and 4-byte characters
  dca::TextStream stream(bytes);
  std::string streamed;
  std::vector<std::string> pieces;
  for (const index_t id : bytes.encode(text)) {
    pieces.push_back(stream.push(id));
    streamed += pieces.back();
  }
  CHECK(streamed == text);
  CHECK(stream.flush().empty());
  CHECK(pieces[1].empty());              // 0xC3 alone: é is incomplete
  CHECK(pieces[2] == "\xC3\xA9");        // ... and whole with its second byte
  CHECK(pieces[11].empty());             // the first three bytes of 🙂 give nothing
  CHECK(pieces[13].empty());
  CHECK(pieces[14] == "\xF0\x9F\x99\x82");

  SUBCASE("a context is not returned, and flush returns an incomplete tail") {
    dca::TextStream after(bytes, bytes.encode("ab"));
    CHECK(after.push('c') == "c");
    CHECK(after.push(0xF0).empty());
    CHECK(after.push(0x9F).empty());
    CHECK(after.flush() == "\xF0\x9F");
    CHECK(after.ids().size() == 5);
  }
}

TEST_CASE("TextStream holds back trailing U+FFFD, which a tokenizer may write for a character still arriving") {
  const ReplacingTokenizer replacing;
  dca::TextStream stream(replacing);
  CHECK(stream.push('a') == "a");
  CHECK(stream.push(0xE6).empty());  // decodes to "a\uFFFD"
  CHECK(stream.push(0x97).empty());  // "a\uFFFD\uFFFD"
  CHECK(stream.push(0xA5) == "\xE6\x97\xA5");  // 日
  CHECK(stream.push(0xE6).empty());
  CHECK(stream.flush() == "\xEF\xBF\xBD");  // what the tokenizer says that byte is
  CHECK(dca::TextStream<dca::ByteTokenizer>::complete_prefix("ok\xEF\xBF\xBD\xEF\xBF\xBD") == 2);
  CHECK(dca::TextStream<dca::ByteTokenizer>::complete_prefix("\xE2\x9C") == 0);
  CHECK(dca::TextStream<dca::ByteTokenizer>::complete_prefix("a\xE2\x9C\x93") == 4);
}

TEST_CASE("an encoded source counts tokens: its splits, windows and batches hold the tokenizer's ids") {
  const std::string text = file_text(fs::path(DCA_TEST_DATA_DIR) / "sample.txt");
  const dca::TextSource source("sample", text);
  const NibbleTokenizer nibbles;
  const dca::TextSource encoded = source.encoded(nibbles, 4096);
  CHECK(encoded.is_encoded());
  CHECK_FALSE(source.is_encoded());
  CHECK(encoded.name() == "sample");
  CHECK(encoded.size() == 2 * source.size());
  CHECK(std::string(encoded.unit()) == "tokens");
  const std::vector<index_t> whole = nibbles.encode(text);
  CHECK(std::equal(whole.begin(), whole.end(), encoded.tokens().begin(), encoded.tokens().end()));
  CHECK(message_of<dca::UsageError>([&] { (void)encoded.bytes(); }).find("holds token ids") != std::string::npos);
  CHECK_THROWS_AS((void)source.tokens(), dca::UsageError);
  CHECK_THROWS_AS((void)encoded.encoded(nibbles), dca::UsageError);

  dca::CorpusMixture corpus;
  corpus.add(encoded);
  dca::BatchSampler sampler(corpus, 7);
  const dca::Batch batch = sampler.sample(4, 64);
  for (index_t r = 0; r < 4; ++r) {
    const auto start = batch.starts[static_cast<std::size_t>(r)];
    for (index_t t = 0; t < 64; ++t) {
      const auto at = static_cast<std::size_t>(r * 64 + t);
      CHECK(batch.inputs[at] == encoded.tokens()[static_cast<std::size_t>(start + t)]);
      CHECK(batch.targets[at] == encoded.tokens()[static_cast<std::size_t>(start + t + 1)]);
      CHECK(batch.inputs[at] < 16);
    }
  }

  SUBCASE("bytes encoded as bytes give the byte source's batches, draw for draw") {
    dca::CorpusMixture plain, same;
    plain.add(source);
    same.add(source.encoded(dca::ByteTokenizer{}, 1000));
    dca::BatchSampler a(plain, 3), b(same, 3);
    for (int i = 0; i < 3; ++i) {
      const dca::Batch x = a.sample(8, 128), y = b.sample(8, 128);
      CHECK(x.inputs == y.inputs);
      CHECK(x.targets == y.targets);
      CHECK(x.starts == y.starts);
    }
    const auto held_out = plain.validation_batches(8, 128, 4), held_out_same = same.validation_batches(8, 128, 4);
    REQUIRE(held_out.size() == held_out_same.size());
    for (std::size_t i = 0; i < held_out.size(); ++i) CHECK(held_out[i].inputs == held_out_same[i].inputs);
  }

  SUBCASE("a split too short for a window is reported in tokens") {
    dca::CorpusMixture tiny;
    tiny.add(dca::TextSource("tiny", "0123456789").encoded(nibbles));
    const std::string message = message_of<dca::RangeError>([&] { tiny.check_windows("test", dca::Split::train, 64); });
    CHECK(message.find("20 tokens") != std::string::npos);
  }
}

TEST_CASE("a source is encoded in pieces cut after a newline, else before a space, else between UTF-8 characters") {
  const MarkingTokenizer marking;
  std::string lines;
  for (int i = 0; i < 200; ++i) lines += "line " + std::to_string(i) + (i % 3 == 0 ? " is longer than most\n" : "\n");
  const auto cut = marked_pieces(dca::TextSource("lines", lines).encoded(marking, 64));
  REQUIRE(cut.size() > 10);
  std::string joined;
  for (std::size_t i = 0; i < cut.size(); ++i) {
    joined += cut[i];
    CHECK(cut[i].size() <= 64);
    if (i + 1 < cut.size()) {
      CHECK(cut[i].size() >= 32);
      CHECK(cut[i].back() == '\n');
    }
  }
  CHECK(joined == lines);

  std::string words;
  for (int i = 0; i < 100; ++i) words += "word" + std::to_string(i) + " ";
  const auto word_cut = marked_pieces(dca::TextSource("words", words).encoded(marking, 50));
  REQUIRE(word_cut.size() > 5);
  for (std::size_t i = 1; i < word_cut.size(); ++i) CHECK(word_cut[i].front() == ' ');

  std::string accents;
  for (int i = 0; i < 100; ++i) accents += "\xC3\xA9";  // é, two bytes, no space or newline
  const auto accent_cut = marked_pieces(dca::TextSource("accents", accents).encoded(marking, 15));
  REQUIRE(accent_cut.size() > 5);
  for (const std::string& piece : accent_cut) {
    CHECK(piece.size() % 2 == 0);  // whole characters only
    CHECK(piece.front() == '\xC3');
  }
  CHECK_THROWS_AS((void)dca::TextSource("x", "abc").encoded(marking, 1), dca::RangeError);
}

TEST_CASE("load_hf_tokenizer reads a directory without tokenizer.model as bytes") {
  const dca::HfTokenizer tokenizer = dca::load_hf_tokenizer(fs::path(DCA_FIXTURE_DIR) / "llama");
  CHECK(tokenizer.tokenizer.vocab_size() == 256);
  CHECK(tokenizer.tokenizer.get<dca::ByteTokenizer>() != nullptr);
  CHECK(tokenizer.file.empty());
  CHECK_FALSE(tokenizer.bos_id);
  CHECK_FALSE(tokenizer.eos_id);
  CHECK_FALSE(tokenizer.add_bos);
  CHECK(tokenizer.encode_prompt("hi") == std::vector<index_t>{104, 105});
  CHECK(tokenizer.description() == "bytes (256 ids)");
}

TEST_CASE("load_hf_tokenizer refuses a vocabulary no tokenizer in the directory spells, naming the files and sizes") {
  const dca::test::TempDir dir;
  write_config(dir.path / "wide", 300);
  std::string message = message_of<dca::FormatError>([&] { dca::load_hf_tokenizer(dir.path / "wide"); });
  CHECK(message.find((dir.path / "wide").string() + " has no tokenizer.model") != std::string::npos);
  CHECK(message.find("256 ids") != std::string::npos);
  CHECK(message.find((dir.path / "wide" / "config.json").string() + " gives the model a vocab_size of 300") !=
        std::string::npos);

  write_text(dir.path / "wide" / "tokenizer.json", "{}");
  message = message_of<dca::FormatError>([&] { dca::load_hf_tokenizer(dir.path / "wide"); });
  CHECK(message.find("tokenizer.json (a Hugging Face tokenizers file) is not supported") != std::string::npos);

  SUBCASE("tokenizer_config.json asking for a BOS that bytes do not have, malformed or mistyped") {
    write_config(dir.path / "bytes", 256);
    const fs::path settings = dir.path / "bytes" / "tokenizer_config.json";
    write_text(settings, R"({"add_bos_token": true})");
    message = message_of<dca::FormatError>([&] { dca::load_hf_tokenizer(dir.path / "bytes"); });
    CHECK(message.find(settings.string() + " sets add_bos_token") != std::string::npos);
    CHECK(message.find("has no BOS id") != std::string::npos);
    write_text(settings, R"({"add_bos_token": )");
    message = message_of<dca::FormatError>([&] { dca::load_hf_tokenizer(dir.path / "bytes"); });
    CHECK(message.find(settings.string() + ": not valid JSON") != std::string::npos);
    write_text(settings, R"({"add_bos_token": "yes"})");
    message = message_of<dca::FormatError>([&] { dca::load_hf_tokenizer(dir.path / "bytes"); });
    CHECK(message.find("'add_bos_token' has the wrong type") != std::string::npos);
    write_text(settings, R"({"add_bos_token": false, "model_max_length": 1024})");
    CHECK_FALSE(dca::load_hf_tokenizer(dir.path / "bytes").add_bos);
  }
}

TEST_CASE("save_hf_tokenizer leaves a byte-level directory without tokenizer.model and refuses what a directory cannot hold") {
  const dca::test::TempDir dir;
  write_text(dir.path / "tokenizer.model", "an earlier run's");
  dca::save_hf_tokenizer(dca::ByteTokenizer{}, dir.path);
  CHECK_FALSE(fs::exists(dir.path / "tokenizer.model"));
  CHECK_THROWS_AS(dca::save_hf_tokenizer(NibbleTokenizer{}, dir.path), dca::UsageError);
  CHECK_THROWS_AS(dca::save_hf_tokenizer(dca::ByteTokenizer({"<|eos|>"}), dir.path), dca::UsageError);
}

#if defined(DCA_HAVE_SENTENCEPIECE)
namespace tokenizer_test {

constexpr index_t fortunes_vocabulary = 1000;

// A SentencePiece model trained by spm_train on Debian's fortunes, once per run of the suite, the way
// docs/tokenizers.md trains one for pretrain: byte-pair merges, byte fallback (any text encodes),
// no normalisation (text round-trips). `skipped` says why there is none.
struct FortunesModel {
  fs::path file;
  std::string skipped;
};

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

const FortunesModel& fortunes_model() {
  static const dca::test::TempDir dir;
  static const FortunesModel model = [] {
    FortunesModel out;
#if !defined(DCA_SPM_TRAIN)
    out.skipped = "spm_train was not found when the suite was configured (apt-get install sentencepiece)";
    return out;
#else
    const fs::path fortunes = "/usr/share/games/fortunes";
    if (!fs::is_directory(fortunes)) {
      out.skipped = "Debian's fortunes are not installed (apt-get install fortunes)";
      return out;
    }
    const fs::path text = dir.path / "fortunes.txt";
    write_text(text, dca::TextSource::from_directory(fortunes, dca::skip_suffixes({".dat", ".u8"})).bytes());
    const std::string command = std::string(DCA_SPM_TRAIN) + " --input=" + quoted(text) +
                                " --model_prefix=" + quoted(dir.path / "fortunes") +
                                " --model_type=bpe --vocab_size=" + std::to_string(fortunes_vocabulary) +
                                " --byte_fallback=true --normalization_rule_name=identity"
                                " --remove_extra_whitespaces=false --num_threads=1 > " +
                                quoted(dir.path / "spm_train.log") + " 2>&1";
    if (std::system(command.c_str()) != 0)
      FAIL("spm_train failed: ", command, "\n", file_text(dir.path / "spm_train.log"));
    out.file = dir.path / "fortunes.model";
    return out;
#endif
  }();
  return model;
}

// Lines the fortunes may not hold: other scripts, emoji, runs of spaces, tabs, digits.
const std::vector<std::string> awkward_lines = {
    "Zw\xC3\xB6lf Boxk\xC3\xA4mpfer jagen Viktor quer \xC3\xBC" "ber den gro\xC3\x9F" "en Sylter Deich",
    "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x99\x82 and \xE2\x9C\x93",
    "  two leading spaces, a\ttab and two trailing  ",
    "digits 0123456789, punctuation (a, b) -- c! and CAPITALS",
};

}  // namespace tokenizer_test

#define SKIP_WITHOUT_FORTUNES_MODEL()                                 \
  const FortunesModel& trained = fortunes_model();                    \
  if (!trained.skipped.empty()) {                                     \
    MESSAGE("SentencePiece tests skipped: ", trained.skipped);        \
    return;                                                           \
  }

TEST_CASE("a SentencePiece model spm_train made from the fortunes encodes as spm_encode does and decodes text back") {
  SKIP_WITHOUT_FORTUNES_MODEL();
  const auto tokenizer = dca::SentencePieceTokenizer::load(trained.file);
  CHECK(tokenizer.vocab_size() == fortunes_vocabulary);
  CHECK(tokenizer.name() == trained.file.string());

  std::vector<std::string> lines = awkward_lines;
  std::istringstream sample(file_text(fs::path(DCA_TEST_DATA_DIR) / "sample.txt"));
  for (std::string line; lines.size() < 40 && std::getline(sample, line);) lines.push_back(line);
  std::string all;
  for (const std::string& line : lines) {
    CHECK(tokenizer.decode(tokenizer.encode(line)) == line);
    all += line + "\n";
  }
  CHECK(tokenizer.decode(tokenizer.encode(all)) == all);  // newlines as byte pieces

#if defined(DCA_SPM_ENCODE)
  const dca::test::TempDir dir;
  write_text(dir.path / "lines.txt", all);
  const std::string command = std::string(DCA_SPM_ENCODE) + " --model=" + quoted(trained.file) +
                              " --output_format=id --input=" + quoted(dir.path / "lines.txt") +
                              " --output=" + quoted(dir.path / "ids.txt");
  REQUIRE(std::system(command.c_str()) == 0);
  std::istringstream ids(file_text(dir.path / "ids.txt"));
  std::size_t compared = 0;
  for (std::string row; std::getline(ids, row); ++compared) {
    REQUIRE(compared < lines.size());
    std::vector<index_t> expected;
    std::istringstream numbers(row);
    for (index_t id; numbers >> id;) expected.push_back(id);
    CHECK_MESSAGE(tokenizer.encode(lines[compared]) == expected, "line: ", lines[compared]);
  }
  CHECK(compared == lines.size());
#else
  MESSAGE("spm_encode was not found when the suite was configured: ids not compared with it");
#endif

  // A subword vocabulary: English takes fewer than half as many tokens as bytes; unseen characters fall
  // back to bytes.
  const std::string english = file_text(fs::path(DCA_TEST_DATA_DIR) / "sample.txt");
  CHECK(static_cast<double>(tokenizer.encode(english).size()) < 0.5 * static_cast<double>(english.size()));
  const std::vector<index_t> nichi = tokenizer.encode("\xE6\x97\xA5");  // 日: three byte pieces
  REQUIRE(nichi.size() >= 3);
  CHECK(tokenizer.is_byte(nichi.back()));
  CHECK(tokenizer.piece(nichi.back()) == "<0xA5>");
}

TEST_CASE("a SentencePiece model names its special pieces and looks pieces up both ways") {
  SKIP_WITHOUT_FORTUNES_MODEL();
  const auto tokenizer = dca::SentencePieceTokenizer::load(trained.file);
  // spm_train's defaults: <unk> 0, <s> 1, </s> 2, no padding piece.
  CHECK(tokenizer.unk_id() == 0);
  CHECK(tokenizer.bos_id() == 1);
  CHECK(tokenizer.eos_id() == 2);
  CHECK_FALSE(tokenizer.pad_id());
  CHECK(tokenizer.piece(1) == "<s>");
  CHECK(tokenizer.is_control(1));
  CHECK(tokenizer.is_unknown(0));
  CHECK(tokenizer.piece_id("<s>") == 1);
  CHECK(tokenizer.piece_id("<unk>") == 0);
  CHECK_FALSE(tokenizer.piece_id("no such piece"));
  const auto newline = tokenizer.piece_id("<0x0A>");
  REQUIRE(newline);
  CHECK(tokenizer.is_byte(*newline));
  CHECK(tokenizer.decode(std::vector<index_t>{1, *newline, 2}) == "\n");  // control pieces read as nothing
}

TEST_CASE("SentencePieceTokenizer reports a missing file, a file that is not a model and ids outside the vocabulary") {
  SKIP_WITHOUT_FORTUNES_MODEL();
  const dca::test::TempDir dir;
  CHECK(message_of<dca::IoError>([&] { dca::SentencePieceTokenizer::load(dir.path / "absent.model"); })
            .find("absent.model") != std::string::npos);
  write_text(dir.path / "text.model", "this is not a protocol buffer");
  CHECK(message_of<dca::FormatError>([&] { dca::SentencePieceTokenizer::load(dir.path / "text.model"); })
            .find("'" + (dir.path / "text.model").string() + "' is not a SentencePiece model") != std::string::npos);
  const auto tokenizer = dca::SentencePieceTokenizer::load(trained.file);
  const std::string message = message_of<dca::RangeError>([&] { tokenizer.decode(std::vector<index_t>{5, 1000}); });
  CHECK(message.find("id 1000 at position 1 is outside [0, 1000)") != std::string::npos);
  CHECK_THROWS_AS((void)tokenizer.piece(-1), dca::RangeError);
  CHECK_THROWS_AS((void)tokenizer.is_byte(1000), dca::RangeError);
}

TEST_CASE("TextStream spells SentencePiece pieces as the whole text does, across spaces and byte-fallback characters") {
  SKIP_WITHOUT_FORTUNES_MODEL();
  const auto tokenizer = dca::SentencePieceTokenizer::load(trained.file);
  const std::string text = "The fortune said: \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82 is near.\nA new line follows.";
  const std::vector<index_t> ids = tokenizer.encode(text);
  dca::TextStream stream(tokenizer);
  std::string streamed, one_by_one;
  for (const index_t id : ids) {
    streamed += stream.push(id);
    one_by_one += tokenizer.decode(std::span<const index_t>(&id, 1));
  }
  streamed += stream.flush();
  CHECK(streamed == text);
  CHECK(one_by_one != text);  // why TextStream exists: pieces decoded alone lose their spaces and characters

  SUBCASE("after a prompt, the new pieces only") {
    const std::vector<index_t> prompt = tokenizer.encode("The fortune");
    dca::TextStream continued(tokenizer, prompt);
    const std::vector<index_t> rest = tokenizer.encode("said");  // "▁said": "said" alone, " said" after a prompt
    REQUIRE(tokenizer.decode(rest) == "said");
    std::string added;
    for (const index_t id : rest) added += continued.push(id);
    CHECK(added + continued.flush() == " said");
  }
}

TEST_CASE("load_hf_tokenizer reads tokenizer.model, honours add_bos_token and refuses a vocabulary config.json disagrees with") {
  SKIP_WITHOUT_FORTUNES_MODEL();
  const dca::test::TempDir dir;
  const fs::path model_dir = dir.path / "subword";
  write_config(model_dir, fortunes_vocabulary);
  fs::copy_file(trained.file, model_dir / "tokenizer.model");
  dca::HfTokenizer tokenizer = dca::load_hf_tokenizer(model_dir);
  CHECK(tokenizer.file == model_dir / "tokenizer.model");
  CHECK(tokenizer.tokenizer.vocab_size() == fortunes_vocabulary);
  REQUIRE(tokenizer.tokenizer.get<dca::SentencePieceTokenizer>() != nullptr);
  CHECK(tokenizer.bos_id == 1);
  CHECK(tokenizer.eos_id == 2);
  CHECK_FALSE(tokenizer.add_bos);
  CHECK(tokenizer.description() == "SentencePiece " + (model_dir / "tokenizer.model").string() + " (1000 pieces)");
  const auto direct = dca::SentencePieceTokenizer::load(trained.file);
  CHECK(tokenizer.encode_prompt("Hi there") == direct.encode("Hi there"));

  write_text(model_dir / "tokenizer_config.json", R"({"add_bos_token": true, "add_eos_token": false})");
  tokenizer = dca::load_hf_tokenizer(model_dir);
  CHECK(tokenizer.add_bos);
  std::vector<index_t> expected{1};
  for (const index_t id : direct.encode("Hi there")) expected.push_back(id);
  CHECK(tokenizer.encode_prompt("Hi there") == expected);

  // The same tokenizer beside a byte-level model.
  const fs::path bytes_dir = dir.path / "bytes";
  write_config(bytes_dir, 256);
  fs::copy_file(trained.file, bytes_dir / "tokenizer.model");
  const std::string message = message_of<dca::FormatError>([&] { dca::load_hf_tokenizer(bytes_dir); });
  CHECK(message == (bytes_dir / "tokenizer.model").string() + " has 1000 pieces, but " +
                       (bytes_dir / "config.json").string() +
                       " gives the model a vocab_size of 256: the tokenizer and the model disagree");

  SUBCASE("save_hf_tokenizer writes the model file as it was read") {
    dca::save_hf_tokenizer(direct, dir.path / "saved");
    CHECK(file_text(dir.path / "saved" / "tokenizer.model") == file_text(trained.file));
  }
}

TEST_CASE("a corpus encoded with a SentencePiece model holds the model's ids for its text") {
  SKIP_WITHOUT_FORTUNES_MODEL();
  const auto tokenizer = dca::SentencePieceTokenizer::load(trained.file);
  const std::string text = file_text(fs::path(DCA_TEST_DATA_DIR) / "sample.txt");
  const dca::TextSource encoded = dca::TextSource("sample", text).encoded(tokenizer);  // one piece: under 64 KB
  const std::vector<index_t> whole = tokenizer.encode(text);
  CHECK(std::equal(whole.begin(), whole.end(), encoded.tokens().begin(), encoded.tokens().end()));
  dca::CorpusMixture corpus;
  corpus.add(encoded);
  dca::BatchSampler sampler(corpus, 1);
  const dca::Batch batch = sampler.sample(8, 32);
  CHECK(std::all_of(batch.inputs.begin(), batch.inputs.end(),
                    [](index_t id) { return id >= 0 && id < fortunes_vocabulary; }));
  // Cut into pieces after newlines, each piece is encoded alone: the model's dummy prefix puts a
  // space at the start of every piece but the first, and nothing else changes.
  const dca::TextSource cut = dca::TextSource("sample", text).encoded(tokenizer, 4096);
  const std::vector<index_t> cut_ids(cut.tokens().begin(), cut.tokens().end());
  const std::string decoded = tokenizer.decode(cut_ids);
  const auto without_space_after_newlines = [](std::string s) {
    for (std::size_t at; (at = s.find("\n ")) != std::string::npos;) s.erase(at + 1, 1);
    return s;
  };
  CHECK(without_space_after_newlines(decoded) == without_space_after_newlines(text));
  const auto extra_spaces = static_cast<index_t>(decoded.size() - text.size());  // pieces - 1
  CHECK(extra_spaces >= static_cast<index_t>(text.size() / 4096) - 1);
  CHECK(extra_spaces <= static_cast<index_t>(text.size() / 2048));
}
#else
TEST_CASE("SentencePiece tokenizers are not built in: a tokenizer.model is refused with a message saying how to get them") {
  const dca::test::TempDir dir;
  write_config(dir.path, 1000);
  write_text(dir.path / "tokenizer.model", "whatever");
  const std::string message = message_of<dca::UsageError>([&] { dca::load_hf_tokenizer(dir.path); });
  CHECK(message.find("install libsentencepiece-dev") != std::string::npos);
  CHECK_FALSE(dca::have_sentencepiece);
}
#endif
