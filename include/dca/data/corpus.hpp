// dca/data/corpus.hpp — training text: byte corpora loaded from files, directories, gzip files
// or strings; each split into training and held-out validation text; mixed by weight; and a
// seeded sampler of next-token batches whose tokens are bytes (ByteTokenizer ids 0..255) — or a
// subword tokenizer's ids once a source is encoded with it (`source.encoded(tokenizer)`), and then
// sizes, splits, windows and offsets count tokens where this file says bytes.
//
//   dca::CorpusMixture corpus;
//   corpus.add(dca::TextSource::from_gzip("/usr/share/dictd/gcide.dict.dz"), 1.0);
//   corpus.add(dca::TextSource::from_directory("/usr/share/games/fortunes", dca::skip_suffixes({".dat", ".u8"})), 2.0);
//   dca::BatchSampler sampler(corpus, /*seed=*/1);
//   dca::Batch batch = sampler.sample(8, 128);                     // 8 windows of 129 bytes
//   for (const dca::Batch& b : corpus.validation_batches(8, 128, 20)) { ... }
//
// Loading needs zlib (`#include <zlib.h>`, link ZLIB::ZLIB or -lz).
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/core/random.hpp"
#include "dca/autodiff/parallel.hpp"
#include "dca/data/tokenizer.hpp"
#include "dca/io/atomic_file.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dca {

namespace detail {

// Throws for zlib's current error on `file`: IoError for a system error, FormatError otherwise.
[[noreturn]] inline void fail_gzip(const std::filesystem::path& path, gzFile file) {
  int status = Z_OK;
  const char* message = gzerror(file, &status);
  if (status == Z_ERRNO)
    fail<IoError>("TextSource::from_gzip: reading '", path.string(), "' failed: ", std::strerror(errno));
  fail<FormatError>("TextSource::from_gzip: '", path.string(), "' is corrupt or truncated: ", message);
}

}  // namespace detail

/// A named byte corpus held in memory.
class TextSource {
 public:
  /// Decides which files of a directory a source takes (true keeps the file).
  using FileFilter = std::function<bool(const std::filesystem::path&)>;

  /// A source holding `bytes` as they are.
  TextSource(std::string name, std::string bytes) : name_(std::move(name)), bytes_(std::move(bytes)) {}

  /// The bytes of one file, named by its path. IoError naming the path when it cannot be read.
  static TextSource from_file(const std::filesystem::path& path) {
    return {path.string(), read_text_file(path)};
  }

  /// Every regular file under `directory` (recursively, symbolic links followed) that `keep`
  /// accepts (all when empty), concatenated as they are in path order. Named by the directory.
  /// IoError naming the directory when it cannot be listed or no file is taken, naming the file
  /// when one cannot be read.
  static TextSource from_directory(const std::filesystem::path& directory, const FileFilter& keep = {}) {
    namespace fs = std::filesystem;
    std::error_code error;
    if (!fs::is_directory(directory, error))
      detail::fail<IoError>("TextSource::from_directory: '", directory.string(), "' is not a readable directory",
                            error ? ": " + error.message() : std::string());
    std::vector<fs::path> files;
    for (fs::recursive_directory_iterator it(directory, error), end; !error && it != end; it.increment(error)) {
      std::error_code entry_error;  // a dangling symbolic link is not a regular file: skipped, not an error
      if (it->is_regular_file(entry_error) && (!keep || keep(it->path()))) files.push_back(it->path());
    }
    if (error)
      detail::fail<IoError>("TextSource::from_directory: cannot list '", directory.string(), "': ", error.message());
    if (files.empty())
      detail::fail<IoError>("TextSource::from_directory: no regular file under '", directory.string(), "'",
                            keep ? " passes the filter" : "");
    std::sort(files.begin(), files.end());
    std::string bytes;
    for (const fs::path& file : files) bytes += read_text_file(file);
    return {directory.string(), std::move(bytes)};
  }

