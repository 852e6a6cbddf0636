#pragma once
/// \file carousel/diffusion/pipeline.hpp
/// `Pipeline<Backend>`: text-to-image diffusion as a carousel StepModel over `Job`.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "carousel/checkpoint/diffusers_folder.hpp"
#include "carousel/checkpoint/unet_config.hpp"
#include "carousel/diffusion/backend.hpp"
#include "carousel/diffusion/guidance.hpp"
#include "carousel/diffusion/image.hpp"
#include "carousel/diffusion/invalid_job.hpp"
#include "carousel/diffusion/job.hpp"
#include "carousel/diffusion/rng.hpp"
#include "carousel/diffusion/sampler.hpp"
#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/scheduler_config.hpp"
#include "carousel/diffusion/timesteps.hpp"
#include "carousel/diffusion/update.hpp"

namespace carousel::diffusion {

/// Request limits and defaults of a Pipeline; `validate` enforces them.
struct PipelineOptions {
  int default_width = 512;               ///< used when `Job::width` is 0
  int default_height = 512;              ///< used when `Job::height` is 0
  int max_side = 2048;                   ///< largest width or height in pixels
  int max_steps = 1000;                  ///< most sampler steps (also bounded by num_train_timesteps)
  std::size_t max_prompt_bytes = 16384;  ///< longest prompt / negative prompt in bytes (tokens beyond 75 are cut)
};

/// The options of a diffusers folder: the default image size is the UNet's sample_size x the VAE factor.
inline PipelineOptions pipeline_options(const checkpoint::DiffusersFolder& folder, std::int64_t vae_scale_factor) {
  PipelineOptions o;
  const auto unet = folder.unet_config();
  if (unet.sample_size) o.default_width = o.default_height = static_cast<int>(*unet.sample_size * vae_scale_factor);
  return o;
}

/// The folder's scheduler configuration with StableDiffusionPipeline's rewrites (steps_offset 1, clip_sample false).
inline SchedulerConfig pipeline_scheduler_config(const checkpoint::DiffusersFolder& folder) {
  return SchedulerConfig::load(folder).with_pipeline_defaults();
}

/// Text-to-image diffusion as a StepModel over `Job`, for `carousel::StepBatcher<Pipeline<B>, Job>`.
///
/// - `admit`: tokenizes and encodes the joining prompts (and negative prompts of guided jobs) in one text-encoder call,
///   sets each request's sampler and draws its initial latents from its own generator.
/// - `step`: one UNet call for the whole batch — a guided job contributes an unconditional and a conditional row —
///   with a per-row timestep, then per-request guidance and one batched sampler update over per-request coefficients.
/// - `retire`: one VAE decode for the leaving requests, then RGB8 conversion into `Job::image`.
/// - `batch_key`: the latent shape (width, height); `total_steps`: the sampler's step count; `cost`: UNet rows x latent
///   pixels / 64.
///
/// A request's image depends only on its own fields: noise comes from its own generator, and the backend treats batch
/// items independently, so an image is bitwise the same alone or in any batch.
/// The batcher calls it from its driving thread; `retire` may also run on the retire stage's thread
/// (`Options::concurrent_retire`), concurrently with `admit` and `step`: it touches only the leaving jobs and the
/// backend's `decode`, which both reference backends allow to run beside `encode_text` and `unet` (the CUDA backend
/// decodes on a stream of its own). The backend must outlive the pipeline.
template <class Backend>
class Pipeline {
  static_assert(DiffusionBackend<Backend>, "carousel::diffusion::Pipeline: Backend lacks part of DiffusionBackend");

 public:
  /// A pipeline over `backend` with the scheduler `config` (apply `with_pipeline_defaults()` for SD folders).
  /// Throws `std::invalid_argument` naming the field for an invalid scheduler configuration.
  Pipeline(const Backend& backend, SchedulerConfig config, PipelineOptions options = {})
      : backend_(backend),
        schedule_(std::make_shared<const NoiseSchedule>(std::move(config))),
        options_(options),
        factor_(static_cast<int>(backend.vae_scale_factor())),
        channels_(static_cast<int>(backend.latent_channels())) {}

  /// The options in force.
  const PipelineOptions& options() const noexcept { return options_; }
  /// The shared noise schedule.
  const NoiseSchedule& schedule() const noexcept { return *schedule_; }

