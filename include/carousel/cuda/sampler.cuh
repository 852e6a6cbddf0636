#pragma once
/// \file
/// The batched sampler update and classifier-free guidance on the GPU: one kernel applies every sample's own
/// diffusion::StepCoefficients (the record diffusion/update.hpp's CPU loop applies) to the whole batch, and one
/// set of kernels combines guidance with per-sample scale and rescale (diffusion/guidance.hpp). Both mirror the CPU
/// operation order with explicitly rounded float32 operations (no fused multiply-adds), so results equal the CPU's.

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include <carousel/cuda/check.cuh>
#include <carousel/cuda/detail/kernels.cuh>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/tensor.cuh>
#include <carousel/diffusion/guidance.hpp>
#include <carousel/diffusion/step_coefficients.hpp>
#include <carousel/diffusion/update.hpp>

namespace carousel::cuda {

/// The device tensors of one batched update (float32, sample-major, sample i at [i*n, (i+1)*n)), as
/// diffusion::UpdateBatch on the host.
struct DeviceUpdateBatch {
  float* samples = nullptr;             ///< B*n latents x_t, overwritten with x_{t-1}
  const float* model_output = nullptr;  ///< B*n (or B*2n with a predicted variance after each sample's n values)
  std::size_t output_stride = 0;        ///< n or 2n: values per sample in model_output
  const float* noise = nullptr;         ///< B*n standard normal values (read only for samples that draw noise)
  std::span<float* const> history;      ///< per sample: device buffer of n values (DPM-Solver++), or null
  std::size_t sample_numel = 0;         ///< n
};

namespace detail {

using diffusion::StepCoefficients;

__device__ inline float mul(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ inline float add(float a, float b) {
  return __fadd_rn(a, b);
}
__device__ inline float sub(float a, float b) {
  return __fsub_rn(a, b);
}
__device__ inline float div(float a, float b) {
  return __fdiv_rn(a, b);
}

__device__ inline float predict_x0(const StepCoefficients& c, float x, float out) {
  switch (c.prediction) {
    case diffusion::PredictionType::epsilon:
      return div(sub(x, mul(c.sqrt_beta_prod, out)), c.sqrt_alpha_prod);
    case diffusion::PredictionType::sample:
      return out;
    case diffusion::PredictionType::v_prediction:
      return sub(mul(c.sqrt_alpha_prod, x), mul(c.sqrt_beta_prod, out));
  }
  return out;
}

// std::min(std::max(x, lo), hi) exactly, NaN included (fminf / fmaxf would turn a NaN into a bound and hide it).
__device__ inline float clamp_like_std(float x, float lo, float hi) {
  const float above = x < lo ? lo : x;
  return hi < above ? hi : above;
}

__device__ inline float clamp_x0(const StepCoefficients& c, float x0, float threshold) {
  if (c.clamp == diffusion::X0Clamp::clip) return clamp_like_std(x0, -c.clip_range, c.clip_range);
  if (c.clamp == diffusion::X0Clamp::threshold) return div(clamp_like_std(x0, -threshold, threshold), threshold);
  return x0;
}

// One thread per value; blockIdx.y is the sample. Same formulas and order as diffusion::detail::update_sample.
__global__ void sampler_update(const StepCoefficients* coeffs, const float* thresholds, float* samples,
                               const float* model_output, std::size_t out_stride, const float* noise,
                               float* const* history, std::size_t n) {
  const std::size_t i = blockIdx.y;
  const StepCoefficients c = coeffs[i];
  const float threshold = thresholds[i];
  for (std::size_t k = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    float* x = samples + i * n;
    const float* out = model_output + i * out_stride;
    const float xk = x[k];
    const float o = out[k];
    if (c.form == diffusion::UpdateForm::euler) {
      float x0 = o;
      if (c.prediction == diffusion::PredictionType::epsilon) x0 = sub(xk, mul(c.sigma, o));
      if (c.prediction == diffusion::PredictionType::v_prediction)
        x0 = add(mul(o, c.v_out_coeff), div(xk, c.v_sample_divisor));
      x[k] = add(xk, mul(div(sub(xk, x0), c.sigma), c.dt));
      continue;
    }
    if (c.form == diffusion::UpdateForm::dpm_solver) {
      float* h = history[i];
      const float x0 = clamp_x0(c, predict_x0(c, xk, o), threshold);
      float result = sub(mul(c.sample_coeff, xk), mul(c.x0_coeff, x0));
      if (c.dpm_order == diffusion::DpmOrder::second_midpoint)
        result = sub(result, mul(c.d1_coeff, mul(c.history_coeff, sub(x0, h[k]))));
      if (c.dpm_order == diffusion::DpmOrder::second_heun)
        result = add(result, mul(c.d1_coeff, mul(c.history_coeff, sub(x0, h[k]))));
      h[k] = x0;
      x[k] = result;
      continue;
    }
    const float raw_x0 = predict_x0(c, xk, o);
    const float x0 = clamp_x0(c, raw_x0, threshold);
    float result = mul(c.x0_coeff, x0);
    if (c.sample_term) result = add(result, mul(c.sample_coeff, xk));
    switch (c.epsilon) {
      case diffusion::EpsilonSource::none:
        break;
      case diffusion::EpsilonSource::model_output:
        result = add(result, mul(c.eps_coeff, o));
        break;
      case diffusion::EpsilonSource::raw_x0:
        result = add(result, mul(c.eps_coeff, div(sub(xk, mul(c.sqrt_alpha_prod, raw_x0)), c.sqrt_beta_prod)));
        break;
      case diffusion::EpsilonSource::clamped_x0:
        result = add(result, mul(c.eps_coeff, div(sub(xk, mul(c.sqrt_alpha_prod, x0)), c.sqrt_beta_prod)));
        break;
      case diffusion::EpsilonSource::velocity:
        result = add(result, mul(c.eps_coeff, add(mul(c.sqrt_alpha_prod, o), mul(c.sqrt_beta_prod, xk))));
        break;
    }
    const float* z = c.noise == diffusion::NoiseScale::none ? nullptr : noise + i * n;
    switch (c.noise) {
      case diffusion::NoiseScale::none:
        break;
      case diffusion::NoiseScale::fixed:
        result = add(result, mul(c.noise_coeff, z[k]));
        break;
      case diffusion::NoiseScale::learned:
        result = add(result, mul(__fsqrt_rn(out[n + k]), z[k]));
        break;
      case diffusion::NoiseScale::learned_range: {
        const float frac = div(add(out[n + k], 1.0f), 2.0f);
        const float log_variance = add(mul(frac, c.max_log), mul(sub(1.0f, frac), c.min_log));
        result = add(result, mul(expf(mul(0.5f, log_variance)), z[k]));
        break;
      }
    }
    x[k] = result;
  }
}

// Guidance for sample i: out = uncond + s * (cond - uncond) when s > 1 (and an unconditional row exists), else
// cond. rows[2i] / rows[2i + 1] are the cond / uncond row indices into the model output (uncond -1: none).
__global__ void guidance_combine(const float* model_output, const std::int64_t* rows, const float* scales, float* out,
                                 std::size_t n) {
  const std::size_t i = blockIdx.y;
  const float* cond = model_output + static_cast<std::size_t>(rows[2 * i]) * n;
  const std::int64_t u = rows[2 * i + 1];
  const float s = scales[i];
  for (std::size_t k = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (u < 0 || !(s > 1.0f)) {
      out[i * n + k] = cond[k];
    } else {
      const float un = model_output[static_cast<std::size_t>(u) * n + k];
      out[i * n + k] = add(un, mul(s, sub(cond[k], un)));
    }
  }
}

// Unbiased standard deviation of each row (block per row; rows[2i] indexes `values` when `by_row`, else row i).
__global__ void row_std(const float* values, const std::int64_t* rows, bool by_row, float* std_out, std::size_t n) {
  const std::size_t i = blockIdx.x;
  const float* v = values + (by_row ? static_cast<std::size_t>(rows[2 * i]) : i) * n;
  double sum = 0;
  for (std::size_t k = threadIdx.x; k < n; k += blockDim.x)
    sum += static_cast<double>(v[k]);
  const double mean = block_sum(sum) / static_cast<double>(n);
  double sq = 0;
  for (std::size_t k = threadIdx.x; k < n; k += blockDim.x)
    sq += (static_cast<double>(v[k]) - mean) * (static_cast<double>(v[k]) - mean);
  const double total = block_sum(sq);
  if (threadIdx.x == 0) std_out[i] = static_cast<float>(sqrt(total / static_cast<double>(n - 1)));
}

// guidance_rescale r > 0: v = r * (v * (std_cond / std_out)) + (1 - r) * v.
__global__ void guidance_rescale(float* out, const float* rescales, const float* std_cond, const float* std_out,
                                 const float* scales, const std::int64_t* rows, std::size_t n) {
  const std::size_t i = blockIdx.y;
  const float r = rescales[i];
  if (!(r > 0.0f) || rows[2 * i + 1] < 0 || !(scales[i] > 1.0f)) return;
  const float ratio = div(std_cond[i], std_out[i]);
  const auto keep = static_cast<float>(1.0 - static_cast<double>(r));
  for (std::size_t k = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float v = out[i * n + k];
    out[i * n + k] = add(mul(r, mul(v, ratio)), mul(keep, v));
  }
}

inline dim3 per_sample_grid(std::size_t n, std::size_t samples) {
  if (samples > 65535)
    throw std::invalid_argument("carousel::cuda: " + std::to_string(samples) +
                                " samples in one launch exceed the grid's 65535");
  const std::size_t x = (n + block_threads - 1) / block_threads;
  return dim3(static_cast<unsigned>(x < 1 ? 1 : (x > 4096 ? 4096 : x)), static_cast<unsigned>(samples));
}

template <class T>
DeviceBuffer to_device(Engine& e, std::span<const T> values) {
  DeviceBuffer b(values.size_bytes(), &e.allocator());
  if (!values.empty())
    CAROUSEL_CUDA_CHECK(
        cudaMemcpyAsync(b.get(), values.data(), values.size_bytes(), cudaMemcpyHostToDevice, e.stream()));
  return b;
}

}  // namespace detail

/// Applies one sampler step to every sample of a device batch: sample i with `coeffs[i]`, exactly as
/// diffusion::apply_update does on the host (same formulas, same float32 operation order). Samples may mix samplers,
/// timesteps, prediction types and noise settings. Dynamic thresholding (X0Clamp::threshold, a per-sample quantile)
/// is computed on the host from copies of that sample's values — rare outside research configurations.
/// Waits for the stream before returning (the coefficient staging buffers are host vectors).
/// \throws std::invalid_argument naming the field for missing noise / history / variance.
inline void apply_update(Engine& e, std::span<const diffusion::StepCoefficients> coeffs,
                         const DeviceUpdateBatch& batch) {
  const std::size_t count = coeffs.size(), n = batch.sample_numel;
  if (count == 0) return;
  if (n == 0) throw std::invalid_argument("carousel::cuda::apply_update: `sample_numel` must be positive");
  if (batch.output_stride != n && batch.output_stride != 2 * n)
    throw std::invalid_argument("carousel::cuda::apply_update: `output_stride` must be n or 2n");
  std::vector<float> thresholds(count, 1.0f);
  std::vector<float> x_host, out_host, scratch;
  for (std::size_t i = 0; i < count; ++i) {
    const auto& c = coeffs[i];
    if (c.reads_variance() && batch.output_stride != 2 * n)
      throw std::invalid_argument("carousel::cuda::apply_update: `model_output` must carry a predicted variance");
    if (c.draws_noise() && !batch.noise)
      throw std::invalid_argument("carousel::cuda::apply_update: `noise` is required for sample " + std::to_string(i));
    if (c.uses_history() && (batch.history.size() != count || batch.history[i] == nullptr))
      throw std::invalid_argument("carousel::cuda::apply_update: `history` must hold a buffer for sample " +
                                  std::to_string(i));
    if (c.clamp == diffusion::X0Clamp::threshold) {
      x_host.resize(n);
      out_host.resize(n);
      CAROUSEL_CUDA_CHECK(
          cudaMemcpyAsync(x_host.data(), batch.samples + i * n, n * 4, cudaMemcpyDeviceToHost, e.stream()));
      CAROUSEL_CUDA_CHECK(cudaMemcpyAsync(out_host.data(), batch.model_output + i * batch.output_stride, n * 4,
                                          cudaMemcpyDeviceToHost, e.stream()));
      e.synchronize();
      thresholds[i] = diffusion::detail::threshold_of(c, n, x_host.data(), out_host.data(), scratch);
    }
  }
  std::vector<float*> history(count, nullptr);
  for (std::size_t i = 0; i < batch.history.size() && i < count; ++i)
    history[i] = batch.history[i];
  const DeviceBuffer d_coeffs = detail::to_device(e, coeffs);
  const DeviceBuffer d_thresholds = detail::to_device(e, std::span<const float>(thresholds));
  const DeviceBuffer d_history = detail::to_device(e, std::span<float* const>(history));
  detail::sampler_update<<<detail::per_sample_grid(n, count), detail::block_threads, 0, e.stream()>>>(
      static_cast<const diffusion::StepCoefficients*>(d_coeffs.get()), static_cast<const float*>(d_thresholds.get()),
      batch.samples, batch.model_output, batch.output_stride, batch.noise, static_cast<float* const*>(d_history.get()),
      n);
  CAROUSEL_CUDA_CHECK(cudaGetLastError());
  e.synchronize();
}

/// One guided sample: its conditional row in the model output and its unconditional row (-1: unguided), with the
/// request's guidance settings.
struct GuidanceRow {
  std::int64_t cond = 0;               ///< row of the conditional prediction
  std::int64_t uncond = -1;            ///< row of the unconditional prediction, or -1
  diffusion::GuidanceParams params{};  ///< scale s and guidance_rescale r
};

/// Classifier-free guidance on the device for a batch laid out in any row order: out[i] = uncond + s (cond - uncond)
/// (when s > 1 and an unconditional row exists; else cond), then diffusers' rescale when r > 0 — as
/// diffusion::combine_guidance per sample. `model_output` holds rows of n float32 values; `out` receives
/// rows.size() rows. Waits for the stream before returning. \throws std::invalid_argument for r outside [0, 1].
inline void combine_guidance(Engine& e, const float* model_output, std::span<const GuidanceRow> rows, std::size_t n,
                             float* out) {
  const std::size_t count = rows.size();
  if (count == 0) return;
  if (out == model_output)
    throw std::invalid_argument(
        "carousel::cuda::combine_guidance: `out` must not alias `model_output` (the rescale "
        "reads conditional rows after the combine)");
  std::vector<std::int64_t> index;
  std::vector<float> scales, rescales;
  bool any_rescale = false;
  for (const auto& r : rows) {
    if (!(r.params.guidance_rescale >= 0.0f && r.params.guidance_rescale <= 1.0f))
      throw std::invalid_argument("carousel::cuda::combine_guidance: `guidance_rescale` must lie in [0, 1]");
    index.push_back(r.cond);
    index.push_back(r.uncond);
    scales.push_back(r.params.guidance_scale);
    rescales.push_back(r.params.guidance_rescale);
    any_rescale = any_rescale || (r.params.guidance_rescale > 0.0f && r.uncond >= 0);
  }
  const DeviceBuffer d_rows = detail::to_device(e, std::span<const std::int64_t>(index));
  const DeviceBuffer d_scales = detail::to_device(e, std::span<const float>(scales));
  const auto* rows_ptr = static_cast<const std::int64_t*>(d_rows.get());
  detail::guidance_combine<<<detail::per_sample_grid(n, count), detail::block_threads, 0, e.stream()>>>(
      model_output, rows_ptr, static_cast<const float*>(d_scales.get()), out, n);
  CAROUSEL_CUDA_CHECK(cudaGetLastError());
  if (any_rescale) {
    const DeviceBuffer d_rescales = detail::to_device(e, std::span<const float>(rescales));
    DeviceBuffer std_cond(count * 4, &e.allocator()), std_out(count * 4, &e.allocator());
    detail::row_std<<<static_cast<unsigned>(count), detail::block_threads, 0, e.stream()>>>(
        model_output, rows_ptr, true, static_cast<float*>(std_cond.get()), n);
    detail::row_std<<<static_cast<unsigned>(count), detail::block_threads, 0, e.stream()>>>(
        out, rows_ptr, false, static_cast<float*>(std_out.get()), n);
    detail::guidance_rescale<<<detail::per_sample_grid(n, count), detail::block_threads, 0, e.stream()>>>(
        out, static_cast<const float*>(d_rescales.get()), static_cast<const float*>(std_cond.get()),
        static_cast<const float*>(std_out.get()), static_cast<const float*>(d_scales.get()), rows_ptr, n);
    CAROUSEL_CUDA_CHECK(cudaGetLastError());
    e.synchronize();
  } else {
    e.synchronize();
  }
}

}  // namespace carousel::cuda
