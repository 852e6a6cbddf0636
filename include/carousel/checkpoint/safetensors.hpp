#pragma once
/// \file
/// carousel::checkpoint::SafetensorsFile — a validated, memory-mapped reader for the safetensors format
/// (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON naming each
/// tensor's dtype, shape and byte range, then the data buffer.
///
/// Everything is checked when the file is opened, so a SafetensorsFile that exists is well-formed: header length
/// within the file and at most 100,000,000 bytes; the header is a UTF-8 JSON object without duplicate keys; every
/// entry has a known dtype, a shape of non-negative integers and data_offsets [begin, end] with
/// end - begin = numel * dtype size (no overflow); sorted by offset, the tensors tile the data buffer from 0 to its
/// end with no gap and no overlap; `__metadata__` maps strings to strings. Any violation throws FormatError naming
/// the file and the problem; malformed input never causes undefined behaviour (fuzzed, see tests/model).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/detail/half.hpp"
#include "carousel/checkpoint/detail/mapped_file.hpp"
#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint {

/// Element type of a stored tensor (safetensors' dtype strings BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16,
/// I32, U32, F32, F64, I64, U64).
enum class DType { boolean, u8, i8, f8_e5m2, f8_e4m3, i16, u16, f16, bf16, i32, u32, f32, f64, i64, u64 };

namespace detail {
struct DTypeName {
  DType dtype;
  std::string_view name;
  std::size_t size;
};
inline constexpr DTypeName dtype_table[] = {
    {DType::boolean, "BOOL", 1},    {DType::u8, "U8", 1},   {DType::i8, "I8", 1},   {DType::f8_e5m2, "F8_E5M2", 1},
    {DType::f8_e4m3, "F8_E4M3", 1}, {DType::i16, "I16", 2}, {DType::u16, "U16", 2}, {DType::f16, "F16", 2},
    {DType::bf16, "BF16", 2},       {DType::i32, "I32", 4}, {DType::u32, "U32", 4}, {DType::f32, "F32", 4},
    {DType::f64, "F64", 8},         {DType::i64, "I64", 8}, {DType::u64, "U64", 8},
};
}  // namespace detail

/// Bytes per element of `dtype`.
constexpr std::size_t dtype_size(DType dtype) noexcept {
  for (const auto& entry : detail::dtype_table)
    if (entry.dtype == dtype) return entry.size;
  return 0;
}

/// The safetensors spelling of `dtype` ("F32", "BF16", ...).
constexpr std::string_view dtype_name(DType dtype) noexcept {
  for (const auto& entry : detail::dtype_table)
    if (entry.dtype == dtype) return entry.name;
  return "?";
}

/// The dtype spelled `name` in a safetensors header, or nullopt for an unknown spelling.
constexpr std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& entry : detail::dtype_table)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

/// "[4, 8, 3, 3]" — for error messages.
inline std::string format_shape(std::span<const std::int64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

/// One tensor of a safetensors file.
struct TensorInfo {
  std::string name;                 ///< key in the header
  DType dtype = DType::f32;         ///< element type
  std::vector<std::int64_t> shape;  ///< row-major extents; empty for a scalar
  std::size_t offset = 0;           ///< first byte within the data buffer (after the header)
  std::size_t nbytes = 0;           ///< numel() * dtype_size(dtype)

  /// Number of elements (1 for a scalar).
  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto extent : shape)
      n *= extent;
    return n;
  }
};

/// A validated safetensors file, memory-mapped read-only (or held in memory when made with from_bytes).
/// Move-only. All member functions are const after construction and safe to call from several threads at once.
class SafetensorsFile {
 public:
  /// Largest header accepted (the reference implementation's limit).
  static constexpr std::size_t max_header_size = 100'000'000;

  /// Maps and validates the file at `path`.
  /// \throws FormatError naming the file and the problem if it is missing, unreadable or malformed.
  static SafetensorsFile open(const std::filesystem::path& path) {
    return SafetensorsFile(detail::MappedFile::open(path), path.string());
  }

