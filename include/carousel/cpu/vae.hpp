#pragma once
/// \file
/// carousel::cpu::VaeDecoder — the decode path of diffusers' AutoencoderKL: post_quant_conv + Decoder
/// (conv_in, UNetMidBlock2D with one single-head attention, UpDecoderBlock2D x N, GroupNorm, SiLU, conv_out).

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/detail/vae_attention.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu {

/// The resolved architecture of an AutoencoderKL decoder (fields as in the VAE's config.json).
struct VaeSpec {
  std::int64_t latent_channels = 4;              ///< latent channels in
  std::int64_t out_channels = 3;                 ///< image channels out
  std::vector<std::int64_t> block_out_channels;  ///< encoder order, e.g. {128, 256, 512, 512}
  std::int64_t layers_per_block = 2;             ///< decoder up blocks have layers_per_block + 1 resnets
  std::int64_t norm_num_groups = 32;             ///< GroupNorm groups
  float scaling_factor = 0.18215f;               ///< latents are divided by this before decoding
  float shift_factor = 0.0f;                     ///< and then shifted by this (0 for SD 1.x/2.x)
  bool use_post_quant_conv = true;               ///< post_quant_conv present
  bool mid_block_add_attention = true;           ///< decoder.mid_block.attentions.0 present

  /// Image pixels per latent pixel: 2^(len(block_out_channels) - 1).
  std::int64_t scale_factor() const noexcept { return std::int64_t{1} << (block_out_channels.size() - 1); }

  /// \throws std::invalid_argument naming the field when the spec is inconsistent.
  void validate() const {
    if (block_out_channels.empty()) throw std::invalid_argument("carousel::cpu::VaeSpec: block_out_channels is empty");
    for (auto c : block_out_channels)
      if (norm_num_groups <= 0 || c % norm_num_groups != 0)
        throw std::invalid_argument("carousel::cpu::VaeSpec: block_out_channels entry " + std::to_string(c) +
                                    " is not a multiple of norm_num_groups");
    if (scaling_factor == 0.0f) throw std::invalid_argument("carousel::cpu::VaeSpec: scaling_factor is 0");
  }
};

/// AutoencoderKL's decode path. Loading walks post_quant_conv.*, decoder.conv_in, decoder.mid_block.{resnets,
/// attentions}, decoder.up_blocks.i.{resnets,upsamplers}, decoder.conv_norm_out, decoder.conv_out (the encoder and
/// quant_conv are not loaded). Batch items are independent. Immutable; forward is safe to call concurrently.
class VaeDecoder {
 public:
  /// Builds the decoder from `spec`, taking every parameter from `w`.
  /// \throws std::invalid_argument for an inconsistent spec; whatever `w` throws for a bad tensor.
  VaeDecoder(VaeSpec spec, checkpoint::WeightSource& w) : spec_(std::move(spec)) {
    spec_.validate();
    const auto& ch = spec_.block_out_channels;
    const std::int64_t n = static_cast<std::int64_t>(ch.size()), groups = spec_.norm_num_groups, top = ch.back();
    if (spec_.use_post_quant_conv)
      post_quant_conv_ = Conv2d(w, "post_quant_conv.", spec_.latent_channels, spec_.latent_channels, 1, 1, 0);
    conv_in_ = Conv2d(w, "decoder.conv_in.", spec_.latent_channels, top, 3);
    mid_.emplace_back(w, "decoder.mid_block.resnets.0.", top, top, 0, groups, 1e-6f);
    if (spec_.mid_block_add_attention) mid_attention_.emplace_back(w, "decoder.mid_block.attentions.0.", top, groups);
    mid_.emplace_back(w, "decoder.mid_block.resnets.1.", top, top, 0, groups, 1e-6f);
    std::int64_t out_ch = top;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::string p = "decoder.up_blocks." + std::to_string(i) + ".";
      const std::int64_t prev = out_ch;
      out_ch = ch[static_cast<std::size_t>(n - 1 - i)];
      UpBlock block;
      for (std::int64_t j = 0; j <= spec_.layers_per_block; ++j)
        block.resnets.emplace_back(w, p + "resnets." + std::to_string(j) + ".", j == 0 ? prev : out_ch, out_ch, 0,
                                   groups, 1e-6f);
      if (i + 1 < n) block.upsampler.emplace_back(w, p + "upsamplers.0.conv.", out_ch, out_ch, 3);
      up_.push_back(std::move(block));
    }
    norm_out_ = GroupNorm(w, "decoder.conv_norm_out.", ch[0], groups, 1e-6f);
    conv_out_ = Conv2d(w, "decoder.conv_out.", ch[0], spec_.out_channels, 3);
  }

  /// z [B, latent_channels, h, w] (already divided by scaling_factor) -> images [B, out_channels, h*f, w*f],
  /// f = spec().scale_factor(), nominally in [-1, 1] (not clamped). \throws std::invalid_argument for a bad shape.
  Tensor forward(const Tensor& z) const {
    if (z.rank() != 4 || z.dim(1) != spec_.latent_channels)
      throw std::invalid_argument("carousel::cpu::VaeDecoder: latents " + shape_string(z.shape()) + " are not [B, " +
                                  std::to_string(spec_.latent_channels) + ", h, w]");
    // One item at a time: the full-resolution activations of a batch would be large (a 512x512 SD image passes
    // through 128 x 512 x 512 floats several times), and items are independent anyway.
    const std::int64_t batch = z.dim(0), f = spec_.scale_factor();
    Tensor images({batch, spec_.out_channels, z.dim(2) * f, z.dim(3) * f});
    Shape item_shape = z.shape();
    item_shape[0] = 1;
    for (std::int64_t b = 0; b < batch; ++b) {
      const Tensor item(item_shape, std::vector<float>(z.sample(b), z.sample(b) + z.sample_numel()));
      const Tensor image = forward_item(item);
      std::copy(image.data(), image.data() + image.numel(), images.sample(b));
    }
    return images;
  }

  /// Scaled latents (as a sampler produces them) -> images: forward(latents / scaling_factor + shift_factor).
  Tensor decode(const Tensor& latents) const {
    Tensor z = latents;
    for (auto& v : z.values())
      v = v / spec_.scaling_factor + spec_.shift_factor;
    return forward(z);
  }

  /// The architecture.
  const VaeSpec& spec() const noexcept { return spec_; }

 private:
  Tensor forward_item(const Tensor& z) const {
    Tensor x = conv_in_.forward(spec_.use_post_quant_conv ? post_quant_conv_.forward(z) : z);
    x = mid_[0].forward(x, nullptr);
    if (!mid_attention_.empty()) x = mid_attention_[0].forward(x);
    x = mid_[1].forward(x, nullptr);
    for (const auto& block : up_) {
      for (const auto& resnet : block.resnets)
        x = resnet.forward(x, nullptr);
      if (!block.upsampler.empty()) x = block.upsampler[0].forward(upsample_nearest(x, 2 * x.dim(2), 2 * x.dim(3)));
    }
    return conv_out_.forward(norm_out_.forward(x, true));
  }

  struct UpBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Conv2d> upsampler;
  };
  VaeSpec spec_;
  Conv2d post_quant_conv_;
  Conv2d conv_in_;
  std::vector<ResnetBlock2D> mid_;
  std::vector<detail::VaeAttention> mid_attention_;
  std::vector<UpBlock> up_;
  GroupNorm norm_out_;
  Conv2d conv_out_;
};

}  // namespace carousel::cpu