  /// The decompressed bytes of a gzip file (dictzip files are gzip files), named by its path.
  /// IoError naming the path when it cannot be opened; FormatError naming it when it is not gzip
  /// data, is corrupt or is truncated.
  static TextSource from_gzip(const std::filesystem::path& path) {
    std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
    if (file == nullptr)
      detail::fail<IoError>("TextSource::from_gzip: cannot open '", path.string(), "': ", std::strerror(errno));
    gzbuffer(file.get(), 1 << 18);  // before the first read; the default 8 KiB makes reads syscall-bound
    constexpr std::size_t chunk = std::size_t{1} << 20;
    std::string bytes;
    for (;;) {
      const std::size_t old_size = bytes.size();
      bytes.resize(old_size + chunk);
      const int read = gzread(file.get(), bytes.data() + old_size, static_cast<unsigned>(chunk));
      if (read < 0) detail::fail_gzip(path, file.get());
      bytes.resize(old_size + static_cast<std::size_t>(read));
      if (read == 0) break;
    }
    // zlib reads a non-gzip file through unchanged ("direct" mode); here that is a format error.
    if (gzdirect(file.get()))
      detail::fail<FormatError>("TextSource::from_gzip: '", path.string(), "' is not a gzip file");
    int status = Z_OK;
    gzerror(file.get(), &status);
    if (status != Z_OK) detail::fail_gzip(path, file.get());
    // gzclose reports a stream that ended mid-member (a truncated file).
    if (const int closed = gzclose(file.release()); closed != Z_OK)
      detail::fail<FormatError>("TextSource::from_gzip: '", path.string(), "' is truncated or corrupt (zlib error ",
                                closed, ")");
    return {path.string(), std::move(bytes)};
  }

  /// The same text as `tokenizer`'s ids, for a model with a subword vocabulary: the source's size,
  /// splits, windows and batches then count tokens. The text is encoded in pieces of at most
  /// `piece_bytes` (on the library's threads), each ending after a newline — or before a space, or
  /// between UTF-8 characters, in text without one — because a subword tokenizer slows down on
  /// long strings (SentencePiece's BPE: 0.6 s a megabyte in 64 KB pieces, 1.9 s in 1 MB ones); a
  /// tokenizer that puts a dummy space before its input (SentencePiece's default) puts one before
  /// each piece, about one token in 25,000. UsageError for a source already encoded, RangeError for
  /// piece_bytes < 2 or an id that does not fit 32 bits.
  template <Tokenizer Tok>
  TextSource encoded(const Tok& tokenizer, std::size_t piece_bytes = std::size_t{1} << 16) const;

  const std::string& name() const { return name_; }
  /// The text of a source that is not encoded; UsageError for an encoded one (read tokens()).
  std::string_view bytes() const {
    if (encoded_)
      detail::fail<UsageError>("TextSource::bytes: source '", name_, "' holds token ids (it was encoded by a "
                               "tokenizer); read tokens()");
    return bytes_;
  }
  /// The ids of an encoded source; UsageError for one that is not (read bytes()).
  std::span<const std::int32_t> tokens() const {
    if (!encoded_)
      detail::fail<UsageError>("TextSource::tokens: source '", name_, "' holds bytes; encode it first (encoded())");
    return tokens_;
  }
  /// Whether the source holds a tokenizer's ids rather than bytes.
  bool is_encoded() const { return encoded_; }
  /// Bytes, or tokens of an encoded source.
  index_t size() const { return static_cast<index_t>(encoded_ ? tokens_.size() : bytes_.size()); }
  /// "bytes" or "tokens": what size() counts, for messages.
  const char* unit() const { return encoded_ ? "tokens" : "bytes"; }

 private:
  std::string name_;
  std::string bytes_;
  std::vector<std::int32_t> tokens_;  // encoded sources: 4 bytes an id, a subword ~4 bytes of text
  bool encoded_ = false;
};

namespace detail {

// Where the text piece starting at `begin` ends: after the last newline in its second half, else
// before the last space there, else at the last UTF-8 character boundary (the text's end if near).
inline std::size_t piece_end(std::string_view text, std::size_t begin, std::size_t piece_bytes) {
  if (text.size() - begin <= piece_bytes) return text.size();
  const std::string_view half = text.substr(begin + piece_bytes / 2, piece_bytes - piece_bytes / 2);
  const std::size_t offset = begin + piece_bytes / 2;
  if (const std::size_t newline = half.rfind('\n'); newline != std::string_view::npos) return offset + newline + 1;
  if (const std::size_t space = half.rfind(' '); space != std::string_view::npos) return offset + space;
  std::size_t end = begin + piece_bytes;
  while (end > begin + 1 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return end;
}

}  // namespace detail

template <Tokenizer Tok>
TextSource TextSource::encoded(const Tok& tokenizer, std::size_t piece_bytes) const {
  const std::string_view text = bytes();  // UsageError when already encoded
  if (piece_bytes < 2) detail::fail<RangeError>("TextSource::encoded: piece_bytes = ", piece_bytes, " must be at least 2");
  std::vector<std::size_t> starts{0};
  while (starts.back() < text.size()) starts.push_back(detail::piece_end(text, starts.back(), piece_bytes));
  const auto pieces = static_cast<index_t>(starts.size() - 1);
  std::vector<std::vector<index_t>> ids(static_cast<std::size_t>(pieces));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(pieces));  // nothing may leave an OpenMP region
  detail::parallel_tasks(pieces, detail::task_threads(pieces), [&](index_t p, int) {
    const auto i = static_cast<std::size_t>(p);
    try {
      ids[i] = tokenizer.encode(text.substr(starts[i], starts[i + 1] - starts[i]));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  });
  TextSource out(name_, {});
  out.encoded_ = true;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (errors[i]) std::rethrow_exception(errors[i]);
    for (const index_t id : ids[i]) {
      if (id < 0 || id > std::numeric_limits<std::int32_t>::max())
        detail::fail<RangeError>("TextSource::encoded: the tokenizer gave id ", id, " for source '", name_,
                                 "'; ids are stored in 32 bits");
      out.tokens_.push_back(static_cast<std::int32_t>(id));
    }
    std::vector<index_t>().swap(ids[i]);  // release as we go: the ids take twice the stored tokens' memory
  }
  return out;
}

