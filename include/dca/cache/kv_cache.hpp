// dca/cache/kv_cache.hpp — a decoder's key/value cache, with latent slot insertion.
//
// A cache holds, for every layer, the keys and values of every slot ([capacity, Hkv·D] each,
// after rotary), plus per-slot metadata: the position id the slot was computed at and its kind
// (token, latent, pause). Slot index and position id are different things: by default the N_L
// latents inserted after slot t all take t's position and the tokens that follow keep t+1, t+2,
// ..., so from the insertion on, slot s holds position ≠ s. The cache owns that bookkeeping
// (`next_position()`), so callers never compute positions themselves. See docs/kv-cache.md.
//
//   dca::KVCache<float> cache(model.config(), /*capacity*/ 512);
//   auto logits = cache.append_tokens(tape, model, prompt);          // prefill
//   cache.insert_latents(tape, model, z, cache.size() - 1);         // N_L latent slots
//   logits = cache.append_tokens(tape, model, next_tokens);         // decoding sees the latents
//
// Storage is shared copy-on-write: `fork()` and `prefix()` cost O(1) and the first write to a
// shared buffer copies only the used slots. Values computed on the current tape from an active
// input (latents from a coprocessor) also stay on the tape as the cache's *active tail*, so a loss
// on later tokens reaches them; everything else is a constant. The tape reads the cache's storage
// during backward without copying it, so keep the cache alive until the backward pass is done.
#pragma once

#include "dca/autodiff/ops/shape.hpp"
#include "dca/cache/slots.hpp"
#include "dca/io/safetensors.hpp"
#include "dca/nn/decoder.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace dca {

template <Scalar T>
class KVCache;

/// A read-only view of the first `size()` slots of a cache, sharing its storage (no copy). Several
/// consumers (e.g. a coprocessor reading the prefix while the decoder keeps going in a fork) can
/// hold views of one cache; a view stays valid and unchanged whatever the cache does next.
template <Scalar T>
class KVPrefix {
 public:
  index_t size() const { return size_; }
  index_t n_layers() const { return static_cast<index_t>(storage_->keys.size()); }
  index_t position(index_t slot) const { return storage_->positions[check(slot)]; }
  SlotKind kind(index_t slot) const { return storage_->kinds[check(slot)]; }
  /// Layer l's keys and values [size, Hkv·D] and positions, as the attention op reads a cache.
  ConstantKV<T> layer(index_t l) const {
    const Shape shape{size_, storage_->width};
    return {TensorView<const T>(storage_->keys[static_cast<std::size_t>(l)].data(), shape),
            TensorView<const T>(storage_->values[static_cast<std::size_t>(l)].data(), shape),
            std::span<const index_t>(storage_->positions.data(), static_cast<std::size_t>(size_))};
  }
  /// Every layer's `layer(l)`: the constant cache a decoder or coprocessor forward pass reads.
  std::vector<ConstantKV<T>> layers() const {
    std::vector<ConstantKV<T>> out;
    for (index_t l = 0; l < n_layers(); ++l) out.push_back(layer(l));
    return out;
  }

 private:
  friend class KVCache<T>;
  struct Storage {
    index_t capacity = 0, width = 0;
    std::vector<Tensor<T>> keys, values;  // per layer [capacity, width]
    std::vector<index_t> positions;       // [capacity]
    std::vector<SlotKind> kinds;          // [capacity]
  };
  KVPrefix(std::shared_ptr<const Storage> storage, index_t size) : storage_(std::move(storage)), size_(size) {}
  std::size_t check(index_t slot) const {
    if (slot < 0 || slot >= size_) detail::fail<RangeError>("KVPrefix: slot ", slot, " is outside the ", size_, " slots");
    return static_cast<std::size_t>(slot);
  }

  std::shared_ptr<const Storage> storage_;
  index_t size_ = 0;
};

