#pragma once
/// \file
/// carousel::cpu::Layers — the CPU backend's layers trait for the network descriptions of carousel::nn (see
/// nn/layers.hpp): float32 tensors (images NCHW, tokens [items, l, C]), OpenBLAS GEMMs, and a Context that carries the
/// BatchMode. Also the layers themselves: Linear, Conv2d, GroupNorm, LayerNorm, diffusers' Attention, Embedding and
/// the sinusoidal Timesteps. Each layer takes its parameters from a checkpoint::WeightSource under a name prefix
/// ("mid_block.resnets.0.conv1." + "weight"). Built layers are immutable: forward is const and may run on several
/// threads at once.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/detail/parallel.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>
#include <carousel/nn/layers.hpp>

namespace carousel::cpu {

/// What every CPU forward call carries: how batch items share GEMM calls. Converts implicitly from a BatchMode, so
/// `unet.forward(sample, timesteps, context, BatchMode::batch_invariant)` reads as it did.
struct Context {
  BatchMode mode = BatchMode::batched;  ///< see BatchMode

  /// BatchMode::batched.
  Context() = default;
  /// The given mode.
  Context(BatchMode batch_mode) : mode(batch_mode) {}
};

namespace detail {

// Items of a batch (dimension 0) that share one GEMM call of a layer: all of them in batched mode (the networks
// split large batches into groups before, see Layers::items_per_group), one in batch_invariant mode.
inline std::int64_t items_per_gemm(const Context& ctx, std::int64_t items) {
  return ctx.mode == BatchMode::batch_invariant ? 1 : std::max<std::int64_t>(items, 1);
}

}  // namespace detail

/// y = x W^T + b over the last dimension (torch.nn.Linear); also 1x1 convolutions used as token-wise projections.
class Linear {
 public:
  /// Loads prefix + "weight" [out, in] (or [out, in, 1, 1] when conv1x1) and, when bias, prefix + "bias" [out].
  Linear(checkpoint::WeightSource& w, const std::string& prefix, const nn::LinearOptions& options)
      : in_(options.in), out_(options.out) {
    weight_ = options.conv1x1 ? w.take(prefix + "weight", {out_, in_, 1, 1}) : w.take(prefix + "weight", {out_, in_});
    if (options.bias) bias_ = w.take(prefix + "bias", {out_});
  }

  /// x [..., in] -> [..., out] (+ args.residual). Dimension 0 is the batch: in BatchMode::batch_invariant every item's
  /// rows are one GEMM, in batched mode all rows are. \throws std::invalid_argument for a wrong width or residual.
  Tensor forward(const Context& ctx, const Tensor& x, const nn::LinearArgs<Tensor>& args = {}) const {
    if (x.rank() < 2 || x.dim(x.rank() - 1) != in_)
      throw std::invalid_argument("carousel::cpu::Linear: input " + shape_string(x.shape()) + " does not end in " +
                                  std::to_string(in_));
    Shape shape = x.shape();
    shape.back() = out_;
    Tensor y(shape);
    const std::int64_t items = x.dim(0), rows_per_item = items ? x.numel() / (items * in_) : 0;
    const std::int64_t group = detail::items_per_gemm(ctx, items);
    for (std::int64_t b = 0; b < items; b += group)
      linear_rows(x.sample(b), std::min(group, items - b) * rows_per_item, in_, weight_.data(),
                  bias_.empty() ? nullptr : bias_.data(), out_, y.sample(b));
    if (args.residual) add_inplace(y, *args.residual);
    return y;
  }

 private:
  std::int64_t in_, out_;
  std::vector<float> weight_, bias_;
};

/// torch.nn.Conv2d with a square kernel, stride and zero padding, with bias, on NCHW images.
class Conv2d {
 public:
  /// Loads prefix + "weight" [out, in, k, k] and prefix + "bias" [out].
  Conv2d(checkpoint::WeightSource& w, const std::string& prefix, const nn::Conv2dOptions& options)
      : in_(options.in),
        out_(options.out),
        kernel_(options.kernel),
        stride_(options.stride),
        pad_(options.padding < 0 ? options.kernel / 2 : options.padding) {
    weight_ = w.take(prefix + "weight", {out_, in_, kernel_, kernel_});
    bias_ = w.take(prefix + "bias", {out_});
  }