/// A directory filter that skips files whose name ends with one of `suffixes`, e.g. the fortune
/// index files: skip_suffixes({".dat", ".u8"}).
inline TextSource::FileFilter skip_suffixes(std::vector<std::string> suffixes) {
  return [suffixes = std::move(suffixes)](const std::filesystem::path& path) {
    const std::string name = path.filename().string();
    return std::none_of(suffixes.begin(), suffixes.end(),
                        [&](const std::string& suffix) { return name.ends_with(suffix); });
  };
}

/// Which part of the sources a batch is drawn from.
enum class Split { train, validation };

/// "train" or "validation", for messages.
inline const char* split_name(Split split) { return split == Split::train ? "train" : "validation"; }

/// A half-open byte range [begin, end) of a source.
struct ByteRange {
  index_t begin = 0;
  index_t end = 0;
  index_t size() const { return end - begin; }
};

/// How every source is divided into training text and held-out validation text.
///
/// The held-out text is the last `validation_fraction` of each of `stripes` equal stretches of
/// the source. Contiguous runs (rather than scattered chunks) make "held-out text never appears in
/// a training batch" a range check: every window is drawn inside one run, so none straddles the
/// split. Several stripes (rather than only the tail) keep the held-out text representative of
/// ordered sources — a dictionary sorted A to Z, files concatenated in name order — at the cost of
/// seq_len window positions at each run boundary.
struct SplitOptions {
  // In [0, 1); 0 trains on everything. 2% leaves a 50 KB sample one 129-byte window per stripe.
  double validation_fraction = 0.02;
  index_t stripes = 8;  // >= 1; 1 holds out the tail only

  /// RangeError naming the field outside its range.
  void validate() const {
    if (!(validation_fraction >= 0 && validation_fraction < 1))
      detail::fail<RangeError>("SplitOptions: validation_fraction = ", validation_fraction, " is outside [0, 1)");
    if (stripes < 1) detail::fail<RangeError>("SplitOptions: stripes = ", stripes, " must be at least 1");
  }
};

/// Where a source's training and validation text lie: per stripe, a train run followed by a
/// validation run (empty runs included, so both lists have `stripes` entries).
struct SourceSplit {
  std::vector<ByteRange> train;
  std::vector<ByteRange> validation;

  const std::vector<ByteRange>& runs(Split split) const { return split == Split::train ? train : validation; }
  /// Total bytes of a part.
  index_t bytes(Split split) const {
    index_t total = 0;
    for (const ByteRange& run : runs(split)) total += run.size();
    return total;
  }
  /// Number of windows of `window` bytes that lie inside one run of a part.
  index_t window_positions(Split split, index_t window) const {
    index_t total = 0;
    for (const ByteRange& run : runs(split)) total += std::max<index_t>(0, run.size() - window + 1);
    return total;
  }
};

/// The split of a source of `size` bytes: stripe s is [s·size/stripes, (s+1)·size/stripes), and its
/// last floor(validation_fraction · stripe length) bytes are held out.
inline SourceSplit split_source(index_t size, const SplitOptions& options) {
  options.validate();
  SourceSplit split;
  for (index_t s = 0; s < options.stripes; ++s) {
    const index_t begin = s * size / options.stripes;
    const index_t end = (s + 1) * size / options.stripes;
    const auto held_out =
        static_cast<index_t>(std::floor(options.validation_fraction * static_cast<double>(end - begin)));
    split.train.push_back({begin, end - held_out});
    split.validation.push_back({end - held_out, end});
  }
  return split;
}

