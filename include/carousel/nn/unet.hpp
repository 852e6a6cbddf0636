#pragma once
/// \file
/// carousel::nn::UNet2DConditionModel — diffusers' UNet2DConditionModel (the Stable Diffusion 1.x/2.x family) written
/// once over a layers trait L (nn/layers.hpp): CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn,
/// CrossAttnUpBlock2D / UpBlock2D, with Transformer2DModel (conv or linear projections) and per-item timesteps.
/// carousel::cpu::UNet2DConditionModel is UNet2DConditionModel<cpu::Layers>.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <carousel/checkpoint/format_error.hpp>
#include <carousel/checkpoint/unet_config.hpp>
#include <carousel/nn/blocks.hpp>
#include <carousel/nn/layers.hpp>
#include <carousel/tensor/host_tensor.hpp>

namespace carousel::nn {

/// diffusers' UNet2DConditionModel: forward(sample, one timestep per item, encoder_hidden_states) -> the model output
/// (noise or v prediction) shaped like the sample.
///
/// The module tree is diffusers': conv_in, time_proj + time_embedding.linear_1/linear_2,
/// down_blocks.i.{resnets.j, attentions.j, downsamplers.0.conv}, mid_block.{resnets.0, attentions.0, resnets.1},
/// up_blocks.i.{resnets.j, attentions.j, upsamplers.0.conv}, conv_norm_out, conv_out. Building walks it, taking every
/// tensor once with its expected shape, so a missing or mis-shaped tensor fails with the weight source's error naming
/// it. Immutable after construction; concurrent forward calls are as safe as L's layers make them.
template <class L>
requires LayerTypes<L>
class UNet2DConditionModel {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Builds the model for `config` (checked with config.validate(): a config made in code is held to parse()'s rules)
  /// with parameters from `w`.
  /// \throws checkpoint::FormatError naming the field for an unsupported or inconsistent config (also
  ///         downsample_padding other than 1, which no backend implements); whatever `w` throws for a bad tensor.
  UNet2DConditionModel(const checkpoint::UNetConfig& config, typename L::Weights& w)
      : config_(checked(config)),
        conv_in_(w, "conv_in.", {.in = config.in_channels, .out = config.block_out_channels[0]}),
        time_proj_(w, {.channels = config.block_out_channels[0],
                       .flip_sin_to_cos = config.flip_sin_to_cos,
                       .freq_shift = static_cast<float>(config.freq_shift)}),
        time_linear_1_(w, "time_embedding.linear_1.",
                       {.in = config.block_out_channels[0], .out = config.time_embed_dim()}),
        time_linear_2_(w, "time_embedding.linear_2.", {.in = config.time_embed_dim(), .out = config.time_embed_dim()}),
        conv_norm_out_(w, "conv_norm_out.",
                       {.channels = config.block_out_channels[0],
                        .groups = config.norm_num_groups,
                        .eps = static_cast<float>(config.norm_eps),
                        .silu = true}),
        conv_out_(w, "conv_out.", {.in = config.block_out_channels[0], .out = config.out_channels}) {
    const std::size_t n = config_.num_blocks();
    const auto& channels = config_.block_out_channels;
    std::int64_t out_ch = channels[0];
    for (std::size_t i = 0; i < n; ++i) {
      const std::string p = "down_blocks." + std::to_string(i) + ".";
      const std::int64_t in_ch = out_ch;
      out_ch = channels[i];
      Block block;
      for (int j = 0; j < config_.down_block_layers(i); ++j) {
        block.resnets.push_back(resnet(w, p + "resnets." + std::to_string(j) + ".", j == 0 ? in_ch : out_ch, out_ch));
        if (config_.down_block_has_attention(i))
          block.attentions.push_back(transformer(w, p + "attentions." + std::to_string(j) + ".", out_ch,
                                                 config_.down_block_heads(i), config_.down_transformer_layers(i)));
      }
      if (i + 1 < n)
        block.sampler.emplace(w, p + "downsamplers.0.conv.",
                              Conv2dOptions{.in = out_ch, .out = out_ch, .stride = 2, .padding = 1});
      down_blocks_.push_back(std::move(block));
    }
    mid_block_.resnets.push_back(resnet(w, "mid_block.resnets.0.", out_ch, out_ch));
    mid_block_.attentions.push_back(
        transformer(w, "mid_block.attentions.0.", out_ch, config_.mid_block_heads(), config_.mid_transformer_layers()));
    mid_block_.resnets.push_back(resnet(w, "mid_block.resnets.1.", out_ch, out_ch));
    for (std::size_t i = 0; i < n; ++i) {
      const std::string p = "up_blocks." + std::to_string(i) + ".";
      const std::int64_t prev_ch = out_ch;
      out_ch = config_.up_block_channels(i);
      // The last resnet takes the skip of the mirrored down block's input, the others of its outputs.
      const std::size_t mirrored = n - 1 - i;
      const std::int64_t block_in_ch = channels[mirrored == 0 ? 0 : mirrored - 1];
      const int resnets = config_.up_block_layers(i);
      Block block;
      for (int j = 0; j < resnets; ++j) {
        const std::int64_t skip_ch = j == resnets - 1 ? block_in_ch : out_ch;
        const std::int64_t res_in = j == 0 ? prev_ch : out_ch;
        block.resnets.push_back(resnet(w, p + "resnets." + std::to_string(j) + ".", res_in + skip_ch, out_ch));
        if (config_.up_block_has_attention(i))
          block.attentions.push_back(transformer(w, p + "attentions." + std::to_string(j) + ".", out_ch,
                                                 config_.up_block_heads(i), config_.up_transformer_layers(i)));
      }
      if (i + 1 < n) block.sampler.emplace(w, p + "upsamplers.0.conv.", Conv2dOptions{.in = out_ch, .out = out_ch});
      up_blocks_.push_back(std::move(block));
    }
  }

  /// sample [batch of images with in_channels channels, any H, W >= 1], timesteps (one per item),
  /// encoder_hidden_states [batch, L, cross_attention_dim] -> [batch of images with out_channels channels, H, W].
  /// Upsampling follows the skips' sizes (diffusers' upsample_size), so H and W need not be multiples of
  /// 2^(blocks - 1). `ctx` is L's per-call context (the CPU's BatchMode).
  /// \throws std::invalid_argument when the shapes disagree with each other or with the config.
  Tensor forward(const Tensor& sample, typename L::TimestepInput timesteps, const Tensor& encoder_hidden_states,
                 Context ctx = {}) const requires Layers<L> {
    const std::optional<ImageSize> size = L::image_size(sample);
    if (!size || size->channels != config_.in_channels)
      fail("sample " + tensor::shape_string(sample.shape()) + " is not a batch of images with " +
           std::to_string(config_.in_channels) + " channels");
    const std::int64_t batch = size->batch;
    if (encoder_hidden_states.rank() != 3 || encoder_hidden_states.dim(0) != batch ||
        encoder_hidden_states.dim(2) != config_.cross_attention_dim)
      fail("encoder_hidden_states " + tensor::shape_string(encoder_hidden_states.shape()) + " is not [" +
           std::to_string(batch) + ", L, " + std::to_string(config_.cross_attention_dim) + "]");
    Tensor temb = time_proj_.forward(ctx, timesteps);
    if (temb.dim(0) != batch) fail(std::to_string(temb.dim(0)) + " timesteps for a batch of " + std::to_string(batch));
    temb = time_linear_1_.forward(ctx, temb);
    L::activate(ctx, temb, Activation::silu);
    temb = time_linear_2_.forward(ctx, temb);
    L::activate(ctx, temb, Activation::silu);  // every consumer (the resnets' time_emb_proj) applies SiLU first

    // Every down-path output is a skip; the next layer reads it in place from the list.
    std::vector<Tensor> skips;
    skips.push_back(config_.center_input_sample ? conv_in_.forward(ctx, L::affine(ctx, sample, 2.0f, -1.0f))
                                                : conv_in_.forward(ctx, sample));
    for (const auto& block : down_blocks_) {
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        Tensor y = block.resnets[j].forward(ctx, skips.back(), temb);
        if (!block.attentions.empty()) y = block.attentions[j].forward(ctx, y, encoder_hidden_states);
        skips.push_back(std::move(y));
      }
      if (block.sampler) {
        Tensor y = block.sampler->forward(ctx, skips.back());
        skips.push_back(std::move(y));
      }
    }
    Tensor x = mid_block_.resnets[0].forward(ctx, skips.back(), temb);
    x = mid_block_.attentions[0].forward(ctx, x, encoder_hidden_states);
    x = mid_block_.resnets[1].forward(ctx, x, temb);
    for (const auto& block : up_blocks_) {
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        x = L::concat_channels(ctx, x, skips.back());
        skips.pop_back();
        x = block.resnets[j].forward(ctx, x, temb);
        if (!block.attentions.empty()) x = block.attentions[j].forward(ctx, x, encoder_hidden_states);
      }
      if (block.sampler) {
        const ImageSize next = *L::image_size(skips.back());
        x = block.sampler->forward(ctx, L::upsample_nearest(ctx, x, next.height, next.width));
      }
    }
    return conv_out_.forward(ctx, conv_norm_out_.forward(ctx, x));
  }

