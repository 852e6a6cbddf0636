#pragma once
/// \file sd_server/api.hpp
/// The request bodies carousel-sd-server accepts, parsed and checked: the OpenAI images API shape
/// (`POST /v1/images/generations`) and AUTOMATIC1111's `POST /sdapi/v1/txt2img`. Parsing turns a JSON body into
/// validated `diffusion::Job`s or throws `ApiError` naming the offending field.

#include <carousel/diffusion/job.hpp>
#include <carousel/diffusion/sampler.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
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

inline nlohmann::json parse_object(std::string_view body) {
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

inline std::vector<diffusion::Job> replicate(const diffusion::Job& base, std::uint64_t seed, int n) {
  std::vector<diffusion::Job> jobs(static_cast<std::size_t>(n), base);
  for (std::size_t i = 0; i < jobs.size(); ++i)
    jobs[i].seed = seed + i;
  return jobs;
}

}  // namespace detail

/// Parses `POST /v1/images/generations` (OpenAI images API plus carousel's extensions). Throws `ApiError` (400)
/// naming the field for malformed JSON, wrong types, out-of-range values, an unknown `response_format` and unknown
/// samplers.
inline GenerationRequest parse_openai(std::string_view text, const ApiLimits& limits) {
  using namespace detail;
  const nlohmann::json body = parse_object(text);
  GenerationRequest r;
  r.shape = ApiShape::openai;
  const auto* prompt = find(body, "prompt");
  if (!prompt) throw ApiError(400, "prompt: required", "prompt");
  diffusion::Job base;
  base.prompt = get_string(body, "prompt", "");
  base.negative_prompt = get_string(body, "negative_prompt", "");
  const auto n = static_cast<int>(get_int(body, "n", 1, 1, limits.max_images));
  const std::string format = get_string(body, "response_format", "b64_json");
  if (format != "b64_json" && format != "url") {
    throw ApiError(400, "response_format: expected \"b64_json\" or \"url\", got \"" + format + "\"", "response_format");
  }
  r.url_response = format == "url";
  base.width = limits.default_width;
  base.height = limits.default_height;
  if (find(body, "size")) {
    const std::string size = get_string(body, "size", "");
    const auto x = size.find('x');
    std::size_t used_w = 0, used_h = 0;
    try {
      if (x == std::string::npos) throw std::invalid_argument("no x");
      base.width = std::stoi(size.substr(0, x), &used_w);
      base.height = std::stoi(size.substr(x + 1), &used_h);
    } catch (const std::exception&) {
      throw ApiError(400, "size: must be \"WIDTHxHEIGHT\", e.g. \"512x512\", got \"" + size + "\"", "size");
    }
    if (used_w != x || used_h != size.size() - x - 1) {
      throw ApiError(400, "size: must be \"WIDTHxHEIGHT\", e.g. \"512x512\", got \"" + size + "\"", "size");
    }
  }
  base.steps = static_cast<int>(get_int(body, "steps", limits.default_steps, 1, 10000));
  base.guidance_scale = static_cast<float>(get_number(body, "guidance_scale", limits.default_guidance));
  base.sampler = sampler_of(get_string(body, "sampler", "ddim"), "sampler");
  base.eta = static_cast<float>(get_number(body, "eta", 0.0));
  const auto seed = get_int(body, "seed", -1, -1, max_seed);
  r.seed = seed < 0 ? random_seed() : static_cast<std::uint64_t>(seed);
  r.priority = static_cast<int>(get_int(body, "priority", 0, -1000000, 1000000));
  if (find(body, "timeout_ms")) r.timeout_ms = get_int(body, "timeout_ms", 0, 1, 86'400'000);
  r.stream = get_bool(body, "stream", false);
  r.async = get_bool(body, "async", false);
  if (r.stream && r.async) throw ApiError(400, "stream: cannot be combined with async", "stream");
  r.jobs = replicate(base, r.seed, n);
  r.parameters = {{"prompt", base.prompt},
                  {"negative_prompt", base.negative_prompt},
                  {"n", n},
                  {"size", std::to_string(base.width) + "x" + std::to_string(base.height)},
                  {"steps", base.steps},
                  {"guidance_scale", base.guidance_scale},
                  {"sampler", sampler_name(base.sampler).api},
                  {"eta", base.eta},
                  {"seed", r.seed},
                  {"priority", r.priority}};
  if (r.timeout_ms) r.parameters["timeout_ms"] = *r.timeout_ms;
  return r;
}

