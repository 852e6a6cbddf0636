#pragma once
/// \file
/// The configurations of Stable Diffusion 1.5's networks, for building them without a checkpoint folder (benchmarks,
/// shape and parameter-count tests with checkpoint::RandomWeights). They equal what checkpoint::*Config::load reads
/// from runwayml/stable-diffusion-v1-5's unet/, vae/ and text_encoder/ (tests/data/models/reference-configs/sd15).

#include <carousel/checkpoint/clip_text_config.hpp>
#include <carousel/checkpoint/unet_config.hpp>
#include <carousel/checkpoint/vae_config.hpp>

namespace carousel::nn {

/// SD-1.5's UNet: blocks (320, 640, 1280, 1280), three cross-attention levels, 2 layers, 8 heads, context 768,
/// 64x64 latents (859,520,964 parameters).
inline checkpoint::UNetConfig sd15_unet_config() {
  checkpoint::UNetConfig config;  // diffusers' defaults are SD-1.5's blocks
  config.cross_attention_dim = 768;
  config.sample_size = 64;
  return config;
}

/// SD-1.5's VAE (AutoencoderKL): blocks (128, 256, 512, 512), 2 layers, 512x512 images; its decoder and
/// post_quant_conv hold 49,490,199 parameters.
inline checkpoint::VaeConfig sd15_vae_config() {
  checkpoint::VaeConfig config;
  config.block_out_channels = {128, 256, 512, 512};
  config.down_block_types.assign(4, "DownEncoderBlock2D");
  config.up_block_types.assign(4, "UpDecoderBlock2D");
  config.layers_per_block = 2;
  config.sample_size = 512;
  return config;
}

/// SD-1.5's text encoder, CLIP ViT-L/14's text tower: width 768, MLP 3072, 12 layers of 12 heads, quick_gelu
/// (123,060,480 parameters).
inline checkpoint::ClipTextConfig sd15_text_config() {
  checkpoint::ClipTextConfig config;
  config.hidden_size = 768;
  config.intermediate_size = 3072;
  config.num_attention_heads = 12;
  config.projection_dim = 768;
  return config;
}

}  // namespace carousel::nn
