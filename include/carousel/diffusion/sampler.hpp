#pragma once
/// \file
/// \brief `Sampler`: one request's sampler state machine (DDPM, DDIM, Euler or DPM-Solver++) over a shared
/// `NoiseSchedule`.
///
/// Intended use by a batching pipeline, per iteration over the requests r of a batch (each owning its latents, a
/// `Sampler`, a `TorchGenerator` and a guidance scale):
/// \code
///   using namespace carousel::diffusion;
///   auto schedule = std::make_shared<const NoiseSchedule>(
///       SchedulerConfig::load(folder / "scheduler/scheduler_config.json").with_pipeline_defaults());
///   // admit: per request
///   r.sampler = Sampler{SamplerKind::ddim, schedule, DdimOptions{.eta = r.eta}};
///   r.sampler.set_timesteps(r.steps);
///   r.generator = TorchGenerator{r.seed};
///   r.generator.randn(r.latents);                          // initial noise, then times init_noise_sigma()
///   for (float& v : r.latents) v = v * r.sampler.init_noise_sigma();
///   // step: the whole batch
///   for (i) t[i] = batch[i]->sampler.current_timestep();   // per-sample UNet timesteps
///   for (i) scale_model_input(latents(i), batch[i]->sampler.model_input_divisor(), unet_input(i));  // Euler
///   unet(cat(unet_input, unet_input), cat(t, t)) -> [uncond | cond];
///   combine_guidance_batch(unet_out, guidance_params, n, eps);          // guidance.hpp
///   for (i) { coeffs[i] = batch[i]->sampler.coefficients();
///             if (coeffs[i].draws_noise()) batch[i]->generator.randn(noise_slice(i));
///             if (coeffs[i].uses_history()) history[i] = batch[i]->sampler.history(n).data(); }  // DPM-Solver++
///   apply_update(coeffs, UpdateBatch{latents, eps, noise, n, history}); // update.hpp (or the CUDA kernel)
///   for (i) batch[i]->sampler.advance();                   // finished() == sampler.done()
/// \endcode
/// `Sampler::step` does the same for one request.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "carousel/diffusion/ddim.hpp"
#include "carousel/diffusion/ddpm.hpp"
#include "carousel/diffusion/dpm_solver.hpp"
#include "carousel/diffusion/euler.hpp"
#include "carousel/diffusion/rng.hpp"
#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/step_coefficients.hpp"
#include "carousel/diffusion/timesteps.hpp"
#include "carousel/diffusion/update.hpp"

namespace carousel::diffusion {

/// The sampler algorithm of a request.
enum class SamplerKind {
  ddpm,        ///< diffusers' DDPMScheduler.
  ddim,        ///< diffusers' DDIMScheduler.
  euler,       ///< diffusers' EulerDiscreteScheduler (s_churn = 0).
  dpm_solver,  ///< diffusers' DPMSolverMultistepScheduler, "dpmsolver++", order 1 or 2 (DPM++ 2M).
};

/// A scheduler's `scale_model_input`: `out[k] = in[k] / divisor` (pass `Sampler::model_input_divisor()`; it is 1,
/// an identity, for DDPM and DDIM). `out` may alias `in`. Throws `std::invalid_argument` on a size mismatch.
inline void scale_model_input(std::span<const float> in, float divisor, std::span<float> out) {
  if (in.size() != out.size()) throw std::invalid_argument("scale_model_input: `in` and `out` differ in size");
  for (std::size_t k = 0; k < in.size(); ++k)
    out[k] = in[k] / divisor;
}

/// One request's sampler: its kind, options, timesteps and position. A movable, copyable value; the noise schedule is
/// shared read-only. Not thread-safe: one request is stepped by one thread at a time.
class Sampler {
 public:
  /// A sampler of `kind` over `schedule`. `ddim` holds DDIM's eta and use_clipped_model_output (DDPM and Euler
  /// ignore them, as diffusers' pipelines do). Throws `std::invalid_argument` for a null schedule or eta < 0 (naming
  /// `eta`).
  Sampler(SamplerKind kind, std::shared_ptr<const NoiseSchedule> schedule, DdimOptions ddim = {})
      : kind_(kind), schedule_(std::move(schedule)), ddim_(ddim) {
    if (!schedule_) throw std::invalid_argument("Sampler: `schedule` must not be null");
    if (!(ddim_.eta >= 0.0f))
      throw std::invalid_argument("Sampler: `eta` must be >= 0, got " + std::to_string(ddim_.eta));
  }

