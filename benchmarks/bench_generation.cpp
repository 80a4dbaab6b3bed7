// Generation throughput: decoding with the KV cache against recomputing the whole context, float32,
// no gradients, on the GPT-2 style "small" config of docs/performance.md (L=4, H=4, d=256, V=256)
// at a context of T=256 tokens.
//   ./build/benchmarks/bench_generation --benchmark_repetitions=5 --benchmark_counters_tabular=true
// BM_DecodeCached: 255 tokens are cached; one iteration appends the 256th and gets its logits (the
// crop back to 255 slots is O(1)). BM_DecodeRecompute: the same logits from one forward pass over all
// 256 tokens, as a decoder without a cache must do for every new token. BM_Generate: generate() from a
// 128-token prompt to 128 new tokens (prefill included), sampled at temperature 1.
#include <dca/cache/generate.hpp>

#include <benchmark/benchmark.h>

#include "context.hpp"

#include <vector>

namespace {

using dca::index_t;

constexpr index_t layers = 4, heads = 4, width = 256, vocab = 256, context = 256;

dca::DecoderConfig small_config() {
  return dca::DecoderConfig::gpt2(
      {.vocab = vocab, .dim = width, .layers = layers, .heads = heads, .max_positions = context});
}

std::vector<index_t> random_ids(index_t n) {
  dca::Rng rng(2);
  std::vector<index_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = rng.below(vocab);
  return ids;
}

// Args: threads.
void BM_DecodeCached(benchmark::State& state) {
  dca::set_num_threads(static_cast<int>(state.range(0)));
  dca::Decoder<float> model(small_config(), 1);
  const auto ids = random_ids(context);
  const auto prefix = std::span<const index_t>(ids).first(context - 1);
  const auto last = std::span<const index_t>(ids).last(1);
  dca::KVCache<float> cache(model.config(), context);
  dca::Tape<float> tape;
  {
    dca::NoGradGuard<float> no_grad(tape);
    cache.append_tokens(tape, model, prefix);
  }
  for (auto _ : state) {
    tape.reset();
    dca::NoGradGuard<float> no_grad(tape);
    const auto logits = cache.append_tokens(tape, model, last);
    benchmark::DoNotOptimize(logits.value().data());
    cache.crop(context - 1);
  }
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: threads.
void BM_DecodeRecompute(benchmark::State& state) {
  dca::set_num_threads(static_cast<int>(state.range(0)));
  dca::Decoder<float> model(small_config(), 1);
  const auto ids = random_ids(context);
  dca::Tape<float> tape;
  for (auto _ : state) {
    tape.reset();
    dca::NoGradGuard<float> no_grad(tape);
    const auto logits = model.logits(tape, ids);
    benchmark::DoNotOptimize(logits.value().data() + (context - 1) * vocab);
  }
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: threads. Counts new tokens only; the 128-token prefill is part of the time.
void BM_Generate(benchmark::State& state) {
  dca::set_num_threads(static_cast<int>(state.range(0)));
  constexpr index_t prompt_tokens = 128, new_tokens = 128;
  dca::Decoder<float> model(small_config(), 1);
  const auto prompt = random_ids(prompt_tokens);
  dca::KVCache<float> cache(model.config(), prompt_tokens + new_tokens);
  dca::Tape<float> tape;
  dca::GenerationConfig config;
  config.max_tokens = new_tokens;
  config.seed = 3;
  for (auto _ : state) {
    cache.reset();
    const auto result = dca::generate(tape, model, cache, prompt, config);
    if (static_cast<index_t>(result.tokens.size()) != new_tokens) state.SkipWithError("generation stopped early");
    benchmark::DoNotOptimize(result.tokens.data());
  }
  state.counters["new tokens/s"] = benchmark::Counter(new_tokens, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_DecodeCached)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_DecodeRecompute)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Generate)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

DCA_BENCHMARK_MAIN()
