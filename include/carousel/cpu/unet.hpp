#pragma once
/// \file
/// carousel::cpu::UNet2DConditionModel — diffusers' UNet2DConditionModel (nn/unet.hpp) on the CPU.

#include <carousel/cpu/layers.hpp>
#include <carousel/nn/unet.hpp>

namespace carousel::cpu {

/// diffusers' UNet2DConditionModel on the CPU: built from a checkpoint::UNetConfig and a checkpoint::WeightSource;
/// forward(sample [B, in_channels, H, W], timesteps (one per item), encoder_hidden_states [B, L, cross_attention_dim],
/// mode) -> [B, out_channels, H, W]. With BatchMode::batch_invariant an item's output is bitwise the same in any
/// batch; BatchMode::batched (the default) shares GEMM calls between items and may differ from it in the last bits.
/// Immutable after construction; forward may run concurrently on several threads.
using UNet2DConditionModel = nn::UNet2DConditionModel<Layers>;

}  // namespace carousel::cpu
