// pretrain — trains a small decoder on real English text on a CPU: byte-level, or over the
// vocabulary of a SentencePiece model given with --tokenizer (e.g. one trained with Debian's
// spm_train; docs/tokenizers.md), which is then saved beside the weights as tokenizer.model.
//
// Default corpus: Debian's `fortunes` (/usr/share/games/fortunes, ~2.5 MB) mixed with the
// Collaborative International Dictionary of English (`dict-gcide`, ~40 MB once decompressed), both
// installed by scripts/install-deps.sh. Shows a progress bar, evaluates on held-out text, writes
// checkpoints (resumable with --resume), prints a generated sample, and saves the model as a
// Hugging Face directory that later examples load.
//
//   ./build/examples/pretrain                      # the default run (~10 minutes on 2 cores)
//   ./build/examples/pretrain --steps 200 --eval-every 50   # a quick look
//   ./build/examples/pretrain --tokenizer fortunes.model --out runs/pretrain-spm   # subword tokens
//   ./build/examples/pretrain --help               # every hyper-parameter
#include <dca/cache/generate.hpp>
#include <dca/dca.hpp>
#include <dca/data/hf_tokenizer.hpp>
#include <dca/data/tokenizer.hpp>
#include <dca/train/trainer.hpp>

#include "progress.hpp"
#include "run_control.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

using dca::index_t;
using Clock = std::chrono::steady_clock;


// Continues `prompt` by `length` tokens with cached decoding, printing each token's text as it comes.
// The model was trained on windows of `context` tokens, so the cache holds at most that many: when it
// is full, generation restarts from the last context/2 tokens (one prefill) and continues.
void print_sample(dca::Decoder<float>& model, const dca::AnyTokenizer& tokenizer, const std::string& prompt,
                  index_t length, index_t context, dca::GenerationConfig config) {
  std::vector<index_t> text = tokenizer.encode(prompt);
  dca::TextStream stream(tokenizer, text);
  dca::KVCache<float> cache(model.config(), context);
  dca::Tape<float> tape;
  std::fputs(prompt.c_str(), stdout);
  const std::uint64_t seed = config.seed;
  index_t produced = 0;
  for (std::uint64_t restart = 0; produced < length; ++restart) {
    const index_t window = restart == 0 ? context : std::max<index_t>(context / 2, 1);
    const auto keep = static_cast<std::size_t>(std::min<index_t>(static_cast<index_t>(text.size()), window));
    cache.reset();
    config.max_tokens = length - produced;
    config.seed = seed + restart;
    const auto result = dca::generate(tape, model, cache, std::span<const index_t>(text).last(keep), config,
                                      [&](index_t token) {
                                        std::fputs(stream.push(token).c_str(), stdout);
                                        std::fflush(stdout);
                                        return true;
                                      });
    text.insert(text.end(), result.tokens.begin(), result.tokens.end());
    produced += static_cast<index_t>(result.tokens.size());
    if (result.reason != dca::StopReason::cache_full) break;
  }
  std::fputs(stream.flush().c_str(), stdout);
  std::putchar('\n');
}

