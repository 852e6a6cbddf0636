#pragma once
/// \file
/// Typed, defaulted access to the fields of a diffusers / transformers config.json, with errors that name the
/// file and the field.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint::detail {

/// Reads `path` (a config.json, or a folder holding one) as a JSON object.
/// \throws FormatError naming the file when it is missing or not a JSON object.
inline nlohmann::json read_json_object(const std::filesystem::path& path, std::string_view file_name = "config.json") {
  const auto file = std::filesystem::is_directory(path) ? path / std::string(file_name) : path;
  std::ifstream in(file);
  if (!in) throw FormatError("config '" + file.string() + "': cannot open");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("config '" + file.string() + "': not valid JSON: " + e.what());
  }
  if (!json.is_object()) throw FormatError("config '" + file.string() + "': not a JSON object");
  return json;
}

/// The path of the config file read by read_json_object(path).
inline std::string config_source(const std::filesystem::path& path, std::string_view file_name = "config.json") {
  return (std::filesystem::is_directory(path) ? path / std::string(file_name) : path).string();
}

/// Field access for one config object; `source` names it in errors. A field that is absent or JSON null takes the
/// default (diffusers / transformers do the same for absent fields).
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& json, std::string source) : json_(json), source_(std::move(source)) {}

  [[noreturn]] void fail(std::string_view field, const std::string& problem) const {
    throw FormatError("config '" + source_ + "': field '" + std::string(field) + "' " + problem);
  }

  bool has(std::string_view field) const {
    const auto it = json_.find(field);
    return it != json_.end() && !it->is_null();
  }

  const nlohmann::json* find(std::string_view field) const {
    const auto it = json_.find(field);
    return it == json_.end() || it->is_null() ? nullptr : &*it;
  }

  int get_int(std::string_view field, int fallback) const {
    const auto* v = find(field);
    return v ? to_int(field, *v) : fallback;
  }

  double get_double(std::string_view field, double fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_number() || !std::isfinite(v->get<double>())) fail(field, "must be a finite number, got " + v->dump());
    return v->get<double>();
  }

  std::optional<double> get_optional_double(std::string_view field) const {
    if (!has(field)) return std::nullopt;
    return get_double(field, 0.0);
  }

  bool get_bool(std::string_view field, bool fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field, "must be true or false, got " + v->dump());
    return v->get<bool>();
  }

  std::string get_string(std::string_view field, std::string fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_string()) fail(field, "must be a string, got " + v->dump());
    return v->get<std::string>();
  }

  std::vector<std::string> get_strings(std::string_view field, std::vector<std::string> fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_array()) fail(field, "must be a list of strings, got " + v->dump());
    std::vector<std::string> out;
    for (const auto& item : *v) {
      if (!item.is_string()) fail(field, "must be a list of strings, got " + v->dump());
      out.push_back(item.get<std::string>());
    }
    return out;
  }

  /// An int or a list of ints, as a list of `count` entries (an int is repeated).
  std::vector<int> get_ints_per_block(std::string_view field, int fallback, std::size_t count) const {
    const auto* v = find(field);
    if (!v) return std::vector<int>(count, fallback);
    if (!v->is_array()) return std::vector<int>(count, to_int(field, *v));
    if (v->size() != count)
      fail(field,
           "has " + std::to_string(v->size()) + " entries, one per block (" + std::to_string(count) + ") expected");
    std::vector<int> out;
    for (const auto& item : *v)
      out.push_back(to_int(field, item));
    return out;
  }

  std::vector<int> get_ints(std::string_view field, std::vector<int> fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_array()) fail(field, "must be a list of integers, got " + v->dump());
    std::vector<int> out;
    for (const auto& item : *v)
      out.push_back(to_int(field, item));
    return out;
  }

  std::optional<std::vector<double>> get_optional_doubles(std::string_view field) const {
    const auto* v = find(field);
    if (!v) return std::nullopt;
    if (!v->is_array()) fail(field, "must be a list of numbers, got " + v->dump());
    std::vector<double> out;
    for (const auto& item : *v) {
      if (!item.is_number() || !std::isfinite(item.get<double>()))
        fail(field, "must be a list of finite numbers, got " + v->dump());
      out.push_back(item.get<double>());
    }
    return out;
  }

  /// Fails unless the field is absent, null, or equal to `supported` (a feature this project does not run).
  void require_default(std::string_view field, const nlohmann::json& supported) const {
    const auto* v = find(field);
    if (!v || *v == supported) return;
    if (v->is_number() && supported.is_number() && v->get<double>() == supported.get<double>()) return;
    fail(field, "= " + v->dump() + " is not supported (only " + supported.dump() + ")");
  }

  /// Fails unless the field is absent or null.
  void require_null(std::string_view field) const {
    if (const auto* v = find(field)) fail(field, "= " + v->dump() + " is not supported (only null)");
  }

  /// Fails unless every entry of `values` is one of `allowed`.
  void require_one_of(std::string_view field, const std::vector<std::string>& values,
                      std::initializer_list<std::string_view> allowed) const {
    for (std::size_t i = 0; i < values.size(); ++i) {
      bool ok = false;
      for (auto a : allowed)
        ok = ok || values[i] == a;
      if (ok) continue;
      std::string list;
      for (auto a : allowed)
        list += (list.empty() ? "" : ", ") + std::string(a);
      fail(field, "entry " + std::to_string(i) + " = \"" + values[i] + "\" is not supported (supported: " + list + ")");
    }
  }

  /// The largest size (channels, layers, positions, vocabulary entries) a config may give: far above every
  /// Stable Diffusion network, far below what would overflow a tensor's element count.
  static constexpr int max_size = 1 << 20;

  /// Fails unless 0 < `value` <= `max`.
  void require_positive(std::string_view field, int value, int max = max_size) const {
    if (value <= 0 || value > max)
      fail(field, "must lie in 1.." + std::to_string(max) + ", got " + std::to_string(value));
  }

  /// Fails unless `value` is a usable normalization epsilon: 0 < value < 1 (SD configs use 1e-5 and 1e-6).
  void require_epsilon(std::string_view field, double value) const {
    if (!(value > 0.0 && value < 1.0)) fail(field, "must lie in (0, 1), got " + nlohmann::json(value).dump());
  }

  const std::string& source() const noexcept { return source_; }

 private:
  int to_int(std::string_view field, const nlohmann::json& v) const {
    if (v.is_number_integer()) {
      const auto value = v.get<long long>();
      if (value < -(1ll << 30) || value > (1ll << 30)) fail(field, "is out of range: " + v.dump());
      return static_cast<int>(value);
    }
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::fabs(v.get<double>()) < 1e9)
      return static_cast<int>(v.get<double>());
    fail(field, "must be an integer, got " + v.dump());
  }

  const nlohmann::json& json_;
  std::string source_;
};

}  // namespace carousel::checkpoint::detail
