// Specification of the KV cache: cached decoding equals full recomputation, latent insertion has
// the documented positions and visibility, slots are cropped/forked/saved exactly, gradients
// reach inserted latents, and bad input leaves the cache unchanged.
#include "dca/autodiff/gradcheck.hpp"
#include "dca/autodiff/ops/reduce.hpp"
#include "dca/cache/kv_cache.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <vector>

using dca::DecoderConfig;
using dca::index_t;
using dca::KVCache;
using dca::Shape;
using dca::Tensor;

namespace {

std::vector<DecoderConfig> presets() { return dca::test::tiny_presets(3); }

std::vector<index_t> tokens(index_t n, std::uint64_t seed) { return dca::test::random_tokens(n, seed); }

// The reference: one forward over the whole extended sequence x[0..t], z, x[t+1..] (as input
// embeddings), with explicit positions, no cache. Returns the logits of every row.
Tensor<double> full_recompute(dca::Decoder<double>& decoder, std::span<const index_t> ids, index_t t,
                              const Tensor<double>& z, dca::LatentPositions policy) {
  const index_t n_latents = z.rows(), n = static_cast<index_t>(ids.size()), d = decoder.config().hidden_size;
  const auto token_rows = dca::test::embedding_rows(decoder, ids);
  Tensor<double> rows(Shape{n + n_latents, d});
  std::vector<index_t> positions;
  index_t r = 0;
  for (index_t i = 0; i < n; ++i) {
    for (index_t c = 0; c < d; ++c) rows(r, c) = token_rows(i, c);
    const bool after = i > t;
    positions.push_back(i + (after && policy == dca::LatentPositions::shifted ? n_latents : 0));
    ++r;
    if (i == t)
      for (index_t j = 0; j < n_latents; ++j, ++r) {
        for (index_t c = 0; c < d; ++c) rows(r, c) = z(j, c);
        positions.push_back(policy == dca::LatentPositions::shifted ? t + 1 + j : t);
      }
  }
  dca::Tape<double> tape;
  dca::DecoderInput<double> input;
  input.embeddings = tape.constant(rows);
  input.positions = positions;
  return Tensor<double>(decoder.forward(tape, input).logits.value());
}

double max_difference(std::span<const double> a, std::span<const double> b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::span<const double> row(const Tensor<double>& t, index_t r) { return t.span().subspan(static_cast<std::size_t>(r * t.cols()), static_cast<std::size_t>(t.cols())); }

}  // namespace

TEST_CASE("cached decoding equals full recomputation token by token, for every preset") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 3);
    const auto ids = tokens(12, 1);
    dca::Tape<double> tape;
    const Tensor<double> full(decoder.logits(tape, ids).value());
    KVCache<double> cache(config, 16);
    const auto prefill = cache.append_tokens(tape, decoder, std::span<const index_t>(ids).first(4));
    for (index_t i = 0; i < 4; ++i) CHECK(max_difference(row(Tensor<double>(prefill.value()), i), row(full, i)) < 1e-12);
    for (index_t i = 4; i < 12; ++i) {
      const auto logits = cache.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(static_cast<std::size_t>(i), 1));
      CHECK(max_difference(logits.value().span(), row(full, i)) < 1e-12);
    }
    CHECK(cache.size() == 12);
    CHECK(cache.next_position() == 12);
  }
}

