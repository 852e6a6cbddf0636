#pragma once
/// \file sd_server/openai.hpp
/// The OpenAI images API shape of carousel-sd-server (`POST /v1/images/generations` and the generation resources
/// under it): request parsing and every response body of that shape.

#include <carousel/diffusion/job.hpp>
#include <nlohmann/json.hpp>
#include <sd_server/generation.hpp>
#include <sd_server/request.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace carousel::examples::sd_server {

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
    const auto w = x == std::string::npos ? std::nullopt : parse_dimension(std::string_view(size).substr(0, x));
    const auto h = x == std::string::npos ? std::nullopt : parse_dimension(std::string_view(size).substr(x + 1));
    if (!w || !h) {
      throw ApiError(
          400, "size: must be \"WIDTHxHEIGHT\" with positive integers, e.g. \"512x512\", got \"" + size + "\"", "size");
    }
    base.width = *w;
    base.height = *h;
  }
  base.steps = static_cast<int>(get_int(body, "steps", limits.default_steps, 1, limits.max_steps));
  base.guidance_scale = static_cast<float>(get_number(body, "guidance_scale", limits.default_guidance));
  base.sampler = sampler_of(get_string(body, "sampler", "ddim"), "sampler");
  base.eta = static_cast<float>(get_number(body, "eta", 0.0));
  const auto seed = get_int(body, "seed", -1, -1, max_seed);
  r.seed = seed < 0 ? random_seed() : static_cast<std::uint64_t>(seed);
  const auto priority = static_cast<int>(get_int(body, "priority", 0, -1000000, 1000000));
  r.priority = limits.allow_priority ? priority : 0;
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

/// Where image `index` of generation `id` is served (response_format "url").
inline std::string openai_image_path(const std::string& id, std::size_t index) {
  return "/v1/images/generations/" + id + "/images/" + std::to_string(index) + ".png";
}

/// The success body: `created`, `id`, `data` (one `b64_json` or `url` and the `seed` per image), `timings`,
/// `parameters`.
inline nlohmann::json openai_success_body(Generation& g, const std::vector<diffusion::Job>& jobs,
                                          const std::vector<std::string>& images) {
  nlohmann::json data = nlohmann::json::array();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (g.image_url_base.empty()) {
      data.push_back({{"b64_json", images[i]}, {"seed", jobs[i].seed}});
    } else {
      data.push_back({{"url", g.image_url_base + openai_image_path(g.id, i)}, {"seed", jobs[i].seed}});
    }
  }
  return {
      {"created", g.created}, {"id", g.id}, {"data", data}, {"timings", timings_of(g)}, {"parameters", g.parameters}};
}

/// The 202 body of an asynchronous request: the id and where to follow it.
inline nlohmann::json openai_accepted_body(const Generation& g) {
  return {{"id", g.id},
          {"status", "queued"},
          {"status_url", "/v1/images/generations/" + g.id},
          {"events_url", "/v1/images/generations/" + g.id + "/events"}};
}

/// `GET /v1/images/generations/{id}`: status, progress per image, and the result or error once finished. The caller
/// holds `g.mutex`.
inline nlohmann::json openai_status_body(const Generation& g) {
  nlohmann::json progress = nlohmann::json::array();
  for (std::size_t i = 0; i < g.seeds.size(); ++i)
    progress.push_back({{"step", g.steps_done[i]}, {"total", g.total_steps[i]}});
  nlohmann::json body = {{"id", g.id}, {"status", g.status}, {"created", g.created}, {"progress", progress}};
  if (g.finished) body[g.http_status == 200 ? "result" : "error"] = g.http_status == 200 ? g.result : g.result["error"];
  return body;
}

/// `DELETE /v1/images/generations/{id}`: the id and the status (`cancelling` until finished). The caller holds
/// `g.mutex`.
inline nlohmann::json openai_cancel_body(const Generation& g) {
  return {{"id", g.id}, {"status", g.finished ? g.status : "cancelling"}};
}

}  // namespace carousel::examples::sd_server
