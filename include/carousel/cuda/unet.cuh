#pragma once
/// \file
/// carousel::cuda::UNet2DConditionModel — diffusers' UNet2DConditionModel (Stable Diffusion 1.x/2.x family) on the
/// GPU, with the same module tree and key-schema walk as the CPU backend's, built from a checkpoint::UNetConfig.

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <carousel/checkpoint/format_error.hpp>
#include <carousel/checkpoint/unet_config.hpp>
#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/layers.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda {

namespace detail {

// diffusers' BasicTransformerBlock: h += attn1(LN1 h); h += attn2(LN2 h, ctx); h += FF(LN3 h) (GEGLU).
class BasicTransformerBlock {
 public:
  BasicTransformerBlock(checkpoint::WeightSource& w, const std::string& p, std::int64_t dim, std::int64_t context_dim,
                        std::int64_t heads, DType dtype)
      : norm1_(w, p + "norm1.", dim, 1e-5f),
        attn1_(w, p + "attn1.", dim, dim, heads, false, true, dtype),
        norm2_(w, p + "norm2.", dim, 1e-5f),
        attn2_(w, p + "attn2.", dim, context_dim, heads, false, false, dtype),
        norm3_(w, p + "norm3.", dim, 1e-5f),
        ff_proj_(w, p + "ff.net.0.proj.", dim, 8 * dim, dtype),
        ff_out_(w, p + "ff.net.2.", 4 * dim, dim, dtype) {}

  DeviceTensor forward(Engine& e, DeviceTensor h, const DeviceTensor& context) const {
    h = attn1_.forward(e, norm1_.forward(e, h), nullptr, false, &h);
    h = attn2_.forward(e, norm2_.forward(e, h), &context, false, &h);
    const DeviceTensor gated = geglu(e, ff_proj_.forward(e, norm3_.forward(e, h)));
    return ff_out_.forward(e, gated, &h);
  }

 private:
  LayerNorm norm1_;
  Attention attn1_;
  LayerNorm norm2_;
  Attention attn2_;
  LayerNorm norm3_;
  Linear ff_proj_, ff_out_;
};

// Transformer2DModel (continuous input): GroupNorm(eps 1e-6) -> proj_in -> blocks -> proj_out -> + x. On NHWC data
// the image already is the token sequence [B, H*W, C], so no transposes are needed; 1x1-conv and Linear projections
// are the same matrix.
class Transformer2D {
 public:
  Transformer2D(checkpoint::WeightSource& w, const std::string& p, std::int64_t channels, std::int64_t heads,
                std::int64_t context_dim, std::int64_t layers, std::int64_t groups, bool linear_projection, DType dtype)
      : norm_(w, p + "norm.", channels, groups, 1e-6f),
        proj_in_(w, p + "proj_in.", channels, channels, dtype, true, !linear_projection) {
    for (std::int64_t i = 0; i < layers; ++i)
      blocks_.emplace_back(w, p + "transformer_blocks." + std::to_string(i) + ".", channels, context_dim, heads, dtype);
    proj_out_ = Linear(w, p + "proj_out.", channels, channels, dtype, true, !linear_projection);
  }

  DeviceTensor forward(Engine& e, const DeviceTensor& x, const DeviceTensor& context) const {
    DeviceTensor h = proj_in_.forward(e, norm_.forward(e, x));
    for (const auto& block : blocks_)
      h = block.forward(e, std::move(h), context);
    return proj_out_.forward(e, h, &x);
  }

 private:
  GroupNorm norm_;
  Linear proj_in_;
  std::vector<BasicTransformerBlock> blocks_;
  Linear proj_out_;
};

struct UNetBlock {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;  // empty for DownBlock2D / UpBlock2D
  std::vector<Conv2d> resample;           // downsamplers.0.conv / upsamplers.0.conv, when present
};

}  // namespace detail