TEST_CASE("latents inserted after t equal the full extended sequence, under both position policies") {
  for (const auto& config : presets()) {
    for (const auto policy : {dca::LatentPositions::at_insertion_point, dca::LatentPositions::shifted}) {
      CAPTURE(config.architecture);
      CAPTURE(static_cast<int>(policy));
      dca::Decoder<double> decoder(config, 5);
      const auto ids = tokens(10, 2);
      const index_t t = 4, n_latents = 3;
      const auto z = dca::test::random_tensor(Shape{n_latents, config.hidden_size}, 7);
      const auto reference = full_recompute(decoder, ids, t, z, policy);
      dca::Tape<double> tape;
      KVCache<double> cache(config, 20);
      cache.append_tokens(tape, decoder, std::span<const index_t>(ids).first(static_cast<std::size_t>(t + 1)));
      const auto latent_out = cache.insert_latents(tape, decoder, tape.constant(z), t, policy);
      for (index_t j = 0; j < n_latents; ++j) {
        CHECK(cache.kind(t + 1 + j) == dca::SlotKind::latent);
        CHECK(cache.position(t + 1 + j) == (policy == dca::LatentPositions::shifted ? t + 1 + j : t));
        CHECK(max_difference(row(Tensor<double>(latent_out.logits.value()), j), row(reference, t + 1 + j)) < 1e-12);
      }
      CHECK(cache.next_position() == (policy == dca::LatentPositions::shifted ? t + 1 + n_latents : t + 1));
      const auto after = cache.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(static_cast<std::size_t>(t + 1)));
      for (index_t i = 0; i < after.rows(); ++i)
        CHECK(max_difference(row(Tensor<double>(after.value()), i), row(reference, t + 1 + n_latents + i)) < 1e-12);
    }
  }
}

TEST_CASE("a latent inserted after t is invisible to every query at a position up to t and visible to every later one") {
  dca::Rng rng(11);
  for (int trial = 0; trial < 12; ++trial) {
    const auto config = presets()[static_cast<std::size_t>(trial % 3)];
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 100 + static_cast<std::uint64_t>(trial));
    const index_t n = 9, t = rng.below(n - 1), n_latents = 1 + rng.below(4);
    CAPTURE(t);
    CAPTURE(n_latents);
    const auto ids = tokens(n, static_cast<std::uint64_t>(trial));
    const auto z = dca::test::random_tensor(Shape{n_latents, config.hidden_size}, 1);
    const auto z_other = dca::test::random_tensor(Shape{n_latents, config.hidden_size}, 2);
    const auto a = full_recompute(decoder, ids, t, z, dca::LatentPositions::at_insertion_point);
    const auto b = full_recompute(decoder, ids, t, z_other, dca::LatentPositions::at_insertion_point);
    const auto none = full_recompute(decoder, ids, t, Tensor<double>(Shape{0, config.hidden_size}),
                                     dca::LatentPositions::at_insertion_point);
    for (index_t i = 0; i <= t; ++i) {  // queries at positions ≤ t: exactly as without latents
      CHECK(max_difference(row(a, i), row(none, i)) == 0.0);
      CHECK(max_difference(row(b, i), row(none, i)) == 0.0);
    }
    for (index_t i = t + 1; i < n; ++i)  // every later token's output depends on the latents
      CHECK(max_difference(row(a, i + n_latents), row(b, i + n_latents)) > 1e-9);
  }
}

TEST_CASE("inserting zero latents changes nothing") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 1);
  const auto ids = tokens(6, 3);
  dca::Tape<double> tape;
  KVCache<double> plain(config, 8), with_nothing(config, 8);
  plain.append_tokens(tape, decoder, std::span<const index_t>(ids).first(3));  // the same chunks, no insertion
  plain.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(3));
  with_nothing.append_tokens(tape, decoder, std::span<const index_t>(ids).first(3));
  with_nothing.insert_latents(tape, decoder, tape.constant(Tensor<double>(Shape{0, 8})), 2);
  with_nothing.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(3));
  CHECK(with_nothing.size() == plain.size());
  CHECK(with_nothing.next_position() == plain.next_position());
  for (index_t l = 0; l < config.n_layers; ++l) {
    CHECK(std::ranges::equal(with_nothing.keys(l).span(), plain.keys(l).span()));
    CHECK(std::ranges::equal(with_nothing.values(l).span(), plain.values(l).span()));
  }
}

