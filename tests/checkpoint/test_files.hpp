#pragma once
// Helpers for the model-format tests: build safetensors images byte by byte (so malformed ones can be made on
// purpose) and write them into a fresh temporary folder.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace carousel::checkpoint::test {

/// An 8-byte little-endian length, then `header` verbatim, then `data`.
inline std::vector<std::byte> safetensors_image(const std::string& header, const std::vector<std::byte>& data,
                                                std::uint64_t declared_length) {
  std::vector<std::byte> out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<std::byte>((declared_length >> (8 * i)) & 0xff));
  for (char c : header)
    out.push_back(static_cast<std::byte>(c));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

inline std::vector<std::byte> safetensors_image(const std::string& header, const std::vector<std::byte>& data) {
  return safetensors_image(header, data, header.size());
}

/// `count` float32 values as little-endian bytes.
inline std::vector<std::byte> f32_bytes(const std::vector<float>& values) {
  std::vector<std::byte> out(values.size() * 4);
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

/// A file of named float32 tensors, each entry {name, shape, values}, tiled in the given order.
struct F32Tensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

inline std::vector<std::byte> f32_file(const std::vector<F32Tensor>& tensors) {
  std::string header = "{";
  std::vector<float> data;
  for (const auto& t : tensors) {
    std::string shape;
    for (std::size_t i = 0; i < t.shape.size(); ++i) {
      if (i > 0) shape.append(",");
      shape.append(std::to_string(t.shape[i]));
    }
    const std::size_t begin = data.size() * 4;
    data.insert(data.end(), t.values.begin(), t.values.end());
    if (header.size() > 1) header.append(",");
    header.append("\"").append(t.name).append("\":{\"dtype\":\"F32\",\"shape\":[").append(shape);
    header.append("],\"data_offsets\":[").append(std::to_string(begin)).append(",");
    header.append(std::to_string(data.size() * 4)).append("]}");
  }
  header += "}";
  return safetensors_image(header, f32_bytes(data));
}

inline void write_file(const std::filesystem::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

/// A fresh empty directory under the system temp folder, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ =
        std::filesystem::temp_directory_path() / ("carousel-model-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace carousel::checkpoint::test