  /// x [B, in, H, W] -> [B, out, H', W'] (+ args.per_item [B, out] on every pixel, + args.residual), items grouped
  /// into GEMMs as ctx.mode says (see conv2d). \throws std::invalid_argument for mis-shaped inputs.
  Tensor forward(const Context& ctx, const Tensor& x, const nn::Conv2dArgs<Tensor>& args = {}) const {
    Tensor y = conv2d(x, weight_.data(), bias_.data(), in_, out_, kernel_, stride_, pad_, ctx.mode);
    if (const Tensor* add = args.per_item) {
      const std::int64_t batch = y.dim(0), spatial = y.sample_numel() / out_;
      if (add->shape() != Shape{batch, out_})
        throw std::invalid_argument("carousel::cpu::Conv2d: per-item term " + shape_string(add->shape()) + " is not [" +
                                    std::to_string(batch) + ", " + std::to_string(out_) + "]");
      for (std::int64_t b = 0; b < batch; ++b) {
        float* ys = y.sample(b);
        const float* as = add->sample(b);
        for (std::int64_t c = 0; c < out_; ++c)
          for (std::int64_t i = 0; i < spatial; ++i)
            ys[c * spatial + i] += as[c];
      }
    }
    if (args.residual) add_inplace(y, *args.residual);
    return y;
  }

 private:
  std::int64_t in_, out_, kernel_, stride_, pad_;
  std::vector<float> weight_, bias_;
};

/// torch.nn.GroupNorm (affine) on [B, C, ...], optionally followed by SiLU.
class GroupNorm {
 public:
  /// Loads prefix + "weight" and prefix + "bias", each [channels].
  GroupNorm(checkpoint::WeightSource& w, const std::string& prefix, const nn::GroupNormOptions& options)
      : groups_(options.groups), eps_(options.eps), silu_(options.silu) {
    weight_ = w.take(prefix + "weight", {options.channels});
    bias_ = w.take(prefix + "bias", {options.channels});
  }
  /// Normalises x (per item and group); SiLU afterwards when built with silu.
  Tensor forward(const Context&, const Tensor& x) const {
    return group_norm(x, groups_, eps_, weight_.data(), bias_.data(), silu_);
  }

 private:
  std::int64_t groups_;
  float eps_;
  bool silu_;
  std::vector<float> weight_, bias_;
};

/// torch.nn.LayerNorm over the last dimension (affine).
class LayerNorm {
 public:
  /// Loads prefix + "weight" and prefix + "bias", each [width].
  LayerNorm(checkpoint::WeightSource& w, const std::string& prefix, const nn::LayerNormOptions& options)
      : width_(options.width), eps_(options.eps) {
    weight_ = w.take(prefix + "weight", {width_});
    bias_ = w.take(prefix + "bias", {width_});
  }
  /// Normalises every row of x [..., width].
  Tensor forward(const Context&, const Tensor& x) const {
    Tensor y(x.shape());
    layer_norm_rows(x.data(), x.numel() / width_, width_, weight_.data(), bias_.data(), eps_, y.data());
    return y;
  }

 private:
  std::int64_t width_;
  float eps_;
  std::vector<float> weight_, bias_;
};

/// diffusers' Attention (AttnProcessor) or CLIP's self-attention: projections q, k, v (biases optional) and out;
/// softmax(q k^T / sqrt(head_dim)) v per item and head.
class Attention {
 public:
  /// Loads prefix + names.{q, k, v, out} (see nn::AttentionOptions). Precondition: dim % heads == 0.
  Attention(checkpoint::WeightSource& w, const std::string& prefix, const nn::AttentionOptions& options)
      : dim_(options.dim),
        heads_(options.heads),
        cross_(options.context_dim > 0),
        to_q_(w, prefix + options.names.q + ".", {.in = dim_, .out = dim_, .bias = options.qkv_bias}),
        to_k_(w, prefix + options.names.k + ".", {.in = kv_in(options), .out = dim_, .bias = options.qkv_bias}),
        to_v_(w, prefix + options.names.v + ".", {.in = kv_in(options), .out = dim_, .bias = options.qkv_bias}),
        to_out_(w, prefix + options.names.out + ".", {.in = dim_, .out = dim_}) {}

