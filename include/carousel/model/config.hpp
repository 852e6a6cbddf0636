#pragma once
/// \file
/// Umbrella for the config.json readers of the model-format layer: UNetConfig, VaeConfig, ClipTextConfig, and the
/// DiffusersFolder that locates them.
///
/// \code
///   auto folder = carousel::model::DiffusersFolder::open("tests/data/models/sd-tiny");
///   auto unet = carousel::model::UNetConfig::load(folder.unet);
///   int heads = unet.down_block_heads(1);   // not attention_head_dim: see UNetConfig's trap note
/// \endcode

#include "carousel/model/clip_text_config.hpp"
#include "carousel/model/diffusers_folder.hpp"
#include "carousel/model/unet_config.hpp"
#include "carousel/model/vae_config.hpp"
