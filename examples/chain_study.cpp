// chain_study — the reasoning study: a decoder pretrained on English text mixed with
// variable-chain programs (dca/experiment/chains.hpp), then coprocessors trained on the same
// mixture, scored on held-out programs by hop count.
//
//   ./build/examples/chain_study pretrain                        # runs/chains/decoder: the frozen decoder
//   ./build/examples/chain_study coprocessor --latents 4         # runs/chains/coprocessor-4
//   ./build/examples/chain_study coprocessor --oracle 1          # channel capacity: the prefix sees the answer
//   ./build/examples/chain_study coprocessor --source pause      # pause tokens at the same N_L
//   ./build/examples/chain_study steps                           # the decoder given worked steps as text
//   ./build/examples/chain_study loss-share [--teacher DIR]      # where loss- or gain-weighted points would land
//   ./build/examples/chain_study coprocessor --gated             # mixed with the frozen decoder through a gate
//   ./build/examples/chain_study probe --latents 2               # diagnostic: latents trained to write a step
//   ./build/examples/chain_study coprocessor --latents 2 --init runs/chains/probe-2/checkpoint.safetensors
//                                                                # the paper's objective from the probe's weights
//   ./build/examples/chain_study --help                          # every option of each
//
// Each evaluation prints, per hop count, the frozen decoder's bare answer, its answer when it
// writes the worked steps (the upper bound), and for coprocessors the augmented answer and the
// shuffled-latent control, and appends them to hops.csv in the run directory. Every training stage
// saves a checkpoint every --checkpoint-every steps and continues from it bit-identically with
// --resume (the same options otherwise); --stop-at ends a stage early on purpose. The progress line
// shows the latest evaluation's gain over the frozen decoder.
#include <dca/coproc/trainer.hpp>
#include <dca/dca.hpp>
#include <dca/experiment/chain_evaluation.hpp>
#include <dca/experiment/chain_probe.hpp>

#include "progress.hpp"
#include "run_control.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

using dca::index_t;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct Options {
  dca::ChainConfig task{.max_hops = 4, .distractor_chains = 1, .worked_fraction = 0.5};
  index_t chain_bytes = 8 << 20;  // generated training programs
  // Sampling weight of the programs; each text source weighs 1. At 3 (60% programs) a 4-layer
  // decoder had not learned one-hop lookup after 3,000 steps; at 100 (98%) it had by step 1,500.
  double chain_weight = 100.0;
  std::string fortunes_dir = "/usr/share/games/fortunes", dictionary = "/usr/share/dictd/gcide.dict.dz";
  index_t programs = 300;  // held-out programs per hop count
  index_t shots = 2;       // training lines before every prompt
  index_t eval_every = 500;
  int threads = 2;
  examples::RunControl control{.checkpoint_every = 250};
  // pretrain
  std::string decoder_dir = "runs/chains/decoder";
  std::string teacher_dir;  // loss-share and coprocessor --points-by-gain: a deeper decoder of the same mixture
  index_t layers = 4, dim = 128;
  // 4,000 steps: the lookup is learned in a sudden transition whose step varies with the seed and
  // the CPU's arithmetic (docs/coprocessor.md, "The reasoning study", sections 1 and 6).
  dca::TrainerConfig pretrain{.batch_size = 64,
                              .seq_len = 64,
                              .optimization = {.max_lr = 2e-3, .min_lr = 2e-4, .warmup_steps = 100, .total_steps = 4000},
                              .curve = {}};
  // coprocessor
  std::string out_dir;  // default runs/chains/coprocessor-<N_L>
  index_t latents = 4;
  std::string positions = "insertion", source = "coprocessor", latent_form = "residual";
  bool prefer_answers = false;  // diagnostic: points after a bare query ("?d=") first
  index_t probe_steps = 1;      // probe: the worked steps its latents are trained to write
  std::string init;             // coprocessor: start from a probe's checkpoint (same N_L and latent form)
  dca::CoprocessorConfig coprocessor{.n_ahead = 4};
  dca::CoprocessorTrainerConfig run{.batch_size = 32,
                                    .seq_len = 64,
                                    .points_per_sequence = 8,
                                    .optimization = {.max_lr = 3e-4, .min_lr = 3e-5, .warmup_steps = 50,
                                                     .total_steps = 1500, .weight_decay = 0.0},
                                    .new_lr_multiplier = 10.0,
                                    .curve = {},
                                    .preferred_points = {},
                                    .point_scores = {}};
};