template <Scalar T>
class KVCache {
 public:
  /// An empty cache for models of this configuration, holding up to `capacity` slots.
  KVCache(const DecoderConfig& config, index_t capacity)
      : n_layers_(config.n_layers), width_(config.n_kv_heads * config.resolved_head_dim()) {
    if (capacity < 1) detail::fail<RangeError>("KVCache: capacity must be ≥ 1, got ", capacity);
    auto s = std::make_shared<Storage>();
    s->capacity = capacity;
    s->width = width_;
    for (index_t l = 0; l < n_layers_; ++l) {
      s->keys.emplace_back(Shape{capacity, width_});
      s->values.emplace_back(Shape{capacity, width_});
    }
    s->positions.assign(static_cast<std::size_t>(capacity), 0);
    s->kinds.assign(static_cast<std::size_t>(capacity), SlotKind::token);
    storage_ = std::move(s);
  }

  // ---- slots ----------------------------------------------------------------------------------

  index_t size() const { return size_; }
  index_t capacity() const { return storage_->capacity; }
  index_t n_layers() const { return n_layers_; }
  /// Hkv·D: the width of one slot's keys (and values) in one layer.
  index_t width() const { return width_; }
  /// The position id the next appended token takes.
  index_t next_position() const { return next_position_; }
  index_t position(index_t slot) const { return storage_->positions[check_slot("position", slot)]; }
  SlotKind kind(index_t slot) const { return storage_->kinds[check_slot("kind", slot)]; }
  /// Layer l's keys [size, Hkv·D] (a copy-free view, valid until the cache changes).
  TensorView<const T> keys(index_t l) const { return {storage_->keys[check_layer(l)].data(), Shape{size_, width_}}; }
  TensorView<const T> values(index_t l) const { return {storage_->values[check_layer(l)].data(), Shape{size_, width_}}; }

  /// Keeps slots 0..n−1 and drops the rest; the next token takes position(n−1) + 1 (0 if n = 0).
  /// n > size() is an error: a crop never invents slots.
  void crop(index_t n) {
    if (n < 0 || n > size_)
      detail::fail<RangeError>("KVCache::crop: cannot crop to ", n, " slots; the cache holds ", size_);
    size_ = n;
    next_position_ = n == 0 ? 0 : storage_->positions[static_cast<std::size_t>(n - 1)] + 1;
    if (n <= active_begin_) {
      active_keys_.clear();
      active_values_.clear();
      active_begin_ = n;
    } else if (!active_keys_.empty()) {
      for (std::size_t l = 0; l < active_keys_.size(); ++l) {
        active_keys_[l] = slice_rows(active_keys_[l], 0, n - active_begin_);
        active_values_[l] = slice_rows(active_values_[l], 0, n - active_begin_);
      }
    }
  }
  /// Empties the cache (capacity and configuration stay).
  void reset() { crop(0); }

  /// An independent cache holding the first `length` slots (default: all). O(1): the storage is
  /// shared until either side writes, which then copies the used slots once.
  KVCache fork() const { return fork(size_); }
  KVCache fork(index_t length) const {
    KVCache copy = *this;
    copy.crop(length);
    return copy;
  }
  /// A read-only view of slots 0..t (t + 1 slots), sharing the storage without copying.
  KVPrefix<T> prefix(index_t t) const {
    if (t < -1 || t >= size_) detail::fail<RangeError>("KVCache::prefix: slot ", t, " is outside the ", size_, " slots");
    return KVPrefix<T>(storage_, t + 1);
  }

  // ---- running the decoder against the cache --------------------------------------------------

  /// Runs `ids` [n] through the decoder after the cached slots, appends their n slots (kind token,
  /// positions next_position()..), and returns their logits [n, V].
  Var<T> append_tokens(Tape<T>& tape, Decoder<T>& decoder, std::span<const index_t> ids) {
    DecoderInput<T> input;
    input.ids = ids;
    return run(tape, decoder, input, static_cast<index_t>(ids.size()), SlotKind::token, next_position_,
               /*positions_advance=*/true, "append_tokens")
        .logits;
  }

