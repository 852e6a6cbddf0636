#pragma once
/// \file
/// Parameterised layers shared by the CPU backend's models: Linear, Conv2d, GroupNorm, LayerNorm, diffusers'
/// Attention and ResnetBlock2D. Each layer is built by walking a checkpoint::WeightSource under a name prefix that
/// mirrors the checkpoint key schema ("mid_block.resnets.0." + "conv1.weight"). Built layers are immutable: forward is
/// const and may run on several threads at once.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu {

/// y = x W^T + b over rows (torch.nn.Linear). Also holds 1x1 convolutions used as token-wise projections.
class Linear {
 public:
  Linear() = default;
  /// Loads prefix + "weight" [out, in] (or [out, in, 1, 1] when `conv1x1`) and, when `bias`, prefix + "bias" [out].
  Linear(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t in, std::int64_t out, bool bias = true,
         bool conv1x1 = false)
      : in_(in), out_(out) {
    weight_ = conv1x1 ? w.take(prefix + "weight", {out, in, 1, 1}) : w.take(prefix + "weight", {out, in});
    if (bias) bias_ = w.take(prefix + "bias", {out});
  }
  /// y[rows, out] = x[rows, in] W^T + b. Rows are contiguous.
  void forward(const float* x, std::int64_t rows, float* y) const {
    linear_rows(x, rows, in_, weight_.data(), bias_.empty() ? nullptr : bias_.data(), out_, y);
  }
  /// Input features.
  std::int64_t in_features() const noexcept { return in_; }
  /// Output features.
  std::int64_t out_features() const noexcept { return out_; }

 private:
  std::int64_t in_ = 0, out_ = 0;
  std::vector<float> weight_, bias_;
};

/// torch.nn.Conv2d with a square kernel, stride and zero padding, with bias.
class Conv2d {
 public:
  Conv2d() = default;
  /// Loads prefix + "weight" [out, in, k, k] and prefix + "bias" [out].
  Conv2d(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t in, std::int64_t out, std::int64_t kernel,
         std::int64_t stride = 1, std::int64_t pad = -1)
      : in_(in), out_(out), kernel_(kernel), stride_(stride), pad_(pad < 0 ? kernel / 2 : pad) {
    weight_ = w.take(prefix + "weight", {out, in, kernel, kernel});
    bias_ = w.take(prefix + "bias", {out});
  }
  /// x [B, in, H, W] -> [B, out, H', W'], items grouped into GEMMs as `mode` says (see conv2d).
  Tensor forward(const Tensor& x, BatchMode mode = BatchMode::batched) const {
    return conv2d(x, weight_.data(), bias_.data(), in_, out_, kernel_, stride_, pad_, mode);
  }
  /// Output channels.
  std::int64_t out_channels() const noexcept { return out_; }

 private:
  std::int64_t in_ = 0, out_ = 0, kernel_ = 1, stride_ = 1, pad_ = 0;
  std::vector<float> weight_, bias_;
};

/// torch.nn.GroupNorm (affine), optionally followed by SiLU.
class GroupNorm {
 public:
  GroupNorm() = default;
  /// Loads prefix + "weight" and prefix + "bias", each [channels].
  GroupNorm(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t channels, std::int64_t groups,
            float eps)
      : groups_(groups), eps_(eps) {
    weight_ = w.take(prefix + "weight", {channels});
    bias_ = w.take(prefix + "bias", {channels});
  }
  /// Normalises x [B, C, ...]; applies SiLU afterwards when `silu`.
  Tensor forward(const Tensor& x, bool silu = false) const {
    return group_norm(x, groups_, eps_, weight_.data(), bias_.data(), silu);
  }

 private:
  std::int64_t groups_ = 1;
  float eps_ = 1e-5f;
  std::vector<float> weight_, bias_;
};

/// torch.nn.LayerNorm over the last dimension (affine).
class LayerNorm {
 public:
  LayerNorm() = default;
  /// Loads prefix + "weight" and prefix + "bias", each [width].
  LayerNorm(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t width, float eps)
      : width_(width), eps_(eps) {
    weight_ = w.take(prefix + "weight", {width});
    bias_ = w.take(prefix + "bias", {width});
  }
  /// Normalises `rows` contiguous rows of `width` values from x into y (x == y allowed).
  void forward(const float* x, std::int64_t rows, float* y) const {
    layer_norm_rows(x, rows, width_, weight_.data(), bias_.data(), eps_, y);
  }

 private:
  std::int64_t width_ = 0;
  float eps_ = 1e-5f;
  std::vector<float> weight_, bias_;
};

