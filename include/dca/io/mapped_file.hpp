// dca/io/mapped_file.hpp — a whole regular file mapped read-only into memory (POSIX mmap).
//
// Why: loading a model through read() holds the file's bytes and the converted parameters at once
// (twice the model). A mapping costs no memory until a page is touched, and a page that has been
// converted can be handed back with `release`, so a loader that converts tensor by tensor holds the
// parameters plus a few pages of the file at a time.
//
// The hazard every mapping carries: if another program truncates the file *in place* while it is
// mapped, touching the lost pages raises SIGBUS instead of an error. dca's own writers never do
// that — they write a new file and rename it over the old one (atomic_file.hpp), and the old
// mapping keeps the old file alive until it is unmapped.
#pragma once

#include "dca/core/error.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <system_error>
#include <utility>

namespace dca {

/// A read-only memory map of a whole regular file. Move-only; unmapped when destroyed.
class MappedFile {
 public:
  /// Maps the file at `path`. IoError (with the OS's reason) if it cannot be opened, is not a
  /// regular file, or cannot be mapped. An empty file maps to an empty span.
  explicit MappedFile(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) detail::fail<IoError>("cannot open ", path, ": ", reason(errno));
    struct Closer {  // the mapping outlives the descriptor
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat info {};
    if (::fstat(fd, &info) != 0) detail::fail<IoError>("cannot inspect ", path, ": ", reason(errno));
    if (!S_ISREG(info.st_mode)) detail::fail<IoError>("cannot read ", path, ": not a regular file");
    size_ = static_cast<std::size_t>(info.st_size);
    if (size_ == 0) return;  // mmap rejects a zero length
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) detail::fail<IoError>("cannot map ", path, " (", size_, " bytes): ", reason(errno));
    data_ = static_cast<const std::byte*>(mapped);
  }

  MappedFile(MappedFile&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      unmap();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { unmap(); }

  /// The file's bytes, valid while this object lives.
  std::span<const std::byte> bytes() const { return {data_, size_}; }

  /// Drops the pages holding `range` (a part of bytes()) from the process's resident memory. They
  /// stay in the OS's page cache and are read again, unchanged, if touched later: the mapping is
  /// private and read-only, so there is nothing to lose. Whole pages are released, including the
  /// parts of the first and last page outside `range`. A failure only costs memory, so it is ignored.
  void release(std::span<const std::byte> range) const {
    if (range.empty() || data_ == nullptr) return;
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto base = reinterpret_cast<std::uintptr_t>(data_);
    const auto first = reinterpret_cast<std::uintptr_t>(range.data()) / page * page;
    const std::uintptr_t end =
        std::min((reinterpret_cast<std::uintptr_t>(range.data() + range.size()) + page - 1) / page * page,
                 (base + size_ + page - 1) / page * page);
    if (first < base || end <= first) return;
    (void)::madvise(reinterpret_cast<void*>(first), end - first, MADV_DONTNEED);
  }

 private:
  static std::string reason(int error) { return std::generic_category().message(error); }

  void unmap() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace dca
