// dca/data/tokenizer.hpp — what a tokenizer is (the `Tokenizer` concept: text to ids, ids to text,
// a vocabulary size), the byte-level tokenizer, `AnyTokenizer` for a tokenizer chosen at run time,
// and `TextStream`, which turns ids into text one token at a time for printing.
//
// ByteTokenizer: token i < 256 is byte i, so any byte string (UTF-8 or not) round-trips and there
// is no unknown token. Named special tokens ("<|bos|>", "<|eos|>", ...) get the ids after 255, in
// the order given. Subword tokenizers: dca/data/sentencepiece_tokenizer.hpp; the tokenizer of a
// Hugging Face model directory: dca/data/hf_tokenizer.hpp.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <algorithm>
#include <concepts>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace dca {

/// What the library asks of a tokenizer: `encode` turns text into ids in [0, vocab_size()),
/// `decode` turns ids back into text (throwing for an id outside the vocabulary). Calls are const
/// so that one tokenizer can serve several threads.
template <class T>
concept Tokenizer = requires(const T& tokenizer, std::string_view text, std::span<const index_t> ids) {
  { tokenizer.encode(text) } -> std::same_as<std::vector<index_t>>;
  { tokenizer.decode(ids) } -> std::same_as<std::string>;
  { tokenizer.vocab_size() } -> std::same_as<index_t>;
};

class ByteTokenizer {
 public:
  /// Number of byte tokens; special tokens start at this id.
  static constexpr index_t byte_tokens = 256;

  /// Bytes only: vocabulary 256.
  ByteTokenizer() = default;
  /// Bytes plus `specials`, which get ids 256, 257, ... UsageError for an empty or repeated name.
  explicit ByteTokenizer(std::vector<std::string> specials) : specials_(std::move(specials)) {
    for (std::size_t i = 0; i < specials_.size(); ++i) {
      if (specials_[i].empty()) detail::fail<UsageError>("ByteTokenizer: special token ", i, " has an empty name");
      if (std::find(specials_.begin(), specials_.begin() + static_cast<std::ptrdiff_t>(i), specials_[i]) !=
          specials_.begin() + static_cast<std::ptrdiff_t>(i))
        detail::fail<UsageError>("ByteTokenizer: special token '", specials_[i], "' is given twice");
    }
  }

  /// 256 + the number of special tokens.
  index_t vocab_size() const { return byte_tokens + static_cast<index_t>(specials_.size()); }
  /// The special tokens' names, in id order (the first has id 256).
  std::span<const std::string> specials() const { return specials_; }

  /// The id of a special token. RangeError naming it (and the known ones) when there is none.
  index_t special_id(std::string_view name) const {
    const auto found = std::find(specials_.begin(), specials_.end(), name);
    if (found == specials_.end()) {
      std::string known;
      for (const std::string& s : specials_) known += (known.empty() ? "'" : ", '") + s + "'";
      detail::fail<RangeError>("ByteTokenizer::special_id: no special token '", name,
                               "' (special tokens: ", known.empty() ? "none" : known, ")");
    }
    return byte_tokens + (found - specials_.begin());
  }

  /// One id per byte. Text never yields special ids, even if it spells a special token's name:
  /// callers insert specials explicitly, so data cannot inject them.
  std::vector<index_t> encode(std::string_view text) const {
    std::vector<index_t> ids(text.size());
    std::transform(text.begin(), text.end(), ids.begin(),
                   [](char c) { return index_t{static_cast<unsigned char>(c)}; });
    return ids;
  }

  /// The bytes of the byte ids, and each special id's name. RangeError naming the first id
  /// outside [0, vocab_size()) and its position.
  std::string decode(std::span<const index_t> ids) const {
    std::string text;
    text.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const index_t id = ids[i];
      if (id < 0 || id >= vocab_size())
        detail::fail<RangeError>("ByteTokenizer::decode: id ", id, " at position ", i, " is outside [0, ", vocab_size(),
                                 ")");
      if (id < byte_tokens)
        text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
      else
        text += specials_[static_cast<std::size_t>(id - byte_tokens)];
    }
    return text;
  }

 private:
  std::vector<std::string> specials_;
};

static_assert(Tokenizer<ByteTokenizer>);

/// Any Tokenizer behind one type, for code that picks its tokenizer at run time (from a model
/// directory or a command line). Copies share the tokenizer inside, which is only used through
/// const calls. The default is bytes.
///
///   dca::AnyTokenizer tokenizer = dca::SentencePieceTokenizer::load("tokenizer.model");
///   if (const auto* sp = tokenizer.get<dca::SentencePieceTokenizer>()) ...   // what only it has
class AnyTokenizer {
 public:
  AnyTokenizer() : AnyTokenizer(ByteTokenizer{}) {}
  template <class T>
    requires(!std::same_as<T, AnyTokenizer> && Tokenizer<T>)
  AnyTokenizer(T tokenizer) : held_(std::make_shared<const Held<T>>(std::move(tokenizer))) {}  // NOLINT: implicit, as std::function