  /// Fills the job's defaults (width/height 0 -> the model's size) and checks every field; throws `InvalidJob` naming
  /// the field at fault. `StepBatcher::submit` calls it (the `validate` hook), so `admit` never sees an invalid job:
  /// a refused job's ticket fails with `Errc::invalid_request` and the `InvalidJob` nested. Thread-safe (const,
  /// touches only `job`).
  void validate(Job& job) const {
    if (job.width == 0) job.width = options_.default_width;
    if (job.height == 0) job.height = options_.default_height;
    auto side = [&](const char* field, int v) {
      if (v < factor_ || v > options_.max_side || v % factor_ != 0) {
        throw InvalidJob(field, "must be a multiple of " + std::to_string(factor_) + " between " +
                                    std::to_string(factor_) + " and " + std::to_string(options_.max_side) + ", got " +
                                    std::to_string(v));
      }
    };
    side("width", job.width);
    side("height", job.height);
    const int max_steps =
        static_cast<int>(std::min<std::int64_t>(options_.max_steps, schedule_->config().num_train_timesteps));
    if (job.steps < 1 || job.steps > max_steps) {
      throw InvalidJob("steps",
                       "must be between 1 and " + std::to_string(max_steps) + ", got " + std::to_string(job.steps));
    }
    if (!(job.guidance_scale >= 0.0f && job.guidance_scale <= 100.0f)) {
      throw InvalidJob("guidance_scale", "must be between 0 and 100");
    }
    if (!(job.guidance_rescale >= 0.0f && job.guidance_rescale <= 1.0f)) {
      throw InvalidJob("guidance_rescale", "must be between 0 and 1");
    }
    if (!(job.eta >= 0.0f && job.eta <= 1.0f)) throw InvalidJob("eta", "must be between 0 and 1");
    if (job.sampler != SamplerKind::ddim && job.sampler != SamplerKind::ddpm && job.sampler != SamplerKind::euler &&
        job.sampler != SamplerKind::dpm_solver) {
      throw InvalidJob("sampler", "unknown sampler");
    }
    if (job.prompt.size() > options_.max_prompt_bytes) {
      throw InvalidJob("prompt", "longer than " + std::to_string(options_.max_prompt_bytes) + " bytes");
    }
    if (job.negative_prompt.size() > options_.max_prompt_bytes) {
      throw InvalidJob("negative_prompt", "longer than " + std::to_string(options_.max_prompt_bytes) + " bytes");
    }
    try {
      static_cast<void>(backend_.tokenizer().encode(job.prompt));
    } catch (const std::exception& e) {
      throw InvalidJob("prompt", e.what());
    }
    try {
      static_cast<void>(backend_.tokenizer().encode(job.negative_prompt));
    } catch (const std::exception& e) {
      throw InvalidJob("negative_prompt", e.what());
    }
    try {
      static_cast<void>(total_steps(job));  // the scheduler accepts this step count for this sampler
    } catch (const std::exception& e) {
      throw InvalidJob("steps", e.what());
    }
  }

  /// Encodes the prompts of the joining jobs in one call and starts each job's sampler and latents.
  void admit(std::span<Job* const> joining) {
    std::vector<std::vector<std::int32_t>> ids;
    for (Job* j : joining) {
      ids.push_back(backend_.tokenizer().encode(j->prompt));
      if (j->guided()) ids.push_back(backend_.tokenizer().encode(j->negative_prompt));
    }
    const auto embeddings = backend_.encode_text(std::span<const std::vector<std::int32_t>>(ids));
    const std::span<const float> all = embeddings.values();
    const std::size_t row = all.size() / ids.size();
    std::size_t r = 0;
    for (Job* j : joining) {
      Job::Running& run = j->run;
      run.cond.assign(all.begin() + static_cast<std::ptrdiff_t>(r * row),
                      all.begin() + static_cast<std::ptrdiff_t>((r + 1) * row));
      ++r;
      if (j->guided()) {
        run.uncond.assign(all.begin() + static_cast<std::ptrdiff_t>(r * row),
                          all.begin() + static_cast<std::ptrdiff_t>((r + 1) * row));
        ++r;
      }
      run.sampler.emplace(j->sampler, schedule_, DdimOptions{.eta = j->eta});
      run.sampler->set_timesteps(j->steps);
      run.generator = TorchGenerator{j->seed};
      run.latents.assign(latent_numel(*j), 0.0f);
      run.generator.randn(run.latents);
      const float sigma = run.sampler->init_noise_sigma();
      if (sigma != 1.0f) {
        for (float& v : run.latents)
          v = v * sigma;
      }
    }
    context_shape_ = {static_cast<std::int64_t>(row / static_cast<std::size_t>(embeddings.dim(-1))),
                      embeddings.dim(-1)};
  }