  /// Runs input embeddings [n, d] (Hugging Face inputs_embeds semantics) through the decoder as
  /// `kind` slots at the next positions; returns the decoder's output for them.
  DecoderOutput<T> append_embeddings(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& embeddings,
                                     SlotKind kind = SlotKind::pause) {
    DecoderInput<T> input;
    input.embeddings = embeddings;
    return run(tape, decoder, input, embeddings.rows(), kind, next_position_, true, "append_embeddings");
  }

  /// Inserts N_L latent slots after slot t: the decoder processes z [N_L, d] as input embeddings
  /// attending to slots 0..t and causally among themselves, and their keys/values become latent
  /// slots t+1..t+N_L. Positions follow `policy` (see LatentPositions). t must be the last slot:
  /// to insert after an earlier slot, insert into `fork(t + 1)` — this cache is never cropped
  /// implicitly. If z is active, the new slots stay on the tape (see the header comment).
  /// Inserting zero latents changes nothing. Returns the decoder's output at the latent rows.
  DecoderOutput<T> insert_latents(Tape<T>& tape, Decoder<T>& decoder, const Var<T>& z, index_t t,
                                  LatentPositions policy = LatentPositions::at_insertion_point) {
    if (t < 0 || t >= size_)
      detail::fail<RangeError>("KVCache::insert_latents: insertion point ", t, " is outside the ", size_,
                               " cached slots");
    if (t != size_ - 1)
      detail::fail<UsageError>("KVCache::insert_latents: slots ", t + 1, "..", size_ - 1,
                               " exist after the insertion point ", t, "; insert into fork(", t + 1, ") instead");
    if (z.rows() == 0) return {};
    DecoderInput<T> input;
    input.embeddings = z;
    const bool shifted = policy == LatentPositions::shifted;
    return run(tape, decoder, input, z.rows(), SlotKind::latent, shifted ? next_position_ : position(t), shifted,
               "insert_latents");
  }

  /// Forgets which slots are on a tape: every slot becomes a constant (their values are already
  /// stored). Needed before using the cache on another tape, or after the tape was reset.
  void detach() {
    active_keys_.clear();
    active_values_.clear();
    active_begin_ = size_;
  }
  /// Number of trailing slots whose keys/values are active values on a tape.
  index_t active_slots() const { return active_keys_.empty() ? 0 : size_ - active_begin_; }

  // ---- persistence ----------------------------------------------------------------------------

  /// Writes the used slots, their metadata and the next position to a safetensors file, atomically.
  void save(const std::filesystem::path& path) const {
    SafeTensorsWriter writer;
    for (index_t l = 0; l < n_layers_; ++l) {
      writer.add("keys." + std::to_string(l), keys(l));
      writer.add("values." + std::to_string(l), values(l));
    }
    std::vector<std::int64_t> positions(storage_->positions.begin(), storage_->positions.begin() + size_);
    std::vector<std::int64_t> kinds;
    for (index_t s = 0; s < size_; ++s) kinds.push_back(static_cast<std::int64_t>(storage_->kinds[static_cast<std::size_t>(s)]));
    writer.add_integers("positions", positions, {size_});
    writer.add_integers("kinds", kinds, {size_}, DType::i32);
    writer.set_metadata("next_position", std::to_string(next_position_));
    writer.write(path);
  }

