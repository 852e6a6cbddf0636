#pragma once
/// \file
/// carousel::cpu::ClipTextModel — transformers' CLIPTextModel (nn/clip_text.hpp) on the CPU.

#include <carousel/cpu/layers.hpp>
#include <carousel/nn/clip_text.hpp>

namespace carousel::cpu {

/// CLIPTextModel's last hidden state on the CPU: built from a checkpoint::ClipTextConfig and a
/// checkpoint::WeightSource (keys under "text_model." by default); forward(ids, clip_skip, mode) -> [B, L,
/// hidden_size]. In BatchMode::batch_invariant (what Backend::encode_text uses) every item's projections are their own
/// GEMMs, so an item's embedding does not depend on its batch. Immutable; forward may run concurrently on several
/// threads.
using ClipTextModel = nn::ClipTextModel<Layers>;

}  // namespace carousel::cpu
