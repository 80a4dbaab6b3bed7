// dca/coproc/session.hpp — augmented inference: prefill a prompt, augment the cache with a
// coprocessor's latents (once at the end of the prompt, every k tokens, or at chosen points), and
// decode — synchronously, asynchronously, or not at all.
//
//   dca::AugmentedSession session(decoder, &coprocessor, /*capacity*/ 512);
//   auto result = session.generate(prompt, generation, {.every = 32});
//
// Asynchronous mode (paper, Table 8): the coprocessor runs on a worker thread on an immutable
// snapshot of the cache prefix (a KVPrefix; the decoder's later writes copy-on-write around it)
// while the decoder keeps generating; the latents are inserted when they arrive — or, for
// studies, exactly `delay` tokens after the augmentation point. The worker has its own tape and
// only reads the two models' weights (gradients off), so the two threads share nothing mutable.
#pragma once

#include "dca/cache/generate.hpp"
#include "dca/coproc/coprocessor.hpp"

#include <future>
#include <optional>
#include <vector>

namespace dca {

/// When an augmented session inserts latents.
struct AugmentationSchedule {
  bool after_prompt = true;            // augment once at the end of the prompt
  index_t every = 0;                   // and after every `every` generated tokens (0: never)
  std::vector<index_t> after_tokens{}; // and after these numbers of generated tokens
  bool asynchronous = false;           // compute latents on a worker thread while decoding continues
  index_t delay = 0;                   // asynchronous: insert exactly this many tokens after the point
                                       // (0: as soon as the latents arrive)

  void validate() const {
    if (every < 0) detail::fail<RangeError>("AugmentationSchedule: every must be ≥ 0, got ", every);
    if (delay < 0) detail::fail<RangeError>("AugmentationSchedule: delay must be ≥ 0, got ", delay);
    if (delay > 0 && !asynchronous)
      detail::fail<UsageError>("AugmentationSchedule: a delay of ", delay, " tokens needs asynchronous = true");
    for (index_t t : after_tokens)
      if (t < 1) detail::fail<RangeError>("AugmentationSchedule: after_tokens entries must be ≥ 1, got ", t);
  }
  bool due(index_t generated) const {
    return (every > 0 && generated % every == 0) ||
           std::find(after_tokens.begin(), after_tokens.end(), generated) != after_tokens.end();
  }
};

/// What an augmented generation did, besides the tokens.
struct AugmentedGeneration {
  GenerationResult result;
  std::vector<index_t> insertions;  // for each insertion: generated tokens when the latents went in
  index_t skipped = 0;              // augmentations dropped because the cache had no room for the latents
};

template <Scalar T, index_t NumLatents, AheadObjective Objective>
class AugmentedSession {
 public:
  /// `coprocessor` may be null: the session is then exactly the plain decoder.
  AugmentedSession(Decoder<T>& decoder, Coprocessor<T, NumLatents, Objective>* coprocessor, index_t capacity)
      : decoder_(decoder), coprocessor_(coprocessor), cache_(decoder.config(), capacity) {}

  const KVCache<T>& cache() const { return cache_; }

  /// Prefills `prompt` into a fresh cache and generates, augmenting on `schedule`.
  AugmentedGeneration generate(std::span<const index_t> prompt, const GenerationConfig& config,
                               const AugmentationSchedule& schedule = {},
                               const std::function<bool(index_t)>& on_token = {}) {
    config.validate();
    schedule.validate();
    if (prompt.empty()) detail::fail<UsageError>("AugmentedSession::generate: the prompt is empty");
    cache_.reset();
    pending_.reset();
    AugmentedGeneration out;
    Tape<T> tape;
    NoGradGuard<T> no_grad(tape);
    const Var<T> prompt_logits = cache_.append_tokens(tape, decoder_, prompt);
    std::span<const T> logits = detail::last_row(prompt_logits);
    last_token_ = prompt.back();
    tokens_.assign(prompt.begin(), prompt.end());
    if (schedule.after_prompt) logits = augment(tape, schedule, logits, 0, out);
    // Reading the logits before decode resets the tape keeps them valid: decode samples first.
    out.result = detail::decode<T>(
        tape, decoder_, cache_, logits, config,
        [&](index_t token) {
          last_token_ = token;
          tokens_.push_back(token);
          return !on_token || on_token(token);
        },
        [&](std::span<const T> token_logits, index_t generated) {
          std::span<const T> next = deliver(tape, schedule, token_logits, generated, out);
          if (schedule.due(generated)) next = augment(tape, schedule, next, generated, out);
          return next;
        });
    if (pending_) pending_->latents.wait();  // never leave a worker running past the call
    pending_.reset();
    return out;
  }

