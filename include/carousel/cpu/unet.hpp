#pragma once
/// \file
/// carousel::cpu::UNet2DConditionModel — diffusers' UNet2DConditionModel (the Stable Diffusion 1.x/2.x family) on the
/// CPU: CrossAttnDownBlock2D / DownBlock2D / UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D / UpBlock2D with
/// Transformer2DModel (conv or linear projections) and per-sample timesteps.

#include <algorithm>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/detail/unet_blocks.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu {

/// The resolved architecture of a UNet2DConditionModel: every per-block quantity as a list over the down blocks
/// (up blocks use the lists reversed, as diffusers does). Build it from a config with unet_spec() (backend.hpp) or
/// by hand (benchmarks).
struct UNetSpec {
  std::int64_t in_channels = 4;                            ///< latent channels in
  std::int64_t out_channels = 4;                           ///< channels out
  std::vector<std::int64_t> block_out_channels;            ///< per down block
  std::vector<std::int64_t> layers_per_block;              ///< resnets per down block (up blocks have one more)
  std::vector<std::string> down_block_types;               ///< "CrossAttnDownBlock2D" or "DownBlock2D"
  std::vector<std::string> up_block_types;                 ///< "CrossAttnUpBlock2D" or "UpBlock2D"
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  ///< the only mid block supported
  std::vector<std::int64_t> attention_heads;               ///< heads per down block (head_dim = channels / heads)
  std::vector<std::int64_t> transformer_layers;     ///< BasicTransformerBlocks per Transformer2DModel, per down block
  std::vector<std::int64_t> up_transformer_layers;  ///< per up block; empty = transformer_layers reversed
  std::int64_t cross_attention_dim = 768;           ///< context width
  std::int64_t norm_num_groups = 32;                ///< GroupNorm groups of resnets and transformers
  float norm_eps = 1e-5f;                           ///< GroupNorm eps of resnets and of conv_norm_out
  bool use_linear_projection = false;               ///< proj_in/proj_out Linear instead of 1x1 conv
  bool flip_sin_to_cos = true;                      ///< timestep embedding order [cos, sin]
  float freq_shift = 0.0f;                          ///< timestep embedding downscale_freq_shift
  bool center_input_sample = false;                 ///< map the sample to 2 * sample - 1 first

  /// Stable Diffusion 1.5's UNet (859,520,964 parameters).
  static UNetSpec sd15() {
    UNetSpec s;
    s.block_out_channels = {320, 640, 1280, 1280};
    s.layers_per_block = {2, 2, 2, 2};
    s.down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
    s.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    s.attention_heads = {8, 8, 8, 8};
    s.transformer_layers = {1, 1, 1, 1};
    return s;
  }

  /// Checks the lists' lengths, the block types and the channel/head/group divisibility.
  /// \throws std::invalid_argument naming the offending field.
  void validate() const {
    const std::size_t n = block_out_channels.size();
    auto fail = [](const std::string& what) { throw std::invalid_argument("carousel::cpu::UNetSpec: " + what); };
    if (n == 0) fail("block_out_channels is empty");
    if (norm_num_groups <= 0) fail("norm_num_groups must be positive");
    if (in_channels <= 0 || out_channels <= 0 || cross_attention_dim <= 0)
      fail("in_channels, out_channels and cross_attention_dim must be positive");
    if (layers_per_block.size() != n || down_block_types.size() != n || up_block_types.size() != n ||
        attention_heads.size() != n || transformer_layers.size() != n ||
        (!up_transformer_layers.empty() && up_transformer_layers.size() != n))
      fail("per-block lists must all have " + std::to_string(n) + " entries (one per block_out_channels)");
    for (const auto& t : down_block_types)
      if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D") fail("unsupported down block type '" + t + "'");
    for (const auto& t : up_block_types)
      if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D") fail("unsupported up block type '" + t + "'");
    if (mid_block_type != "UNetMidBlock2DCrossAttn") fail("unsupported mid block type '" + mid_block_type + "'");
    for (std::size_t i = 0; i < n; ++i) {
      if (block_out_channels[i] % norm_num_groups != 0)
        fail("block_out_channels[" + std::to_string(i) + "] is not a multiple of norm_num_groups");
      // Heads matter where a Transformer2DModel uses them: cross-attention down block i, the up block mirroring
      // it, and the mid block (the last entry).
      const bool attends = down_block_types[i] == "CrossAttnDownBlock2D" ||
                           up_block_types[n - 1 - i] == "CrossAttnUpBlock2D" || i == n - 1;
      if (attends && (attention_heads[i] <= 0 || block_out_channels[i] % attention_heads[i] != 0))
        fail("block_out_channels[" + std::to_string(i) + "] = " + std::to_string(block_out_channels[i]) +
             " is not a multiple of its attention heads (" + std::to_string(attention_heads[i]) + ")");
    }
  }
};

