#pragma once
/// \file sd_server/request.hpp
/// What both API shapes share: the error answered to a client (`ApiError`), a parsed generation request
/// (`GenerationRequest`), the parsing limits, and the typed field readers and sampler names the per-API parsers
/// (openai.hpp, a1111.hpp) are written with.

#include <carousel/diffusion/invalid_job.hpp>
#include <carousel/diffusion/job.hpp>
#include <carousel/diffusion/sampler.hpp>
#include <carousel/errors.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace carousel::examples::sd_server {

/// An error answered to the client: the HTTP status, a message, and (for invalid input) the request field at fault.
/// Serialized as `{"error": {"message": ..., "type": ..., "field": ...}}`.
class ApiError : public std::runtime_error {
 public:
  /// An error with HTTP `status`, `message`, the offending `field` ("" when none) and a machine-readable `type`.
  ApiError(int status, std::string message, std::string field = "", std::string type = "invalid_request_error")
      : std::runtime_error(message), status_(status), field_(std::move(field)), type_(std::move(type)) {}

  /// The HTTP status code.
  int status() const noexcept { return status_; }
  /// The request field at fault, or "".
  const std::string& field() const noexcept { return field_; }
  /// A machine-readable error type, e.g. "invalid_request_error", "queue_full".
  const std::string& type() const noexcept { return type_; }

  /// The JSON body of the error response.
  nlohmann::json body() const {
    nlohmann::json e = {{"message", what()}, {"type", type_}};
    e["field"] = field_.empty() ? nlohmann::json(nullptr) : nlohmann::json(field_);
    return {{"error", e}};
  }

 private:
  int status_;
  std::string field_;
  std::string type_;
};

/// Which API shape a request came in (and is answered in).
enum class ApiShape { openai, a1111 };

/// A parsed generation request: the jobs to run (one per image, seeds consecutive) and how to run them.
struct GenerationRequest {
  ApiShape shape = ApiShape::openai;
  std::vector<diffusion::Job> jobs;        ///< one per image, not yet validated by the pipeline
  std::uint64_t seed = 0;                  ///< the first image's seed (random when the client gave none)
  int priority = 0;                        ///< larger runs first
  std::optional<std::int64_t> timeout_ms;  ///< per-request deadline, from submission
  bool stream = false;                     ///< answer with Server-Sent Events (OpenAI shape only)
  bool async = false;                      ///< answer 202 {id} at once (OpenAI shape only)
  bool url_response = false;               ///< `response_format: "url"`: image URLs instead of base64 (OpenAI shape)
  nlohmann::json parameters;               ///< the request as understood, defaults filled (echoed back)
};

/// Limits and defaults for parsing.
struct ApiLimits {
  int default_steps = 20;         ///< steps when the client gives none
  double default_guidance = 7.5;  ///< guidance scale (cfg_scale) when the client gives none
  int max_images = 8;             ///< most images per request (`n`, `batch_size` x `n_iter`)
  int default_width = 512;        ///< the model's default image size
  int default_height = 512;       ///< the model's default image size
  int max_steps = 1000;           ///< most sampler steps a request may ask for
  bool allow_priority = false;    ///< honour the client's `priority` (else it is parsed, then ignored: 0)
};

namespace detail {

inline const nlohmann::json* find(const nlohmann::json& body, const char* field) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

inline std::string get_string(const nlohmann::json& body, const char* field, std::string fallback) {
  const auto* v = find(body, field);
  if (!v) return fallback;
  if (!v->is_string()) throw ApiError(400, std::string(field) + ": must be a string", field);
  return v->get<std::string>();
}

inline std::int64_t get_int(const nlohmann::json& body, const char* field, std::int64_t fallback, std::int64_t lo,
                            std::int64_t hi) {
  const auto* v = find(body, field);
  if (!v) return fallback;
  std::int64_t x = 0;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
      throw ApiError(400, std::string(field) + ": must be between " + std::to_string(lo) + " and " + std::to_string(hi),
                     field);
    }
    x = v->get<std::int64_t>();
  } else if (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
             std::abs(v->get<double>()) < 9.0e15) {
    x = static_cast<std::int64_t>(v->get<double>());
  } else {
    throw ApiError(400, std::string(field) + ": must be an integer", field);
  }
  if (x < lo || x > hi) {
    throw ApiError(400,
                   std::string(field) + ": must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                       ", got " + std::to_string(x),
                   field);
  }
  return x;
}

inline double get_number(const nlohmann::json& body, const char* field, double fallback) {
  const auto* v = find(body, field);
  if (!v) return fallback;
  if (!v->is_number()) throw ApiError(400, std::string(field) + ": must be a number", field);
  return v->get<double>();
}

inline bool get_bool(const nlohmann::json& body, const char* field, bool fallback) {
  const auto* v = find(body, field);
  if (!v) return fallback;
  if (!v->is_boolean()) throw ApiError(400, std::string(field) + ": must be true or false", field);
  return v->get<bool>();
}

