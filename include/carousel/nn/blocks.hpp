#pragma once
/// \file
/// The blocks the networks of carousel::nn are made of, written once over a layers trait L (nn/layers.hpp):
/// diffusers' ResnetBlock2D, BasicTransformerBlock, Transformer2DModel and the VAE's spatial self-attention.
/// Each builds its parameters' names from its own prefix, as diffusers' module tree does.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <carousel/nn/layers.hpp>

namespace carousel::nn {

/// Options of a ResnetBlock2D.
struct ResnetBlock2DOptions {
  std::int64_t in = 0;             ///< input channels
  std::int64_t out = 0;            ///< output channels (conv_shortcut, 1x1, when in != out)
  std::int64_t temb_channels = 0;  ///< width of the time embedding; 0: no time_emb_proj (the VAE's resnets)
  std::int64_t groups = 32;        ///< GroupNorm groups
  float eps = 1e-5f;               ///< GroupNorm eps
};

/// diffusers' ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1):
/// h = conv1(SiLU(norm1(x))) [+ time_emb_proj(SiLU(temb))]; out = shortcut(x) + conv2(SiLU(norm2(h))), shortcut =
/// conv_shortcut (1x1) when in != out, else the identity. Immutable; forward is const.
template <class L>
requires LayerTypes<L>
class ResnetBlock2D {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Loads norm1, conv1, [time_emb_proj when temb_channels > 0], norm2, conv2, [conv_shortcut when in != out].
  ResnetBlock2D(typename L::Weights& w, const std::string& p, const ResnetBlock2DOptions& o)
      : norm1_(w, p + "norm1.", {.channels = o.in, .groups = o.groups, .eps = o.eps, .silu = true}),
        conv1_(w, p + "conv1.", {.in = o.in, .out = o.out}),
        norm2_(w, p + "norm2.", {.channels = o.out, .groups = o.groups, .eps = o.eps, .silu = true}),
        conv2_(w, p + "conv2.", {.in = o.out, .out = o.out}) {
    if (o.temb_channels > 0)
      time_emb_proj_.emplace(w, p + "time_emb_proj.", LinearOptions{.in = o.temb_channels, .out = o.out});
    if (o.in != o.out)
      conv_shortcut_.emplace(w, p + "conv_shortcut.",
                             Conv2dOptions{.in = o.in, .out = o.out, .kernel = 1, .padding = 0});
  }

  /// x [batch of images with `in` channels] -> `out` channels, without a time embedding.
  Tensor forward(const Context& ctx, const Tensor& x) const requires Layers<L> { return run(ctx, x, nullptr); }

  /// As forward(ctx, x) with temb_silu [batch, temb_channels] = SiLU(time embedding) projected and added after conv1.
  Tensor forward(const Context& ctx, const Tensor& x, const Tensor& temb_silu) const requires Layers<L> {
    return run(ctx, x, &temb_silu);
  }

 private:
  Tensor run(const Context& ctx, const Tensor& x, const Tensor* temb_silu) const {
    std::optional<Tensor> proj;
    if (time_emb_proj_ && temb_silu) proj.emplace(time_emb_proj_->forward(ctx, *temb_silu));
    const Tensor h = conv1_.forward(ctx, norm1_.forward(ctx, x), {.per_item = proj ? &*proj : nullptr});
    if (!conv_shortcut_) return conv2_.forward(ctx, norm2_.forward(ctx, h), {.residual = &x});
    const Tensor shortcut = conv_shortcut_->forward(ctx, x);
    return conv2_.forward(ctx, norm2_.forward(ctx, h), {.residual = &shortcut});
  }

  typename L::GroupNorm norm1_;
  typename L::Conv2d conv1_;
  typename L::GroupNorm norm2_;
  typename L::Conv2d conv2_;
  std::optional<typename L::Linear> time_emb_proj_;
  std::optional<typename L::Conv2d> conv_shortcut_;
};

/// Options of a BasicTransformerBlock.
struct BasicTransformerBlockOptions {
  std::int64_t dim = 0;          ///< token width
  std::int64_t context_dim = 0;  ///< width of the cross-attention context
  std::int64_t heads = 1;        ///< heads of both attentions
};

/// diffusers' BasicTransformerBlock (layer_norm, no ada-norm): h += attn1(norm1 h); h += attn2(norm2 h, context);
/// h += ff(norm3 h) with a GEGLU feed-forward of inner width 4 * dim. Immutable; forward is const.
template <class L>
requires LayerTypes<L>
class BasicTransformerBlock {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Loads norm1, attn1, norm2, attn2, norm3, ff.net.0.proj and ff.net.2.
  BasicTransformerBlock(typename L::Weights& w, const std::string& p, const BasicTransformerBlockOptions& o)
      : norm1_(w, p + "norm1.", {.width = o.dim}),
        attn1_(w, p + "attn1.", {.dim = o.dim, .heads = o.heads}),
        norm2_(w, p + "norm2.", {.width = o.dim}),
        attn2_(w, p + "attn2.", {.dim = o.dim, .heads = o.heads, .context_dim = o.context_dim}),
        norm3_(w, p + "norm3.", {.width = o.dim}),
        ff_proj_(w, p + "ff.net.0.proj.", {.in = o.dim, .out = 8 * o.dim}),
        ff_out_(w, p + "ff.net.2.", {.in = 4 * o.dim, .out = o.dim}) {}

