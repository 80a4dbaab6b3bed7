// generate — continues a prompt with a Hugging Face model directory: a byte-level one (no tokenizer
// file: pretrain's output) or one that comes with a SentencePiece tokenizer.model (pretrain
// --tokenizer, Llama- and Gemma-family checkpoints); optionally with a trained coprocessor that
// augments the cache with latents after the prompt (and every --every tokens).
//
//   ./build/examples/generate --model runs/pretrain/model --prompt "The meaning of "
//   ./build/examples/generate --model runs/pretrain/model --prompt "The meaning of " --greedy --max-tokens 80
//   ./build/examples/generate --model runs/pretrain/model --prompt "The meaning of " --compare
//       --coprocessor runs/coprocessor/coprocessor     # (one line) augmented, then the decoder alone
//   ./build/examples/generate --help                   # every option
//
// The text streams out as it is generated; a summary (tokens, speed, why generation stopped,
// where latents went in) follows on stderr. The tokenizer must agree with the model's vocabulary
// (dca/data/hf_tokenizer.hpp); prompts begin with BOS when tokenizer_config.json says so, and
// generation stops at the tokenizer's EOS unless --ignore-eos.
#include <dca/coproc/session.hpp>
#include <dca/data/hf_tokenizer.hpp>
#include <dca/dca.hpp>
#include <dca/io/coprocessor_dir.hpp>

#include "run_control.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

using dca::index_t;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model_dir;
  std::string prompt;
  std::string coprocessor_dir;  // empty: the decoder alone
  bool compare = false;         // with a coprocessor: also generate with the decoder alone
  dca::GenerationConfig sampling;
  bool greedy = false;
  bool ignore_eos = false;
  dca::AugmentationSchedule schedule;
  int threads = 2;
};

using Coprocessor = dca::Coprocessor<float, dca::dynamic_latents>;
using Session = dca::AugmentedSession<float, dca::dynamic_latents, dca::UniformAhead>;