dca::CorpusMixture text_corpus(const Options& o) {
  dca::CorpusMixture corpus;
  if (!o.fortunes_dir.empty())
    corpus.add(dca::TextSource::from_directory(o.fortunes_dir, dca::skip_suffixes({".dat", ".u8"})));
  if (!o.dictionary.empty()) corpus.add(dca::TextSource::from_gzip(o.dictionary));
  return corpus;
}

dca::CorpusMixture mixture(const Options& o) {
  dca::CorpusMixture corpus = text_corpus(o);
  corpus.add(dca::chain_training_source(o.task, o.chain_bytes), o.chain_weight);
  return corpus;
}

// One evaluation row per hop count: the frozen decoder's and, when given, a coprocessor's.
struct HopRow {
  index_t hops = 0;
  double direct = 0, worked = -1, augmented = -1, shuffled = -1;
};

void print_rows(index_t step, const std::vector<HopRow>& rows, double text_change) {
  std::printf("\nstep %ld, held-out programs (%% correct):\n%5s %8s %8s %10s %9s\n", static_cast<long>(step), "hops",
              "direct", "worked", "augmented", "shuffled");
  for (const HopRow& r : rows) {
    std::printf("%5ld %8.1f", static_cast<long>(r.hops), 100 * r.direct);
    for (const double v : {r.worked, r.augmented, r.shuffled})
      v < 0 ? std::printf(" %9s", "-") : std::printf(" %9.1f", 100 * v);
    std::printf("\n");
  }
  if (text_change == text_change) std::printf("English text, n = 1 perplexity change: %+.2f%%\n", text_change);
  std::fflush(stdout);
}

void append_rows(const fs::path& file, index_t step, const std::vector<HopRow>& rows, double text_change) {
  const bool fresh = !fs::exists(file);
  std::ofstream out(file, std::ios::app);
  if (fresh) out << "step,hops,direct,worked,augmented,shuffled,text_n1_perplexity_change_percent\n";
  for (const HopRow& r : rows)
    out << step << ',' << r.hops << ',' << r.direct << ',' << r.worked << ',' << r.augmented << ',' << r.shuffled << ','
        << text_change << '\n';
  if (!out) throw dca::IoError("cannot append to " + file.string());
}

// The progress line's note on the latest evaluation: the mean over hop counts of the augmented
// answers' gain over the frozen decoder's, or of the frozen decoder's accuracy when no coprocessor runs.
std::string held_out_summary(index_t step, const std::vector<HopRow>& rows) {
  double sum = 0;
  bool augmented = false;
  for (const HopRow& r : rows) {
    augmented = r.augmented >= 0;
    sum += augmented ? r.augmented - r.direct : r.direct;
  }
  char text[96];
  std::snprintf(text, sizeof text, augmented ? "held-out %+.1f points vs frozen (step %ld)" : "held-out %.1f%% (step %ld)",
                100 * sum / static_cast<double>(rows.size()), static_cast<long>(step));
  return text;
}

std::vector<HopRow> frozen_rows(dca::Decoder<float>& decoder, const Options& o, bool worked) {
  const std::string context = dca::chain_context(o.task, o.shots);
  std::vector<HopRow> rows;
  for (index_t h = 1; h <= o.task.max_hops; ++h) {
    const auto programs = dca::held_out_chains(o.task, h, o.programs);
    HopRow r{h, dca::score_chains_direct(decoder, context, programs).accuracy()};
    if (worked) r.worked = dca::score_chains_worked(decoder, context, programs).accuracy();
    rows.push_back(r);
  }
  return rows;
}

// The frozen decoder's bare answers with the first s worked steps written after the prompt, per
// hop count: what latents could reach if the decoder read them as written steps.
int given_steps(const Options& o) {
  auto decoder = dca::load_hf_decoder<float>(fs::path(o.decoder_dir) / "model");
  const std::string context = dca::chain_context(o.task, o.shots);
  std::printf("held-out programs (%% correct) given the first s worked steps after \"?q=\":\n%5s", "hops");
  for (index_t s = 0; s < o.task.max_hops; ++s) std::printf("  s = %ld", static_cast<long>(s));
  std::printf("\n");
  for (index_t h = 1; h <= o.task.max_hops; ++h) {
    const auto programs = dca::held_out_chains(o.task, h, o.programs);
    std::printf("%5ld", static_cast<long>(h));
    for (index_t s = 0; s < h; ++s)
      std::printf(" %7.1f", 100 * dca::score_chains_given_steps(decoder, context, programs, s).accuracy());
    std::printf("\n");
  }
  return 0;
}