TEST_CASE("crop then append equals a fresh build, and crop keeps positions consistent") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 2);
    const auto ids = tokens(8, 4), other = tokens(3, 5);
    dca::Tape<double> tape;
    KVCache<double> cache(config, 16);
    cache.append_tokens(tape, decoder, ids);
    cache.insert_latents(tape, decoder, tape.constant(dca::test::random_tensor(Shape{2, config.hidden_size}, 1)), 7);
    cache.crop(5);
    CHECK(cache.next_position() == 5);
    cache.append_tokens(tape, decoder, other);
    std::vector<index_t> fresh_ids(ids.begin(), ids.begin() + 5);
    fresh_ids.insert(fresh_ids.end(), other.begin(), other.end());
    KVCache<double> fresh(config, 16);
    fresh.append_tokens(tape, decoder, fresh_ids);
    for (index_t l = 0; l < config.n_layers; ++l)
      CHECK(max_difference(cache.keys(l).span(), fresh.keys(l).span()) < 1e-12);
    CHECK_THROWS_WITH_AS(cache.crop(9), doctest::Contains("cannot crop to 9 slots; the cache holds 8"), dca::RangeError);
    CHECK(cache.size() == 8);
  }
}

TEST_CASE("a fork is independent of its origin, and a prefix view never changes") {
  const auto config = presets()[2];
  dca::Decoder<double> decoder(config, 3);
  const auto ids = tokens(6, 6);
  dca::Tape<double> tape;
  KVCache<double> origin(config, 12);
  origin.append_tokens(tape, decoder, std::span<const index_t>(ids).first(4));
  const auto view = origin.prefix(3);
  const Tensor<double> keys_before(origin.keys(0));
  KVCache<double> fork = origin.fork();
  fork.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(4));
  CHECK(origin.size() == 4);
  CHECK(std::ranges::equal(origin.keys(0).span(), keys_before.span()));
  origin.append_tokens(tape, decoder, std::vector<index_t>{1, 2});
  CHECK(fork.size() == 6);
  CHECK(max_difference(fork.keys(0).span().subspan(0, 4 * fork.width()), keys_before.span()) == 0.0);
  CHECK(view.size() == 4);
  CHECK(std::ranges::equal(view.layer(0).keys.span(), keys_before.span()));
  const auto short_fork = origin.fork(2);
  CHECK(short_fork.size() == 2);
  CHECK(short_fork.next_position() == 2);
}

TEST_CASE("the gradient of a loss on tokens after the latents reaches the latents") {
  for (const auto& config : presets()) {
    CAPTURE(config.architecture);
    dca::Decoder<double> decoder(config, 9);
    decoder.freeze();
    const auto ids = tokens(7, 8);
    // The tape reads each cache during backward, so every evaluation's cache outlives the check.
    std::deque<KVCache<double>> caches;
    const auto result = dca::check_gradients(
        [&](auto z) {
          auto& tape = z.tape();
          auto& cache = caches.emplace_back(config, 12);
          cache.append_tokens(tape, decoder, std::span<const index_t>(ids).first(3));
          cache.insert_latents(tape, decoder, z, 2);
          return cache.append_tokens(tape, decoder, std::span<const index_t>(ids).subspan(3));
        },
        dca::test::random_tensor(Shape{2, config.hidden_size}, 4, -0.5, 0.5));
    CHECK(result);
  }
}

TEST_CASE("latents computed from an active value stay on the tape as the cache's active tail") {
  const auto config = presets()[0];
  dca::Decoder<double> decoder(config, 2);
  decoder.freeze();
  dca::Tape<double> tape;
  KVCache<double> cache(config, 12);
  cache.append_tokens(tape, decoder, tokens(3, 1));
  CHECK(cache.active_slots() == 0);  // tokens through a frozen decoder are constants
  const auto z = tape.variable(dca::test::random_tensor(Shape{2, config.hidden_size}, 4));
  cache.insert_latents(tape, decoder, z, 2);
  CHECK(cache.active_slots() == 2);
  const auto logits = cache.append_tokens(tape, decoder, tokens(2, 2));
  CHECK(cache.active_slots() == 4);  // tokens after active latents depend on them
  tape.backward(dca::sum(logits));
  CHECK(dca::Tensor<double>(z.grad()).matrix().norm() > 0);
}