  /// Tokens x [items, lq, dim] attend to themselves or, for cross-attention, to args.context [items, lk,
  /// context_dim]; returns to_out(...) (+ args.residual) [items, lq, dim]. The projections group items as Linear
  /// does, the attention runs per item and head. \throws std::invalid_argument for mis-shaped inputs.
  Tensor forward(const Context& ctx, const Tensor& x, const nn::AttentionArgs<Tensor>& args = {}) const {
    if (cross_ != (args.context != nullptr))
      throw std::invalid_argument(cross_ ? "carousel::cpu::Attention: cross-attention without a context"
                                         : "carousel::cpu::Attention: self-attention given a context");
    const Tensor& context = cross_ ? *args.context : x;
    if (x.rank() != 3 || context.rank() != 3 || context.dim(0) != x.dim(0))
      throw std::invalid_argument("carousel::cpu::Attention: tokens " + shape_string(x.shape()) + " and context " +
                                  shape_string(context.shape()) + " are not [items, l, width] of one batch");
    const Tensor q = to_q_.forward(ctx, x), k = to_k_.forward(ctx, context), v = to_v_.forward(ctx, context);
    Tensor o(q.shape());
    const std::int64_t lq = x.dim(1), lk = context.dim(1);
    for (std::int64_t i = 0; i < x.dim(0); ++i)
      attention(q.sample(i), dim_, k.sample(i), dim_, v.sample(i), dim_, lq, lk, heads_, dim_ / heads_, args.causal,
                o.sample(i), dim_);
    return to_out_.forward(ctx, o, {.residual = args.residual});
  }

 private:
  static std::int64_t kv_in(const nn::AttentionOptions& options) {
    return options.context_dim > 0 ? options.context_dim : options.dim;
  }

  std::int64_t dim_, heads_;
  bool cross_;
  Linear to_q_, to_k_, to_v_, to_out_;
};

/// An embedding table [rows, width] (prefix + "weight").
class Embedding {
 public:
  /// Loads prefix + "weight" [rows, width].
  Embedding(checkpoint::WeightSource& w, const std::string& prefix, const nn::EmbeddingOptions& options)
      : rows_(options.rows), width_(options.width), table_(w.take(prefix + "weight", {rows_, width_})) {}
  /// Entries.
  std::int64_t rows() const noexcept { return rows_; }
  /// Width of an entry.
  std::int64_t width() const noexcept { return width_; }
  /// Entry i (0 <= i < rows()).
  const float* row(std::int64_t i) const noexcept { return table_.data() + i * width_; }

 private:
  std::int64_t rows_, width_;
  std::vector<float> table_;
};

/// diffusers' Timesteps: the sinusoidal embedding of one timestep per batch item (no parameters).
class Timesteps {
 public:
  /// Takes no parameters from the source.
  Timesteps(checkpoint::WeightSource&, const nn::TimestepsOptions& options) : options_(options) {}
  /// timesteps [B] -> [B, channels] (see timestep_embedding).
  Tensor forward(const Context&, std::span<const float> timesteps) const {
    return timestep_embedding(timesteps, options_.channels, options_.flip_sin_to_cos, options_.freq_shift);
  }

 private:
  nn::TimestepsOptions options_;
};

/// The CPU layers trait of the carousel::nn networks (requirements in nn/layers.hpp).
struct Layers {
  using Tensor = cpu::Tensor;                                ///< float32, row-major
  using Context = cpu::Context;                              ///< the BatchMode
  using Weights = checkpoint::WeightSource;                  ///< parameters are float32
  using TimestepInput = std::span<const float>;              ///< one timestep per item, on the host
  static constexpr std::string_view name = "carousel::cpu";  ///< prefix of error messages
  using Linear = cpu::Linear;                                ///< see the class
  using Conv2d = cpu::Conv2d;                                ///< see the class
  using GroupNorm = cpu::GroupNorm;                          ///< see the class
  using LayerNorm = cpu::LayerNorm;                          ///< see the class
  using Attention = cpu::Attention;                          ///< see the class
  using Embedding = cpu::Embedding;                          ///< see the class
  using Timesteps = cpu::Timesteps;                          ///< see the class

  /// NCHW extents, or nullopt when x is not 4-D.
  static std::optional<nn::ImageSize> image_size(const Tensor& x) {
    if (x.rank() != 4) return std::nullopt;
    return nn::ImageSize{.batch = x.dim(0), .channels = x.dim(1), .height = x.dim(2), .width = x.dim(3)};
  }