/// Parses AUTOMATIC1111's `POST /sdapi/v1/txt2img` (prompt, negative_prompt, steps, cfg_scale, width, height, seed
/// (-1 = random), sampler_name / sampler_index ("DDIM" or "DDPM", any case), batch_size, n_iter, eta). Fields this
/// server does not implement (hires fix, restore_faces, ...) are ignored. Throws `ApiError` (400) naming the field.
inline GenerationRequest parse_a1111(std::string_view text, const ApiLimits& limits) {
  using namespace detail;
  const nlohmann::json body = parse_object(text);
  GenerationRequest r;
  r.shape = ApiShape::a1111;
  diffusion::Job base;
  base.prompt = get_string(body, "prompt", "");
  base.negative_prompt = get_string(body, "negative_prompt", "");
  base.steps = static_cast<int>(get_int(body, "steps", limits.default_steps, 1, 10000));
  base.guidance_scale = static_cast<float>(get_number(body, "cfg_scale", limits.default_guidance));
  base.width = static_cast<int>(get_int(body, "width", limits.default_width, 1, 1 << 16));
  base.height = static_cast<int>(get_int(body, "height", limits.default_height, 1, 1 << 16));
  base.eta = static_cast<float>(get_number(body, "eta", 0.0));
  std::string sampler_field = "sampler_name";
  std::string sampler = get_string(body, "sampler_name", "");
  if (sampler.empty()) {
    sampler_field = "sampler_index";
    sampler = get_string(body, "sampler_index", "DDIM");
  }
  base.sampler = sampler_of(sampler, sampler_field.c_str());
  const auto batch = get_int(body, "batch_size", 1, 1, limits.max_images);
  const auto iters = get_int(body, "n_iter", 1, 1, limits.max_images);
  if (batch * iters > limits.max_images) {
    throw ApiError(400, "batch_size: batch_size x n_iter must be at most " + std::to_string(limits.max_images),
                   "batch_size");
  }
  const auto seed = get_int(body, "seed", -1, -1, max_seed);
  r.seed = seed < 0 ? random_seed() : static_cast<std::uint64_t>(seed);
  r.jobs = replicate(base, r.seed, static_cast<int>(batch * iters));
  r.parameters = body;
  r.parameters["prompt"] = base.prompt;
  r.parameters["negative_prompt"] = base.negative_prompt;
  r.parameters["steps"] = base.steps;
  r.parameters["cfg_scale"] = base.guidance_scale;
  r.parameters["width"] = base.width;
  r.parameters["height"] = base.height;
  r.parameters["seed"] = seed;
  r.parameters["sampler_name"] = sampler_name(base.sampler).a1111;
  r.parameters["batch_size"] = batch;
  r.parameters["n_iter"] = iters;
  r.parameters["eta"] = base.eta;
  return r;
}

/// The name a validation message from `Pipeline::validate` ("steps: must be ...") starts with, translated to the
/// field name of the API shape the client used (width/height -> size for OpenAI, guidance_scale -> cfg_scale and
/// sampler -> sampler_name for A1111).
inline std::string field_of_validation_message(std::string_view message, ApiShape shape) {
  const auto colon = message.find(':');
  std::string field(colon == std::string_view::npos ? std::string_view{} : message.substr(0, colon));
  if (shape == ApiShape::openai && (field == "width" || field == "height")) return "size";
  if (shape == ApiShape::a1111 && field == "guidance_scale") return "cfg_scale";
  if (shape == ApiShape::a1111 && field == "sampler") return "sampler_name";
  return field;
}

}  // namespace carousel::examples::sd_server