  /// diffusers' `set_timesteps(num_inference_steps)`; restarts at the first step. Throws `std::invalid_argument`
  /// (naming `num_inference_steps`) when it is 0 or exceeds `num_train_timesteps`, and `std::out_of_range` when a
  /// resulting DDPM/DDIM timestep lies outside the schedule (leading spacing with steps_offset and N = T gives T).
  void set_timesteps(std::int64_t num_inference_steps) {
    if (kind_ == SamplerKind::euler) {
      EulerSchedule euler = make_euler_schedule(*schedule_, num_inference_steps);
      timesteps_ = std::move(euler.timesteps);
      sigmas_ = std::move(euler.sigmas);
      init_noise_sigma_ = euler.init_noise_sigma;
    } else if (kind_ == SamplerKind::dpm_solver) {
      DpmSchedule dpm = make_dpm_schedule(*schedule_, num_inference_steps);
      sigmas_ = std::move(dpm.sigmas);
      set_discrete(std::move(dpm.timesteps));
    } else {
      std::vector<std::int64_t> ts = make_timesteps(schedule_->config(), num_inference_steps);
      for (std::int64_t t : ts)
        static_cast<void>(schedule_->alpha_cumprod(t));
      set_discrete(std::move(ts));
    }
    num_inference_steps_ = num_inference_steps;
    index_ = 0;
    history_.clear();
  }

  /// DDPM's `set_timesteps(timesteps=custom)`: strictly descending, first below T. DDIM has no custom timesteps in
  /// diffusers; for it this throws `std::invalid_argument`.
  void set_timesteps(std::span<const std::int64_t> custom) {
    if (kind_ != SamplerKind::ddpm)
      throw std::invalid_argument("Sampler: custom `timesteps` are supported by DDPM only");
    validate_custom_timesteps(schedule_->config(), custom);
    set_discrete(std::vector<std::int64_t>(custom.begin(), custom.end()));
    num_inference_steps_ = static_cast<std::int64_t>(custom.size());
    index_ = 0;
  }

  /// The timesteps set by `set_timesteps`, in the order they are stepped: the values the UNet's timestep embedding
  /// receives (integers for DDPM/DDIM, float32 values for Euler), as `scheduler.timesteps`.
  [[nodiscard]] std::span<const double> timesteps() const noexcept { return timesteps_; }
  /// The number of steps this request runs (`timesteps().size()`; N+1 for the trailing quirk).
  [[nodiscard]] std::size_t total_steps() const noexcept { return timesteps_.size(); }
  /// Steps done so far.
  [[nodiscard]] std::size_t steps_done() const noexcept { return index_; }
  /// True once every timestep has been stepped (also before `set_timesteps`).
  [[nodiscard]] bool done() const noexcept { return index_ >= timesteps_.size(); }

  /// The timestep of the next step (the UNet's timestep for this request). Precondition: `!done()` (throws
  /// `std::logic_error`).
  [[nodiscard]] double current_timestep() const {
    require_pending();
    return timesteps_[index_];
  }

  /// The scale of the initial noise (`scheduler.init_noise_sigma`): 1 for DDPM/DDIM; for Euler set by
  /// `set_timesteps`. Latents are `randn * init_noise_sigma()` (a float32 product).
  [[nodiscard]] float init_noise_sigma() const noexcept { return init_noise_sigma_; }

  /// The divisor of `scale_model_input` for the next step: sqrt(sigma^2 + 1) for Euler, 1 otherwise.
  /// Precondition: `!done()` (throws `std::logic_error`).
  [[nodiscard]] float model_input_divisor() const {
    require_pending();
    return kind_ == SamplerKind::euler ? euler_input_divisor(sigmas_[index_]) : 1.0f;
  }

