#pragma once
/// \file
/// \brief Classifier-free guidance combine with per-sample scale and guidance_rescale, as diffusers'
/// StableDiffusionPipeline does it.

#include <cmath>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>

namespace carousel::diffusion {

/// Per-request guidance settings.
struct GuidanceParams {
  float guidance_scale = 7.5f;    ///< s; at most 1 means no classifier-free guidance (the conditional output).
  float guidance_rescale = 0.0f;  ///< r in [0, 1]; 0 disables the rescale.
};

namespace detail {

// Unbiased standard deviation (torch.std over all values of one sample), accumulated in double.
inline float sample_std(std::span<const float> v) {
  double mean = 0.0;
  for (float x : v)
    mean += static_cast<double>(x);
  mean /= static_cast<double>(v.size());
  double sq = 0.0;
  for (float x : v)
    sq += (static_cast<double>(x) - mean) * (static_cast<double>(x) - mean);
  return static_cast<float>(std::sqrt(sq / static_cast<double>(v.size() - 1)));
}

}  // namespace detail

/// One sample's guided prediction: out = uncond + s * (cond - uncond) in float32; when r > 0 additionally
/// out = r * out * (std(cond) / std(out)) + (1 - r) * out (diffusers' `rescale_noise_cfg`). When s <= 1 the pipeline
/// runs no guidance and out = cond. `out` may alias `uncond` or `cond`. Throws `std::invalid_argument` on size
/// mismatch or r outside [0, 1] (naming `guidance_rescale`).
inline void combine_guidance(std::span<const float> uncond, std::span<const float> cond, const GuidanceParams& params,
                             std::span<float> out) {
  if (uncond.size() != cond.size() || out.size() != cond.size())
    throw std::invalid_argument("combine_guidance: `uncond`, `cond` and `out` must have the same size");
  if (!(params.guidance_rescale >= 0.0f && params.guidance_rescale <= 1.0f))
    throw std::invalid_argument("combine_guidance: `guidance_rescale` must lie in [0, 1]");
  const float s = params.guidance_scale;
  if (!(s > 1.0f)) {
    for (std::size_t k = 0; k < cond.size(); ++k)
      out[k] = cond[k];
    return;
  }
  const float std_text = params.guidance_rescale > 0.0f ? detail::sample_std(cond) : 0.0f;
  for (std::size_t k = 0; k < cond.size(); ++k)
    out[k] = uncond[k] + s * (cond[k] - uncond[k]);
  if (params.guidance_rescale > 0.0f) {
    const float r = params.guidance_rescale;
    const float ratio = std_text / detail::sample_std(out);
    const auto keep = static_cast<float>(1.0 - static_cast<double>(r));
    for (float& v : out)
      v = r * (v * ratio) + keep * v;
  }
}

/// The batched form over a UNet output laid out as diffusers' `cat([uncond, cond])`: `model_output` holds B
/// unconditional samples followed by B conditional ones (each `sample_numel` values); `out` receives B guided
/// samples; `params[i]` belongs to sample i. Throws `std::invalid_argument` on size mismatch.
inline void combine_guidance_batch(std::span<const float> model_output, std::span<const GuidanceParams> params,
                                   std::size_t sample_numel, std::span<float> out) {
  const std::size_t count = params.size();
  if (model_output.size() != 2 * count * sample_numel || out.size() != count * sample_numel)
    throw std::invalid_argument("combine_guidance_batch: `model_output` must hold 2*" + std::to_string(count) +
                                " samples and `out` " + std::to_string(count) + " of " + std::to_string(sample_numel) +
                                " values");
  for (std::size_t i = 0; i < count; ++i)
    combine_guidance(model_output.subspan(i * sample_numel, sample_numel),
                     model_output.subspan((count + i) * sample_numel, sample_numel), params[i],
                     out.subspan(i * sample_numel, sample_numel));
}

}  // namespace carousel::diffusion