  /// Replaces the contents with a file written by `save`. The file must match this cache's layer
  /// count and width and fit its capacity; otherwise FormatError and the cache is unchanged.
  void load(const std::filesystem::path& path) {
    const SafeTensors file = SafeTensors::read(path);
    const std::string name = path.string();
    const auto positions = file.integers("positions");
    const auto kinds = file.integers("kinds");
    const auto n = static_cast<index_t>(positions.size());
    if (static_cast<index_t>(kinds.size()) != n)
      detail::fail<FormatError>(name, ": ", n, " positions but ", kinds.size(), " slot kinds");
    if (n > capacity())
      detail::fail<FormatError>(name, ": ", n, " slots do not fit this cache's capacity of ", capacity());
    std::vector<Tensor<T>> keys, values;
    for (index_t l = 0; l < n_layers_; ++l) {
      keys.push_back(file.template tensor<T>("keys." + std::to_string(l)));
      values.push_back(file.template tensor<T>("values." + std::to_string(l)));
      for (const Tensor<T>* t : {&keys.back(), &values.back()})
        if (!(t->shape() == Shape{n, width_}))
          detail::fail<FormatError>(name, ": layer ", l, " holds ", t->shape(), ", expected [", n, ",", width_, "]");
    }
    if (file.contains("keys." + std::to_string(n_layers_)))
      detail::fail<FormatError>(name, ": the file holds more than this cache's ", n_layers_, " layers");
    for (std::int64_t k : kinds)
      if (k < 0 || k > static_cast<std::int64_t>(SlotKind::pause))
        detail::fail<FormatError>(name, ": slot kind ", k, " is not a SlotKind");
    const auto next = file.metadata().find("next_position");
    if (next == file.metadata().end()) detail::fail<FormatError>(name, ": metadata 'next_position' is missing");
    Storage& s = writable();
    for (index_t l = 0; l < n_layers_; ++l) {
      std::copy_n(keys[static_cast<std::size_t>(l)].data(), n * width_, s.keys[static_cast<std::size_t>(l)].data());
      std::copy_n(values[static_cast<std::size_t>(l)].data(), n * width_, s.values[static_cast<std::size_t>(l)].data());
    }
    for (index_t i = 0; i < n; ++i) {
      s.positions[static_cast<std::size_t>(i)] = static_cast<index_t>(positions[static_cast<std::size_t>(i)]);
      s.kinds[static_cast<std::size_t>(i)] = static_cast<SlotKind>(kinds[static_cast<std::size_t>(i)]);
    }
    size_ = n;
    next_position_ = std::stoll(next->second);
    detach();
  }

 private:
  using Storage = typename KVPrefix<T>::Storage;

  std::size_t check_slot(const char* what, index_t slot) const {
    if (slot < 0 || slot >= size_)
      detail::fail<RangeError>("KVCache::", what, ": slot ", slot, " is outside the ", size_, " cached slots");
    return static_cast<std::size_t>(slot);
  }
  std::size_t check_layer(index_t l) const {
    if (l < 0 || l >= n_layers_) detail::fail<RangeError>("KVCache: layer ", l, " is outside the ", n_layers_, " layers");
    return static_cast<std::size_t>(l);
  }

  void check_model(const char* op, const Decoder<T>& decoder) const {
    const auto& c = decoder.config();
    const index_t model_width = c.n_kv_heads * c.resolved_head_dim();
    if (c.n_layers != n_layers_ || model_width != width_)
      detail::fail<ShapeError>("KVCache::", op, ": the cache holds ", n_layers_, " layers of width ", width_,
                               " but the model has ", c.n_layers, " layers of width ", model_width, " (", c.n_kv_heads,
                               " kv heads × ", c.resolved_head_dim(), ")");
  }

  // The storage, made exclusive first (copy-on-write: only the used slots are copied).
  Storage& writable() {
    if (storage_.use_count() > 1) {
      auto copy = std::make_shared<Storage>();
      copy->capacity = storage_->capacity;
      copy->width = width_;
      for (index_t l = 0; l < n_layers_; ++l) {
        copy->keys.emplace_back(Shape{capacity(), width_});
        copy->values.emplace_back(Shape{capacity(), width_});
        std::copy_n(storage_->keys[static_cast<std::size_t>(l)].data(), size_ * width_, copy->keys.back().data());
        std::copy_n(storage_->values[static_cast<std::size_t>(l)].data(), size_ * width_, copy->values.back().data());
      }
      copy->positions = storage_->positions;
      copy->kinds = storage_->kinds;
      storage_ = std::move(copy);
    }
    return const_cast<Storage&>(*storage_);
  }