  std::vector<index_t> encode(std::string_view text) const { return held_->encode(text); }
  std::string decode(std::span<const index_t> ids) const { return held_->decode(ids); }
  index_t vocab_size() const { return held_->vocab_size(); }

  /// The tokenizer inside when it is a T, null otherwise.
  template <Tokenizer T>
  const T* get() const {
    const auto* held = dynamic_cast<const Held<T>*>(held_.get());
    return held == nullptr ? nullptr : &held->tokenizer;
  }

 private:
  struct Interface {
    virtual ~Interface() = default;
    virtual std::vector<index_t> encode(std::string_view text) const = 0;
    virtual std::string decode(std::span<const index_t> ids) const = 0;
    virtual index_t vocab_size() const = 0;
  };
  template <class T>
  struct Held final : Interface {
    explicit Held(T t) : tokenizer(std::move(t)) {}
    std::vector<index_t> encode(std::string_view text) const override { return tokenizer.encode(text); }
    std::string decode(std::span<const index_t> ids) const override { return tokenizer.decode(ids); }
    index_t vocab_size() const override { return tokenizer.vocab_size(); }
    T tokenizer;
  };
  std::shared_ptr<const Interface> held_;
};

static_assert(Tokenizer<AnyTokenizer>);

/// Turns a growing sequence of ids into text, for printing generated tokens as they come.
/// Decoding each token on its own would be wrong twice over: a subword tokenizer spells a piece
/// differently at the start of a text than after other text (SentencePiece's "▁the" is "the"
/// first and " the" later), and a UTF-8 character may span several byte tokens. So `push` decodes
/// the whole sequence and returns what that adds to the text returned so far, holding back a
/// trailing incomplete UTF-8 character — or trailing U+FFFD, which a tokenizer may write for bytes
/// of a character still arriving — until it completes or `flush` is called.
///
///   dca::TextStream stream(tokenizer, prompt_ids);
///   ... on each new token:  std::fputs(stream.push(token).c_str(), stdout);
///   ... at the end:         std::fputs(stream.flush().c_str(), stdout);
template <Tokenizer Tok>
class TextStream {
 public:
  /// `context` (a prompt) comes before the stream: its text is not returned, but it decides how the
  /// first new piece reads. The tokenizer must outlive the stream.
  explicit TextStream(const Tok& tokenizer, std::vector<index_t> context = {})
      : tokenizer_(&tokenizer), ids_(std::move(context)), returned_(tokenizer.decode(ids_)) {}

  /// Appends `id`; returns the text it completes (possibly empty).
  std::string push(index_t id) {
    ids_.push_back(id);
    const std::string text = tokenizer_->decode(ids_);
    return advance(text, complete_prefix(text));
  }

  /// Everything not yet returned, complete or not.
  std::string flush() {
    const std::string text = tokenizer_->decode(ids_);
    return advance(text, text.size());
  }

  /// The context and every id pushed.
  std::span<const index_t> ids() const { return ids_; }

  /// The length of `text` without a trailing incomplete UTF-8 sequence and trailing U+FFFD.
  static std::size_t complete_prefix(std::string_view text) {
    constexpr std::string_view replacement = "\xEF\xBF\xBD";
    while (text.ends_with(replacement)) text.remove_suffix(replacement.size());
    // The last lead byte among the last four; a sequence it starts that is shorter than its lead
    // byte announces is still arriving.
    for (std::size_t back = 1; back <= std::min<std::size_t>(4, text.size()); ++back) {
      const auto byte = static_cast<unsigned char>(text[text.size() - back]);
      if ((byte & 0xC0) == 0x80) continue;  // a continuation byte
      const std::size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
      return length > back ? text.size() - back : text.size();
    }
    return text.size();
  }

 private:
  // Returns text[already returned, end) and marks it returned. Should the text before `end` differ
  // from what was returned (a tokenizer that respells earlier text), what follows the common part.
  std::string advance(const std::string& text, std::size_t end) {
    std::size_t common = 0;
    while (common < std::min(end, returned_.size()) && text[common] == returned_[common]) ++common;
    if (end <= common) return {};
    std::string piece = text.substr(common, end - common);
    returned_ = text.substr(0, end);
    return piece;
  }

  const Tok* tokenizer_;
  std::vector<index_t> ids_;
  std::string returned_;  // the decoded text up to where it has been returned (the context's included)
};

}  // namespace dca
