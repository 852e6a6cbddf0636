#pragma once
/// \file sd_server/a1111.hpp
/// AUTOMATIC1111's web UI API shape of carousel-sd-server (`/sdapi/v1/...`): request parsing and every response body
/// of that shape.

#include <carousel/diffusion/job.hpp>
#include <carousel/diffusion/sampler.hpp>
#include <nlohmann/json.hpp>
#include <sd_server/generation.hpp>
#include <sd_server/request.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace carousel::examples::sd_server {

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
  base.steps = static_cast<int>(get_int(body, "steps", limits.default_steps, 1, limits.max_steps));
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
  r.parameters = nlohmann::json::object();  // the fields as understood, never the raw body
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

/// The success body of `txt2img`: base64 `images`, `parameters`, and `info` (a JSON string, as A1111 answers).
inline nlohmann::json a1111_success_body(Generation& g, const std::vector<diffusion::Job>& jobs,
                                         const std::vector<std::string>& images, const std::string& model_name) {
  using detail::sampler_name;
  const diffusion::Job& first = jobs.front();
  nlohmann::json info = {{"id", g.id},
                         {"prompt", first.prompt},
                         {"all_prompts", std::vector<std::string>(jobs.size(), first.prompt)},
                         {"negative_prompt", first.negative_prompt},
                         {"all_negative_prompts", std::vector<std::string>(jobs.size(), first.negative_prompt)},
                         {"seed", first.seed},
                         {"all_seeds", g.seeds},
                         {"subseed", -1},
                         {"all_subseeds", std::vector<int>(jobs.size(), -1)},
                         {"subseed_strength", 0},
                         {"width", first.width},
                         {"height", first.height},
                         {"sampler_name", sampler_name(first.sampler).a1111},
                         {"cfg_scale", first.guidance_scale},
                         {"steps", first.steps},
                         {"batch_size", jobs.size()},
                         {"restore_faces", false},
                         {"sd_model_name", model_name},
                         {"index_of_first_image", 0},
                         {"infotexts", std::vector<std::string>(jobs.size(), first.prompt)},
                         {"timings", timings_of(g)}};
  return {{"images", images}, {"parameters", g.parameters}, {"info", info.dump()}};
}

/// `GET /sdapi/v1/progress`, as AUTOMATIC1111 answers it for its one job at a time: `current` (the oldest unfinished
/// generation, or null when idle) is "the job" (its share of steps done over all its images, the ETA of its slowest
/// image at `step_seconds` per step), and job_count counts the `unfinished` generations. Idle: progress 0, job "".
/// Nothing that identifies a generation (id, prompt, timestamp) is answered: any client may ask.
inline nlohmann::json a1111_progress_body(const std::shared_ptr<Generation>& current, std::size_t unfinished,
                                          double step_seconds) {
  double progress = 0, eta = 0;
  nlohmann::json state = {{"skipped", false},        {"interrupted", false}, {"job", ""},
                          {"job_count", unfinished}, {"job_timestamp", ""},  {"job_no", 0},
                          {"sampling_step", 0},      {"sampling_steps", 0}};
  if (current) {
    std::lock_guard lock(current->mutex);
    std::size_t done = 0, total = 0, slowest = 0;
    for (std::size_t i = 0; i < current->total_steps.size(); ++i) {
      done += current->steps_done[i];
      total += current->total_steps[i];
      slowest = std::max(slowest, current->total_steps[i] - std::min(current->steps_done[i], current->total_steps[i]));
    }
    progress = total ? static_cast<double>(done) / static_cast<double>(total) : 0.0;
    eta = step_seconds * static_cast<double>(slowest);
    state["job"] = "txt2img";  // never the id: whoever knows an id may read and cancel that generation
    if (!current->total_steps.empty()) {
      state["sampling_step"] = current->steps_done.front();
      state["sampling_steps"] = current->total_steps.front();
    }
  }
  return {{"progress", progress},
          {"eta_relative", eta},
          {"state", state},
          {"current_image", nullptr},
          {"textinfo", nullptr}};
}

/// `GET /sdapi/v1/samplers`: each sampler's A1111 name with ours as alias.
inline nlohmann::json a1111_samplers_body() {
  nlohmann::json samplers = nlohmann::json::array();
  for (const auto& s : detail::sampler_names) {
    samplers.push_back(nlohmann::json{{"name", s.a1111}, {"aliases", {s.api}}, {"options", nlohmann::json::object()}});
  }
  return samplers;
}

/// `GET /sdapi/v1/sd-models`: the one model served.
inline nlohmann::json a1111_models_body(const std::string& name, const std::string& filename) {
  return nlohmann::json::array({{{"title", name}, {"model_name", name}, {"filename", filename}, {"hash", nullptr}}});
}

}  // namespace carousel::examples::sd_server