TEST_CASE("a cache saved to disk loads back slot for slot") {
  const auto config = presets()[2];
  dca::Decoder<double> decoder(config, 4);
  dca::Tape<double> tape;
  KVCache<double> cache(config, 10);
  cache.append_tokens(tape, decoder, tokens(4, 1));
  cache.insert_latents(tape, decoder, tape.constant(dca::test::random_tensor(Shape{2, 8}, 3)), 3);
  const dca::test::TempDir dir;
  const auto path = dir.path / "cache.safetensors";
  cache.save(path);
  KVCache<double> loaded(config, 10);
  loaded.load(path);
  CHECK(loaded.size() == 6);
  CHECK(loaded.next_position() == cache.next_position());
  CHECK(loaded.kind(5) == dca::SlotKind::latent);
  CHECK(loaded.position(5) == 3);
  CHECK(std::ranges::equal(loaded.values(1).span(), cache.values(1).span()));
  KVCache<double> small(config, 4);
  CHECK_THROWS_WITH_AS(small.load(path), doctest::Contains("6 slots do not fit this cache's capacity of 4"),
                       dca::FormatError);
  CHECK(small.size() == 0);
}

TEST_CASE("bad input throws a clear error and leaves the cache unchanged") {
  auto gpt2 = DecoderConfig::gpt2(
      {.vocab = 13, .dim = 8, .layers = 2, .heads = 2, .max_positions = 6});  // six learned positions
  dca::Decoder<double> decoder(gpt2, 1);
  dca::Tape<double> tape;
  KVCache<double> cache(gpt2, 7);
  cache.append_tokens(tape, decoder, tokens(4, 1));
  const Tensor<double> before(cache.keys(0));
  auto unchanged = [&] {
    CHECK(cache.size() == 4);
    CHECK(cache.next_position() == 4);
    CHECK(std::ranges::equal(cache.keys(0).span(), before.span()));
  };
  CHECK_THROWS_WITH_AS(cache.append_tokens(tape, decoder, tokens(4, 2)),
                       doctest::Contains("4 new slots do not fit: 4 of 7 slots are used"), dca::RangeError);
  unchanged();
  CHECK_THROWS_WITH_AS(cache.append_tokens(tape, decoder, tokens(3, 2)),
                       doctest::Contains("position id 6 at row 2 exceeds the 6 learned positions"), dca::RangeError);
  unchanged();
  CHECK_THROWS_WITH_AS(cache.insert_latents(tape, decoder, tape.constant(Tensor<double>(Shape{1, 8})), 4),
                       doctest::Contains("insertion point 4 is outside the 4 cached slots"), dca::RangeError);
  CHECK_THROWS_WITH_AS(cache.insert_latents(tape, decoder, tape.constant(Tensor<double>(Shape{1, 8})), 1),
                       doctest::Contains("insert into fork(2) instead"), dca::UsageError);
  unchanged();
  dca::Decoder<double> other(DecoderConfig::gpt2({.vocab = 13, .dim = 8, .layers = 3, .heads = 2, .max_positions = 6}),
                             1);
  CHECK_THROWS_WITH_AS(cache.append_tokens(tape, other, tokens(1, 3)),
                       doctest::Contains("the cache holds 2 layers of width 8 but the model has 3 layers of width 8"),
                       dca::ShapeError);
  unchanged();
  CHECK_THROWS_AS(cache.position(4), dca::RangeError);
  CHECK_THROWS_AS(KVCache<double>(gpt2, 0), dca::RangeError);
}

TEST_CASE("latent slots computed on a tape must be detached before the tape is reused") {
  const auto config = presets()[1];
  dca::Decoder<double> decoder(config, 1);
  decoder.freeze();
  dca::Tape<double> tape;
  KVCache<double> cache(config, 10);
  cache.append_tokens(tape, decoder, tokens(3, 1));
  cache.insert_latents(tape, decoder, tape.variable(dca::test::random_tensor(Shape{2, 8}, 1)), 2);
  CHECK(cache.active_slots() == 2);
  tape.reset();
  CHECK_THROWS_WITH_AS(cache.append_tokens(tape, decoder, tokens(1, 2)), doctest::Contains("call detach()"),
                       dca::UsageError);
  CHECK(cache.size() == 5);
  cache.detach();
  CHECK(cache.active_slots() == 0);
  CHECK(cache.append_tokens(tape, decoder, tokens(1, 2)).rows() == 1);
}