  // Runs n new rows at positions first_position.. (all equal to first_position unless
  // `positions_advance`), appends their slots and returns the decoder's output. Everything that
  // can fail is checked, and the decoder runs, before the cache changes.
  DecoderOutput<T> run(Tape<T>& tape, Decoder<T>& decoder, DecoderInput<T> input, index_t n, SlotKind kind,
                       index_t first_position, bool positions_advance, const char* op) {
    check_model(op, decoder);
    if (size_ + n > capacity())
      detail::fail<RangeError>("KVCache::", op, ": ", n, " new slots do not fit: ", size_, " of ", capacity(),
                               " slots are used");
    if (!active_keys_.empty() && (&active_keys_[0].tape() != &tape || !active_keys_[0].valid()))
      detail::fail<UsageError>("KVCache::", op, ": slots ", active_begin_, "..", size_ - 1,
                               " are values on a tape that was reset or is not this one; call detach() to use "
                               "them as constants");
    const index_t active = active_slots();
    const index_t constant = size_ - active;

    auto* positions = tape.template allocate<index_t>(n);
    for (index_t i = 0; i < n; ++i) positions[i] = first_position + (positions_advance ? i : 0);
    input.positions = {positions, static_cast<std::size_t>(n)};
    // Active keys = the active tail's slots, then the new rows; queries are the new rows (causal,
    // bottom-right aligned), the constant slots form the cache segment.
    auto* group = tape.template allocate<AttentionGroup>(1);
    *group = AttentionGroup{0, n, 0, active + n, 0, constant};
    input.groups = {group, 1};
    const std::vector<ConstantKV<T>> caches = KVPrefix<T>(storage_, constant).layers();
    input.layer_caches = caches;
    input.keep_keys_values = true;
    std::span<const index_t> key_positions = input.positions;
    if (active > 0) {
      auto* both = tape.template allocate<index_t>(active + n);
      std::copy_n(storage_->positions.data() + constant, active, both);
      std::copy_n(positions, n, both + active);
      key_positions = {both, static_cast<std::size_t>(active + n)};
      input.active_keys = active_keys_;
      input.active_values = active_values_;
    }
    input.key_positions = key_positions;
    DecoderOutput<T> out = decoder.forward(tape, input);

    Storage& s = writable();
    for (index_t l = 0; l < n_layers_; ++l) {
      const auto& k = out.keys[static_cast<std::size_t>(l)];
      const auto& v = out.values[static_cast<std::size_t>(l)];
      std::copy_n(k.value().data(), n * width_, s.keys[static_cast<std::size_t>(l)].data() + size_ * width_);
      std::copy_n(v.value().data(), n * width_, s.values[static_cast<std::size_t>(l)].data() + size_ * width_);
    }
    for (index_t i = 0; i < n; ++i) {
      s.positions[static_cast<std::size_t>(size_ + i)] = positions[i];
      s.kinds[static_cast<std::size_t>(size_ + i)] = kind;
    }
    // Keep the new slots on the tape if they carry gradients, or if an active tail already does.
    const bool keep_active = out.keys[0].requires_grad() || out.values[0].requires_grad() || active > 0;
    if (keep_active) {
      if (active == 0) active_begin_ = size_;
      for (index_t l = 0; l < n_layers_; ++l) {
        const auto li = static_cast<std::size_t>(l);
        if (active == 0) {
          active_keys_.push_back(out.keys[li]);
          active_values_.push_back(out.values[li]);
        } else {
          active_keys_[li] = concat_rows({active_keys_[li], out.keys[li]});
          active_values_[li] = concat_rows({active_values_[li], out.values[li]});
        }
      }
    }
    size_ += n;
    if (positions_advance) next_position_ = first_position + n;  // latents at the insertion point take none
    return out;
  }

  std::shared_ptr<const Storage> storage_;
  index_t n_layers_ = 0, width_ = 0;
  index_t size_ = 0;
  index_t next_position_ = 0;
  index_t active_begin_ = 0;
  std::vector<Var<T>> active_keys_, active_values_;  // per layer [size − active_begin, width], or empty
};

}  // namespace dca
