#pragma once
/// \file
/// carousel::checkpoint::detail::MappedFile — a read-only view of a whole file: mmap on POSIX, read into memory
/// elsewhere.

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "carousel/checkpoint/format_error.hpp"

#if __has_include(<sys/mman.h>) && __has_include(<fcntl.h>) && __has_include(<unistd.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#define CAROUSEL_MODEL_HAVE_MMAP 1
#else
#define CAROUSEL_MODEL_HAVE_MMAP 0
#endif

namespace carousel::checkpoint::detail {

/// Owns a read-only mapping (or copy) of a file's bytes. Move-only; the bytes stay at the same address for the
/// object's lifetime, moves included.
class MappedFile {
 public:
  MappedFile() = default;

  /// Maps `path` read-only. \throws FormatError naming the file and the system error when it cannot be opened.
  static MappedFile open(const std::filesystem::path& path) {
    MappedFile file;
#if CAROUSEL_MODEL_HAVE_MMAP
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw FormatError(describe(path, "cannot open: " + std::string(std::strerror(errno))));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw FormatError(describe(path, "not a regular file"));
    }
    file.size_ = static_cast<std::size_t>(st.st_size);
    if (file.size_ > 0) {
      void* p = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const std::string reason = std::strerror(errno);
        ::close(fd);
        throw FormatError(describe(path, "cannot map: " + reason));
      }
      file.data_ = static_cast<const std::byte*>(p);
      file.mapped_ = true;
    }
    ::close(fd);
#else
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(describe(path, "cannot open"));
    in.seekg(0, std::ios::end);
    file.copy_.resize(static_cast<std::size_t>(in.tellg()));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(file.copy_.data()), static_cast<std::streamsize>(file.copy_.size()));
    if (!in) throw FormatError(describe(path, "read failed"));
    file.data_ = file.copy_.data();
    file.size_ = file.copy_.size();
#endif
    return file;
  }

  MappedFile(MappedFile&& other) noexcept {
    swap(other);
  }
  MappedFile& operator=(MappedFile&& other) noexcept {
    MappedFile moved(std::move(other));
    swap(moved);
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
#if CAROUSEL_MODEL_HAVE_MMAP
    if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
  }

  /// The file's bytes.
  std::span<const std::byte> bytes() const noexcept {
    return {data_, size_};
  }

 private:
  static std::string describe(const std::filesystem::path& path, const std::string& problem) {
    return "safetensors file '" + path.string() + "': " + problem;
  }

  void swap(MappedFile& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(mapped_, other.mapped_);
    std::swap(copy_, other.copy_);
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::vector<std::byte> copy_;  // used where mmap is unavailable
};

}  // namespace carousel::checkpoint::detail