// The next-token loss at every row of `b` [B·T]: −log softmax(logits)[target].
std::vector<double> next_token_losses(dca::Decoder<float>& decoder, const dca::Batch& b) {
  dca::Tape<float> tape;
  const auto losses = dca::cross_entropy_per_token(decoder.logits(tape, b.inputs, b.batch), b.targets).value();
  return std::vector<double>(losses.data(), losses.data() + losses.numel());
}

// Where a draw of augmentation points weighted by a score would land: the frozen decoder's
// next-token loss, or with --teacher the teacher's advantage over it (frozen − teacher loss, at
// least 0: the loss that computation can remove), at every point the trainer can draw
// (t < T − N_A) of held-out program windows, split between points before a bare answer (the slot
// of '=' in "?d=") and the rest.
int loss_share(const Options& o) {
  auto decoder = dca::load_hf_decoder<float>(fs::path(o.decoder_dir) / "model");
  std::optional<dca::Decoder<float>> teacher;
  if (!o.teacher_dir.empty()) teacher.emplace(dca::load_hf_decoder<float>(fs::path(o.teacher_dir) / "model"));
  dca::CorpusMixture programs;
  programs.add(dca::chain_training_source(o.task, o.chain_bytes));
  const index_t T = o.run.seq_len, K = o.run.points_per_sequence, drawable = T - o.coprocessor.n_ahead;
  if (K < 1 || K > drawable)
    throw dca::RangeError("loss-share: --points " + std::to_string(K) + " must lie in 1.." + std::to_string(drawable) +
                          " (sequence " + std::to_string(T) + " − N_A " + std::to_string(o.coprocessor.n_ahead) + ")");
  struct Share {
    index_t points = 0, top_k = 0;
    double frozen = 0, teacher = 0, score = 0;
  } answers, rest;
  index_t windows = 0;
  for (const dca::Batch& b : programs.validation_batches(o.run.batch_size, T, 16)) {
    const std::vector<double> frozen = next_token_losses(decoder, b),
                              taught = teacher ? next_token_losses(*teacher, b) : std::vector<double>{};
    for (index_t r = 0; r < b.batch; ++r, ++windows) {
      const auto at = [&](index_t t) { return b.inputs[static_cast<std::size_t>(r * T + t)]; };
      const auto is_answer = [&](index_t t) { return t >= 2 && at(t) == '=' && at(t - 2) == '?'; };
      std::vector<std::pair<double, index_t>> by_score;  // (score, t)
      for (index_t t = 0; t < drawable; ++t) {
        const auto row = static_cast<std::size_t>(r * T + t);
        const double score = teacher ? std::max(0.0, frozen[row] - taught[row]) : frozen[row];
        Share& s = is_answer(t) ? answers : rest;
        ++s.points;
        s.frozen += frozen[row];
        if (teacher) s.teacher += taught[row];
        s.score += score;
        by_score.emplace_back(score, t);
      }
      std::partial_sort(by_score.begin(), by_score.begin() + K, by_score.end(), std::greater<>());
      for (index_t j = 0; j < K; ++j) ++(is_answer(by_score[static_cast<std::size_t>(j)].second) ? answers : rest).top_k;
    }
  }
  const double points = static_cast<double>(answers.points + rest.points), score = answers.score + rest.score,
               top_k = static_cast<double>(windows * K);
  std::printf("%s on %ld held-out program windows of %ld bytes, points t < %ld:\n%-22s %8s %12s %13s %10s %12s %10s\n",
              teacher ? "frozen decoder and teacher" : "frozen decoder", static_cast<long>(windows), static_cast<long>(T),
              static_cast<long>(drawable), "points", "count", "frozen loss", "teacher loss", "% uniform",
              teacher ? "% by gain" : "% by loss", ("% top-" + std::to_string(K)).c_str());
  for (const auto& [name, s] : {std::pair<const char*, const Share&>{"before a bare answer", answers}, {"the rest", rest}}) {
    const auto n = static_cast<double>(s.points);
    std::printf("%-22s %8ld %12.3f ", name, static_cast<long>(s.points), s.frozen / n);
    teacher ? std::printf("%13.3f", s.teacher / n) : std::printf("%13s", "-");
    std::printf(" %10.2f %12.2f %10.2f\n", 100 * n / points, 100 * s.score / score,
                100 * static_cast<double>(s.top_k) / top_k);
  }
  return 0;
}