  /// The configuration the model was built from.
  const checkpoint::UNetConfig& config() const noexcept { return config_; }

 private:
  // A down, mid or up block: resnets, the Transformer2DModel after each (cross-attention blocks only) and the
  // down- or upsampling convolution (all blocks but the last of each path).
  struct Block {
    std::vector<ResnetBlock2D<L>> resnets;
    std::vector<Transformer2DModel<L>> attentions;
    std::optional<typename L::Conv2d> sampler;
  };

  static const checkpoint::UNetConfig& checked(const checkpoint::UNetConfig& config) {
    config.validate();
    if (config.downsample_padding != 1)
      throw checkpoint::FormatError("UNet config: downsample_padding = " + std::to_string(config.downsample_padding) +
                                    " is not supported (only 1)");
    return config;
  }

  [[noreturn]] static void fail(const std::string& what) {
    throw std::invalid_argument(std::string(L::name) + "::UNet2DConditionModel: " + what);
  }

  ResnetBlock2D<L> resnet(typename L::Weights& w, const std::string& prefix, std::int64_t in, std::int64_t out) const {
    return ResnetBlock2D<L>(w, prefix,
                            {.in = in,
                             .out = out,
                             .temb_channels = config_.time_embed_dim(),
                             .groups = config_.norm_num_groups,
                             .eps = static_cast<float>(config_.norm_eps)});
  }

  Transformer2DModel<L> transformer(typename L::Weights& w, const std::string& prefix, std::int64_t channels,
                                    std::int64_t heads, std::int64_t layers) const {
    return Transformer2DModel<L>(w, prefix,
                                 {.channels = channels,
                                  .heads = heads,
                                  .context_dim = config_.cross_attention_dim,
                                  .layers = layers,
                                  .groups = config_.norm_num_groups,
                                  .linear_projection = config_.use_linear_projection});
  }

  checkpoint::UNetConfig config_;
  typename L::Conv2d conv_in_;
  typename L::Timesteps time_proj_;
  typename L::Linear time_linear_1_, time_linear_2_;
  std::vector<Block> down_blocks_;
  Block mid_block_;
  std::vector<Block> up_blocks_;
  typename L::GroupNorm conv_norm_out_;
  typename L::Conv2d conv_out_;
};

}  // namespace carousel::nn