// The tokenizer of --tokenizer: a SentencePiece model file, or bytes when none is given.
dca::AnyTokenizer load_tokenizer(const std::string& file) {
  if (file.empty()) return dca::ByteTokenizer{};
#if defined(DCA_HAVE_SENTENCEPIECE)
  return dca::SentencePieceTokenizer::load(file);
#else
  throw dca::UsageError("--tokenizer needs SentencePiece, which this build of dca was configured without: install "
                        "libsentencepiece-dev and configure again");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Pretrain a small decoder on real English text, byte-level or over a SentencePiece vocabulary"};
  std::string architecture = "llama";
  index_t layers = 4, heads = 4, dim = 128, mlp = 384;
  dca::TrainerConfig run;
  dca::OptimizationConfig& optimization = run.optimization;
  optimization.total_steps = 3200;
  run.curve = {.directory = "", .every = 10, .evaluate_every = 400, .eval_batches = 40};
  int threads = 2;
  index_t checkpoint_every = 500, sample_bytes = 300;
  double fortunes_weight = 1.0, dictionary_weight = 1.0, time_limit_minutes = 0;
  dca::GenerationConfig sampling;
  sampling.temperature = 0.8;
  std::string fortunes_dir = "/usr/share/games/fortunes", dictionary = "/usr/share/dictd/gcide.dict.dz";
  std::vector<std::string> extra_text;
  std::string out_dir = "runs/pretrain", prompt = "The meaning of ", tokenizer_file;
  bool resume = false;

  app.add_option("--arch", architecture, "llama (rotary, RMSNorm, SwiGLU), qwen2, gemma2 or gpt2 (learned positions)")
      ->capture_default_str()
      ->check(CLI::IsMember({"llama", "qwen2", "gemma2", "gpt2"}));
  app.add_option("--layers", layers, "transformer blocks")->capture_default_str()->check(examples::at_least(1));
  app.add_option("--heads", heads, "attention heads")->capture_default_str()->check(examples::at_least(1));
  app.add_option("--dim", dim, "model width d")->capture_default_str()->check(examples::at_least(1));
  app.add_option("--mlp", mlp, "MLP width")->capture_default_str()->check(examples::at_least(1));
  app.add_option("--tokenizer", tokenizer_file,
                 "a SentencePiece model (spm_train's .model): train over its vocabulary instead of bytes; saved "
                 "as <out>/model/tokenizer.model");
  app.add_option("--seq-len", run.seq_len, "tokens (bytes, without --tokenizer) per training sequence")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--batch", run.batch_size, "sequences per step")->capture_default_str()->check(examples::at_least(1));
  app.add_option("--steps", optimization.total_steps, "optimizer steps (the cosine schedule spans them)")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--max-lr", optimization.max_lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", optimization.min_lr, "final learning rate")->capture_default_str();
  app.add_option("--warmup", optimization.warmup_steps, "linear warmup steps")->capture_default_str();
  app.add_option("--weight-decay", optimization.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  app.add_option("--clip", optimization.grad_clip, "global gradient-norm clip (0: off)")->capture_default_str();
  app.add_option("--seed", run.seed, "batch sampler and initialisation seed")->capture_default_str();
  app.add_option("--threads", threads, "threads for GEMMs and parallel loops")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--fortunes", fortunes_dir, "directory of fortune files (\"\" to skip)")->capture_default_str();
  app.add_option("--dictionary", dictionary, "gzip dictionary text (\"\" to skip)")->capture_default_str();
  app.add_option("--text", extra_text, "more plain-text files to mix in (weight 1 each)");
  app.add_option("--fortunes-weight", fortunes_weight, "sampling weight of the fortunes")->capture_default_str();
  app.add_option("--dictionary-weight", dictionary_weight, "sampling weight of the dictionary")->capture_default_str();
  app.add_option("--log-every", run.curve.every, "steps per row of <out>/learning_curve.csv (and .svg)")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--eval-every", run.curve.evaluate_every,
                 "steps between held-out evaluations (a multiple of --log-every)")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--eval-batches", run.curve.eval_batches, "held-out batches per evaluation")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--checkpoint-every", checkpoint_every, "steps between checkpoints")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--out", out_dir, "output directory: checkpoint, learning curve, Hugging Face model")
      ->capture_default_str();
  app.add_flag("--resume", resume, "continue from <out>/checkpoint.safetensors");
  app.add_option("--time-limit", time_limit_minutes, "stop after this many minutes (0: none)")->capture_default_str();
  app.add_option("--sample-bytes,--sample-tokens", sample_bytes, "tokens (bytes, without --tokenizer) to generate at the end")
      ->capture_default_str()
      ->check(examples::at_least(0));
  app.add_option("--temperature", sampling.temperature, "sampling temperature (0: greedy)")->capture_default_str();
  app.add_option("--top-k", sampling.top_k, "sample among the k most likely tokens (0: off)")->capture_default_str();
  app.add_option("--top-p", sampling.top_p, "nucleus sampling: the most likely tokens with this mass (1: off)")
      ->capture_default_str();
  app.add_option("--prompt", prompt, "prompt of the generated sample")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (app.count("--warmup") == 0)
    optimization.warmup_steps = std::min(optimization.warmup_steps, optimization.total_steps / 10);

  try {
    sampling.seed = run.seed;
    sampling.validate();  // before training, not after it
    if (prompt.empty()) throw dca::UsageError("--prompt must not be empty: the sample continues it");
    if (run.curve.evaluate_every % run.curve.every != 0)
      throw dca::UsageError("--eval-every " + std::to_string(run.curve.evaluate_every) +
                            " must be a multiple of --log-every " + std::to_string(run.curve.every) +
                            " (evaluations go into rows of the learning curve)");
    if (resume && !std::filesystem::exists(std::filesystem::path(out_dir) / "checkpoint.safetensors"))
      throw dca::UsageError("--resume: " + out_dir + " holds no checkpoint.safetensors to continue from");
    examples::check_writable_directory(out_dir, "--out");
    dca::set_num_threads(threads);
    const dca::AnyTokenizer tokenizer = load_tokenizer(tokenizer_file);
    const bool subword = !tokenizer_file.empty();
    const char* unit = subword ? "tokens" : "bytes";
    if (subword)
      std::printf("tokenizer %s: %ld pieces\n", tokenizer_file.c_str(), static_cast<long>(tokenizer.vocab_size()));
    dca::CorpusMixture corpus;
    // With a tokenizer, each source is encoded once here; windows and batches then count tokens.
    auto add = [&](dca::TextSource source, double weight) {
      if (subword) {
        const auto start = Clock::now();
        const double megabytes = static_cast<double>(source.size()) / 1e6;
        source = source.encoded(tokenizer);
        std::printf("encoded %s: %.1f MB into %.2f M tokens (%.2f bytes a token) in %.1f s\n", source.name().c_str(),
                    megabytes, static_cast<double>(source.size()) / 1e6, megabytes * 1e6 / static_cast<double>(source.size()),
                    std::chrono::duration<double>(Clock::now() - start).count());
      }
      corpus.add(std::move(source), weight);
    };
    if (!fortunes_dir.empty())
      add(dca::TextSource::from_directory(fortunes_dir, dca::skip_suffixes({".dat", ".u8"})), fortunes_weight);
    if (!dictionary.empty()) add(dca::TextSource::from_gzip(dictionary), dictionary_weight);
    for (const std::string& path : extra_text) add(dca::TextSource::from_file(path), 1.0);
    if (corpus.source_count() == 0) throw dca::UsageError("no corpus: pass --fortunes, --dictionary or --text");
    examples::check_held_out(corpus, run.seq_len);
    for (index_t s = 0; s < corpus.source_count(); ++s)
      std::printf("corpus %-34s %6.2f M %s (train %.2f M, held out %.3f M), weight %.2f\n",
                  corpus.source(s).name().c_str(), static_cast<double>(corpus.source(s).size()) / 1e6, unit,
                  static_cast<double>(corpus.split(s).bytes(dca::Split::train)) / 1e6,
                  static_cast<double>(corpus.split(s).bytes(dca::Split::validation)) / 1e6, corpus.weight(s));

    const std::optional<dca::Architecture> family = dca::architecture_of_model_type(architecture);
    if (!family) throw dca::UsageError("--arch must be gpt2, llama, qwen2 or gemma2, got '" + architecture + "'");
    const dca::DecoderConfig config =
        dca::DecoderConfig::preset(*family, {.vocab = tokenizer.vocab_size(),
                                             .dim = dim,
                                             .layers = layers,
                                             .heads = heads,
                                             .mlp = mlp,
                                             // a learned position table as long as the sequences
                                             .max_positions = *family == dca::Architecture::gpt2 ? run.seq_len : 1024});
    dca::Decoder<float> model(config, run.seed);
    std::printf("model %s: %ld layers, d=%ld, %ld heads, vocabulary %ld, %ld parameters; %ld steps of %ld×%ld %s, %d "
                "threads\n",
                architecture.c_str(), static_cast<long>(layers), static_cast<long>(dim), static_cast<long>(heads),
                static_cast<long>(config.vocab_size), static_cast<long>(model.parameter_count()),
                static_cast<long>(optimization.total_steps), static_cast<long>(run.batch_size),
                static_cast<long>(run.seq_len), unit, threads);
    std::printf("gemm: %s\n", dca::gemm_backend_summary().c_str());

    std::filesystem::create_directories(out_dir);
    const auto checkpoint = std::filesystem::path(out_dir) / "checkpoint.safetensors";
    run.curve.directory = out_dir;
    dca::Trainer<float> trainer(model, corpus, run);
    if (resume) {
      trainer.load_checkpoint(checkpoint);
      std::printf("resumed from %s at step %ld\n", checkpoint.c_str(), static_cast<long>(trainer.step_count()));
    }

    const auto start = Clock::now();
    const index_t tokens_per_step = run.batch_size * run.seq_len;
    const index_t first_step = trainer.step_count();
    double smoothed = 0;
    auto last_draw = start;
    while (trainer.step_count() < optimization.total_steps) {
      const double loss = trainer.step();
      smoothed = trainer.step_count() == first_step + 1 ? loss : 0.95 * smoothed + 0.05 * loss;
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const double rate = static_cast<double>((trainer.step_count() - first_step) * tokens_per_step) / elapsed;
      const index_t step = trainer.step_count();
      const dca::LearningCurve* curve = trainer.learning_curve();
      const bool evaluated =
          curve != nullptr && curve->rows() > 0 && curve->last().step == step && !curve->last().held_out.empty();
      if (std::chrono::duration<double>(Clock::now() - last_draw).count() > 0.25 || evaluated) {
        const double eta = static_cast<double>((optimization.total_steps - step) * tokens_per_step) / rate;
        examples::draw_progress(step, optimization.total_steps, smoothed, rate, "tok", eta);
        last_draw = Clock::now();
      }
      if (evaluated) {
        const double held_out = curve->last().held_out.front();
        std::printf("\n  held-out loss %.4f nats/%s (%.3f bits) at step %ld, %s\n", held_out, subword ? "token" : "byte",
                    held_out / std::log(2.0), static_cast<long>(step), dca::format_duration(elapsed).c_str());
      }
      if (step % checkpoint_every == 0 || step == optimization.total_steps) trainer.save_checkpoint(checkpoint);
      if (time_limit_minutes > 0 && elapsed > time_limit_minutes * 60) {
        std::printf("\ntime limit reached at step %ld\n", static_cast<long>(step));
        trainer.save_checkpoint(checkpoint);
        break;
      }
    }
    const double final_loss = trainer.validation_loss(run.curve.eval_batches);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("\nfinal held-out loss %.4f nats/%s after %ld steps in %s\n", final_loss, subword ? "token" : "byte",
                static_cast<long>(trainer.step_count()), dca::format_duration(seconds).c_str());
    const auto hf_dir = std::filesystem::path(out_dir) / "model";
    dca::save_hf_decoder(model, hf_dir);
    dca::save_hf_tokenizer(tokenizer, hf_dir);  // tokenizer.model beside the weights; none for bytes
    std::printf("saved the model to %s (Hugging Face layout) and checkpoints to %s\n\n", hf_dir.c_str(),
                checkpoint.c_str());
    std::printf("sample (temperature %.2f, top-k %ld, top-p %.2f):\n", sampling.temperature,
                static_cast<long>(sampling.top_k), sampling.top_p);
    print_sample(model, tokenizer, prompt, sample_bytes, run.seq_len, sampling);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\npretrain: %s\n", e.what());
    return 1;
  }
  return 0;
}
