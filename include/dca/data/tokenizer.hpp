// dca/data/tokenizer.hpp — the byte-level tokenizer: token i < 256 is byte i, so any byte string
// (UTF-8 or not) round-trips and there is no unknown token. Named special tokens ("<|bos|>",
// "<|eos|>", ...) get the ids after 255, in the order given.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <algorithm>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dca {

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

}  // namespace dca