/// `batch` rows of `seq_len` next-token pairs, row-major: targets[r·seq_len + t] is the token that
/// follows inputs[r·seq_len + t] in the text (inputs = window[0, T), targets = window[1, T]).
struct Batch {
  index_t batch = 0;
  index_t seq_len = 0;
  std::vector<index_t> inputs;   // [batch, seq_len]
  std::vector<index_t> targets;  // [batch, seq_len]
  std::vector<index_t> sources;  // [batch]: the mixture index of each row's source
  std::vector<index_t> starts;   // [batch]: the offset of each row's window in its source (bytes, or
                                 // tokens of an encoded source)
};

namespace detail {

// Appends one window of seq_len + 1 tokens (bytes, or ids of an encoded source) starting at
// `start` to a batch as a row.
inline void append_window(Batch& out, const TextSource& text, index_t source, index_t start) {
  const auto append = [&](const auto* window) {
    out.inputs.insert(out.inputs.end(), window, window + out.seq_len);
    out.targets.insert(out.targets.end(), window + 1, window + out.seq_len + 1);
  };
  if (text.is_encoded())
    append(text.tokens().data() + start);
  else
    append(reinterpret_cast<const unsigned char*>(text.bytes().data()) + start);
  out.sources.push_back(source);
  out.starts.push_back(start);
}

inline Batch empty_batch(index_t batch, index_t seq_len) {
  Batch out{batch, seq_len, {}, {}, {}, {}};
  out.inputs.reserve(static_cast<std::size_t>(batch * seq_len));
  out.targets.reserve(static_cast<std::size_t>(batch * seq_len));
  out.sources.reserve(static_cast<std::size_t>(batch));
  out.starts.reserve(static_cast<std::size_t>(batch));
  return out;
}

inline void check_batch_shape(const char* who, index_t batch, index_t seq_len) {
  if (batch < 1 || seq_len < 1)
    fail<RangeError>(who, ": batch = ", batch, " and seq_len = ", seq_len, " must both be at least 1");
}

}  // namespace detail

/// Sources with sampling weights and their train/validation splits.
class CorpusMixture {
 public:
  explicit CorpusMixture(SplitOptions split = {}) : options_(split) { options_.validate(); }

  /// Adds a source; each batch row comes from it with probability weight / (sum of weights),
  /// whatever its size. RangeError naming the source unless the weight is finite and > 0.
  CorpusMixture& add(TextSource source, double weight = 1.0) {
    if (!std::isfinite(weight) || weight <= 0)
      detail::fail<RangeError>("CorpusMixture::add: weight ", weight, " of source '", source.name(),
                               "' must be finite and > 0");
    SourceSplit split = split_source(source.size(), options_);
    entries_.push_back({std::move(source), weight, std::move(split)});
    total_weight_ += weight;
    return *this;
  }

  index_t source_count() const { return static_cast<index_t>(entries_.size()); }
  const TextSource& source(index_t i) const { return entry(i).source; }
  double weight(index_t i) const { return entry(i).weight; }
  double total_weight() const { return total_weight_; }
  const SourceSplit& split(index_t i) const { return entry(i).split; }
  const SplitOptions& split_options() const { return options_; }

  /// RangeError naming the first source whose `split` part holds no window of seq_len + 1 bytes
  /// inside one run (with its size, the part's size and longest run); UsageError without sources.
  void check_windows(const char* who, Split split, index_t seq_len) const {
    if (entries_.empty()) detail::fail<UsageError>(who, ": the corpus has no sources");
    for (const Entry& e : entries_) {
      if (e.split.window_positions(split, seq_len + 1) > 0) continue;
      index_t longest = 0;
      for (const ByteRange& run : e.split.runs(split)) longest = std::max(longest, run.size());
      const char* unit = e.source.unit();
      detail::fail<RangeError>(who, ": the ", split_name(split), " split of source '", e.source.name(), "' (",
                               e.source.size(), " ", unit, ", of which ", e.split.bytes(split), " in ",
                               split_name(split), " runs of at most ", longest, " ", unit,
                               ") has no run of seq_len + 1 = ", seq_len + 1, " ", unit, " (seq_len ", seq_len,
                               "); use a larger source, a shorter seq_len or other "
                               "SplitOptions (validation_fraction ",
                               options_.validation_fraction, ", stripes ", options_.stripes, ")");
    }
  }