// Generates from `prompt_ids` (the decoder alone when `coprocessor` is null), streaming the text
// after `prompt`, then a summary on stderr.
void run_once(dca::Decoder<float>& decoder, Coprocessor* coprocessor, const dca::HfTokenizer& tokenizer,
              const std::vector<index_t>& prompt_ids, const Options& o) {
  // Room for the prompt, every new token and every latent the schedule can insert.
  const index_t augmentations = coprocessor == nullptr ? 0
                                                       : (o.schedule.after_prompt ? 1 : 0) +
                                                             (o.schedule.every > 0 ? o.sampling.max_tokens / o.schedule.every : 0) +
                                                             static_cast<index_t>(o.schedule.after_tokens.size());
  const index_t latent_slots = coprocessor == nullptr ? 0 : augmentations * coprocessor->n_latents();
  const auto capacity = static_cast<index_t>(prompt_ids.size()) + o.sampling.max_tokens + latent_slots;
  Session session(decoder, coprocessor, capacity);

  dca::TextStream stream(tokenizer.tokenizer, prompt_ids);
  std::fputs(o.prompt.c_str(), stdout);
  std::fflush(stdout);
  const auto start = Clock::now();
  const dca::AugmentedGeneration out = session.generate(prompt_ids, o.sampling, o.schedule, [&](index_t token) {
    std::fputs(stream.push(token).c_str(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputs(stream.flush().c_str(), stdout);
  std::putchar('\n');
  std::fflush(stdout);

  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const auto produced = static_cast<index_t>(out.result.tokens.size());
  std::fprintf(stderr, "[%s: %ld tokens in %.2f s, %.1f tokens/s; stopped: %s", coprocessor ? "augmented" : "decoder",
               static_cast<long>(produced), seconds, static_cast<double>(produced) / std::max(seconds, 1e-9),
               dca::stop_reason_name(out.result.reason));
  if (coprocessor != nullptr && out.insertions.empty()) {
    std::fprintf(stderr, "; no latents inserted%s", o.schedule.asynchronous ? " (none arrived before the end)" : "");
  } else if (coprocessor != nullptr) {
    std::fprintf(stderr, "; %ld latents inserted after", static_cast<long>(coprocessor->n_latents()));
    for (std::size_t i = 0; i < out.insertions.size(); ++i)
      std::fprintf(stderr, "%s %ld", i == 0 ? "" : ",", static_cast<long>(out.insertions[i]));
    std::fprintf(stderr, " generated tokens");
  }
  if (out.skipped > 0) std::fprintf(stderr, " (%ld skipped: no room)", static_cast<long>(out.skipped));
  std::fprintf(stderr, "]\n");
}

int run(Options& o) {
  dca::set_num_threads(o.threads);
  if (o.greedy) o.sampling.temperature = 0;
  o.sampling.validate();
  o.schedule.validate();
  if (o.coprocessor_dir.empty() && (o.compare || o.schedule.every > 0 || o.schedule.asynchronous))
    throw dca::UsageError("--compare, --every and --async need --coprocessor");

  // The tokenizer first: checking it against config.json is cheap, and says more than a failure to
  // load weights for a vocabulary no tokenizer in the directory spells.
  const dca::HfTokenizer tokenizer = dca::load_hf_tokenizer(o.model_dir);
  auto decoder = dca::load_hf_decoder<float>(o.model_dir);
  if (tokenizer.eos_id && !o.ignore_eos) o.sampling.stop_tokens.push_back(*tokenizer.eos_id);
  const std::vector<index_t> prompt_ids = tokenizer.encode_prompt(o.prompt);
  if (prompt_ids.empty()) throw dca::UsageError("--prompt is empty and the tokenizer adds no BOS: nothing to continue");
  std::optional<Coprocessor> coprocessor;
  if (!o.coprocessor_dir.empty()) coprocessor.emplace(dca::load_coprocessor<float>(o.coprocessor_dir, decoder));

  const dca::DecoderConfig& config = decoder.config();
  std::fprintf(stderr, "[model %s: %s, %ld layers, d=%ld, vocabulary %ld; tokenizer %s; prompt %zu tokens%s]\n",
               o.model_dir.c_str(), std::string(dca::to_string(config.architecture)).c_str(), static_cast<long>(config.n_layers),
               static_cast<long>(config.hidden_size), static_cast<long>(config.vocab_size),
               tokenizer.description().c_str(), prompt_ids.size(), tokenizer.add_bos ? " with BOS" : "");
  if (coprocessor)
    std::fprintf(stderr, "[coprocessor %s: %ld latents, after the prompt%s]\n", o.coprocessor_dir.c_str(),
                 static_cast<long>(coprocessor->n_latents()),
                 o.schedule.every > 0 ? (" and every " + std::to_string(o.schedule.every) + " tokens").c_str() : "");

  run_once(decoder, coprocessor ? &*coprocessor : nullptr, tokenizer, prompt_ids, o);
  if (o.compare) {
    std::fputs("\n", stdout);
    run_once(decoder, nullptr, tokenizer, prompt_ids, o);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Continue a prompt with a Hugging Face model directory (byte-level or SentencePiece), "
               "optionally augmented by a trained coprocessor"};
  Options o;
  o.sampling.max_tokens = 200;
  o.sampling.temperature = 0.8;
  // Required, but checked after parsing: CLI11 reports a missing option before an unknown one, and
  // a misspelt flag should be named as such.
  app.add_option("--model", o.model_dir, "Hugging Face model directory (config.json, model.safetensors, "
                                         "tokenizer.model if not byte-level); required");
  app.add_option("--prompt", o.prompt, "text to continue; required");
  app.add_option("--coprocessor", o.coprocessor_dir,
                 "a trained coprocessor's directory (save_coprocessor) to augment the decoder's cache with");
  app.add_flag("--compare", o.compare, "with --coprocessor: then generate again with the decoder alone");
  app.add_option("--every", o.schedule.every, "with --coprocessor: also insert latents after every N new tokens (0: "
                                              "after the prompt only)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--async", o.schedule.asynchronous,
               "with --coprocessor: compute latents on a second thread while decoding goes on");
  app.add_option("--max-tokens", o.sampling.max_tokens, "new tokens at most")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--temperature", o.sampling.temperature, "sampling temperature (0: greedy)")->capture_default_str();
  app.add_flag("--greedy", o.greedy, "always take the most likely token (temperature 0)");
  app.add_option("--top-k", o.sampling.top_k, "sample among the k most likely tokens (0: off)")->capture_default_str();
  app.add_option("--top-p", o.sampling.top_p, "nucleus sampling: the most likely tokens with this mass (1: off)")
      ->capture_default_str();
  app.add_option("--seed", o.sampling.seed, "sampling seed: the same seed gives the same text")->capture_default_str();
  app.add_flag("--ignore-eos", o.ignore_eos, "do not stop at the tokenizer's end-of-sequence token");
  app.add_option("--threads", o.threads, "threads for GEMMs and parallel loops")
      ->capture_default_str()
      ->check(examples::at_least(1));
  CLI11_PARSE(app, argc, argv);
  for (const char* required : {"--model", "--prompt"})
    if (app.count(required) == 0) {
      std::fprintf(stderr, "generate: %s is required (see --help)\n", required);
      return 2;
    }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
}