  /// x = activation(x), element-wise.
  static void activate(const Context&, Tensor& x, nn::Activation activation) {
    if (activation == nn::Activation::silu) return silu_inplace(x.values());
    const bool quick = activation == nn::Activation::quick_gelu;
    float* v = x.data();
    detail::parallel_for(x.numel(), 1 << 14, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i)
        v[i] = quick ? quick_gelu(v[i]) : gelu(v[i]);
    });
  }

  /// GEGLU: x [..., 2n] -> [..., n], first half * gelu(second half).
  static Tensor geglu(const Context&, const Tensor& x) {
    const std::int64_t inner = x.dim(x.rank() - 1) / 2, rows = x.numel() / (2 * inner);
    Shape shape = x.shape();
    shape.back() = inner;
    Tensor y(shape);
    const float* proj = x.data();
    float* gated = y.data();
    detail::parallel_for(rows, detail::grain_for(4 * inner), [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = 0; c < inner; ++c)
          gated[r * inner + c] = proj[r * 2 * inner + c] * gelu(proj[r * 2 * inner + inner + c]);
    });
    return y;
  }

  /// scale * x + shift, element-wise.
  static Tensor affine(const Context&, const Tensor& x, float scale, float shift) {
    Tensor y = x;
    for (auto& v : y.values())
      v = scale * v + shift;
    return y;
  }

  /// See cpu::concat_channels.
  static Tensor concat_channels(const Context&, const Tensor& a, const Tensor& b) { return cpu::concat_channels(a, b); }

  /// See cpu::upsample_nearest.
  static Tensor upsample_nearest(const Context&, const Tensor& x, std::int64_t height, std::int64_t width) {
    return cpu::upsample_nearest(x, height, width);
  }

  /// Images [B, C, H, W] -> tokens [B, H * W, C].
  static Tensor to_tokens(const Context&, const Tensor& image) {
    const std::int64_t batch = image.dim(0), channels = image.dim(1), spatial = image.sample_numel() / channels;
    Tensor tokens({batch, spatial, channels});
    for (std::int64_t b = 0; b < batch; ++b)
      transpose(image.sample(b), channels, spatial, tokens.sample(b));
    return tokens;
  }

  /// Tokens [B, H * W, C] -> images shaped like `like` [B, C, H, W].
  static Tensor from_tokens(const Context&, const Tensor& tokens, const Tensor& like) {
    Tensor image(like.shape());
    const std::int64_t channels = like.dim(1), spatial = like.sample_numel() / channels;
    for (std::int64_t b = 0; b < like.dim(0); ++b)
      transpose(tokens.sample(b), spatial, channels, image.sample(b));
    return image;
  }

  /// [B, L, width]: token_embedding[ids[b][t]] + position_embedding[t]. Preconditions (the network checks them): the
  /// rows have one length L <= position rows, every id lies in [0, token rows).
  static Tensor text_embeddings(const Context&, const Embedding& token, const Embedding& position, nn::TokenIds ids) {
    const auto batch = static_cast<std::int64_t>(ids.size());
    const std::int64_t len = batch ? static_cast<std::int64_t>(ids[0].size()) : 0, d = token.width();
    Tensor h({batch, len, d});
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t t = 0; t < len; ++t) {
        const float* tok = token.row(ids[static_cast<std::size_t>(b)][static_cast<std::size_t>(t)]);
        const float* pos = position.row(t);
        float* row = h.sample(b) + t * d;
        for (std::int64_t c = 0; c < d; ++c)
          row[c] = tok[c] + pos[c];
      }
    return h;
  }

  /// batch_invariant: 1. batched: enough items for about detail::batched_gemm_extent GEMM rows or columns, within
  /// 32 Mi floats of the widest buffer (see detail::items_per_call).
  static std::int64_t items_per_group(const Context& ctx, std::int64_t batch, std::int64_t extent_per_item,
                                      std::int64_t floats_per_item) {
    return detail::items_per_call(ctx.mode, batch, extent_per_item, detail::batched_gemm_extent, floats_per_item,
                                  std::int64_t{32} << 20);
  }

  /// Items [first, first + count) of x (a copy).
  static Tensor items(const Context&, const Tensor& x, std::int64_t first, std::int64_t count) {
    Shape shape = x.shape();
    shape[0] = count;
    return Tensor(shape, std::vector<float>(x.sample(first), x.sample(first) + count * x.sample_numel()));
  }

  /// The parts' items, in order, as one batch. Precondition: parts is not empty, all have one item shape.
  static Tensor join_items(const Context&, const std::vector<Tensor>& parts) {
    Shape shape = parts.front().shape();
    shape[0] = 0;
    for (const auto& part : parts)
      shape[0] += part.dim(0);
    Tensor y(shape);
    float* out = y.data();
    for (const auto& part : parts)
      out = std::copy(part.data(), part.data() + part.numel(), out);
    return y;
  }

 private:
  // dst[cols, rows] = src[rows, cols]^T
  static void transpose(const float* src, std::int64_t rows, std::int64_t cols, float* dst) {
    detail::parallel_for(rows, detail::grain_for(cols), [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = 0; c < cols; ++c)
          dst[c * rows + r] = src[r * cols + c];
    });
  }
};

static_assert(nn::Layers<Layers>, "carousel::cpu::Layers must meet nn::Layers (nn/layers.hpp)");

}  // namespace carousel::cpu