 private:
  struct Pending {
    std::future<Tensor<T>> latents;
    index_t point = 0;       // generated tokens when the augmentation was requested
    index_t base_token = 0;  // the token the latents were computed after
  };

  // Starts an augmentation at the current end of the cache: synchronously (inserting at once and
  // returning the last latent's logits) or on a worker thread (returning `logits` unchanged).
  std::span<const T> augment(Tape<T>& tape, const AugmentationSchedule& schedule, std::span<const T> logits,
                             index_t generated, AugmentedGeneration& out) {
    if (!coprocessor_) return logits;
    const KVPrefix<T> prefix = cache_.prefix(cache_.size() - 1);
    const index_t token = last_token_;
    // A last-layer coprocessor reads activations the cache does not keep: it recomputes them over
    // the tokens in the cache (earlier latents are not among them).
    const bool from_tokens = coprocessor_->config().input == CoprocessorInput::last_layer;
    const auto latent_slots = static_cast<std::size_t>(coprocessor_->n_latents()) * out.insertions.size();
    const auto token_slots = std::min(tokens_.size(), static_cast<std::size_t>(cache_.size()) - latent_slots);
    std::vector<index_t> tokens = from_tokens ? std::vector<index_t>(tokens_.begin(), tokens_.begin() + token_slots)
                                              : std::vector<index_t>{};
    const auto compute = [this, prefix, token, tokens = std::move(tokens)](Tape<T>& on) {
      return Tensor<T>((tokens.empty() ? coprocessor_->latents(on, decoder_, prefix, token)
                                       : coprocessor_->latents(on, decoder_, std::span<const index_t>(tokens))).value());
    };
    if (!schedule.asynchronous) return insert(tape, compute(tape), token, logits, generated, out);
    if (pending_) return logits;  // one augmentation in flight at a time
    pending_ = Pending{std::async(std::launch::async,
                                  [compute = std::move(compute)] {
                                    Tape<T> worker_tape;
                                    NoGradGuard<T> no_grad(worker_tape);
                                    return compute(worker_tape);
                                  }),
                       generated, token};
    return logits;
  }

  // Inserts latents that have arrived (or are due after `delay` tokens).
  std::span<const T> deliver(Tape<T>& tape, const AugmentationSchedule& schedule, std::span<const T> logits,
                             index_t generated, AugmentedGeneration& out) {
    if (!pending_) return logits;
    const bool due = schedule.delay > 0 ? generated - pending_->point >= schedule.delay
                                        : pending_->latents.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
    if (!due) return logits;
    Tensor<T> z = pending_->latents.get();
    const index_t base_token = pending_->base_token;
    pending_.reset();
    return insert(tape, z, base_token, logits, generated, out);
  }

  // Inserts latents after the last slot; late residual latents are rebased onto the token they
  // now follow (Coprocessor::rebase_latents).
  std::span<const T> insert(Tape<T>& tape, const Tensor<T>& z, index_t base_token, std::span<const T> logits, index_t generated,
                            AugmentedGeneration& out) {
    if (cache_.size() + coprocessor_->n_latents() > cache_.capacity()) {
      ++out.skipped;
      return logits;
    }
    const Var<T> latents = coprocessor_->rebase_latents(tape, decoder_, tape.constant(z), base_token, last_token_);
    const auto latent_out = cache_.insert_latents(tape, decoder_, latents, cache_.size() - 1, coprocessor_->config().positions);
    out.insertions.push_back(generated);
    return detail::last_row(latent_out.logits);
  }

  Decoder<T>& decoder_;
  Coprocessor<T, NumLatents, Objective>* coprocessor_;
  KVCache<T> cache_;
  std::optional<Pending> pending_;
  index_t last_token_ = 0;
  std::vector<index_t> tokens_;  // the prompt and every generated token, in order
};

}  // namespace dca
