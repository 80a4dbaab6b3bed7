// examples/run_control.hpp — what makes a long training run something one starts and leaves: a
// checkpoint every N steps in the run directory (a stopped run loses at most N steps), --resume to
// continue it bit-identically, --stop-at to end a slice of it early, and logs that a resumed run
// continues without duplicated rows; and the checks that refuse what would fail the run later (a
// zero interval, an unwritable directory, held-out text too short) before its first step.
#pragma once

#include <dca/core/config.hpp>
#include <dca/core/error.hpp>
#include <dca/data/corpus.hpp>

#include <CLI/CLI.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace examples {

/// A CLI11 check that an integer option is at least `minimum`, so that a zero interval (a division
/// by zero at the first step) or a thread count of 0 is refused at parsing: "--threads: must be at
/// least 1, got 0".
inline CLI::Validator at_least(long long minimum) {
  return CLI::Validator(
      [minimum](std::string& text) -> std::string {
        long long value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not an integer";
        if (value < minimum) return "must be at least " + std::to_string(minimum) + ", got " + text;
        return {};
      },
      ">=" + std::to_string(minimum));
}

/// Creates the output directory `dir` and writes and removes a probe file in it (UsageError naming
/// `option` and the directory otherwise): a run whose results cannot be saved is refused before
/// its first step, not after its last.
inline void check_writable_directory(const std::filesystem::path& dir, const std::string& option) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error)
    throw dca::UsageError(option + " " + dir.string() + ": cannot create the directory (" + error.message() + ")");
  const std::filesystem::path probe = dir / ".write-probe";
  bool written = false;
  {
    std::ofstream out(probe, std::ios::trunc);
    written = static_cast<bool>(out << "probe\n" << std::flush);
  }
  std::filesystem::remove(probe, error);
  if (!written) throw dca::UsageError(option + " " + dir.string() + ": the directory is not writable");
}

/// Refuses held-out text with no window of `seq_len` tokens, which would otherwise fail at the
/// first evaluation, after the training steps before it (RangeError naming --seq-len and the source).
inline void check_held_out(const dca::CorpusMixture& corpus, dca::index_t seq_len) {
  const std::string who = "--seq-len " + std::to_string(seq_len) + " (held-out text)";
  corpus.check_windows(who.c_str(), dca::Split::validation, seq_len);
}

struct RunControl {
  dca::index_t checkpoint_every = 100;  // steps between checkpoints: a stopped run loses at most this many
  bool resume = false;                  // continue the run in the directory from its checkpoint
  dca::index_t stop_at = 0;             // end after this step, its checkpoint written, to go on with --resume;
                                        // 0: train to the last step of the schedule

  /// --checkpoint-every, --resume and --stop-at on `app`.
  void add_options(CLI::App& app) {
    app.add_option("--checkpoint-every", checkpoint_every, "steps between checkpoints (a stopped run loses at most these)")
        ->capture_default_str()
        ->check(at_least(1));
    app.add_flag("--resume", resume, "continue the run in the run directory from its checkpoint, bit-identically");
    app.add_option("--stop-at", stop_at, "stop after this step, checkpoint written, to continue later with --resume")
        ->check(at_least(1));
  }

  /// The checkpoint of the run in `dir`, after checking that the run may start: a checkpoint there
  /// and no --resume would be overwritten, --resume without one has nothing to continue (UsageError).
  std::filesystem::path checkpoint_in(const std::filesystem::path& dir) const {
    const std::filesystem::path checkpoint = dir / "checkpoint.safetensors";
    const bool exists = std::filesystem::exists(checkpoint);
    if (exists && !resume)
      throw dca::UsageError(dir.string() + " holds a run (" + checkpoint.string() +
                            "): pass --resume to continue it, or another directory to start a new one");
    if (!exists && resume)
      throw dca::UsageError("--resume: " + dir.string() + " holds no checkpoint.safetensors to continue from");
    return checkpoint;
  }

  /// The step this process trains to, from `step` (where it starts): --stop-at, or `total`.
  dca::index_t last_step(dca::index_t step, dca::index_t total) const {
    if (stop_at == 0) return total;
    if (stop_at <= step || stop_at > total)
      throw dca::UsageError("--stop-at " + std::to_string(stop_at) + " must lie after the run's step " +
                            std::to_string(step) + " and at most at its last step " + std::to_string(total));
    return stop_at;
  }

  /// Whether a checkpoint is due after `step`, in a process that trains to `last`.
  bool checkpoint_due(dca::index_t step, dca::index_t last) const {
    return step % checkpoint_every == 0 || step == last;
  }
};

/// Keeps the header and the rows of a step-indexed CSV log (first column: the step) up to `step`,
/// rewriting the file: a run resumed from that step's checkpoint then appends its rows again
/// without duplicates. A last line without its newline (a write cut short) goes too. A missing
/// file is left missing.
inline void keep_rows_through(const std::filesystem::path& csv, dca::index_t step) {
  std::ifstream in(csv);
  if (!in) return;
  std::stringstream text;
  text << in.rdbuf();
  in.close();
  std::vector<std::string> kept;
  std::string line;
  for (bool header = true; std::getline(text, line); header = false) {
    if (text.eof()) break;  // no newline after it: torn
    if (header || std::stoll(line.substr(0, line.find(','))) <= step) kept.push_back(line);
  }
  const std::filesystem::path temporary = csv.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    for (const std::string& row : kept) out << row << '\n';
    if (!out) throw dca::IoError("cannot write " + temporary.string());
  }
  std::filesystem::rename(temporary, csv);
}

}  // namespace examples