  /// One UNet call for the batch (all of one latent shape), guidance per job, one batched sampler update.
  void step(std::span<Job* const> batch) {
    const std::size_t n = latent_numel(*batch.front());
    // Rows: every job's conditional row, then the unconditional rows of the guided jobs.
    std::vector<const Job*> rows;
    for (Job* j : batch)
      rows.push_back(j);
    for (Job* j : batch) {
      if (j->guided()) rows.push_back(j);
    }
    const std::size_t ctx = batch.front()->run.cond.size();
    std::vector<float> sample(rows.size() * n), context(rows.size() * ctx), timesteps(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Job& j = *rows[i];
      const bool uncond = i >= batch.size();
      scale_model_input(j.run.latents, j.run.sampler->model_input_divisor(),
                        std::span<float>(sample.data() + i * n, n));
      const auto& e = uncond ? j.run.uncond : j.run.cond;
      std::copy(e.begin(), e.end(), context.begin() + static_cast<std::ptrdiff_t>(i * ctx));
      timesteps[i] = static_cast<float>(j.run.sampler->current_timestep());
    }
    const auto b = static_cast<std::int64_t>(rows.size());
    const Job& first = *batch.front();
    const Tensor out =
        backend_.unet(Tensor({b, channels_, first.height / factor_, first.width / factor_}, std::move(sample)),
                      timesteps, Tensor({b, context_shape_[0], context_shape_[1]}, std::move(context)));
    const std::span<const float> o = out.values();

    std::vector<float> eps(batch.size() * n), x(batch.size() * n), noise;
    std::vector<StepCoefficients> coeffs;
    std::vector<float*> history(batch.size(), nullptr);
    std::size_t next_uncond = batch.size();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      Job& j = *batch[i];
      const std::span<const float> cond = o.subspan(i * n, n);
      const std::span<float> e(eps.data() + i * n, n);
      if (j.guided()) {
        combine_guidance(o.subspan(next_uncond++ * n, n), cond, GuidanceParams{j.guidance_scale, j.guidance_rescale},
                         e);
      } else {
        std::copy(cond.begin(), cond.end(), e.begin());
      }
      std::copy(j.run.latents.begin(), j.run.latents.end(), x.begin() + static_cast<std::ptrdiff_t>(i * n));
      coeffs.push_back(j.run.sampler->coefficients());
      if (coeffs.back().draws_noise()) {
        if (noise.empty()) noise.assign(batch.size() * n, 0.0f);
        j.run.generator.randn(std::span<float>(noise.data() + i * n, n));
      }
      if (coeffs.back().uses_history()) history[i] = j.run.sampler->history(n).data();
    }
    apply_update(coeffs, UpdateBatch{x, eps, noise, n, history});
    for (std::size_t i = 0; i < batch.size(); ++i) {
      Job& j = *batch[i];
      std::copy(x.begin() + static_cast<std::ptrdiff_t>(i * n), x.begin() + static_cast<std::ptrdiff_t>((i + 1) * n),
                j.run.latents.begin());
      j.run.sampler->advance();
    }
  }

  /// True once the job's sampler has run all its timesteps.
  bool finished(const Job& job) const { return job.run.sampler && job.run.sampler->done(); }

  /// Decodes the leaving jobs in one call and stores their images; frees their running state.
  void retire(std::span<Job* const> leaving) {
    const Job& first = *leaving.front();
    const std::size_t n = latent_numel(first);
    std::vector<float> latents(leaving.size() * n);
    for (std::size_t i = 0; i < leaving.size(); ++i) {
      std::copy(leaving[i]->run.latents.begin(), leaving[i]->run.latents.end(),
                latents.begin() + static_cast<std::ptrdiff_t>(i * n));
    }
    const auto b = static_cast<std::int64_t>(leaving.size());
    const Tensor images =
        backend_.decode(Tensor({b, channels_, first.height / factor_, first.width / factor_}, std::move(latents)));
    const std::span<const float> v = images.values();
    const std::size_t per = v.size() / leaving.size();
    for (std::size_t i = 0; i < leaving.size(); ++i) {
      Job& j = *leaving[i];
      j.image = to_rgb8(v.subspan(i * per, per), j.width, j.height);
      j.run = Job::Running();
    }
  }

  /// Jobs share a UNet call only with jobs of the same image size.
  std::pair<int, int> batch_key(const Job& job) const { return {job.width, job.height}; }

  /// The number of sampler steps (the trailing spacing may add one, as diffusers does).
  std::size_t total_steps(const Job& job) const {
    Sampler sampler(job.sampler, schedule_, DdimOptions{.eta = job.eta});
    sampler.set_timesteps(job.steps);
    return sampler.total_steps();
  }

  /// UNet rows x latent pixels / 64 (at least 1): SD 1.x at 512x512 with guidance costs 128.
  std::size_t cost(const Job& job) const {
    const std::size_t pixels =
        static_cast<std::size_t>(job.width / factor_) * static_cast<std::size_t>(job.height / factor_);
    return std::max<std::size_t>(1, (job.guided() ? 2 : 1) * pixels / 64);
  }

 private:
  using Tensor = backend_tensor_t<Backend>;

  std::size_t latent_numel(const Job& j) const {
    return static_cast<std::size_t>(channels_) * static_cast<std::size_t>(j.height / factor_) *
           static_cast<std::size_t>(j.width / factor_);
  }

  const Backend& backend_;
  std::shared_ptr<const NoiseSchedule> schedule_;
  PipelineOptions options_;
  int factor_;
  int channels_;
  std::vector<std::int64_t> context_shape_{0, 0};  // [L, D] of one text embedding
};

}  // namespace carousel::diffusion
