// dca/io/atomic_file.hpp — whole-file reads and crash-safe writes. A write goes to a temporary
// file in the same directory, is flushed to the device, and is renamed over the target (rename
// is atomic within a file system), so readers never see a partial file. POSIX (Linux, macOS).
#pragma once

#include "dca/core/error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace dca {

namespace detail {

// The message suffix for the current errno.
inline std::string os_reason(int error) { return std::generic_category().message(error); }

// Closes a POSIX file descriptor on scope exit.
struct FileDescriptor {
  int fd;
  explicit FileDescriptor(int descriptor) : fd(descriptor) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace detail

namespace detail {

// The whole of a regular file in a container of one-byte elements (std::byte or char).
template <class Bytes>
Bytes read_whole_file(const std::filesystem::path& path) {
  const FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) fail<IoError>("cannot open ", path, ": ", os_reason(errno));
  struct stat info {};
  if (::fstat(file.fd, &info) != 0) fail<IoError>("cannot inspect ", path, ": ", os_reason(errno));
  if (!S_ISREG(info.st_mode)) fail<IoError>("cannot read ", path, ": not a regular file");
  Bytes bytes(static_cast<std::size_t>(info.st_size), {});
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = ::read(file.fd, bytes.data() + done, bytes.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail<IoError>("cannot read ", path, ": ", os_reason(errno));
    if (got == 0) fail<IoError>("cannot read ", path, ": it shrank from ", bytes.size(), " to ", done, " bytes while being read");
    done += static_cast<std::size_t>(got);
  }
  return bytes;
}

}  // namespace detail

/// The whole of a regular file. POSIX calls, so a failure (IoError) reports the OS's reason.
inline std::vector<std::byte> read_file(const std::filesystem::path& path) {
  return detail::read_whole_file<std::vector<std::byte>>(path);
}

/// The whole of a regular file as text (its bytes, unchanged); errors as `read_file`.
inline std::string read_text_file(const std::filesystem::path& path) { return detail::read_whole_file<std::string>(path); }

/// Writes `pieces`, one after another, to a new temporary file beside `path`, flushes it to the
/// device, then renames it over `path`: readers (and a machine restarted after a crash) see the old
/// file or the complete new one, never a prefix. On failure (IoError) the temporary file is removed
/// and `path` is left as it was. Taking pieces lets a file assembled from parts (a header and each
/// tensor's data) be written without first copying it into one buffer.
inline void write_file_atomically(const std::filesystem::path& path,
                                  std::span<const std::span<const std::byte>> pieces) {
  static std::atomic<unsigned> next_suffix{0};
  struct Temporary {  // closes and removes the temporary file unless it was renamed into place
    std::filesystem::path path;
    int fd;
    bool renamed = false;
    ~Temporary() {
      if (fd >= 0) ::close(fd);
      if (!renamed) ::unlink(path.c_str());
    }
  };
  std::filesystem::path temporary_path;
  int fd = -1;
  do {  // a name left by a crashed process with a recycled pid is skipped, not overwritten
    temporary_path = path;
    temporary_path += detail::concat(".tmp.", ::getpid(), ".", next_suffix++);
    fd = ::open(temporary_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  } while (fd < 0 && errno == EEXIST);
  if (fd < 0) detail::fail<IoError>("cannot write ", path, ": cannot create ", temporary_path, ": ", detail::os_reason(errno));
  Temporary temporary{temporary_path, fd};

  for (const std::span<const std::byte> bytes : pieces) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t wrote = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (wrote < 0 && errno == EINTR) continue;
      if (wrote < 0) detail::fail<IoError>("cannot write ", path, ": writing ", temporary_path, " failed: ", detail::os_reason(errno));
      done += static_cast<std::size_t>(wrote);
    }
  }
  if (::fsync(fd) != 0)
    detail::fail<IoError>("cannot write ", path, ": flushing ", temporary_path, " failed: ", detail::os_reason(errno));
  temporary.fd = -1;
  if (::close(fd) != 0)
    detail::fail<IoError>("cannot write ", path, ": closing ", temporary_path, " failed: ", detail::os_reason(errno));
  if (::rename(temporary_path.c_str(), path.c_str()) != 0)
    detail::fail<IoError>("cannot write ", path, ": renaming ", temporary_path, " failed: ", detail::os_reason(errno));
  temporary.renamed = true;
}

/// Writes `bytes` to `path` atomically (see above).
inline void write_file_atomically(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  write_file_atomically(path, std::span<const std::span<const std::byte>>(&bytes, 1));
}

/// Writes `text` to `path` atomically.
inline void write_text_atomically(const std::filesystem::path& path, std::string_view text) {
  write_file_atomically(path, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

}  // namespace dca