  /// Tokens h [items, l, dim] (as L::to_tokens makes them), context [items, lk, context_dim] -> [items, l, dim].
  Tensor forward(const Context& ctx, Tensor h, const Tensor& context) const requires Layers<L> {
    h = attn1_.forward(ctx, norm1_.forward(ctx, h), {.residual = &h});
    h = attn2_.forward(ctx, norm2_.forward(ctx, h), {.context = &context, .residual = &h});
    return ff_out_.forward(ctx, L::geglu(ctx, ff_proj_.forward(ctx, norm3_.forward(ctx, h))), {.residual = &h});
  }

 private:
  typename L::LayerNorm norm1_;
  typename L::Attention attn1_;
  typename L::LayerNorm norm2_;
  typename L::Attention attn2_;
  typename L::LayerNorm norm3_;
  typename L::Linear ff_proj_, ff_out_;
};

/// Options of a Transformer2DModel.
struct Transformer2DModelOptions {
  std::int64_t channels = 0;       ///< image channels = token width
  std::int64_t heads = 1;          ///< attention heads
  std::int64_t context_dim = 0;    ///< cross-attention context width
  std::int64_t layers = 1;         ///< BasicTransformerBlocks
  std::int64_t groups = 32;        ///< groups of the input GroupNorm
  bool linear_projection = false;  ///< proj_in / proj_out stored as Linear [C, C] instead of 1x1 conv [C, C, 1, 1]
};

/// diffusers' Transformer2DModel for continuous input: GroupNorm(eps 1e-6) -> proj_in -> transformer_blocks ->
/// proj_out -> + x. Proj_in and proj_out are token-wise matrices whichever way they are stored. A large batch runs
/// in groups of L::items_per_group items (the feed-forward's buffer holds 8 * channels floats per token).
/// Immutable; forward is const.
template <class L>
requires LayerTypes<L>
class Transformer2DModel {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Loads norm, proj_in, transformer_blocks.0 .. layers-1, proj_out.
  Transformer2DModel(typename L::Weights& w, const std::string& p, const Transformer2DModelOptions& o)
      : channels_(o.channels),
        norm_(w, p + "norm.", {.channels = o.channels, .groups = o.groups, .eps = 1e-6f}),
        proj_in_(w, p + "proj_in.", {.in = o.channels, .out = o.channels, .conv1x1 = !o.linear_projection}),
        proj_out_(w, p + "proj_out.", {.in = o.channels, .out = o.channels, .conv1x1 = !o.linear_projection}) {
    for (std::int64_t i = 0; i < o.layers; ++i)
      blocks_.emplace_back(
          w, p + "transformer_blocks." + std::to_string(i) + ".",
          BasicTransformerBlockOptions{.dim = o.channels, .context_dim = o.context_dim, .heads = o.heads});
  }

  /// x [batch of images with `channels` channels], context [batch, lk, context_dim] -> shaped like x.
  Tensor forward(const Context& ctx, const Tensor& x, const Tensor& context) const requires Layers<L> {
    const Tensor normed = norm_.forward(ctx, x);
    const ImageSize size = *L::image_size(x);
    const std::int64_t spatial = size.height * size.width;
    const std::int64_t group = L::items_per_group(ctx, size.batch, spatial, 8 * spatial * channels_);
    if (group >= size.batch) return forward_items(ctx, x, normed, context);
    std::vector<Tensor> parts;
    for (std::int64_t b = 0; b < size.batch; b += group) {
      const std::int64_t n = std::min(group, size.batch - b);
      parts.push_back(
          forward_items(ctx, L::items(ctx, x, b, n), L::items(ctx, normed, b, n), L::items(ctx, context, b, n)));
    }
    return L::join_items(ctx, parts);
  }

 private:
  Tensor forward_items(const Context& ctx, const Tensor& x, const Tensor& normed, const Tensor& context) const {
    Tensor h = proj_in_.forward(ctx, L::to_tokens(ctx, normed));
    for (const auto& block : blocks_)
      h = block.forward(ctx, std::move(h), context);
    const auto& residual = L::to_tokens(ctx, x);
    return L::from_tokens(ctx, proj_out_.forward(ctx, h, {.residual = &residual}), x);
  }

  std::int64_t channels_;
  typename L::GroupNorm norm_;
  typename L::Linear proj_in_, proj_out_;
  std::vector<BasicTransformerBlock<L>> blocks_;
};

/// The self-attention of the VAE's mid block (diffusers' Attention with group_norm, one head, residual connection):
/// GroupNorm -> attention over the H*W pixels as tokens -> + x. Immutable; forward is const.
template <class L>
requires LayerTypes<L>
class SpatialSelfAttention {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Loads group_norm and the to_q, to_k, to_v (with biases) and to_out.0 projections under `p`.
  SpatialSelfAttention(typename L::Weights& w, const std::string& p, const GroupNormOptions& norm)
      : group_norm_(w, p + "group_norm.", norm),
        attention_(w, p, {.dim = norm.channels, .heads = 1, .qkv_bias = true}) {}

  /// x [batch of images] -> shaped like x.
  Tensor forward(const Context& ctx, const Tensor& x) const requires Layers<L> {
    const Tensor normed = group_norm_.forward(ctx, x);
    const auto& residual = L::to_tokens(ctx, x);
    return L::from_tokens(ctx, attention_.forward(ctx, L::to_tokens(ctx, normed), {.residual = &residual}), x);
  }

 private:
  typename L::GroupNorm group_norm_;
  typename L::Attention attention_;
};

}  // namespace carousel::nn
