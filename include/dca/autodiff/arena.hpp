// dca/autodiff/arena.hpp — bump-pointer memory for one training step: values, adjoints, backward
// closures. Allocation is a pointer increment; `reset()` releases everything at once and keeps the
// memory, so a training loop allocates from the system only during its first step.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

namespace dca {

class Arena {
 public:
  static constexpr std::size_t alignment = 64;  // one cache line; enough for AVX-512 loads

  /// A position in the arena; `rewind(mark)` frees everything allocated after it.
  struct Mark {
    std::size_t block = 0;
    std::size_t used = 0;
  };

  explicit Arena(std::size_t first_block_bytes = std::size_t{1} << 20) : next_block_bytes_(first_block_bytes) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  /// `bytes` of uninitialised memory aligned to `alignment`, valid until reset/rewind.
  void* allocate(std::size_t bytes) {
    bytes = round_up(std::max<std::size_t>(bytes, 1));
    while (current_ < blocks_.size()) {
      Block& b = blocks_[current_];
      if (b.used + bytes <= b.size) {
        void* p = b.data.get() + b.used;
        b.used += bytes;
        in_use_ += bytes;
        peak_in_use_ = std::max(peak_in_use_, in_use_);
        return p;
      }
      ++current_;
      if (current_ < blocks_.size()) blocks_[current_].used = 0;
    }
    add_block(bytes);
    return allocate(bytes);
  }

  /// `count` uninitialised objects of a trivial type.
  template <class U>
  U* allocate_array(index_t count) {
    static_assert(std::is_trivially_destructible_v<U>);
    return static_cast<U*>(allocate(sizeof(U) * static_cast<std::size_t>(std::max<index_t>(count, 0))));
  }

  Mark mark() const { return {current_, current_ < blocks_.size() ? blocks_[current_].used : 0}; }

  /// Frees everything allocated after `m` (memory stays reserved).
  void rewind(Mark m) {
    for (std::size_t b = m.block + 1; b < blocks_.size() && b <= current_; ++b) blocks_[b].used = 0;
    current_ = m.block;
    if (current_ < blocks_.size()) blocks_[current_].used = m.used;
    in_use_ = 0;
    for (std::size_t b = 0; b <= current_ && b < blocks_.size(); ++b) in_use_ += blocks_[b].used;
  }

  /// Frees everything. If the last step needed several blocks they are merged into one, so the
  /// next step of the same size runs from a single block and reserves nothing new.
  void reset() {
    if (blocks_.size() > 1) {
      std::size_t total = 0;
      for (const Block& b : blocks_) total += b.size;
      blocks_.clear();
      add_block(total);
    }
    for (Block& b : blocks_) b.used = 0;
    current_ = 0;
    in_use_ = 0;
  }

  /// Bytes reserved from the system (constant across steps of the same size once warmed up).
  std::size_t reserved_bytes() const {
    std::size_t total = 0;
    for (const Block& b : blocks_) total += b.size;
    return total;
  }
  std::size_t used_bytes() const { return in_use_; }
  std::size_t peak_used_bytes() const { return peak_in_use_; }

 private:
  struct AlignedFree {
    void operator()(std::byte* p) const { std::free(p); }
  };
  struct Block {
    std::unique_ptr<std::byte[], AlignedFree> data;
    std::size_t size = 0;
    std::size_t used = 0;
  };

  static std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }

  void add_block(std::size_t min_bytes) {
    const std::size_t size = round_up(std::max(min_bytes, next_block_bytes_));
    auto* p = static_cast<std::byte*>(std::aligned_alloc(alignment, size));
    if (!p) throw std::bad_alloc();
    blocks_.push_back({std::unique_ptr<std::byte[], AlignedFree>(p), size, 0});
    current_ = blocks_.size() - 1;
    next_block_bytes_ = size * 2;
  }

  std::vector<Block> blocks_;
  std::size_t current_ = 0;
  std::size_t next_block_bytes_;
  std::size_t in_use_ = 0;
  std::size_t peak_in_use_ = 0;
};

}  // namespace dca
