// train_coprocessor — trains a coprocessor through a frozen, pretrained decoder on plain text and
// reports the held-out loss of the n-th token after the latents, with and without augmentation.
// The run directory (--out) gets a checkpoint every --checkpoint-every steps, the learning curve
// (learning_curve.csv, .svg) and at the end the trained coprocessor: its training checkpoint
// (coprocessor.safetensors) and a coprocessor directory beside the decoder's (coprocessor/:
// config.json + model.safetensors, docs/io.md) that dca::load_coprocessor and python/dca_torch.py
// load. A stopped run continues bit-identically with --resume; --stop-at ends a run early on purpose.
//
//   ./build/examples/pretrain                                  # once: writes runs/pretrain/model
//   ./build/examples/train_coprocessor                         # N_L = 16, N_A = 16, K = 16
//   ./build/examples/train_coprocessor --latents 4 --steps 300 --lora-rank 8
//   ./build/examples/train_coprocessor --latents 1 --decay 0.7      # nearer ahead tokens weigh more
//   ./build/examples/train_coprocessor --new-lr-mult 10 --curve-eval-every 50   # new parameters at 10×,
//                                                              # held-out losses more often
//   ./build/examples/train_coprocessor --steps 20000 --stop-at 5000   # a long run, in slices:
//   ./build/examples/train_coprocessor --steps 20000 --resume         # ... continued to the end
//   ./build/examples/train_coprocessor --help                  # every option
#include <dca/coproc/trainer.hpp>
#include <dca/data/hf_tokenizer.hpp>
#include <dca/dca.hpp>

#include "progress.hpp"
#include "run_control.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>

namespace {

using dca::index_t;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string decoder_dir = "runs/pretrain/model";
  std::string out_dir = "runs/coprocessor";
  index_t latents = 16;
  dca::CoprocessorConfig coprocessor;
  dca::CoprocessorTrainerConfig run;
  index_t eval_batches = 8, eval_points = 16;
  double decay = 1.0;  // ahead-token weights ∝ decay^(n−1): 1 is the paper's uniform mean
  std::string fortunes_dir = "/usr/share/games/fortunes", dictionary = "/usr/share/dictd/gcide.dict.dz";
  std::vector<std::string> extra_text;
  int threads = 2;
  examples::RunControl control;
};

// The text in the decoder's own tokens: bytes, or the ids of the tokenizer.model beside its weights
// (pretrain --tokenizer; docs/tokenizers.md).
dca::CorpusMixture load_corpus(const Options& o) {
  const dca::HfTokenizer tokenizer = dca::load_hf_tokenizer(o.decoder_dir);
  const auto tokens = [&](dca::TextSource text) {
    return tokenizer.file.empty() ? std::move(text) : text.encoded(tokenizer.tokenizer);
  };
  dca::CorpusMixture corpus;
  if (!o.fortunes_dir.empty())
    corpus.add(tokens(dca::TextSource::from_directory(o.fortunes_dir, dca::skip_suffixes({".dat", ".u8"}))));
  if (!o.dictionary.empty()) corpus.add(tokens(dca::TextSource::from_gzip(o.dictionary)));
  for (const std::string& path : o.extra_text) corpus.add(tokens(dca::TextSource::from_file(path)));
  if (corpus.source_count() == 0) throw dca::UsageError("no corpus: pass --fortunes, --dictionary or --text");
  return corpus;
}

void print_table(const dca::AheadEvaluation& before, const dca::AheadEvaluation& after) {
  std::printf("\nheld-out loss of the n-th token after the insertion point (nats/byte, %ld points):\n",
              static_cast<long>(after.points));
  std::printf("%4s  %10s  %12s  %12s  %9s\n", "n", "frozen", "untrained", "augmented", "change");
  for (std::size_t n = 0; n < after.augmented.size(); ++n)
    std::printf("%4zu  %10.4f  %12.4f  %12.4f  %+8.2f%%\n", n + 1, after.baseline[n], before.augmented[n],
                after.augmented[n], 100.0 * (after.augmented[n] / after.baseline[n] - 1));
  std::printf("%4s  %10.4f  %12.4f  %12.4f  %+8.2f%%\n", "mean", after.mean_baseline(), before.mean_augmented(),
              after.mean_augmented(), 100.0 * (after.mean_augmented() / after.mean_baseline() - 1));
}

