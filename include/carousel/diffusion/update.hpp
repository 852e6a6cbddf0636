#pragma once
/// \file
/// \brief `apply_update`: the batched elementwise sampler update over per-sample `StepCoefficients` (CPU loop; a
/// CUDA kernel applies the same record per sample).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "carousel/diffusion/step_coefficients.hpp"

namespace carousel::diffusion {

/// The tensors of one batched update, all float32, sample-major (sample i occupies `[i*n, (i+1)*n)` with
/// n = `sample_numel`).
struct UpdateBatch {
  std::span<float> samples;              ///< B*n latents x_t, overwritten with x_{t-1}.
  std::span<const float> model_output;   ///< B*n model outputs, or B*2n when sample i's first n values are the
                                         ///< prediction and the next n its variance (DDPM learned variance).
  std::span<const float> noise;          ///< B*n standard normal noise; read only for samples whose coefficients
                                         ///< draw noise (may be empty when none does).
  std::size_t sample_numel = 0;          ///< n, the number of values per sample.
  std::span<float* const> history = {};  ///< Per sample, its request's n-value x0 history (`Sampler::history`);
                                         ///< read and written only for samples whose coefficients use it
                                         ///< (DPM-Solver++); may be empty when none does.
};

namespace detail {

// torch.lerp's formula, with the fused multiply-add torch's x86-64 and ARM builds contract it into.
inline float torch_lerp(float self, float end, float weight) {
  const float diff = end - self;
  return std::fabs(weight) < 0.5f ? std::fma(weight, diff, self) : std::fma(-diff, 1.0f - weight, end);
}

// torch.quantile(values, q, interpolation="linear") of one row, in float32 like torch.
inline float torch_quantile(std::vector<float>& values, float q) {
  std::sort(values.begin(), values.end());
  const float rank = q * static_cast<float>(values.size() - 1);
  const auto below = static_cast<std::size_t>(rank);
  const float weight = rank - static_cast<float>(below);
  const auto above = static_cast<std::size_t>(std::ceil(rank));
  return torch_lerp(values[below], values[above], weight);
}

inline float predict_x0(const StepCoefficients& c, float x, float out) {
  switch (c.prediction) {
    case PredictionType::epsilon:
      return (x - c.sqrt_beta_prod * out) / c.sqrt_alpha_prod;
    case PredictionType::sample:
      return out;
    case PredictionType::v_prediction:
      return c.sqrt_alpha_prod * x - c.sqrt_beta_prod * out;
  }
  return out;
}

template <class F>
void with_prediction(PredictionType p, F&& f) {
  switch (p) {
    case PredictionType::epsilon:
      return f(std::integral_constant<PredictionType, PredictionType::epsilon>{});
    case PredictionType::sample:
      return f(std::integral_constant<PredictionType, PredictionType::sample>{});
    case PredictionType::v_prediction:
      return f(std::integral_constant<PredictionType, PredictionType::v_prediction>{});
  }
}

template <class F>
void with_epsilon(EpsilonSource e, F&& f) {
  switch (e) {
    case EpsilonSource::none:
      return f(std::integral_constant<EpsilonSource, EpsilonSource::none>{});
    case EpsilonSource::model_output:
      return f(std::integral_constant<EpsilonSource, EpsilonSource::model_output>{});
    case EpsilonSource::raw_x0:
    case EpsilonSource::clamped_x0:  // the same when nothing is clamped
      return f(std::integral_constant<EpsilonSource, EpsilonSource::raw_x0>{});
    case EpsilonSource::velocity:
      return f(std::integral_constant<EpsilonSource, EpsilonSource::velocity>{});
  }
}

template <class F>
void with_bool(bool b, F&& f) {
  if (b) return f(std::true_type{});
  return f(std::false_type{});
}

// The unclamped, fixed-noise case (every Stable Diffusion configuration) with the modes as template parameters so
// that the loop has no branches and vectorizes; same operations in the same order as update_sample.
template <PredictionType P, EpsilonSource E, bool SampleTerm, bool Noise>
void update_unclamped(const StepCoefficients& c, std::size_t n, float* x, const float* out, const float* z) {
  const float sa = c.sqrt_alpha_prod;
  const float sb = c.sqrt_beta_prod;
  for (std::size_t k = 0; k < n; ++k) {
    const float xk = x[k];
    const float o = out[k];
    float x0 = o;
    if constexpr (P == PredictionType::epsilon) x0 = (xk - sb * o) / sa;
    if constexpr (P == PredictionType::v_prediction) x0 = sa * xk - sb * o;
    float result = c.x0_coeff * x0;
    if constexpr (SampleTerm) result = result + c.sample_coeff * xk;
    if constexpr (E == EpsilonSource::model_output) result = result + c.eps_coeff * o;
    if constexpr (E == EpsilonSource::raw_x0) result = result + c.eps_coeff * ((xk - sa * x0) / sb);
    if constexpr (E == EpsilonSource::velocity) result = result + c.eps_coeff * (sa * o + sb * xk);
    if constexpr (Noise) result = result + c.noise_coeff * z[k];
    x[k] = result;
  }
}

// Euler (discrete) with s_churn = 0, in EulerDiscreteScheduler.step's operation order.
template <PredictionType P>
void update_euler(const StepCoefficients& c, std::size_t n, float* x, const float* out) {
  for (std::size_t k = 0; k < n; ++k) {
    const float xk = x[k];
    const float o = out[k];
    float x0 = o;
    if constexpr (P == PredictionType::epsilon) x0 = xk - c.sigma * o;
    if constexpr (P == PredictionType::v_prediction) x0 = o * c.v_out_coeff + xk / c.v_sample_divisor;
    x[k] = xk + ((xk - x0) / c.sigma) * c.dt;
  }
}

// Dynamic thresholding's s for one sample (1 when not thresholding).
inline float threshold_of(const StepCoefficients& c, std::size_t n, const float* x, const float* out,
                          std::vector<float>& scratch) {
  if (c.clamp != X0Clamp::threshold) return 1.0f;
  scratch.resize(n);
  for (std::size_t k = 0; k < n; ++k)
    scratch[k] = std::fabs(predict_x0(c, x[k], out[k]));
  return std::min(std::max(torch_quantile(scratch, c.threshold_ratio), 1.0f), c.sample_max_value);
}

inline float clamp_x0(const StepCoefficients& c, float x0, float threshold) {
  if (c.clamp == X0Clamp::clip) return std::min(std::max(x0, -c.clip_range), c.clip_range);
  if (c.clamp == X0Clamp::threshold) return std::min(std::max(x0, -threshold), threshold) / threshold;
  return x0;
}

// DPM-Solver++ in diffusers' operation order; `history` holds the previous step's x0 and receives this one's.
inline void update_dpm(const StepCoefficients& c, std::size_t n, float* x, const float* out, float* history,
                       std::vector<float>& scratch) {
  const float threshold = threshold_of(c, n, x, out, scratch);
  for (std::size_t k = 0; k < n; ++k) {
    const float xk = x[k];
    const float x0 = clamp_x0(c, predict_x0(c, xk, out[k]), threshold);
    float result = c.sample_coeff * xk - c.x0_coeff * x0;
    if (c.dpm_order == DpmOrder::second_midpoint) result = result - c.d1_coeff * (c.history_coeff * (x0 - history[k]));
    if (c.dpm_order == DpmOrder::second_heun) result = result + c.d1_coeff * (c.history_coeff * (x0 - history[k]));
    history[k] = x0;
    x[k] = result;
  }
}

// update_dpm without clamping, with the modes as template parameters so that the loop vectorizes.
template <PredictionType P, DpmOrder O>
void update_dpm_unclamped(const StepCoefficients& c, std::size_t n, float* x, const float* out, float* history) {
  const float sa = c.sqrt_alpha_prod;
  const float sb = c.sqrt_beta_prod;
  for (std::size_t k = 0; k < n; ++k) {
    const float xk = x[k];
    const float o = out[k];
    float x0 = o;
    if constexpr (P == PredictionType::epsilon) x0 = (xk - sb * o) / sa;
    if constexpr (P == PredictionType::v_prediction) x0 = sa * xk - sb * o;
    float result = c.sample_coeff * xk - c.x0_coeff * x0;
    if constexpr (O == DpmOrder::second_midpoint) result = result - c.d1_coeff * (c.history_coeff * (x0 - history[k]));
    if constexpr (O == DpmOrder::second_heun) result = result + c.d1_coeff * (c.history_coeff * (x0 - history[k]));
    history[k] = x0;
    x[k] = result;
  }
}

// One sample: x (in/out), out (n values, then n variance values when c reads them), z (n values or null),
// history (n values or null).
inline void update_sample(const StepCoefficients& c, std::size_t n, float* x, const float* out, const float* var,
                          const float* z, float* history, std::vector<float>& scratch) {
  if (c.form == UpdateForm::euler) {
    with_prediction(c.prediction, [&](auto p) { update_euler<decltype(p)::value>(c, n, x, out); });
    return;
  }
  if (c.form == UpdateForm::dpm_solver) {
    if (c.clamp == X0Clamp::none) {
      with_prediction(c.prediction, [&](auto p) {
        switch (c.dpm_order) {
          case DpmOrder::first:
            return update_dpm_unclamped<decltype(p)::value, DpmOrder::first>(c, n, x, out, history);
          case DpmOrder::second_midpoint:
            return update_dpm_unclamped<decltype(p)::value, DpmOrder::second_midpoint>(c, n, x, out, history);
          case DpmOrder::second_heun:
            return update_dpm_unclamped<decltype(p)::value, DpmOrder::second_heun>(c, n, x, out, history);
        }
      });
      return;
    }
    update_dpm(c, n, x, out, history, scratch);
    return;
  }
  if (c.clamp == X0Clamp::none && (c.noise == NoiseScale::none || c.noise == NoiseScale::fixed)) {
    with_prediction(c.prediction, [&](auto p) {
      with_epsilon(c.epsilon, [&](auto e) {
        with_bool(c.sample_term, [&](auto sample_term) {
          with_bool(c.noise == NoiseScale::fixed, [&](auto noise) {
            update_unclamped<decltype(p)::value, decltype(e)::value, decltype(sample_term)::value,
                             decltype(noise)::value>(c, n, x, out, z);
          });
        });
      });
    });
    return;
  }
  const float threshold = threshold_of(c, n, x, out, scratch);
  for (std::size_t k = 0; k < n; ++k) {
    const float xk = x[k];
    const float raw_x0 = predict_x0(c, xk, out[k]);
    const float x0 = clamp_x0(c, raw_x0, threshold);
    float result = c.x0_coeff * x0;
    if (c.sample_term) result = result + c.sample_coeff * xk;
    switch (c.epsilon) {
      case EpsilonSource::none:
        break;
      case EpsilonSource::model_output:
        result = result + c.eps_coeff * out[k];
        break;
      case EpsilonSource::raw_x0:
        result = result + c.eps_coeff * ((xk - c.sqrt_alpha_prod * raw_x0) / c.sqrt_beta_prod);
        break;
      case EpsilonSource::clamped_x0:
        result = result + c.eps_coeff * ((xk - c.sqrt_alpha_prod * x0) / c.sqrt_beta_prod);
        break;
      case EpsilonSource::velocity:
        result = result + c.eps_coeff * (c.sqrt_alpha_prod * out[k] + c.sqrt_beta_prod * xk);
        break;
    }
    switch (c.noise) {
      case NoiseScale::none:
        break;
      case NoiseScale::fixed:
        result = result + c.noise_coeff * z[k];
        break;
      case NoiseScale::learned:
        result = result + std::sqrt(var[k]) * z[k];
        break;
      case NoiseScale::learned_range: {
        const float frac = (var[k] + 1.0f) / 2.0f;
        const float log_variance = frac * c.max_log + (1.0f - frac) * c.min_log;
        result = result + std::exp(0.5f * log_variance) * z[k];
        break;
      }
    }
    x[k] = result;
  }
}

}  // namespace detail

/// Applies one sampler step to every sample of a batch: sample i is updated with `coeffs[i]` (see
/// `StepCoefficients` for the formula). Samples may mix samplers, timesteps, prediction types and noise settings;
/// each sample's result depends only on its own coefficients and slices, so it equals the result of updating that
/// sample alone.
///
/// Preconditions (checked; `std::invalid_argument` naming the tensor): `samples.size() == B*n` with
/// B = `coeffs.size()`; `model_output.size()` is B*n or B*2n, and B*2n when some sample reads a predicted
/// variance; `noise.size() == B*n` when some sample draws noise; `history.size() == B` with a non-null n-value buffer
/// for every sample that uses history. Runs on the calling thread.
inline void apply_update(std::span<const StepCoefficients> coeffs, const UpdateBatch& batch) {
  const std::size_t count = coeffs.size();
  const std::size_t n = batch.sample_numel;
  if (n == 0) throw std::invalid_argument("apply_update: `sample_numel` must be positive");
  if (batch.samples.size() != count * n)
    throw std::invalid_argument("apply_update: `samples` has " + std::to_string(batch.samples.size()) +
                                " values, expected " + std::to_string(count) + " x " + std::to_string(n));
  const std::size_t out_stride = count == 0 ? n : batch.model_output.size() / count;
  if ((out_stride != n && out_stride != 2 * n) || batch.model_output.size() != count * out_stride)
    throw std::invalid_argument("apply_update: `model_output` has " + std::to_string(batch.model_output.size()) +
                                " values, expected B*n or B*2n");
  bool any_noise = false;
  for (const StepCoefficients& c : coeffs) {
    any_noise = any_noise || c.draws_noise();
    if (c.reads_variance() && out_stride != 2 * n)
      throw std::invalid_argument(
          "apply_update: `model_output` must carry a predicted variance (B*2n values) for learned variance");
  }
  for (std::size_t i = 0; i < count; ++i)
    if (coeffs[i].uses_history() && (batch.history.size() != count || batch.history[i] == nullptr))
      throw std::invalid_argument("apply_update: `history` must hold a buffer for sample " + std::to_string(i) +
                                  " (DPM-Solver++)");
  if (any_noise && batch.noise.size() != count * n)
    throw std::invalid_argument("apply_update: `noise` has " + std::to_string(batch.noise.size()) +
                                " values, expected " + std::to_string(count * n));
  std::vector<float> scratch;
  for (std::size_t i = 0; i < count; ++i) {
    const float* out = batch.model_output.data() + i * out_stride;
    const float* z = coeffs[i].draws_noise() ? batch.noise.data() + i * n : nullptr;
    float* history = coeffs[i].uses_history() ? batch.history[i] : nullptr;
    detail::update_sample(coeffs[i], n, batch.samples.data() + i * n, out, out + n, z, history, scratch);
  }
}

}  // namespace carousel::diffusion
