#pragma once
/// \file
/// carousel::cuda::VaeDecoder — the decode path of diffusers' AutoencoderKL on the GPU (post_quant_conv, decoder
/// conv_in, mid block with single-head attention, UpDecoderBlock2D x n, conv_norm_out, conv_out), walking the same
/// keys as the CPU backend's VaeDecoder.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/checkpoint/vae_config.hpp>
#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/layers.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda {

/// AutoencoderKL's decoder. Immutable after construction; concurrent calls need distinct Engines.
class VaeDecoder {
 public:
  /// Loads post_quant_conv.* (when used) and decoder.* from `w` in `dtype`.
  VaeDecoder(const checkpoint::VaeConfig& config, checkpoint::WeightSource& w, DType dtype)
      : config_(config), dtype_(dtype) {
    const auto& ch = config.block_out_channels;
    if (ch.empty()) throw std::invalid_argument("carousel::cuda::VaeDecoder: block_out_channels is empty");
    const std::int64_t n = static_cast<std::int64_t>(ch.size()), groups = config.norm_num_groups, top = ch.back();
    const float eps = static_cast<float>(checkpoint::VaeConfig::norm_eps);
    if (config.use_post_quant_conv)
      post_quant_conv_ = Conv2d(w, "post_quant_conv.", config.latent_channels, config.latent_channels, 1, dtype, 1, 0);
    conv_in_ = Conv2d(w, "decoder.conv_in.", config.latent_channels, top, 3, dtype);
    mid_.emplace_back(w, "decoder.mid_block.resnets.0.", top, top, 0, groups, eps, dtype);
    if (config.mid_block_add_attention) {
      mid_norm_.emplace_back(w, "decoder.mid_block.attentions.0.group_norm.", top, groups, eps);
      mid_attention_.emplace_back(w, "decoder.mid_block.attentions.0.", top, top, 1, true, true, dtype);
    }
    mid_.emplace_back(w, "decoder.mid_block.resnets.1.", top, top, 0, groups, eps, dtype);
    std::int64_t out_ch = top;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::string p = "decoder.up_blocks." + std::to_string(i) + ".";
      const std::int64_t prev = out_ch;
      out_ch = ch[static_cast<std::size_t>(n - 1 - i)];
      UpBlock block;
      for (int j = 0; j <= config.layers_per_block; ++j)
        block.resnets.emplace_back(w, p + "resnets." + std::to_string(j) + ".", j == 0 ? prev : out_ch, out_ch, 0,
                                   groups, eps, dtype);
      if (i + 1 < n) block.upsampler.emplace_back(w, p + "upsamplers.0.conv.", out_ch, out_ch, 3, dtype);
      up_.push_back(std::move(block));
    }
    norm_out_ = GroupNorm(w, "decoder.conv_norm_out.", ch[0], groups, eps);
    conv_out_ = Conv2d(w, "decoder.conv_out.", ch[0], config.out_channels, 3, dtype);
  }

  /// z NHWC [B, h, w, latent_channels] (already divided by the scaling factor) -> images NHWC [B, h*f, w*f, out].
  DeviceTensor forward(Engine& e, const DeviceTensor& z) const {
    if (z.rank() != 4 || z.dim(3) != config_.latent_channels || z.dtype() != dtype_)
      throw std::invalid_argument("carousel::cuda::VaeDecoder: latents " + shape_string(z.shape()) +
                                  " are not NHWC [B, h, w, " + std::to_string(config_.latent_channels) +
                                  "] of the decoder's dtype");
    DeviceTensor x =
        config_.use_post_quant_conv ? conv_in_.forward(e, post_quant_conv_.forward(e, z)) : conv_in_.forward(e, z);
    x = mid_[0].forward(e, x, nullptr);
    if (!mid_attention_.empty()) x = mid_attention_[0].forward(e, mid_norm_[0].forward(e, x), nullptr, false, &x);
    x = mid_[1].forward(e, x, nullptr);
    for (const auto& block : up_) {
      for (const auto& resnet : block.resnets)
        x = resnet.forward(e, x, nullptr);
      if (!block.upsampler.empty())
        x = block.upsampler[0].forward(e, upsample_nearest(e, x, 2 * x.dim(1), 2 * x.dim(2)));
    }
    return conv_out_.forward(e, norm_out_.forward(e, x, true));
  }

  /// The configuration.
  const checkpoint::VaeConfig& config() const noexcept { return config_; }
  /// Element type of weights and activations.
  DType dtype() const noexcept { return dtype_; }

 private:
  struct UpBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Conv2d> upsampler;
  };
  checkpoint::VaeConfig config_;
  DType dtype_;
  Conv2d post_quant_conv_;
  Conv2d conv_in_;
  std::vector<ResnetBlock2D> mid_;
  std::vector<GroupNorm> mid_norm_;
  std::vector<Attention> mid_attention_;
  std::vector<UpBlock> up_;
  GroupNorm norm_out_;
  Conv2d conv_out_;
};

}  // namespace carousel::cuda
