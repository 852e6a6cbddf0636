#pragma once
/// \file
/// carousel::cpu::VaeDecoder — the decode path of diffusers' AutoencoderKL (nn/vae.hpp) on the CPU, and
/// decode_latents, which applies the VAE's scaling first.

#include <carousel/checkpoint/vae_config.hpp>
#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/tensor.hpp>
#include <carousel/nn/vae.hpp>

namespace carousel::cpu {

/// AutoencoderKL's decoder on the CPU: built from a checkpoint::VaeConfig and a checkpoint::WeightSource;
/// forward(z [B, latent_channels, h, w], mode) -> images [B, out_channels, h * f, w * f]. Items run one at a time in
/// BatchMode::batch_invariant (the full-resolution activations of a batch would be large). Immutable; forward may run
/// concurrently on several threads.
using VaeDecoder = nn::VaeDecoder<Layers>;

/// Scaled latents (as a sampler produces them) -> images: vae.forward(latents / scaling_factor + shift_factor) in
/// BatchMode::batch_invariant, the scaling in float32 as diffusers does it. \throws std::invalid_argument for a bad
/// shape.
inline Tensor decode_latents(const VaeDecoder& vae, const Tensor& latents) {
  const auto scaling = static_cast<float>(vae.config().scaling_factor);
  const auto shift = static_cast<float>(vae.config().shift_factor.value_or(0.0));
  Tensor z = latents;
  for (auto& v : z.values())
    v = v / scaling + shift;
  return vae.forward(z, BatchMode::batch_invariant);
}

}  // namespace carousel::cpu
