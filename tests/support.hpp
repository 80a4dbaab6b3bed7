// Shared helpers for the test suite: deterministic random tensors, comparisons, tiny presets,
// sample text and temporary directories.
#pragma once

#include "dca/core/random.hpp"
#include "dca/nn/config.hpp"
#include "dca/tensor/tensor.hpp"
#include "dca/data/corpus.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef DCA_TEST_DATA_DIR
#error "DCA_TEST_DATA_DIR must point at tests/data (tests/CMakeLists.txt's dca_test_suite defines it)"
#endif

namespace dca::test {

/// A fresh directory under the system's temporary directory, removed with its contents at scope exit.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dca-test-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("TempDir: mkdtemp failed for " + pattern);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

/// A tensor with entries uniform in [lo, hi), reproducible from `seed`.
template <Scalar T = double>
Tensor<T> random_tensor(Shape shape, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Tensor<T> t(shape);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(dist(rng));
  return t;
}

/// max |a - b| / max(max |b|, tiny): the relative error the parity tests use. `a` and `b` are
/// spans (or anything with size() and operator[]) of equal length.
template <class A, class B>
double max_relative_difference(const A& a, const B& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-300);
}

/// max |a - b|, or infinity when the shapes differ: the absolute error the reference tests use.
/// `a` and `b` are tensors or views (anything with shape(), numel() and operator[]).
template <class A, class B>
double max_abs_difference(const A& a, const B& b) {
  if (!(a.shape() == b.shape())) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (index_t i = 0; i < a.numel(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return worst;
}

/// `t` in another precision: the float side of a float-vs-double agreement check.
template <Scalar To>
Tensor<To> converted(const Tensor<double>& t) {
  Tensor<To> out(t.shape());
  for (index_t i = 0; i < t.numel(); ++i) out[i] = static_cast<To>(t[i]);
  return out;
}

/// Tiny GPT-2, Llama (MQA) and Gemma-2 (head_dim ≠ d/H, soft-capping active at these scales, a
/// sliding window of `window` on layer 0) decoders over a vocabulary of 13, for exact tests.
inline std::vector<DecoderConfig> tiny_presets(index_t window = 3) {
  auto gemma = DecoderConfig::gemma2(
      {.vocab = 13, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .head_dim = 6, .mlp = 12, .window = window});
  gemma.attention_softcap = 2.0;
  gemma.final_softcap = 3.0;
  return {DecoderConfig::gpt2({.vocab = 13, .dim = 8, .layers = 2, .heads = 2, .max_positions = 32}),
          DecoderConfig::llama({.vocab = 13, .dim = 8, .layers = 2, .heads = 2, .kv_heads = 1, .mlp = 12}), gemma};
}

/// n token ids uniform over [0, vocab), reproducible from `seed`.
inline std::vector<index_t> random_tokens(index_t n, std::uint64_t seed, index_t vocab = 13) {
  Rng rng(seed);
  std::vector<index_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = rng.below(vocab);
  return ids;
}

/// Rows of a decoder's token-embedding table: the input embeddings the tokens `ids` stand for.
template <class Decoder>
Tensor<double> embedding_rows(Decoder& decoder, std::span<const index_t> ids) {
  const auto& table = decoder.parameters()[0]->value();
  Tensor<double> rows(Shape{static_cast<index_t>(ids.size()), table.cols()});
  for (std::size_t i = 0; i < ids.size(); ++i)
    for (index_t c = 0; c < table.cols(); ++c) rows(static_cast<index_t>(i), c) = table(ids[i], c);
  return rows;
}

/// The small English sample shipped for tests (tests/data/sample.txt) as a one-source corpus.
inline CorpusMixture sample_corpus() {
  CorpusMixture corpus;
  corpus.add(TextSource::from_file(std::string(DCA_TEST_DATA_DIR) + "/sample.txt"));
  return corpus;
}

}  // namespace dca::test
