#pragma once
// The UNet's inner blocks: diffusers' BasicTransformerBlock and Transformer2DModel, and the block record of
// UNet2DConditionModel (resnets, attentions, resampler).

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/detail/parallel.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu::detail {

// diffusers' BasicTransformerBlock (layer_norm, self-attention, cross-attention, GEGLU feed-forward).
class BasicTransformerBlock {
 public:
  BasicTransformerBlock(checkpoint::WeightSource& w, const std::string& p, std::int64_t dim, std::int64_t context_dim,
                        std::int64_t heads)
      : dim_(dim),
        norm1_(w, p + "norm1.", dim, 1e-5f),
        attn1_(w, p + "attn1.", dim, dim, heads, false),
        norm2_(w, p + "norm2.", dim, 1e-5f),
        attn2_(w, p + "attn2.", dim, context_dim, heads, false),
        norm3_(w, p + "norm3.", dim, 1e-5f),
        ff_proj_(w, p + "ff.net.0.proj.", dim, 8 * dim),
        ff_out_(w, p + "ff.net.2.", 4 * dim, dim) {}

  // h [items * l, dim] (`items` consecutive batch items of l tokens) updated in place; context [items * lk,
  // context_dim]. Linear layers run over all items' rows at once; with items = 1 the result depends only on the item.
  void forward(float* h, std::int64_t items, std::int64_t l, const float* context, std::int64_t lk) const {
    const std::int64_t rows = items * l;
    const auto n = static_cast<std::size_t>(rows * dim_);
    std::vector<float> normed(n), out(n);
    norm1_.forward(h, rows, normed.data());
    attn1_.forward(normed.data(), items, l, normed.data(), l, out.data());
    for (std::size_t i = 0; i < n; ++i)
      h[i] += out[i];
    norm2_.forward(h, rows, normed.data());
    attn2_.forward(normed.data(), items, l, context, lk, out.data());
    for (std::size_t i = 0; i < n; ++i)
      h[i] += out[i];
    norm3_.forward(h, rows, normed.data());
    std::vector<float> proj(n * 8), gated(n * 4);
    ff_proj_.forward(normed.data(), rows, proj.data());
    const std::int64_t inner = 4 * dim_;
    parallel_for(rows, grain_for(4 * inner), [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = 0; c < inner; ++c)
          gated[r * inner + c] = proj[r * 2 * inner + c] * gelu(proj[r * 2 * inner + inner + c]);
    });
    ff_out_.forward(gated.data(), rows, out.data());
    for (std::size_t i = 0; i < n; ++i)
      h[i] += out[i];
  }

 private:
  std::int64_t dim_;
  LayerNorm norm1_;
  Attention attn1_;
  LayerNorm norm2_;
  Attention attn2_;
  LayerNorm norm3_;
  Linear ff_proj_, ff_out_;
};

// diffusers' Transformer2DModel for continuous input: GroupNorm(eps 1e-6) -> proj_in -> blocks -> proj_out -> + x.
// A 1x1-conv projection and a Linear one are the same token-wise matrix; only the stored shape differs.
class Transformer2D {
 public:
  Transformer2D(checkpoint::WeightSource& w, const std::string& p, std::int64_t channels, std::int64_t heads,
                std::int64_t context_dim, std::int64_t layers, std::int64_t groups, bool linear_projection)
      : channels_(channels),
        norm_(w, p + "norm.", channels, groups, 1e-6f),
        proj_in_(w, p + "proj_in.", channels, channels, true, !linear_projection) {
    for (std::int64_t i = 0; i < layers; ++i)
      blocks_.emplace_back(w, p + "transformer_blocks." + std::to_string(i) + ".", channels, context_dim, heads);
    proj_out_ = Linear(w, p + "proj_out.", channels, channels, true, !linear_projection);
  }

  // x [B, channels, H, W], context [B, lk, context_dim]. `mode` batched runs groups of items through the linear
  // layers together (about batched_gemm_extent token rows per call, the feed-forward's widest buffer, 8 * channels
  // per token, within 32 Mi floats).
  Tensor forward(const Tensor& x, const Tensor& context, BatchMode mode) const {
    const Tensor normed = norm_.forward(x);
    Tensor y(x.shape());
    const std::int64_t batch = x.dim(0), spatial = x.sample_numel() / channels_, lk = context.dim(1);
    const std::int64_t group =
        items_per_call(mode, batch, spatial, batched_gemm_extent, 8 * spatial * channels_, std::int64_t{32} << 20);
    const std::int64_t item_floats = spatial * channels_;
    std::vector<float> tokens(static_cast<std::size_t>(group * item_floats)), h(tokens.size());
    for (std::int64_t b0 = 0; b0 < batch; b0 += group) {
      const std::int64_t items = std::min(group, batch - b0);
      for (std::int64_t i = 0; i < items; ++i)
        transpose(normed.sample(b0 + i), channels_, spatial, tokens.data() + i * item_floats);
      proj_in_.forward(tokens.data(), items * spatial, h.data());
      for (const auto& block : blocks_)
        block.forward(h.data(), items, spatial, context.sample(b0), lk);
      proj_out_.forward(h.data(), items * spatial, tokens.data());
      for (std::int64_t i = 0; i < items; ++i) {
        transpose(tokens.data() + i * item_floats, spatial, channels_, y.sample(b0 + i));
        const float* xs = x.sample(b0 + i);
        float* ys = y.sample(b0 + i);
        for (std::int64_t j = 0; j < item_floats; ++j)
          ys[j] += xs[j];
      }
    }
    return y;
  }

 private:
  // dst[cols, rows] = src[rows, cols]^T
  static void transpose(const float* src, std::int64_t rows, std::int64_t cols, float* dst) {
    parallel_for(rows, grain_for(cols), [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = 0; c < cols; ++c)
          dst[c * rows + r] = src[r * cols + c];
    });
  }

  std::int64_t channels_;
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

}  // namespace carousel::cpu::detail