/// diffusers' Attention (AttnProcessor): to_q, to_k, to_v (bias optional), to_out.0 (with bias); heads split the
/// inner dimension as c = head * head_dim + d; softmax(q k^T / sqrt(head_dim)) v.
class Attention {
 public:
  Attention() = default;
  /// Loads prefix + "to_q/to_k/to_v/to_out.0" for query width `dim`, key/value input width `context_dim`.
  /// Precondition: dim % heads == 0.
  Attention(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t dim, std::int64_t context_dim,
            std::int64_t heads, bool qkv_bias)
      : dim_(dim),
        heads_(heads),
        to_q_(w, prefix + "to_q.", dim, dim, qkv_bias),
        to_k_(w, prefix + "to_k.", context_dim, dim, qkv_bias),
        to_v_(w, prefix + "to_v.", context_dim, dim, qkv_bias),
        to_out_(w, prefix + "to_out.0.", dim, dim, true) {}

  /// `items` consecutive batch items: item i's rows x [i * lq, (i + 1) * lq) of width dim attend to its context rows
  /// [i * lk, (i + 1) * lk) of width context_dim (pass x itself for self-attention); writes [items * lq, dim] to out
  /// (must not alias x or context). The projections run once over all items' rows, the attention per item and head:
  /// with items = 1 the result depends only on that item.
  void forward(const float* x, std::int64_t items, std::int64_t lq, const float* context, std::int64_t lk, float* out,
               bool causal = false) const {
    std::vector<float> q(static_cast<std::size_t>(items * lq * dim_)), k(static_cast<std::size_t>(items * lk * dim_)),
        v(k.size()), o(q.size());
    to_q_.forward(x, items * lq, q.data());
    to_k_.forward(context, items * lk, k.data());
    to_v_.forward(context, items * lk, v.data());
    for (std::int64_t i = 0; i < items; ++i) {
      const std::int64_t qi = i * lq * dim_, ki = i * lk * dim_;
      attention(q.data() + qi, dim_, k.data() + ki, dim_, v.data() + ki, dim_, lq, lk, heads_, dim_ / heads_, causal,
                o.data() + qi, dim_);
    }
    to_out_.forward(o.data(), items * lq, out);
  }

 private:
  std::int64_t dim_ = 0, heads_ = 1;
  Linear to_q_, to_k_, to_v_, to_out_;
};

/// diffusers' ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1):
/// h = conv1(SiLU(norm1(x))) [+ time_emb_proj(SiLU(temb))]; h = conv2(SiLU(norm2(h))); out = shortcut(x) + h,
/// shortcut = conv_shortcut (1x1) when in != out, else identity.
class ResnetBlock2D {
 public:
  ResnetBlock2D() = default;
  /// Loads norm1, conv1, [time_emb_proj when temb_channels > 0], norm2, conv2, [conv_shortcut when in != out].
  ResnetBlock2D(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t in, std::int64_t out,
                std::int64_t temb_channels, std::int64_t groups, float eps)
      : out_(out),
        norm1_(w, prefix + "norm1.", in, groups, eps),
        conv1_(w, prefix + "conv1.", in, out, 3),
        norm2_(w, prefix + "norm2.", out, groups, eps),
        conv2_(w, prefix + "conv2.", out, out, 3) {
    if (temb_channels > 0) time_emb_proj_ = Linear(w, prefix + "time_emb_proj.", temb_channels, out);
    has_temb_ = temb_channels > 0;
    if (in != out) shortcut_ = Conv2d(w, prefix + "conv_shortcut.", in, out, 1, 1, 0);
    has_shortcut_ = in != out;
  }

  /// x [B, in, H, W]; `temb_silu` [B, temb_channels] is SiLU(temb) (ignored when the block has no time projection).
  /// `mode` groups the items' rows into GEMMs (convolutions and the time projection).
  Tensor forward(const Tensor& x, const Tensor* temb_silu, BatchMode mode = BatchMode::batched) const {
    Tensor h = conv1_.forward(norm1_.forward(x, true), mode);
    if (has_temb_ && temb_silu) {
      const std::int64_t batch = h.dim(0), spatial = h.sample_numel() / out_;
      const std::int64_t group = detail::items_per_call(mode, batch, 1, batch, out_, batch * out_);
      std::vector<float> proj(static_cast<std::size_t>(batch * out_));
      for (std::int64_t b = 0; b < batch; b += group)
        time_emb_proj_.forward(temb_silu->sample(b), std::min(group, batch - b), proj.data() + b * out_);
      for (std::int64_t b = 0; b < batch; ++b) {
        float* hs = h.sample(b);
        for (std::int64_t c = 0; c < out_; ++c)
          for (std::int64_t i = 0; i < spatial; ++i)
            hs[c * spatial + i] += proj[static_cast<std::size_t>(b * out_ + c)];
      }
    }
    h = conv2_.forward(norm2_.forward(h, true), mode);
    if (has_shortcut_) {
      add_inplace(h, shortcut_.forward(x, mode));
    } else {
      add_inplace(h, x);
    }
    return h;
  }

 private:
  std::int64_t out_ = 0;
  GroupNorm norm1_;
  Conv2d conv1_;
  Linear time_emb_proj_;
  bool has_temb_ = false;
  GroupNorm norm2_;
  Conv2d conv2_;
  Conv2d shortcut_;
  bool has_shortcut_ = false;
};

}  // namespace carousel::cpu
