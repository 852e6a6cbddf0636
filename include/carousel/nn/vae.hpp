#pragma once
/// \file
/// carousel::nn::VaeDecoder — the decode path of diffusers' AutoencoderKL written once over a layers trait L
/// (nn/layers.hpp): post_quant_conv, then the Decoder (conv_in, UNetMidBlock2D with one single-head self-attention,
/// UpDecoderBlock2D x n, conv_norm_out + SiLU, conv_out). carousel::cpu::VaeDecoder is VaeDecoder<cpu::Layers>.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <carousel/checkpoint/vae_config.hpp>
#include <carousel/nn/blocks.hpp>
#include <carousel/nn/layers.hpp>
#include <carousel/tensor/host_tensor.hpp>

namespace carousel::nn {

/// AutoencoderKL's decoder. Building walks post_quant_conv.* (when the config uses it), decoder.conv_in,
/// decoder.mid_block.{resnets.0, attentions.0, resnets.1}, decoder.up_blocks.i.{resnets.j, upsamplers.0.conv},
/// decoder.conv_norm_out and decoder.conv_out (the encoder and quant_conv are not read). Batch items are independent;
/// a batch runs in groups of L::items_per_group items (the activations at full resolution are large). Immutable after
/// construction; concurrent forward calls are as safe as L's layers make them.
template <class L>
requires LayerTypes<L>
class VaeDecoder {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Builds the decoder for `config` (checked with config.validate()) with parameters from `w`.
  /// \throws checkpoint::FormatError naming the field for an inconsistent config; whatever `w` throws for a bad tensor.
  VaeDecoder(const checkpoint::VaeConfig& config, typename L::Weights& w)
      : config_(checked(config)),
        conv_in_(w, "decoder.conv_in.", {.in = config.latent_channels, .out = config.block_out_channels.back()}),
        conv_norm_out_(w, "decoder.conv_norm_out.", norm(config.block_out_channels[0], true)),
        conv_out_(w, "decoder.conv_out.", {.in = config.block_out_channels[0], .out = config.out_channels}) {
    const auto& channels = config_.block_out_channels;
    const std::int64_t top = channels.back();
    if (config_.use_post_quant_conv)
      post_quant_conv_.emplace(
          w, "post_quant_conv.",
          Conv2dOptions{.in = config_.latent_channels, .out = config_.latent_channels, .kernel = 1, .padding = 0});
    mid_resnets_.push_back(resnet(w, "decoder.mid_block.resnets.0.", top, top));
    if (config_.mid_block_add_attention) mid_attention_.emplace(w, "decoder.mid_block.attentions.0.", norm(top, false));
    mid_resnets_.push_back(resnet(w, "decoder.mid_block.resnets.1.", top, top));
    const std::size_t n = config_.num_blocks();
    std::int64_t out_ch = top;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string p = "decoder.up_blocks." + std::to_string(i) + ".";
      const std::int64_t prev_ch = out_ch;
      out_ch = channels[n - 1 - i];
      UpBlock block;
      for (int j = 0; j <= config_.layers_per_block; ++j)
        block.resnets.push_back(resnet(w, p + "resnets." + std::to_string(j) + ".", j == 0 ? prev_ch : out_ch, out_ch));
      if (i + 1 < n) block.upsampler.emplace(w, p + "upsamplers.0.conv.", Conv2dOptions{.in = out_ch, .out = out_ch});
      up_blocks_.push_back(std::move(block));
    }
  }

  /// z [batch of images with latent_channels channels, h, w] (already divided by the scaling factor) -> images
  /// [batch, out_channels, h * f, w * f], f = config().downscale_factor(), nominally in [-1, 1] (not clamped).
  /// \throws std::invalid_argument for a bad shape.
  Tensor forward(const Tensor& z, Context ctx = {}) const requires Layers<L> {
    const std::optional<ImageSize> size = L::image_size(z);
    if (!size || size->channels != config_.latent_channels)
      throw std::invalid_argument(std::string(L::name) + "::VaeDecoder: latents " + tensor::shape_string(z.shape()) +
                                  " are not a batch of images with " + std::to_string(config_.latent_channels) +
                                  " channels");
    const std::int64_t f = config_.downscale_factor(), pixels = size->height * f * size->width * f;
    const std::int64_t group = L::items_per_group(ctx, size->batch, pixels, config_.block_out_channels[0] * pixels);
    if (group >= size->batch) return forward_items(ctx, z);
    std::vector<Tensor> parts;
    for (std::int64_t b = 0; b < size->batch; b += group)
      parts.push_back(forward_items(ctx, L::items(ctx, z, b, std::min(group, size->batch - b))));
    return L::join_items(ctx, parts);
  }

  /// The configuration the decoder was built from.
  const checkpoint::VaeConfig& config() const noexcept { return config_; }

 private:
  struct UpBlock {
    std::vector<ResnetBlock2D<L>> resnets;
    std::optional<typename L::Conv2d> upsampler;  // all blocks but the last
  };

  static const checkpoint::VaeConfig& checked(const checkpoint::VaeConfig& config) {
    config.validate();
    return config;
  }

  GroupNormOptions norm(std::int64_t channels, bool silu) const {
    return {.channels = channels,
            .groups = config_.norm_num_groups,
            .eps = static_cast<float>(checkpoint::VaeConfig::norm_eps),
            .silu = silu};
  }

  ResnetBlock2D<L> resnet(typename L::Weights& w, const std::string& prefix, std::int64_t in, std::int64_t out) const {
    return ResnetBlock2D<L>(w, prefix,
                            {.in = in,
                             .out = out,
                             .groups = config_.norm_num_groups,
                             .eps = static_cast<float>(checkpoint::VaeConfig::norm_eps)});
  }

  Tensor forward_items(const Context& ctx, const Tensor& z) const {
    Tensor x = post_quant_conv_ ? conv_in_.forward(ctx, post_quant_conv_->forward(ctx, z)) : conv_in_.forward(ctx, z);
    x = mid_resnets_[0].forward(ctx, x);
    if (mid_attention_) x = mid_attention_->forward(ctx, x);
    x = mid_resnets_[1].forward(ctx, x);
    for (const auto& block : up_blocks_) {
      for (const auto& layer : block.resnets)
        x = layer.forward(ctx, x);
      if (block.upsampler) {
        const ImageSize size = *L::image_size(x);
        x = block.upsampler->forward(ctx, L::upsample_nearest(ctx, x, 2 * size.height, 2 * size.width));
      }
    }
    return conv_out_.forward(ctx, conv_norm_out_.forward(ctx, x));
  }

  checkpoint::VaeConfig config_;
  typename L::Conv2d conv_in_;
  typename L::GroupNorm conv_norm_out_;
  typename L::Conv2d conv_out_;
  std::optional<typename L::Conv2d> post_quant_conv_;
  std::vector<ResnetBlock2D<L>> mid_resnets_;
  std::optional<SpatialSelfAttention<L>> mid_attention_;
  std::vector<UpBlock> up_blocks_;
};

}  // namespace carousel::nn