  /// Held-out text in fixed windows, the same on every call: the windows of seq_len + 1 bytes at
  /// offsets 0, seq_len, 2·seq_len, ... of every validation run (so each held-out byte after a
  /// run's first is a target once), sources in order. When there are more than
  /// max_batches·batch windows, an evenly spaced subset of that many is taken. The last batch may
  /// have fewer rows. RangeError as `check_windows`, and for non-positive sizes.
  std::vector<Batch> validation_batches(index_t batch, index_t seq_len, index_t max_batches) const {
    constexpr const char* who = "CorpusMixture::validation_batches";
    detail::check_batch_shape(who, batch, seq_len);
    if (max_batches < 1) detail::fail<RangeError>(who, ": max_batches = ", max_batches, " must be at least 1");
    check_windows(who, Split::validation, seq_len);
    std::vector<std::pair<index_t, index_t>> windows;  // (source, start)
    for (index_t s = 0; s < source_count(); ++s)
      for (const ByteRange& run : split(s).validation)
        for (index_t start = run.begin; start + seq_len + 1 <= run.end; start += seq_len)
          windows.emplace_back(s, start);
    const auto available = static_cast<index_t>(windows.size());
    const index_t wanted = std::min(available, max_batches * batch);
    // Window j of the subset is floor(j·available / wanted), computed as j·q + floor(j·r / wanted)
    // so nothing overflows for large corpora.
    const index_t quotient = available / wanted, remainder = available % wanted;
    std::vector<Batch> batches;
    for (index_t j = 0; j < wanted; ++j) {
      if (j % batch == 0) batches.push_back(detail::empty_batch(std::min(batch, wanted - j), seq_len));
      const auto [s, start] = windows[static_cast<std::size_t>(j * quotient + j * remainder / wanted)];
      detail::append_window(batches.back(), source(s), s, start);
    }
    return batches;
  }

 private:
  struct Entry {
    TextSource source;
    double weight;
    SourceSplit split;
  };

  const Entry& entry(index_t i) const {
    if (i < 0 || i >= source_count())
      detail::fail<RangeError>("CorpusMixture: source index ", i, " is outside [0, ", source_count(), ")");
    return entries_[static_cast<std::size_t>(i)];
  }

  SplitOptions options_;
  std::vector<Entry> entries_;
  double total_weight_ = 0;
};

/// Draws training (or validation) batches from a mixture, reproducibly: the same seed gives the
/// same batches on every platform, because the generator is std::mt19937_64 (fully specified) and
/// the mapping of its output to ranges is dca::Rng's (std::uniform_*_distribution is not portable).
/// Each row picks a source by weight, then a start uniform over every window of seq_len + 1 bytes
/// lying inside one run of that source's split. The mixture must outlive the sampler.
class BatchSampler {
 public:
  BatchSampler(const CorpusMixture& corpus, std::uint64_t seed) : corpus_(&corpus), rng_(seed) {}

  /// `batch` windows of seq_len + 1 bytes from the `split` part. RangeError naming a source whose
  /// part has no such window, or for non-positive sizes.
  Batch sample(index_t batch, index_t seq_len, Split split = Split::train) {
    constexpr const char* who = "BatchSampler::sample";
    detail::check_batch_shape(who, batch, seq_len);
    corpus_->check_windows(who, split, seq_len);
    const index_t window = seq_len + 1;
    Batch out = detail::empty_batch(batch, seq_len);
    for (index_t row = 0; row < batch; ++row) {
      const index_t s = pick_source();
      const SourceSplit& parts = corpus_->split(s);
      index_t position = rng_.below(parts.window_positions(split, window));
      for (const ByteRange& run : parts.runs(split)) {
        const index_t positions = std::max<index_t>(0, run.size() - window + 1);
        if (position < positions) {
          detail::append_window(out, corpus_->source(s), s, run.begin + position);
          break;
        }
        position -= positions;
      }
    }
    return out;
  }

  /// The random state, to save with a checkpoint so that a resumed run draws the same batches.
  std::string state() const { return rng_.state(); }
  void set_state(const std::string& state) { rng_.set_state(state); }

 private:
  index_t pick_source() {
    const double target = rng_.uniform() * corpus_->total_weight();
    double cumulative = 0;
    for (index_t s = 0; s + 1 < corpus_->source_count(); ++s) {
      cumulative += corpus_->weight(s);
      if (target < cumulative) return s;
    }
    return corpus_->source_count() - 1;  // also catches target rounding up to the total
  }

  const CorpusMixture* corpus_;
  Rng rng_;
};

}  // namespace dca