/// diffusers' UNet2DConditionModel on the GPU: forward(sample, per-item timesteps, encoder_hidden_states).
///
/// Loading walks the checkpoint schema like carousel::cpu::UNet2DConditionModel (conv_in, time_embedding,
/// down_blocks.i.{resnets,attentions,downsamplers}, mid_block, up_blocks.i.{resnets,attentions,upsamplers},
/// conv_norm_out, conv_out), taking every tensor once with its expected shape, and uploads it in `dtype`.
/// Batch items are computed independently. Immutable after construction; concurrent forward calls need distinct
/// Engines.
class UNet2DConditionModel {
 public:
  /// Builds the model for `config` with parameters from `w` in `dtype` (f16: tensor cores, fp32 accumulation).
  /// \throws checkpoint::FormatError for what the backend does not implement (downsample_padding != 1); whatever `w`
  /// throws for a bad tensor; CudaError.
  UNet2DConditionModel(const checkpoint::UNetConfig& config, checkpoint::WeightSource& w, DType dtype)
      : config_(config), dtype_(dtype) {
    if (config.downsample_padding != 1)
      throw checkpoint::FormatError("UNet config: downsample_padding = " + std::to_string(config.downsample_padding) +
                                    " is not supported by the CUDA backend (only 1)");
    const auto& ch = config.block_out_channels;
    const std::int64_t c0 = ch[0], temb = 4 * c0, groups = config.norm_num_groups, ctx = config.cross_attention_dim;
    const auto eps = static_cast<float>(config.norm_eps);
    const std::size_t n = config.num_blocks();
    const auto heads = [&](std::size_t i) { return static_cast<std::int64_t>(config.attention_head_dim[i]); };
    const auto layers = [&](std::size_t i) {
      return static_cast<std::int64_t>(config.transformer_layers_per_block[i]);
    };
    conv_in_ = Conv2d(w, "conv_in.", config.in_channels, c0, 3, dtype);
    time_1_ = Linear(w, "time_embedding.linear_1.", c0, temb, dtype);
    time_2_ = Linear(w, "time_embedding.linear_2.", temb, temb, dtype);
    freqs_ = upload_weight(timestep_frequencies(c0, static_cast<float>(config.freq_shift)), {c0 / 2}, DType::f32);
    std::int64_t out_ch = c0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string p = "down_blocks." + std::to_string(i) + ".";
      const std::int64_t in_ch = out_ch;
      out_ch = ch[i];
      detail::UNetBlock block;
      for (int j = 0; j < config.layers_per_block[i]; ++j) {
        const std::string idx = std::to_string(j);
        block.resnets.emplace_back(w, p + "resnets." + idx + ".", j == 0 ? in_ch : out_ch, out_ch, temb, groups, eps,
                                   dtype);
        if (config.down_block_has_attention(i))
          block.attentions.emplace_back(w, p + "attentions." + idx + ".", out_ch, heads(i), ctx, layers(i), groups,
                                        config.use_linear_projection, dtype);
      }
      if (i + 1 < n) block.resample.emplace_back(w, p + "downsamplers.0.conv.", out_ch, out_ch, 3, dtype, 2, 1);
      down_.push_back(std::move(block));
    }
    const std::int64_t top = ch[n - 1];
    mid_.resnets.emplace_back(w, "mid_block.resnets.0.", top, top, temb, groups, eps, dtype);
    mid_.attentions.emplace_back(w, "mid_block.attentions.0.", top, heads(n - 1), ctx, layers(n - 1), groups,
                                 config.use_linear_projection, dtype);
    mid_.resnets.emplace_back(w, "mid_block.resnets.1.", top, top, temb, groups, eps, dtype);
    out_ch = top;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t r = n - 1 - i;  // the matching down block
      const std::string p = "up_blocks." + std::to_string(i) + ".";
      const std::int64_t prev_ch = out_ch;
      out_ch = ch[r];
      const std::int64_t in_ch = ch[r == 0 ? 0 : r - 1];
      detail::UNetBlock block;
      const std::int64_t resnets = config.layers_per_block[r] + 1;
      for (std::int64_t j = 0; j < resnets; ++j) {
        const std::string idx = std::to_string(j);
        const std::int64_t skip_ch = j == resnets - 1 ? in_ch : out_ch;
        const std::int64_t res_in = j == 0 ? prev_ch : out_ch;
        block.resnets.emplace_back(w, p + "resnets." + idx + ".", res_in + skip_ch, out_ch, temb, groups, eps, dtype);
        if (config.up_block_has_attention(i))
          block.attentions.emplace_back(w, p + "attentions." + idx + ".", out_ch, heads(r), ctx, layers(r), groups,
                                        config.use_linear_projection, dtype);
      }
      if (i + 1 < n) block.resample.emplace_back(w, p + "upsamplers.0.conv.", out_ch, out_ch, 3, dtype, 1, 1);
      up_.push_back(std::move(block));
    }
    norm_out_ = GroupNorm(w, "conv_norm_out.", c0, groups, eps);
    conv_out_ = Conv2d(w, "conv_out.", c0, config.out_channels, 3, dtype);
  }

  /// Device forward: sample NHWC [B, H, W, in_channels] (dtype(); already centred when center_input_sample),
  /// timesteps [B] float32, context [B, L, cross_attention_dim] (dtype()) -> NHWC [B, H, W, out_channels].
  /// \throws std::invalid_argument for inconsistent shapes.
  DeviceTensor forward(Engine& e, const DeviceTensor& sample, const DeviceTensor& timesteps,
                       const DeviceTensor& context) const {
    const std::int64_t batch = sample.rank() == 4 ? sample.dim(0) : -1;
    if (batch < 0 || sample.dim(3) != config_.in_channels || sample.dtype() != dtype_)
      throw std::invalid_argument("carousel::cuda::UNet2DConditionModel: sample " + shape_string(sample.shape()) +
                                  " is not NHWC [B, H, W, " + std::to_string(config_.in_channels) +
                                  "] of the model's dtype");
    if (timesteps.numel() != batch)
      throw std::invalid_argument("carousel::cuda::UNet2DConditionModel: " + std::to_string(timesteps.numel()) +
                                  " timesteps for a batch of " + std::to_string(batch));
    if (context.rank() != 3 || context.dim(0) != batch || context.dim(2) != config_.cross_attention_dim ||
        context.dtype() != dtype_)
      throw std::invalid_argument("carousel::cuda::UNet2DConditionModel: encoder_hidden_states " +
                                  shape_string(context.shape()) + " is not [" + std::to_string(batch) + ", L, " +
                                  std::to_string(config_.cross_attention_dim) + "] of the model's dtype");
    DeviceTensor temb = time_1_.forward(e, timestep_embedding(e, timesteps, freqs_, config_.flip_sin_to_cos, dtype_));
    activate(e, temb, Activation::silu);
    temb = time_2_.forward(e, temb);
    activate(e, temb, Activation::silu);  // every consumer (resnets' time_emb_proj) applies SiLU first

    // Every down-path output is a skip; the next layer reads it in place from the list.
    std::vector<DeviceTensor> skips;
    skips.push_back(conv_in_.forward(e, sample));
    for (const auto& block : down_) {
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        DeviceTensor y = block.resnets[j].forward(e, skips.back(), &temb);
        if (!block.attentions.empty()) y = block.attentions[j].forward(e, y, context);
        skips.push_back(std::move(y));
      }
      if (!block.resample.empty()) {
        DeviceTensor y = block.resample[0].forward(e, skips.back());
        skips.push_back(std::move(y));
      }
    }
    DeviceTensor x = mid_.resnets[0].forward(e, skips.back(), &temb);
    x = mid_.attentions[0].forward(e, x, context);
    x = mid_.resnets[1].forward(e, x, &temb);
    for (const auto& block : up_) {
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        x = concat_channels(e, x, skips.back());
        skips.pop_back();
        x = block.resnets[j].forward(e, x, &temb);
        if (!block.attentions.empty()) x = block.attentions[j].forward(e, x, context);
      }
      if (!block.resample.empty()) {
        const DeviceTensor& next = skips.back();
        x = block.resample[0].forward(e, upsample_nearest(e, x, next.dim(1), next.dim(2)));
      }
    }
    return conv_out_.forward(e, norm_out_.forward(e, x, true));
  }

  /// The configuration the model was built from.
  const checkpoint::UNetConfig& config() const noexcept { return config_; }
  /// The element type of weights and activations.
  DType dtype() const noexcept { return dtype_; }

 private:
  checkpoint::UNetConfig config_;
  DType dtype_;
  Conv2d conv_in_;
  Linear time_1_, time_2_;
  DeviceTensor freqs_;
  std::vector<detail::UNetBlock> down_;
  detail::UNetBlock mid_;
  std::vector<detail::UNetBlock> up_;
  GroupNorm norm_out_;
  Conv2d conv_out_;
};

}  // namespace carousel::cuda