int pretrain(const Options& o) {
  examples::check_writable_directory(o.decoder_dir, "--decoder");
  const dca::CorpusMixture corpus = mixture(o);
  dca::Decoder<float> decoder(
      dca::DecoderConfig::llama({.vocab = 256, .dim = o.dim, .layers = o.layers, .heads = o.dim / 32, .mlp = 3 * o.dim}),
      o.pretrain.seed);
  dca::Trainer<float> trainer(decoder, corpus, o.pretrain);
  const fs::path checkpoint = o.control.checkpoint_in(o.decoder_dir), hops = fs::path(o.decoder_dir) / "hops.csv";
  if (o.control.resume) {
    trainer.load_checkpoint(checkpoint);
    examples::keep_rows_through(hops, trainer.step_count());
    std::printf("resumed at step %ld\n", static_cast<long>(trainer.step_count()));
  }
  std::printf("pretraining %ld layers, d = %ld on text + chains (1..%ld hops, %ld distractors): %ld steps of %ld×%ld\n",
              static_cast<long>(o.layers), static_cast<long>(o.dim), static_cast<long>(o.task.max_hops),
              static_cast<long>(o.task.distractor_chains), static_cast<long>(o.pretrain.optimization.total_steps),
              static_cast<long>(o.pretrain.batch_size), static_cast<long>(o.pretrain.seq_len));
  const auto start = Clock::now();
  const index_t first = trainer.step_count(), total = o.pretrain.optimization.total_steps;
  const index_t last = o.control.last_step(first, total);
  std::string held_out;
  while (trainer.step_count() < last) {
    const double loss = trainer.step();
    const index_t step = trainer.step_count();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double rate = static_cast<double>(step - first) / seconds;
    examples::draw_progress(step, total, loss, rate * static_cast<double>(o.pretrain.batch_size * o.pretrain.seq_len),
                            "tok", static_cast<double>(total - step) / rate, held_out);
    if (step % o.eval_every == 0 || step == total) {
      const auto rows = frozen_rows(decoder, o, true);
      print_rows(step, rows, std::nan(""));
      append_rows(hops, step, rows, std::nan(""));
      held_out = held_out_summary(step, rows);
      dca::save_hf_decoder(decoder, fs::path(o.decoder_dir) / "model");
    }
    if (o.control.checkpoint_due(step, last)) trainer.save_checkpoint(checkpoint);
  }
  if (trainer.step_count() < total)
    std::printf("\nstopped at step %ld; continue with --resume\n", static_cast<long>(trainer.step_count()));
  return 0;
}

// What a coprocessor or probe run starts from: its directory (--out, or runs/chains/<kind>-<N_L>,
// created), the frozen decoder, and the coprocessor config with the chosen N_L and positions.
struct LatentRun {
  std::string out;
  dca::Decoder<float> decoder;
  dca::CoprocessorConfig config;

  LatentRun(const Options& o, const std::string& kind, index_t n_latents)
      : out(o.out_dir.empty() ? "runs/chains/" + kind + "-" + std::to_string(n_latents) : o.out_dir),
        decoder(dca::load_hf_decoder<float>(fs::path(o.decoder_dir) / "model")),
        config(o.coprocessor) {
    examples::check_writable_directory(out, "--out");
    decoder.freeze();
    config.n_latents = n_latents;
    config.positions =
        o.positions == "shifted" ? dca::LatentPositions::shifted : dca::LatentPositions::at_insertion_point;
  }
};