inline std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// A sampler's names: ours (OpenAI-shape `sampler`) and AUTOMATIC1111's (`sampler_name`).
struct SamplerName {
  diffusion::SamplerKind kind;
  const char* api;
  const char* a1111;
};
inline constexpr SamplerName sampler_names[] = {
    {diffusion::SamplerKind::ddim, "ddim", "DDIM"},
    {diffusion::SamplerKind::ddpm, "ddpm", "DDPM"},
    {diffusion::SamplerKind::euler, "euler", "Euler"},
    {diffusion::SamplerKind::dpm_solver, "dpm++2m", "DPM++ 2M"},
};

inline const SamplerName& sampler_name(diffusion::SamplerKind kind) {
  for (const SamplerName& s : sampler_names) {
    if (s.kind == kind) return s;
  }
  return sampler_names[0];
}

/// Our names of the samplers, for /health.
inline nlohmann::json sampler_list() {
  nlohmann::json names = nlohmann::json::array();
  for (const SamplerName& s : sampler_names)
    names.push_back(s.api);
  return names;
}

/// Either name, any case.
inline diffusion::SamplerKind sampler_of(const std::string& name, const char* field) {
  const std::string n = lower(name);
  for (const SamplerName& s : sampler_names) {
    if (n == s.api || n == lower(s.a1111)) return s.kind;
  }
  throw ApiError(400, std::string(field) + ": unknown sampler '" + name + "' (supported: DDIM, DDPM, Euler, DPM++ 2M)",
                 field);
}

/// Deepest nesting of arrays and objects a request body may have; request bodies are flat, and deeper nesting would
/// only cost stack and memory (nlohmann's parser and serializer recurse).
inline constexpr int max_json_depth = 16;

/// Whether the JSON text nests arrays/objects deeper than `limit` (brackets inside strings do not count). Linear,
/// no recursion; run before parsing.
inline bool nested_deeper_than(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return true;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return false;
}

inline nlohmann::json parse_object(std::string_view body) {
  if (nested_deeper_than(body, max_json_depth)) {
    throw ApiError(400, "body: JSON nested deeper than " + std::to_string(max_json_depth) + " levels", "body");
  }
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) throw ApiError(400, "body: not valid JSON", "body");
  if (!j.is_object()) throw ApiError(400, "body: must be a JSON object", "body");
  return j;
}

// Seeds are kept below 2^31 so that A1111 clients (which treat seeds as int32) can read them back.
constexpr std::int64_t max_seed = std::numeric_limits<std::int32_t>::max();

inline std::uint64_t random_seed() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  return std::uniform_int_distribution<std::uint64_t>(0, static_cast<std::uint64_t>(max_seed))(gen);
}

/// A positive decimal integer of at most 5 digits, nothing else (no sign, no spaces); nullopt otherwise.
inline std::optional<int> parse_dimension(std::string_view text) {
  if (text.empty() || text.size() > 5) return std::nullopt;
  int v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (v == 0) return std::nullopt;
  return v;
}

inline std::vector<diffusion::Job> replicate(const diffusion::Job& base, std::uint64_t seed, int n) {
  std::vector<diffusion::Job> jobs(static_cast<std::size_t>(n), base);
  for (std::size_t i = 0; i < jobs.size(); ++i)
    jobs[i].seed = seed + i;
  return jobs;
}

}  // namespace detail

/// The request field of the API shape the client used that holds `Job` member `job_field` (as named by
/// `diffusion::InvalidJob::field()`): width/height -> size for OpenAI, guidance_scale -> cfg_scale and
/// sampler -> sampler_name for A1111; other names are the same in both.
inline std::string api_field(std::string_view job_field, ApiShape shape) {
  if (shape == ApiShape::openai && (job_field == "width" || job_field == "height")) return "size";
  if (shape == ApiShape::a1111 && job_field == "guidance_scale") return "cfg_scale";
  if (shape == ApiShape::a1111 && job_field == "sampler") return "sampler_name";
  return std::string(job_field);
}

/// The client-facing error of a batcher error; a refused job (`Errc::invalid_request` with a nested
/// `diffusion::InvalidJob`) becomes 400 naming the field as the client's API `shape` spells it.
inline ApiError error_of(const Error& e, ApiShape shape) {
  switch (e.code()) {
    case Errc::queue_full:
      return ApiError(429, e.what(), "", "queue_full");
    case Errc::cancelled:
      return ApiError(499, e.what(), "", "cancelled");
    case Errc::deadline_exceeded:
    case Errc::deadline_unreachable:
      return ApiError(504, e.what(), "timeout_ms", "timeout");
    case Errc::shut_down:
      return ApiError(503, e.what(), "", "shutting_down");
    case Errc::invalid_request:
      try {
        std::rethrow_if_nested(e);
      } catch (const diffusion::InvalidJob& invalid) {
        return ApiError(400, invalid.what(), api_field(invalid.field(), shape));
      } catch (...) {
      }
      return ApiError(400, e.what(), "", "invalid_request");
    case Errc::model_error:
      break;
  }
  return ApiError(500, e.what(), "", "model_error");
}

}  // namespace carousel::examples::sd_server
