// dca/data/hf_tokenizer.hpp — the tokenizer of a Hugging Face model directory: SentencePiece when
// the directory has a `tokenizer.model` (Llama, Gemma, a `pretrain --tokenizer` run), bytes when
// it has none (dca's byte-level models), checked against the vocabulary of its config.json.
//
//   auto model = dca::load_hf_decoder<float>(dir);
//   dca::HfTokenizer tokenizer = dca::load_hf_tokenizer(dir);
//   std::vector<dca::index_t> prompt = tokenizer.encode_prompt("The meaning of ");   // BOS first if asked
//
// SentencePiece models need a dca configured with libsentencepiece-dev (DCA_HAVE_SENTENCEPIECE).
// Hugging Face's `tokenizer.json` (the `tokenizers` library's byte-pair files: GPT-2, Qwen2) is not
// read: a directory with only that is refused, naming it.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/data/tokenizer.hpp"
#include "dca/io/atomic_file.hpp"
#include "dca/io/hf_config.hpp"
#if defined(DCA_HAVE_SENTENCEPIECE)
#include "dca/data/sentencepiece_tokenizer.hpp"
#endif

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dca {

/// Whether this build reads SentencePiece models (the dca target found libsentencepiece-dev).
inline constexpr bool have_sentencepiece =
#if defined(DCA_HAVE_SENTENCEPIECE)
    true;
#else
    false;
#endif

/// A model directory's tokenizer and how its prompts begin.
struct HfTokenizer {
  AnyTokenizer tokenizer;          // SentencePiece (tokenizer.model) or bytes (no tokenizer file)
  std::filesystem::path file;      // the tokenizer.model read; empty for bytes
  std::optional<index_t> bos_id;   // the model's beginning- and end-of-sequence ids, when it has them
  std::optional<index_t> eos_id;
  bool add_bos = false;            // tokenizer_config.json's add_bos_token: prompts start with bos_id

  /// The ids of a prompt: bos_id first when add_bos, then the text's.
  std::vector<index_t> encode_prompt(std::string_view text) const {
    std::vector<index_t> ids;
    if (add_bos) ids.push_back(*bos_id);
    const std::vector<index_t> encoded = tokenizer.encode(text);
    ids.insert(ids.end(), encoded.begin(), encoded.end());
    return ids;
  }

  /// "SentencePiece <file> (N pieces)" or "bytes (256 ids)", for messages and logs.
  std::string description() const {
    if (file.empty()) return "bytes (" + std::to_string(tokenizer.vocab_size()) + " ids)";
    return "SentencePiece " + file.string() + " (" + std::to_string(tokenizer.vocab_size()) + " pieces)";
  }
};

/// Loads the tokenizer of `directory` (tokenizer.model, else bytes) and reads `add_bos_token` from
/// its tokenizer_config.json if there is one (absent: false). Throws FormatError naming the files
/// and both sizes when the tokenizer's vocabulary differs from config.json's vocab_size (a model
/// whose embedding was padded beyond its tokenizer included: ids the tokenizer cannot spell would
/// be sampled), when add_bos_token is true for a tokenizer without a BOS id, or for malformed
/// files; IoError when a file cannot be read; UsageError for a tokenizer.model in a build without
/// SentencePiece.
inline HfTokenizer load_hf_tokenizer(const std::filesystem::path& directory) {
  namespace fs = std::filesystem;
  const fs::path config_file = directory / "config.json";
  const index_t model_vocab = read_hf_config(config_file).vocab_size;
  const fs::path model_file = directory / "tokenizer.model";
  HfTokenizer out;
  if (fs::exists(model_file)) {
#if defined(DCA_HAVE_SENTENCEPIECE)
    const SentencePieceTokenizer sentencepiece = SentencePieceTokenizer::load(model_file);
    if (sentencepiece.vocab_size() != model_vocab)
      detail::fail<FormatError>(model_file.string(), " has ", sentencepiece.vocab_size(), " pieces, but ",
                                config_file.string(), " gives the model a vocab_size of ", model_vocab,
                                ": the tokenizer and the model disagree");
    out.tokenizer = sentencepiece;
    out.file = model_file;
    out.bos_id = sentencepiece.bos_id();
    out.eos_id = sentencepiece.eos_id();
#else
    detail::fail<UsageError>(model_file.string(), " is a SentencePiece model, and this build of dca has no "
                             "SentencePiece: install libsentencepiece-dev and configure dca again");
#endif
  } else if (model_vocab != ByteTokenizer::byte_tokens) {
    const bool has_json = fs::exists(directory / "tokenizer.json");
    detail::fail<FormatError>(directory.string(), " has no tokenizer.model, so its tokenizer would be bytes (",
                              ByteTokenizer::byte_tokens, " ids), but ", config_file.string(),
                              " gives the model a vocab_size of ", model_vocab,
                              has_json ? "; its tokenizer.json (a Hugging Face tokenizers file) is not supported, "
                                         "only SentencePiece tokenizer.model files are"
                                       : "");
  }

  const fs::path settings_file = directory / "tokenizer_config.json";
  if (fs::exists(settings_file)) {
    nlohmann::json settings;
    try {
      settings = nlohmann::json::parse(read_text_file(settings_file));
    } catch (const nlohmann::json::exception& e) {
      detail::fail<FormatError>(settings_file.string(), ": not valid JSON: ", e.what());
    }
    out.add_bos = detail::hf_optional<bool>(settings, "add_bos_token", false, settings_file.string());
    if (out.add_bos && !out.bos_id)
      detail::fail<FormatError>(settings_file.string(), " sets add_bos_token, but the tokenizer (",
                                out.description(), ") has no BOS id");
  }
  return out;
}

/// Writes `tokenizer` into a model directory (created if needed) so that load_hf_tokenizer finds it
/// again: a SentencePiece model as tokenizer.model, atomically; nothing for bytes (a directory
/// without a tokenizer file is byte-level), after removing a tokenizer.model left there by an
/// earlier save. UsageError for another kind of tokenizer, which a directory cannot hold.
inline void save_hf_tokenizer(const AnyTokenizer& tokenizer, const std::filesystem::path& directory) {
  const std::filesystem::path model_file = directory / "tokenizer.model";
#if defined(DCA_HAVE_SENTENCEPIECE)
  const SentencePieceTokenizer* sentencepiece = tokenizer.get<SentencePieceTokenizer>();
#else
  const void* sentencepiece = nullptr;  // no other kind of tokenizer file is written
#endif
  const auto* bytes = tokenizer.get<ByteTokenizer>();
  if (sentencepiece == nullptr && (bytes == nullptr || bytes->vocab_size() != ByteTokenizer::byte_tokens))
    detail::fail<UsageError>("save_hf_tokenizer: a model directory holds a SentencePiece model or plain bytes (",
                             ByteTokenizer::byte_tokens, " ids); this tokenizer has ", tokenizer.vocab_size(),
                             " ids and is neither");
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) detail::fail<IoError>("save_hf_tokenizer: cannot create directory ", directory.string(), ": ", error.message());
#if defined(DCA_HAVE_SENTENCEPIECE)
  if (sentencepiece != nullptr) return sentencepiece->save(model_file);
#endif
  if (!std::filesystem::remove(model_file, error) && error)
    detail::fail<IoError>("save_hf_tokenizer: cannot remove the earlier ", model_file.string(), ": ", error.message());
}

}  // namespace dca