// The latent count is read at run time (dynamic_latents) and the objective is geometric, which
// decay = 1 makes the paper's uniform mean, weight for weight: one instantiation serves every run.
int run(const Options& o) {
  dca::set_num_threads(o.threads);
  examples::check_writable_directory(o.out_dir, "--out");
  const auto corpus = load_corpus(o);
  examples::check_held_out(corpus, o.run.seq_len);
  auto decoder = dca::load_hf_decoder<float>(o.decoder_dir);
  decoder.freeze();
  // A rank above the width adds parameters without adding anything a full update lacks.
  if (o.coprocessor.lora_rank > decoder.config().hidden_size)
    throw dca::UsageError("--lora-rank " + std::to_string(o.coprocessor.lora_rank) + " exceeds the width " +
                          std::to_string(decoder.config().hidden_size) + " of the decoder " + o.decoder_dir +
                          " (0: full fine-tuning)");
  dca::CoprocessorConfig config = o.coprocessor;
  config.n_latents = o.latents;
  dca::Coprocessor<float, dca::dynamic_latents, dca::GeometricAhead> coprocessor(decoder, config, {o.decay});
  dca::CoprocessorTrainerConfig training = o.run;
  training.curve.directory = o.out_dir;
  training.curve.eval_points = o.eval_points;
  dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, training);
  index_t trainable = 0;
  for (auto* p : coprocessor.parameters()) trainable += p->numel();
  std::printf("decoder %s (%ld parameters, frozen); coprocessor with N_L = %ld, N_A = %ld, K = %ld: %ld trainable "
              "parameters\n",
              o.decoder_dir.c_str(), static_cast<long>(decoder.parameter_count()), static_cast<long>(o.latents),
              static_cast<long>(o.coprocessor.n_ahead), static_cast<long>(o.run.points_per_sequence),
              static_cast<long>(trainable));
  std::printf("gemm: %s\n", dca::gemm_backend_summary().c_str());
  const std::filesystem::path checkpoint = o.control.checkpoint_in(o.out_dir);
  const auto before = trainer.evaluate(o.eval_batches, o.eval_points);  // the untrained coprocessor
  if (o.control.resume) {
    trainer.load_checkpoint(checkpoint);
    std::printf("resumed from %s at step %ld\n", checkpoint.c_str(), static_cast<long>(trainer.step_count()));
  }
  const index_t total = o.run.optimization.total_steps, first = trainer.step_count();
  const index_t last = o.control.last_step(first, total);
  const auto start = Clock::now();
  double smoothed = 0;
  std::string held_out;  // the latest held-out evaluation of the learning curve
  while (trainer.step_count() < last) {
    const double loss = trainer.step();
    const index_t step = trainer.step_count();
    smoothed = step == first + 1 ? loss : 0.95 * smoothed + 0.05 * loss;
    const dca::LearningCurve* curve = trainer.learning_curve();
    if (curve && curve->rows() > 0 && curve->last().step == step && !curve->last().held_out.empty()) {
      const std::vector<double>& values = curve->last().held_out;  // augmented, frozen: means over n = 1..N_A
      char text[80];
      std::snprintf(text, sizeof text, "held-out %+.2f%% vs frozen (step %ld)", 100 * (values[0] / values[1] - 1),
                    static_cast<long>(step));
      held_out = text;
    }
    const double rate = static_cast<double>(step - first) / std::chrono::duration<double>(Clock::now() - start).count();
    examples::draw_progress(step, total, smoothed, rate, "steps", static_cast<double>(total - step) / rate, held_out);
    if (o.control.checkpoint_due(step, last)) trainer.save_checkpoint(checkpoint);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (trainer.step_count() < total) {
    std::printf("\nstopped at step %ld after %s (%s); continue with --resume\n", static_cast<long>(trainer.step_count()),
                dca::format_duration(seconds).c_str(), checkpoint.c_str());
    return 0;
  }
  const auto trained = std::filesystem::path(o.out_dir) / "coprocessor.safetensors";
  trainer.save_checkpoint(trained);
  const auto directory = std::filesystem::path(o.out_dir) / "coprocessor";
  dca::save_coprocessor(coprocessor, directory);
  std::printf("\ntrained in %s; saved %s and the coprocessor directory %s\n", dca::format_duration(seconds).c_str(),
              trained.c_str(), directory.c_str());
  // dca_torch.py reads --text as bytes; a subword decoder's prompt goes in as token ids.
  const bool byte_level = !std::filesystem::exists(std::filesystem::path(o.decoder_dir) / "tokenizer.model");
  std::printf("run it in PyTorch: /usr/bin/python3 python/dca_torch.py %s %s %s\n", o.decoder_dir.c_str(),
              directory.c_str(), byte_level ? "--text \"The \"" : "--ids <prompt token ids>");
  if (const dca::LearningCurve* curve = trainer.learning_curve())
    std::printf("learning curve: %s, %s\n", curve->csv_path().c_str(), curve->svg_path().c_str());
  print_table(before, trainer.evaluate(o.eval_batches, o.eval_points));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a coprocessor through a frozen decoder (differentiable cache augmentation)"};
  Options o;
  o.run.optimization.total_steps = 600;
  o.run.curve.every = 10;
  o.run.curve.evaluate_every = 100;  // the progress line shows the latest held-out gap
  o.run.curve.eval_batches = 2;
  std::string form = "residual", positions = "insertion-point", rule = "causal", input = "kv-cache";
  bool pause = false, random_init = false;
  app.add_option("--decoder", o.decoder_dir, "pretrained decoder (Hugging Face directory)")->capture_default_str();
  app.add_option("--out", o.out_dir, "run directory: the coprocessor checkpoint and the learning curve")
      ->capture_default_str();
  app.add_option("--latents", o.latents, "N_L latents per insertion")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--ahead", o.coprocessor.n_ahead, "N_A ahead tokens in the loss")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--points", o.run.points_per_sequence, "K augmentation points per sequence")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--decay", o.decay, "ahead-token loss weights ∝ decay^(n−1) (GeometricAhead); 1: uniform mean")
      ->capture_default_str();
  app.add_option("--latent-form", form, "residual, normed, final-hidden or token-mixture")->capture_default_str();
  app.add_option("--positions", positions, "insertion-point or shifted")->capture_default_str();
  app.add_option("--soft-rule", rule, "causal or bidirectional soft tokens")->capture_default_str();
  app.add_option("--input", input, "kv-cache or last-layer (ablation)")->capture_default_str();
  app.add_flag("--pause", pause, "pause-token baseline: input-independent latents");
  app.add_flag("--random-init", random_init, "initialise the coprocessor randomly instead of from the decoder");
  app.add_option("--lora-rank", o.coprocessor.lora_rank, "0: full fine-tuning; r: LoRA adapters of rank r")
      ->capture_default_str()
      ->check(examples::at_least(0));
  app.add_option("--steps", o.run.optimization.total_steps, "training steps")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--batch", o.run.batch_size, "sequences per step")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--seq-len", o.run.seq_len, "tokens per sequence")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--max-lr", o.run.optimization.max_lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", o.run.optimization.min_lr, "final learning rate")->capture_default_str();
  app.add_option("--warmup", o.run.optimization.warmup_steps, "warmup steps")->capture_default_str();
  app.add_option("--new-lr-mult", o.run.new_lr_multiplier,
                 "learning-rate multiplier of the parameters initialised here (soft tokens, latent projection, LoRA B)")
      ->capture_default_str();
  app.add_option("--seed", o.run.seed, "batches and augmentation points")->capture_default_str();
  app.add_option("--curve-every", o.run.curve.every, "steps per row of <out>/learning_curve.csv and .svg (0: none)")
      ->capture_default_str()
      ->check(examples::at_least(0));
  app.add_option("--curve-eval-every", o.run.curve.evaluate_every,
                 "steps between held-out evaluations in the curve, a multiple of --curve-every (0: none)")
      ->capture_default_str()
      ->check(examples::at_least(0));
  app.add_option("--curve-eval-batches", o.run.curve.eval_batches, "held-out batches per curve evaluation")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--eval-batches", o.eval_batches, "held-out batches in the final table")
      ->capture_default_str()
      ->check(examples::at_least(1));
  app.add_option("--eval-points", o.eval_points, "augmentation points per held-out sequence (0: all)")
      ->capture_default_str()
      ->check(examples::at_least(0));
  app.add_option("--threads", o.threads, "threads")->capture_default_str()->check(examples::at_least(1));
  app.add_option("--fortunes", o.fortunes_dir, "fortune files (\"\" to skip)")->capture_default_str();
  app.add_option("--dictionary", o.dictionary, "gzip dictionary (\"\" to skip)")->capture_default_str();
  app.add_option("--text", o.extra_text, "more plain-text files to mix in (weight 1 each)");
  o.control.add_options(app);
  CLI11_PARSE(app, argc, argv);

  try {
    const std::map<std::string, dca::LatentForm> forms{{"residual", dca::LatentForm::residual},
                                                       {"normed", dca::LatentForm::normed},
                                                       {"final-hidden", dca::LatentForm::final_hidden},
                                                       {"token-mixture", dca::LatentForm::token_mixture}};
    if (!forms.contains(form))
      throw dca::UsageError("--latent-form must be residual, normed, final-hidden or token-mixture, got '" + form + "'");
    o.coprocessor.latent_form = forms.at(form);
    if (positions != "insertion-point" && positions != "shifted")
      throw dca::UsageError("--positions must be insertion-point or shifted");
    o.coprocessor.positions = positions == "shifted" ? dca::LatentPositions::shifted : dca::LatentPositions::at_insertion_point;
    if (rule != "causal" && rule != "bidirectional") throw dca::UsageError("--soft-rule must be causal or bidirectional");
    o.coprocessor.soft_token_rule = rule == "causal" ? dca::AttentionRule::causal : dca::AttentionRule::bidirectional;
    if (input != "kv-cache" && input != "last-layer") throw dca::UsageError("--input must be kv-cache or last-layer");
    o.coprocessor.input = input == "kv-cache" ? dca::CoprocessorInput::kv_cache : dca::CoprocessorInput::last_layer;
    o.coprocessor.source = pause ? dca::LatentSource::pause : dca::LatentSource::coprocessor;
    o.coprocessor.init_from_decoder = !random_init;
    if (app.count("--warmup") == 0)
      o.run.optimization.warmup_steps = std::min(o.run.optimization.warmup_steps, o.run.optimization.total_steps / 10);
    if (!(o.decay > 0 && o.decay <= 1)) throw dca::UsageError("--decay must lie in (0, 1]");
    const index_t every = o.run.curve.every, evaluate_every = o.run.curve.evaluate_every;
    if (evaluate_every > 0 && (every == 0 || evaluate_every % every != 0))
      throw dca::UsageError("--curve-eval-every " + std::to_string(evaluate_every) +
                            " must be a multiple of --curve-every " + std::to_string(every) +
                            " (evaluations go into rows of the learning curve)");
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ntrain_coprocessor: %s\n", e.what());
    return 1;
  }
}
