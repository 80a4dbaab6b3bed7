// dca/data/sentencepiece_tokenizer.hpp — a SentencePiece subword tokenizer (the `tokenizer.model`
// of Llama, Gemma and many other checkpoints, or one trained with Debian's `spm_train`), through
// Google's library (Debian: libsentencepiece-dev). Ids are the model's own, so they match what
// `spm_encode --output_format=id` and Hugging Face's slow LlamaTokenizer (without the BOS it adds)
// produce for the same text.
//
//   auto tokenizer = dca::SentencePieceTokenizer::load("tokenizer.model");
//   std::vector<dca::index_t> ids = tokenizer.encode("The meaning of life");
//   std::string text = tokenizer.decode(ids);
//
// Available when CMake found the library: the dca target then defines DCA_HAVE_SENTENCEPIECE and
// links it (docs/tokenizers.md). Without CMake, link -lsentencepiece.
#pragma once

#if !__has_include(<sentencepiece_processor.h>)
#error "dca/data/sentencepiece_tokenizer.hpp needs SentencePiece's headers: apt-get install libsentencepiece-dev"
#endif

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/data/tokenizer.hpp"
#include "dca/io/atomic_file.hpp"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dca {

class SentencePieceTokenizer {
 public:
  /// Reads a SentencePiece model file. IoError naming the file when it cannot be read, FormatError
  /// naming it (with the library's reason) when it is not a SentencePiece model.
  static SentencePieceTokenizer load(const std::filesystem::path& file) {
    return from_bytes(read_text_file(file), file.string());
  }

  /// A model from the bytes of a model file; `name` (a path, usually) is what messages call it.
  /// FormatError naming it when the bytes are not a SentencePiece model.
  static SentencePieceTokenizer from_bytes(std::string bytes, std::string name) {
    auto processor = std::make_shared<sentencepiece::SentencePieceProcessor>();
    if (const auto status = processor->LoadFromSerializedProto(bytes); !status.ok())
      detail::fail<FormatError>("SentencePieceTokenizer: '", name, "' is not a SentencePiece model: ",
                                status.ToString());
    if (processor->GetPieceSize() < 1)
      detail::fail<FormatError>("SentencePieceTokenizer: '", name, "' has no pieces");
    return SentencePieceTokenizer(std::move(processor), std::move(bytes), std::move(name));
  }

  /// The number of pieces: ids are 0 .. vocab_size() - 1.
  index_t vocab_size() const { return processor_->GetPieceSize(); }

  /// The ids of `text`: the model's normalisation, then its segmentation. No BOS or EOS is added
  /// (prepend bos_id() where a model expects one). FormatError for text the library refuses.
  std::vector<index_t> encode(std::string_view text) const {
    std::vector<int> ids;
    if (const auto status = processor_->Encode(text, &ids); !status.ok())
      detail::fail<FormatError>("SentencePieceTokenizer::encode (", name_, "): ", status.ToString());
    return {ids.begin(), ids.end()};
  }

  /// The text of `ids`: pieces joined, "▁" read as a space (the first one dropped when the model
  /// adds a dummy prefix), byte pieces joined into UTF-8 (U+FFFD for bytes that are not), control
  /// pieces such as <s> and </s> as nothing. RangeError naming the first id outside
  /// [0, vocab_size()) and its position.
  std::string decode(std::span<const index_t> ids) const {
    std::vector<int> narrow(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size())
        detail::fail<RangeError>("SentencePieceTokenizer::decode (", name_, "): id ", ids[i], " at position ", i,
                                 " is outside [0, ", vocab_size(), ")");
      narrow[i] = static_cast<int>(ids[i]);
    }
    std::string text;
    if (const auto status = processor_->Decode(narrow, &text); !status.ok())
      detail::fail<FormatError>("SentencePieceTokenizer::decode (", name_, "): ", status.ToString());
    return text;
  }

  /// The piece of an id as the model spells it ("▁the", "<0x0A>", "<s>"). RangeError outside the vocabulary.
  std::string piece(index_t id) const {
    if (id < 0 || id >= vocab_size())
      detail::fail<RangeError>("SentencePieceTokenizer::piece (", name_, "): id ", id, " is outside [0, ",
                               vocab_size(), ")");
    return processor_->IdToPiece(static_cast<int>(id));
  }

  /// The id of a piece, if the model has it.
  std::optional<index_t> piece_id(std::string_view piece) const {
    const int id = processor_->PieceToId(piece);
    // PieceToId answers unk_id() for unknown pieces; only "<unk>" itself really is that id.
    if (id < 0 || (id == processor_->unk_id() && processor_->IdToPiece(id) != piece)) return std::nullopt;
    return id;
  }

  /// Whether an id is a single-byte fallback piece (<0x00> .. <0xFF>), a control piece (<s>,
  /// </s>, ...) or the unknown piece. RangeError outside the vocabulary.
  bool is_byte(index_t id) const { return processor_->IsByte(checked(id, "is_byte")); }
  bool is_control(index_t id) const { return processor_->IsControl(checked(id, "is_control")); }
  bool is_unknown(index_t id) const { return processor_->IsUnknown(checked(id, "is_unknown")); }

  /// The model's special ids, when it defines them.
  std::optional<index_t> bos_id() const { return special(processor_->bos_id()); }
  std::optional<index_t> eos_id() const { return special(processor_->eos_id()); }
  std::optional<index_t> unk_id() const { return special(processor_->unk_id()); }
  std::optional<index_t> pad_id() const { return special(processor_->pad_id()); }

  /// The model file's bytes, as read.
  const std::string& bytes() const { return bytes_; }
  /// What messages call the model (the path it was loaded from).
  const std::string& name() const { return name_; }

  /// Writes the model file (its bytes as read) to `file`, atomically.
  void save(const std::filesystem::path& file) const { write_text_atomically(file, bytes_); }

 private:
  SentencePieceTokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor, std::string bytes,
                         std::string name)
      : processor_(std::move(processor)), bytes_(std::move(bytes)), name_(std::move(name)) {}

  int checked(index_t id, const char* who) const {
    if (id < 0 || id >= vocab_size())
      detail::fail<RangeError>("SentencePieceTokenizer::", who, " (", name_, "): id ", id, " is outside [0, ",
                               vocab_size(), ")");
    return static_cast<int>(id);
  }

  std::optional<index_t> special(int id) const {
    return id >= 0 && id < processor_->GetPieceSize() ? std::optional<index_t>(id) : std::nullopt;
  }

  // Shared by copies: the processor is immutable after loading and its const calls are thread-safe.
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor_;
  std::string bytes_;
  std::string name_;
};

static_assert(Tokenizer<SentencePieceTokenizer>);

}  // namespace dca
