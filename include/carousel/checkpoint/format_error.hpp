#pragma once
/// \file
/// carousel::checkpoint::FormatError — the one exception type of the model-format layer.

#include <stdexcept>
#include <string>

namespace carousel::checkpoint {

/// Thrown when a model file or folder cannot be used: a malformed or truncated safetensors file, a missing or
/// mis-shaped tensor, an unsupported or invalid config.json field, a missing component. The message names the file
/// (and the tensor or field) and the problem, e.g.
/// `safetensors file 'unet/diffusion_pytorch_model.safetensors': tensor 'conv_in.weight': data_offsets [0, 12] hold
/// 12 bytes, but F32 [4, 4, 3, 3] needs 576`.
class FormatError : public std::runtime_error {
 public:
  /// An error with the given complete message.
  explicit FormatError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace carousel::checkpoint