  /// The coefficients of the next step. Precondition: `!done()` (throws `std::logic_error`).
  [[nodiscard]] StepCoefficients coefficients() const {
    require_pending();
    const std::int64_t t = discrete_.empty() ? 0 : discrete_[index_];
    switch (kind_) {
      case SamplerKind::ddpm:
        return ddpm_coefficients(*schedule_, t, ddpm_previous_timestep(discrete_, index_));
      case SamplerKind::ddim:
        return ddim_coefficients(
            *schedule_, t, ddim_previous_timestep(t, schedule_->num_train_timesteps(), num_inference_steps_), ddim_);
      case SamplerKind::dpm_solver:
        return dpm_solver_coefficients(
            schedule_->config(), sigmas_, index_,
            std::min<std::size_t>(index_, static_cast<std::size_t>(schedule_->config().solver_order)));
      case SamplerKind::euler:
        break;
    }
    return euler_coefficients(schedule_->config(), sigmas_[index_], sigmas_[index_ + 1]);
  }

  /// This request's x0 history for DPM-Solver++ (the previous step's x0, n values), allocated on first use; pass it
  /// to `apply_update` in `UpdateBatch::history`. Other samplers do not use it. Precondition: the same n for the
  /// whole run (throws `std::invalid_argument` otherwise).
  [[nodiscard]] std::span<float> history(std::size_t sample_numel) {
    if (history_.empty()) history_.resize(sample_numel);
    if (history_.size() != sample_numel)
      throw std::invalid_argument("Sampler: `history` was sized for " + std::to_string(history_.size()) + " values");
    return history_;
  }

  /// Marks the current step as applied. Precondition: `!done()` (throws `std::logic_error`).
  void advance() {
    require_pending();
    ++index_;
  }

  /// One full step for this request alone: x_t -> x_{t-1} in place, drawing noise (shaped like `sample`) from
  /// `generator` when the step needs it, then `advance()`. `model_output` has `sample.size()` values, or twice that
  /// for DDPM learned variance, and was computed from `scale_model_input(sample, model_input_divisor())`.
  /// Equivalent to diffusers' `scheduler.step(model_output, t, sample, ...)`.
  void step(std::span<const float> model_output, std::span<float> sample, TorchGenerator& generator) {
    const StepCoefficients c = coefficients();
    std::vector<float> noise;
    if (c.draws_noise()) noise = generator.randn(sample.size());
    float* const history_data = c.uses_history() ? history(sample.size()).data() : nullptr;
    apply_update(std::span<const StepCoefficients>(&c, 1),
                 UpdateBatch{sample, model_output, noise, sample.size(), std::span<float* const>(&history_data, 1)});
    advance();
  }

  /// The algorithm.
  [[nodiscard]] SamplerKind kind() const noexcept { return kind_; }
  /// DDIM's options.
  [[nodiscard]] const DdimOptions& ddim_options() const noexcept { return ddim_; }
  /// The shared noise schedule.
  [[nodiscard]] const NoiseSchedule& schedule() const noexcept { return *schedule_; }

 private:
  void require_pending() const {
    if (done())
      throw std::logic_error(timesteps_.empty() ? "Sampler: call set_timesteps before stepping"
                                                : "Sampler: all timesteps have been stepped");
  }

  void set_discrete(std::vector<std::int64_t> ts) {
    timesteps_.assign(ts.begin(), ts.end());
    discrete_ = std::move(ts);
  }

  SamplerKind kind_;
  std::shared_ptr<const NoiseSchedule> schedule_;
  DdimOptions ddim_;
  std::vector<double> timesteps_;
  std::vector<std::int64_t> discrete_;  // DDPM/DDIM: the integer timesteps
  std::vector<float> sigmas_;           // Euler: N+1 sigmas
  float init_noise_sigma_ = 1.0f;
  std::vector<float> history_;  // DPM-Solver++: the previous step's x0
  std::int64_t num_inference_steps_ = 0;
  std::size_t index_ = 0;
};

}  // namespace carousel::diffusion