int train_coprocessor(const Options& o) {
  LatentRun setup(o, "coprocessor", o.latents);
  const std::string& out = setup.out;
  dca::Decoder<float>& decoder = setup.decoder;
  const dca::CorpusMixture corpus = mixture(o), text = text_corpus(o);
  if (text.source_count() > 0) examples::check_held_out(text, o.run.seq_len);  // each evaluation's text rows
  dca::CoprocessorConfig c = setup.config;
  c.source = o.source == "pause" ? dca::LatentSource::pause : dca::LatentSource::coprocessor;
  c.latent_form = o.latent_form == "normed"          ? dca::LatentForm::normed
                  : o.latent_form == "token-mixture" ? dca::LatentForm::token_mixture
                                                     : dca::LatentForm::residual;
  dca::Coprocessor<float, dca::dynamic_latents> coprocessor(decoder, c);
  dca::CoprocessorTrainerConfig run = o.run;
  if (o.prefer_answers)  // the slot of '=' in "?d=": the next token is a bare answer
    run.preferred_points = [](std::span<const index_t> s, index_t t) { return t >= 2 && s[t] == '=' && s[t - 2] == '?'; };
  std::optional<dca::Decoder<float>> teacher;
  if (!o.teacher_dir.empty()) {  // the loss a deeper decoder removes: what computation can
    teacher.emplace(dca::load_hf_decoder<float>(fs::path(o.teacher_dir) / "model"));
    run.point_scores = [&](const dca::Batch& b) {
      std::vector<double> gain = next_token_losses(decoder, b);
      const std::vector<double> taught = next_token_losses(*teacher, b);
      for (std::size_t i = 0; i < gain.size(); ++i) gain[i] = std::max(0.0, gain[i] - taught[i]);
      return gain;
    };
  }
  const fs::path checkpoint = o.control.checkpoint_in(out), hops = fs::path(out) / "hops.csv";
  if (!o.init.empty() && !o.control.resume) {
    // Only the weights: a throwaway loop of the same groups takes the probe's optimizer state.
    dca::TrainingLoop<float> probe_loop(coprocessor.parameter_groups(run.new_lr_multiplier), run.optimization);
    probe_loop.load_checkpoint(o.init, {}, [](const auto&) {});
    std::printf("coprocessor weights from %s (step %ld)\n", o.init.c_str(), static_cast<long>(probe_loop.step_count()));
  }
  dca::CoprocessorTrainer trainer(decoder, coprocessor, corpus, run);
  if (o.control.resume) {
    trainer.load_checkpoint(checkpoint);
    examples::keep_rows_through(hops, trainer.step_count());
    std::printf("resumed at step %ld\n", static_cast<long>(trainer.step_count()));
  }
  const std::string context = dca::chain_context(o.task, o.shots);
  const std::vector<HopRow> frozen = frozen_rows(decoder, o, false);  // the decoder is frozen: scored once
  const auto evaluate = [&](index_t step) {
    std::vector<HopRow> rows = frozen;
    for (HopRow& r : rows) {
      const auto programs = dca::held_out_chains(o.task, r.hops, o.programs);
      r.augmented = dca::score_chains_augmented(decoder, coprocessor, context, programs).accuracy();
      if (c.source == dca::LatentSource::coprocessor)
        r.shuffled =
            dca::score_chains_augmented(decoder, coprocessor, context, programs, dca::LatentControl::shuffled).accuracy();
    }
    double text_change = std::nan("");
    if (c.oracle_lookahead == 0) {
      const auto batches = text.validation_batches(o.run.batch_size, o.run.seq_len, 4);
      const auto table = dca::evaluate_ahead(decoder, coprocessor, std::span<const dca::Batch>(batches), 16, 7);
      text_change = 100.0 * (std::exp(table.augmented[0] - table.baseline[0]) - 1.0);
    }
    print_rows(step, rows, text_change);
    append_rows(hops, step, rows, text_change);
    return held_out_summary(step, rows);
  };
  std::printf("coprocessor N_L = %ld, N_A = %ld, K = %ld%s, %s positions, %s%s latents from the %s, oracle lookahead "
              "%ld: %ld steps\n",
              static_cast<long>(o.latents), static_cast<long>(c.n_ahead), static_cast<long>(o.run.points_per_sequence),
              o.prefer_answers ? " (answers first)" : teacher ? " (by a teacher's gain)" : "", o.positions.c_str(), c.gated ? "gated " : "",
              o.latent_form.c_str(), o.source.c_str(),
              static_cast<long>(c.oracle_lookahead), static_cast<long>(o.run.optimization.total_steps));
  std::string held_out;
  if (trainer.step_count() == 0) held_out = evaluate(0);
  const auto start = Clock::now();
  const index_t first = trainer.step_count(), total = o.run.optimization.total_steps;
  const index_t last = o.control.last_step(first, total);
  while (trainer.step_count() < last) {
    const double loss = trainer.step();
    const index_t step = trainer.step_count();
    const double rate = static_cast<double>(step - first) / std::chrono::duration<double>(Clock::now() - start).count();
    examples::draw_progress(step, total, loss, rate, "steps", static_cast<double>(total - step) / rate, held_out);
    if (step % o.eval_every == 0 || step == total) held_out = evaluate(step);
    if (o.control.checkpoint_due(step, last)) trainer.save_checkpoint(checkpoint);
  }
  if (trainer.step_count() < total)
    std::printf("\nstopped at step %ld; continue with --resume\n", static_cast<long>(trainer.step_count()));
  return 0;
}