  /// Validates an in-memory file image (tests, fuzzing); `name` is used in error messages.
  /// \throws FormatError if the bytes are not a well-formed safetensors file.
  static SafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string name = "<memory>") {
    return SafetensorsFile(std::move(bytes), std::move(name));
  }

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  /// The name given at open (the path) or to from_bytes.
  const std::string& name() const noexcept { return name_; }

  /// All tensors, in data-buffer order.
  const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }

  /// The tensor called `name`, or nullptr. The pointer stays valid while this object lives (moves included).
  const TensorInfo* find(std::string_view tensor_name) const {
    const auto it = index_.find(tensor_name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  /// The raw little-endian bytes of `tensor`, which must come from this file's tensors(). Not necessarily aligned.
  std::span<const std::byte> bytes(const TensorInfo& tensor) const noexcept {
    return storage_bytes().subspan(data_start_ + tensor.offset, tensor.nbytes);
  }

  /// The values of `tensor` (F32, F16, BF16 or F64) converted to float32: exact for F16 and BF16, rounded to nearest
  /// for F64. \throws FormatError naming the tensor for any other dtype.
  std::vector<float> to_float(const TensorInfo& tensor) const {
    std::vector<float> out(static_cast<std::size_t>(tensor.numel()));
    to_float(tensor, out);
    return out;
  }

  /// As to_float(tensor), into `out`, whose size must be tensor.numel(). \throws FormatError otherwise.
  void to_float(const TensorInfo& tensor, std::span<float> out) const {
    if (out.size() != static_cast<std::size_t>(tensor.numel()))
      fail("tensor '" + tensor.name + "': output holds " + std::to_string(out.size()) + " floats, tensor has " +
           std::to_string(tensor.numel()));
    const std::byte* src = bytes(tensor).data();
    switch (tensor.dtype) {
      case DType::f32:
        if (!out.empty()) std::memcpy(out.data(), src, out.size() * sizeof(float));
        break;
      case DType::f16:
      case DType::bf16:
        for (std::size_t i = 0; i < out.size(); ++i) {
          const auto bits = static_cast<std::uint16_t>(std::to_integer<unsigned>(src[2 * i]) |
                                                       (std::to_integer<unsigned>(src[2 * i + 1]) << 8));
          out[i] = tensor.dtype == DType::f16 ? detail::half_to_float(bits) : detail::bf16_to_float(bits);
        }
        break;
      case DType::f64:
        for (std::size_t i = 0; i < out.size(); ++i) {
          double value = 0;
          std::memcpy(&value, src + 8 * i, sizeof value);
          out[i] = static_cast<float>(value);
        }
        break;
      default:
        fail("tensor '" + tensor.name + "' has dtype " + std::string(dtype_name(tensor.dtype)) +
             ", which cannot be read as floating point (F32, F16, BF16 or F64 expected)");
    }
  }

  /// The header's `__metadata__` (empty when absent).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

 private:
  using Storage = std::variant<detail::MappedFile, std::vector<std::byte>>;

  SafetensorsFile(Storage storage, std::string name) : storage_(std::move(storage)), name_(std::move(name)) { parse(); }

  std::span<const std::byte> storage_bytes() const noexcept {
    if (const auto* mapped = std::get_if<detail::MappedFile>(&storage_)) return mapped->bytes();
    return std::get<std::vector<std::byte>>(storage_);
  }

  [[noreturn]] void fail(const std::string& problem) const {
    throw FormatError("safetensors file '" + name_ + "': " + problem);
  }

  static bool is_count(const nlohmann::json& value) { return value.is_number_unsigned(); }

  void parse() {
    const auto file = storage_bytes();
    if (file.size() < 8)
      fail("truncated: " + std::to_string(file.size()) + " bytes, too short for the 8-byte header length");
    std::uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i)
      header_size = (header_size << 8) | std::to_integer<std::uint64_t>(file[i]);
    if (header_size > max_header_size)
      fail("header length " + std::to_string(header_size) + " exceeds the limit of " + std::to_string(max_header_size));
    if (header_size > file.size() - 8)
      fail("truncated: header length " + std::to_string(header_size) + " but only " + std::to_string(file.size() - 8) +
           " bytes follow");
    data_start_ = 8 + static_cast<std::size_t>(header_size);
    const auto* header = reinterpret_cast<const char*>(file.data() + 8);
    const nlohmann::json root = parse_json(std::string_view(header, static_cast<std::size_t>(header_size)));
    if (!root.is_object()) fail("header is not a JSON object");

    for (const auto& [key, value] : root.items()) {
      if (key == "__metadata__") {
        read_metadata(value);
        continue;
      }
      tensors_.push_back(read_tensor(key, value));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
    });
    const std::size_t buffer_size = file.size() - data_start_;
    std::size_t covered = 0;
    const TensorInfo* previous = nullptr;
    for (const auto& tensor : tensors_) {
      if (tensor.offset > covered)
        fail("gap in the data buffer: bytes [" + std::to_string(covered) + ", " + std::to_string(tensor.offset) +
             ") belong to no tensor (before '" + tensor.name + "')");
      if (tensor.offset < covered)
        fail("tensors '" + previous->name + "' and '" + tensor.name + "' overlap at byte " +
             std::to_string(tensor.offset));
      covered = tensor.offset + tensor.nbytes;
      previous = &tensor;
    }
    if (covered != buffer_size)
      fail(covered > buffer_size ? "truncated: tensors need " + std::to_string(covered) + " data bytes, the file has " +
                                       std::to_string(buffer_size)
                                 : "data buffer holds " + std::to_string(buffer_size) + " bytes, tensors cover only " +
                                       std::to_string(covered));
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      index_.emplace(tensors_[i].name, i);
  }

  nlohmann::json parse_json(std::string_view text) const {
    // Track keys per open object: nlohmann keeps the last of duplicate keys silently, the format forbids them.
    // The nesting limit keeps hostile headers ("[[[[...") from costing unbounded memory.
    std::vector<std::set<std::string>> open_objects;
    const auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      if (depth > 3) fail("header JSON nests deeper than a safetensors header does");
      switch (event) {
        case nlohmann::json::parse_event_t::object_start:
          open_objects.emplace_back();
          break;
        case nlohmann::json::parse_event_t::object_end:
          if (!open_objects.empty()) open_objects.pop_back();
          break;
        case nlohmann::json::parse_event_t::key:
          if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second)
            fail("duplicate key '" + parsed.get<std::string>() + "' in the header");
          break;
        default:
          break;
      }
      return true;
    };
    try {
      return nlohmann::json::parse(text.begin(), text.end(), on_event);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
  }

  void read_metadata(const nlohmann::json& value) {
    if (!value.is_object()) fail("__metadata__ is not a JSON object");
    for (const auto& [key, entry] : value.items()) {
      if (!entry.is_string()) fail("__metadata__ entry '" + key + "' is not a string");
      metadata_.emplace(key, entry.get<std::string>());
    }
  }

  TensorInfo read_tensor(const std::string& key, const nlohmann::json& value) const {
    const std::string where = "tensor '" + key + "': ";
    if (!value.is_object()) fail(where + "entry is not a JSON object");
    const auto dtype_it = value.find("dtype");
    const auto shape_it = value.find("shape");
    const auto offsets_it = value.find("data_offsets");
    if (dtype_it == value.end() || !dtype_it->is_string()) fail(where + "missing or non-string 'dtype'");
    if (shape_it == value.end() || !shape_it->is_array()) fail(where + "missing or non-array 'shape'");
    if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !is_count((*offsets_it)[0]) || !is_count((*offsets_it)[1]))
      fail(where + "'data_offsets' must be [begin, end] with non-negative integers");

    TensorInfo info;
    info.name = key;
    const auto& dtype_text = dtype_it->get_ref<const std::string&>();
    const auto dtype = parse_dtype(dtype_text);
    if (!dtype) fail(where + "unknown dtype '" + dtype_text + "'");
    info.dtype = *dtype;

    constexpr auto limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    std::uint64_t numel = 1;
    for (const auto& extent : *shape_it) {
      if (!is_count(extent)) fail(where + "shape entries must be non-negative integers");
      const auto e = extent.get<std::uint64_t>();
      if (e > limit || (e != 0 && numel > limit / e)) fail(where + "shape overflows");
      numel *= e;
      info.shape.push_back(static_cast<std::int64_t>(e));
    }
    const std::uint64_t size = dtype_size(info.dtype);
    if (numel > limit / size) fail(where + "byte size overflows");
    const auto begin = (*offsets_it)[0].get<std::uint64_t>();
    const auto end = (*offsets_it)[1].get<std::uint64_t>();
    if (end < begin)
      fail(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] end before begin");
    if (end - begin != numel * size)
      fail(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] hold " +
           std::to_string(end - begin) + " bytes, but " + dtype_text + " " + format_shape(info.shape) + " needs " +
           std::to_string(numel * size));
    info.offset = static_cast<std::size_t>(begin);
    info.nbytes = static_cast<std::size_t>(end - begin);
    return info;
  }

  Storage storage_;
  std::string name_;
  std::size_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace carousel::checkpoint