/// diffusers' UNet2DConditionModel, forward(sample, per-sample timesteps, encoder_hidden_states) -> noise prediction.
///
/// Loading walks the checkpoint schema (conv_in, time_embedding, down_blocks.i.{resnets,attentions,downsamplers},
/// mid_block, up_blocks.i.{resnets,attentions,upsamplers}, conv_norm_out, conv_out); every tensor is taken once
/// with its expected shape, so a missing or mis-shaped tensor fails with the source's error naming it.
/// With BatchMode::batch_invariant an item's output is bitwise the same in any batch; BatchMode::batched (the
/// default) shares GEMM calls between items and may differ from it in the last bits. Immutable after construction;
/// forward may run concurrently on several threads.
class UNet2DConditionModel {
 public:
  /// Builds the model from `spec`, taking every parameter from `w`.
  /// \throws std::invalid_argument for an unsupported or inconsistent spec; whatever `w` throws for a bad tensor.
  UNet2DConditionModel(UNetSpec spec, checkpoint::WeightSource& w) : spec_(std::move(spec)) {
    spec_.validate();
    const auto& ch = spec_.block_out_channels;
    const std::int64_t c0 = ch[0], temb = 4 * c0, groups = spec_.norm_num_groups, ctx = spec_.cross_attention_dim;
    const float eps = spec_.norm_eps;
    const std::size_t n = ch.size();
    conv_in_ = Conv2d(w, "conv_in.", spec_.in_channels, c0, 3);
    time_1_ = Linear(w, "time_embedding.linear_1.", c0, temb);
    time_2_ = Linear(w, "time_embedding.linear_2.", temb, temb);
    std::int64_t out_ch = c0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string p = "down_blocks." + std::to_string(i) + ".";
      const std::int64_t in_ch = out_ch;
      out_ch = ch[i];
      detail::UNetBlock block;
      for (std::int64_t j = 0; j < spec_.layers_per_block[i]; ++j) {
        const std::string idx = std::to_string(j);
        block.resnets.emplace_back(w, p + "resnets." + idx + ".", j == 0 ? in_ch : out_ch, out_ch, temb, groups, eps);
        if (spec_.down_block_types[i] == "CrossAttnDownBlock2D")
          block.attentions.emplace_back(w, p + "attentions." + idx + ".", out_ch, spec_.attention_heads[i], ctx,
                                        spec_.transformer_layers[i], groups, spec_.use_linear_projection);
      }
      if (i + 1 < n) block.resample.emplace_back(w, p + "downsamplers.0.conv.", out_ch, out_ch, 3, 2, 1);
      down_.push_back(std::move(block));
    }
    const std::int64_t top = ch[n - 1];
    mid_.resnets.emplace_back(w, "mid_block.resnets.0.", top, top, temb, groups, eps);
    mid_.attentions.emplace_back(w, "mid_block.attentions.0.", top, spec_.attention_heads[n - 1], ctx,
                                 spec_.transformer_layers[n - 1], groups, spec_.use_linear_projection);
    mid_.resnets.emplace_back(w, "mid_block.resnets.1.", top, top, temb, groups, eps);
    out_ch = top;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t r = n - 1 - i;  // the matching down block
      const std::string p = "up_blocks." + std::to_string(i) + ".";
      const std::int64_t prev_ch = out_ch;
      out_ch = ch[r];
      const std::int64_t in_ch = ch[r == 0 ? 0 : r - 1];
      const std::int64_t layers =
          spec_.up_transformer_layers.empty() ? spec_.transformer_layers[r] : spec_.up_transformer_layers[i];
      detail::UNetBlock block;
      const std::int64_t resnets = spec_.layers_per_block[r] + 1;
      for (std::int64_t j = 0; j < resnets; ++j) {
        const std::string idx = std::to_string(j);
        const std::int64_t skip_ch = j == resnets - 1 ? in_ch : out_ch;
        const std::int64_t res_in = j == 0 ? prev_ch : out_ch;
        block.resnets.emplace_back(w, p + "resnets." + idx + ".", res_in + skip_ch, out_ch, temb, groups, eps);
        if (spec_.up_block_types[i] == "CrossAttnUpBlock2D")
          block.attentions.emplace_back(w, p + "attentions." + idx + ".", out_ch, spec_.attention_heads[r], ctx, layers,
                                        groups, spec_.use_linear_projection);
      }
      if (i + 1 < n) block.resample.emplace_back(w, p + "upsamplers.0.conv.", out_ch, out_ch, 3, 1, 1);
      up_.push_back(std::move(block));
    }
    norm_out_ = GroupNorm(w, "conv_norm_out.", c0, groups, eps);
    conv_out_ = Conv2d(w, "conv_out.", c0, spec_.out_channels, 3);
  }

  /// sample [B, in_channels, H, W], timesteps [B] (one per batch item), encoder_hidden_states [B, L,
  /// cross_attention_dim]
  /// -> [B, out_channels, H, W]. Any H, W >= 1 (upsampling follows the skip sizes, as diffusers' upsample_size does).
  /// `mode` says how batch items share GEMM calls: BatchMode::batched (default, faster) or BatchMode::batch_invariant
  /// (each item's output bitwise the same in any batch).
  /// \throws std::invalid_argument when the shapes disagree with each other or with the spec.
  Tensor forward(const Tensor& sample, std::span<const float> timesteps, const Tensor& context,
                 BatchMode mode = BatchMode::batched) const {
    const std::int64_t batch = sample.rank() == 4 ? sample.dim(0) : -1;
    if (batch < 0 || sample.dim(1) != spec_.in_channels)
      throw std::invalid_argument("carousel::cpu::UNet2DConditionModel: sample " + shape_string(sample.shape()) +
                                  " is not [B, " + std::to_string(spec_.in_channels) + ", H, W]");
    if (static_cast<std::int64_t>(timesteps.size()) != batch)
      throw std::invalid_argument("carousel::cpu::UNet2DConditionModel: " + std::to_string(timesteps.size()) +
                                  " timesteps for a batch of " + std::to_string(batch));
    if (context.rank() != 3 || context.dim(0) != batch || context.dim(2) != spec_.cross_attention_dim)
      throw std::invalid_argument("carousel::cpu::UNet2DConditionModel: encoder_hidden_states " +
                                  shape_string(context.shape()) + " is not [" + std::to_string(batch) + ", L, " +
                                  std::to_string(spec_.cross_attention_dim) + "]");
    const std::int64_t c0 = spec_.block_out_channels[0];
    const Tensor t_emb = timestep_embedding(timesteps, c0, spec_.flip_sin_to_cos, spec_.freq_shift);
    Tensor hidden({batch, 4 * c0}), temb({batch, 4 * c0});
    const std::int64_t group = detail::items_per_call(mode, batch, 1, batch, 1, batch);
    for (std::int64_t b = 0; b < batch; b += group)
      time_1_.forward(t_emb.sample(b), std::min(group, batch - b), hidden.sample(b));
    silu_inplace(hidden.values());
    for (std::int64_t b = 0; b < batch; b += group)
      time_2_.forward(hidden.sample(b), std::min(group, batch - b), temb.sample(b));
    silu_inplace(temb.values());  // every consumer (resnets' time_emb_proj) applies SiLU first

    Tensor x = conv_in_.forward(spec_.center_input_sample ? centered(sample) : sample, mode);
    std::vector<Tensor> skips;
    skips.push_back(x);
    for (const auto& block : down_) {
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        x = block.resnets[j].forward(x, &temb, mode);
        if (!block.attentions.empty()) x = block.attentions[j].forward(x, context, mode);
        skips.push_back(x);
      }
      if (!block.resample.empty()) {
        x = block.resample[0].forward(x, mode);
        skips.push_back(x);
      }
    }
    x = mid_.resnets[0].forward(x, &temb, mode);
    x = mid_.attentions[0].forward(x, context, mode);
    x = mid_.resnets[1].forward(x, &temb, mode);
    for (const auto& block : up_) {
      for (std::size_t j = 0; j < block.resnets.size(); ++j) {
        x = concat_channels(x, skips.back());
        skips.pop_back();
        x = block.resnets[j].forward(x, &temb, mode);
        if (!block.attentions.empty()) x = block.attentions[j].forward(x, context, mode);
      }
      if (!block.resample.empty()) {
        const Tensor& next = skips.back();
        x = block.resample[0].forward(upsample_nearest(x, next.dim(2), next.dim(3)), mode);
      }
    }
    return conv_out_.forward(norm_out_.forward(x, true), mode);
  }

  /// The architecture.
  const UNetSpec& spec() const noexcept { return spec_; }

 private:
  static Tensor centered(const Tensor& sample) {
    Tensor x = sample;
    for (auto& v : x.values())
      v = 2.0f * v - 1.0f;
    return x;
  }

  UNetSpec spec_;
  Conv2d conv_in_;
  Linear time_1_, time_2_;
  std::vector<detail::UNetBlock> down_;
  detail::UNetBlock mid_;
  std::vector<detail::UNetBlock> up_;
  GroupNorm norm_out_;
  Conv2d conv_out_;
};

}  // namespace carousel::cpu
