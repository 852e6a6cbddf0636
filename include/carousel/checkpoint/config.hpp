#pragma once
/// \file
/// Umbrella for the config.json readers of the model-format layer: UNetConfig, VaeConfig, ClipTextConfig, and the
/// DiffusersFolder that locates them.
///
/// \code
///   auto folder = carousel::checkpoint::DiffusersFolder::open("tests/data/models/sd-tiny");
///   auto unet = carousel::checkpoint::UNetConfig::load(folder.unet);
///   int heads = unet.down_block_heads(1);   // not attention_head_dim: see UNetConfig's trap note
/// \endcode

#include "carousel/checkpoint/clip_text_config.hpp"
#include "carousel/checkpoint/diffusers_folder.hpp"
#include "carousel/checkpoint/unet_config.hpp"
#include "carousel/checkpoint/vae_config.hpp"
