#pragma once
/// \file carousel/diffusion/job.hpp
/// One text-to-image request as the diffusion Pipeline runs it: what was asked, the sampler state while it runs,
/// and the image it ends with.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "carousel/diffusion/image.hpp"
#include "carousel/diffusion/rng.hpp"
#include "carousel/diffusion/sampler.hpp"

namespace carousel::diffusion {

/// A text-to-image request (the `State` of `StepBatcher<Pipeline<B>, Job>`).
///
/// Fill in the request fields, check them with `Pipeline::validate`, submit; the ticket returns the Job with `image`
/// set. Every field may differ between requests that share a batch.
struct Job {
  std::string prompt;             ///< what to draw
  std::string negative_prompt;    ///< the unconditional prompt of classifier-free guidance ("" by default)
  int width = 0;                  ///< image width in pixels; 0 = the model's default; a multiple of the VAE factor
  int height = 0;                 ///< image height in pixels; 0 = the model's default
  int steps = 30;                 ///< sampler steps (num_inference_steps)
  float guidance_scale = 7.5f;    ///< classifier-free guidance scale; <= 1 runs no guidance (one UNet row)
  float guidance_rescale = 0.0f;  ///< diffusers' guidance_rescale in [0, 1]
  SamplerKind sampler = SamplerKind::ddim;  ///< DDIM, DDPM, Euler or DPM-Solver++ (2M)
  float eta = 0.0f;                         ///< DDIM's eta (>= 0)
  std::uint64_t seed = 0;                   ///< the request's own torch-compatible CPU generator seed

  Image image;  ///< the result, set when the request retires

  /// The pipeline's per-request state while the job runs (valid between admit and retire).
  struct Running {
    std::optional<Sampler> sampler;
    TorchGenerator generator;
    std::vector<float> latents;  ///< [C, h, w]
    std::vector<float> cond;     ///< text embeddings of the prompt [L, D]
    std::vector<float> uncond;   ///< of the negative prompt (empty without guidance)
  } run;

  /// True when the job uses classifier-free guidance (two UNet rows per step).
  bool guided() const noexcept { return guidance_scale > 1.0f; }
};

}  // namespace carousel::diffusion