// The supervised diagnostic (dca/experiment/chain_probe.hpp): a token-mixture coprocessor trained
// to write each program's first worked steps after the bare prompt. Per hop count: how often its
// latents write them, and the frozen decoder's bare answers with them and with another program's.
int probe(const Options& o) {
  LatentRun setup(o, "probe", o.latents);
  const std::string& out = setup.out;
  dca::Decoder<float>& decoder = setup.decoder;
  dca::CoprocessorConfig c = setup.config;
  c.latent_form = dca::LatentForm::token_mixture;
  dca::Coprocessor<float, dca::dynamic_latents> coprocessor(decoder, c);
  dca::TrainingLoop<float> loop(coprocessor.parameter_groups(o.run.new_lr_multiplier), o.run.optimization);
  const fs::path checkpoint = o.control.checkpoint_in(out), csv = fs::path(out) / "probe.csv";
  if (o.control.resume) {
    loop.load_checkpoint(checkpoint, {}, [](const auto&) {});
    examples::keep_rows_through(csv, loop.step_count());
    std::printf("resumed at step %ld\n", static_cast<long>(loop.step_count()));
  }
  const std::string context = dca::chain_context(o.task, o.shots);
  const std::vector<HopRow> frozen = frozen_rows(decoder, o, false);
  const auto evaluate = [&](index_t step) {
    std::printf("\nstep %ld, held-out programs (%% correct):\n%5s %8s %8s %10s %9s\n", static_cast<long>(step), "hops",
                "direct", "written", "augmented", "shuffled");
    std::vector<HopRow> rows = frozen;
    const bool fresh = !fs::exists(csv);
    std::ofstream file(csv, std::ios::app);
    if (fresh) file << "step,hops,direct,written,augmented,shuffled\n";
    for (HopRow& r : rows) {
      const auto programs = dca::held_out_chains(o.task, r.hops, o.programs);
      const double written =
          r.hops > 1 && o.probe_steps > 0 ? dca::score_chain_steps(decoder, coprocessor, context, programs, o.probe_steps).accuracy() : -1;
      const double own = dca::score_chains_augmented(decoder, coprocessor, context, programs).accuracy();
      const double shuffled =
          dca::score_chains_augmented(decoder, coprocessor, context, programs, dca::LatentControl::shuffled).accuracy();
      std::printf("%5ld %8.1f", static_cast<long>(r.hops), 100 * r.direct);
      written < 0 ? std::printf(" %8s", "-") : std::printf(" %8.1f", 100 * written);
      std::printf(" %10.1f %9.1f\n", 100 * own, 100 * shuffled);
      file << step << ',' << r.hops << ',' << r.direct << ',' << written << ',' << own << ',' << shuffled << '\n';
      r.augmented = own;
    }
    if (!file) throw dca::IoError("cannot append to " + csv.string());
    std::fflush(stdout);
    return held_out_summary(step, rows);
  };
  std::printf("probe N_L = %ld, %s positions: token-mixture latents trained to write the first %ld worked step(s) "
              "after the bare prompt, %ld steps of %ld programs\n",
              static_cast<long>(o.latents), o.positions.c_str(), static_cast<long>(o.probe_steps),
              static_cast<long>(o.run.optimization.total_steps), static_cast<long>(o.run.batch_size));
  std::string held_out;
  if (loop.step_count() == 0) held_out = evaluate(0);
  const auto start = Clock::now();
  const index_t first = loop.step_count(), total = o.run.optimization.total_steps;
  const index_t last = o.control.last_step(first, total);
  while (loop.step_count() < last) {
    // Step s's programs come from their own stream, so a resumed run draws what it would have.
    dca::ChainConfig stream = o.task;
    stream.seed = o.run.seed * 1000003 + static_cast<std::uint64_t>(loop.step_count());
    dca::ChainGenerator generator(stream);
    std::vector<dca::ChainProgram> programs;
    while (static_cast<index_t>(programs.size()) < o.run.batch_size) {
      dca::ChainProgram p = generator.next_training();
      if (p.hops() > 1) programs.push_back(std::move(p));
    }
    const double loss = loop.step([&](dca::Tape<float>& tape) {
      return dca::chain_step_loss(tape, decoder, coprocessor, context, std::span<const dca::ChainProgram>(programs),
                                  o.probe_steps)
          .loss;
    });
    const index_t step = loop.step_count();
    const double rate = static_cast<double>(step - first) / std::chrono::duration<double>(Clock::now() - start).count();
    examples::draw_progress(step, total, loss, rate, "steps", static_cast<double>(total - step) / rate, held_out);
    if (step % o.eval_every == 0 || step == total) held_out = evaluate(step);
    if (o.control.checkpoint_due(step, last)) loop.save_checkpoint(checkpoint, {});
  }
  if (loop.step_count() < total)
    std::printf("\nstopped at step %ld; continue with --resume\n", static_cast<long>(loop.step_count()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"The variable-chain reasoning study: pretrain a decoder, then train coprocessors on its mixture"};
  app.require_subcommand(1);
  const auto task_flags = [&](CLI::App* sub) {
    sub->add_option("--max-hops", o.task.max_hops, "hop counts 1..H")->capture_default_str();
    sub->add_option("--distractors", o.task.distractor_chains, "distractor chains per program")->capture_default_str();
    sub->add_option("--worked-fraction", o.task.worked_fraction, "share of training lines with worked steps")
        ->capture_default_str();
    sub->add_option("--chain-weight", o.chain_weight, "sampling weight of the programs (text sources: 1 each)")
        ->capture_default_str();
    sub->add_option("--programs", o.programs, "held-out programs per hop count")->capture_default_str();
    sub->add_option("--eval-every", o.eval_every, "evaluate every this many steps")
        ->capture_default_str()
        ->check(examples::at_least(1));
    sub->add_option("--threads", o.threads, "threads")->capture_default_str()->check(examples::at_least(1));
    sub->add_option("--decoder", o.decoder_dir, "the decoder's run directory")->capture_default_str();
  };
  CLI::App* pre = app.add_subcommand("pretrain", "pretrain the frozen decoder on text + chains");
  task_flags(pre);
  o.control.add_options(*pre);
  pre->add_option("--layers", o.layers, "decoder layers")->capture_default_str();
  pre->add_option("--dim", o.dim, "hidden size (heads of 32)")->capture_default_str();
  pre->add_option("--steps", o.pretrain.optimization.total_steps, "steps")
      ->capture_default_str()
      ->check(examples::at_least(1));
  pre->add_option("--batch", o.pretrain.batch_size, "sequences per step")
      ->capture_default_str()
      ->check(examples::at_least(1));
  pre->add_option("--seq", o.pretrain.seq_len, "bytes per sequence")
      ->capture_default_str()
      ->check(examples::at_least(1));
  pre->add_option("--lr", o.pretrain.optimization.max_lr, "peak learning rate")->capture_default_str();
  pre->add_option("--seed", o.pretrain.seed, "initialisation and batches")->capture_default_str();
  CLI::App* steps = app.add_subcommand("steps", "score the frozen decoder given the first worked steps as text");
  task_flags(steps);
  CLI::App* share = app.add_subcommand(
      "loss-share", "diagnostic: how many points a draw weighted by the frozen decoder's loss (or a teacher's gain) puts before bare answers");
  task_flags(share);
  share->add_option("--points", o.run.points_per_sequence, "K: the top-K column")->capture_default_str();
  share->add_option("--teacher", o.teacher_dir, "score points by this decoder's advantage over --decoder (a run directory)")
      ->check(CLI::ExistingDirectory);
  share->add_option("--ahead", o.coprocessor.n_ahead, "N_A: points t < seq − N_A")->capture_default_str();
  // What the coprocessor and probe subcommands share: the run, the latents and the optimisation.
  const auto latent_run_flags = [&](CLI::App* sub, const std::string& kind, const char* batch, const char* seed) {
    task_flags(sub);
    o.control.add_options(*sub);
    sub->add_option("--out", o.out_dir, "run directory (default runs/chains/" + kind + "-<N_L>)");
    sub->add_option("--latents", o.latents, "N_L, the latents per insertion")
        ->capture_default_str()
        ->check(examples::at_least(1));
    sub->add_option("--batch", o.run.batch_size, batch)->capture_default_str()->check(examples::at_least(1));
    sub->add_option("--steps", o.run.optimization.total_steps, "steps")
        ->capture_default_str()
        ->check(examples::at_least(1));
    sub->add_option("--lr", o.run.optimization.max_lr, "peak learning rate of the copied weights")->capture_default_str();
    sub->add_option("--new-lr-mult", o.run.new_lr_multiplier, "learning-rate multiplier of the new parameters")
        ->capture_default_str();
    sub->add_option("--positions", o.positions, "latent positions")->check(CLI::IsMember({"insertion", "shifted"}))
        ->capture_default_str();
    sub->add_option("--seed", o.run.seed, seed)->capture_default_str();
  };
  CLI::App* cop = app.add_subcommand("coprocessor", "train a coprocessor through the frozen decoder");
  latent_run_flags(cop, "coprocessor", "sequences per step", "batches and points (the soft tokens: --seed too)");
  cop->add_option("--ahead", o.coprocessor.n_ahead, "N_A")->capture_default_str();
  cop->add_option("--points", o.run.points_per_sequence, "K augmentation points per sequence (at most seq − N_A)")
      ->capture_default_str();
  cop->add_option("--latent-form", o.latent_form, "what a latent is (dca::LatentForm)")
      ->check(CLI::IsMember({"residual", "normed", "token-mixture"}))
      ->capture_default_str();
  cop->add_option("--source", o.source, "latents from the coprocessor or pause tokens")
      ->check(CLI::IsMember({"coprocessor", "pause"}))
      ->capture_default_str();
  cop->add_option("--oracle", o.coprocessor.oracle_lookahead, "diagnostic: the prefix reaches this many tokens past t")
      ->capture_default_str();
  cop->add_flag("--gated", o.coprocessor.gated,
               "mix the augmented prediction with the frozen decoder's through a learned gate (CoprocessorConfig::gated)");
  cop->add_option("--points-by-gain", o.teacher_dir,
                  "take each window's K points where this decoder (a deeper one's run directory) beats --decoder most")
      ->check(CLI::ExistingDirectory);
  cop->add_flag("--prefer-answers", o.prefer_answers,
               "diagnostic: take the points before bare answers first (the rest of the K uniform)");
  cop->add_option("--init", o.init, "start from the weights of a probe's checkpoint (same N_L, token-mixture form)")
      ->check(CLI::ExistingFile);
  CLI::App* pro = app.add_subcommand("probe", "diagnostic: train a coprocessor's latents to write the first worked steps");
  latent_run_flags(pro, "probe", "programs per step", "training programs (the soft tokens: --seed too)");
  pro->add_option("--probe-steps", o.probe_steps, "worked steps the latents write (one per two latents)")
      ->capture_default_str()
      ->check(examples::at_least(1));
  CLI11_PARSE(app, argc, argv);
  o.run.optimization.min_lr = o.run.optimization.max_lr / 10;
  o.pretrain.optimization.min_lr = o.pretrain.optimization.max_lr / 10;
  o.coprocessor.seed = o.run.seed;
  try {
    dca::set_num_threads(o.threads);
    std::printf("gemm: %s\n", dca::gemm_backend_summary().c_str());
    if (pre->parsed()) return pretrain(o);
    if (steps->parsed()) return given_steps(o);
    if (share->parsed()) return loss_share(o);
    if (pro->parsed()) return probe(o);
    return train_coprocessor(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nchain_study: %s\n", e.what());
    return 1;
  }
}
