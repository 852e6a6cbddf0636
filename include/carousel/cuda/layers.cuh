#pragma once
/// \file
/// Parameterised layers of the CUDA backend: Linear, Conv2d, GroupNorm, LayerNorm, Attention (fused QKV / KV
/// projections) and ResnetBlock2D. Each is built by walking a checkpoint::WeightSource under a name prefix that mirrors
/// the checkpoint key schema, exactly as the CPU backend's layers are, and uploads its parameters once (matrices in the
/// model's DType, norm scales and shifts in float32). Forward calls are const and take the Engine to run on; images
/// are NHWC.

#include <cstdint>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda {

/// torch.nn.Linear over the last dimension (also 1x1 convolutions on NHWC images).
class Linear {
 public:
  Linear() = default;
  /// Loads prefix + "weight" [out, in] (or [out, in, 1, 1] when `conv1x1`) and, when `bias`, prefix + "bias".
  Linear(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t in, std::int64_t out, DType dtype,
         bool bias = true, bool conv1x1 = false) {
    const auto values = conv1x1 ? w.take(prefix + "weight", {out, in, 1, 1}) : w.take(prefix + "weight", {out, in});
    weight_ = upload_weight(values, {out, in}, dtype);
    if (bias) bias_ = upload_weight(w.take(prefix + "bias", {out}), {out}, dtype);
    has_bias_ = bias;
  }
  /// A Linear from given values (weight [out, in] row-major, bias [out] or empty).
  Linear(const std::vector<float>& weight, const std::vector<float>& bias, std::int64_t in, std::int64_t out,
         DType dtype)
      : weight_(upload_weight(weight, {out, in}, dtype)), has_bias_(!bias.empty()) {
    if (has_bias_) bias_ = upload_weight(bias, {out}, dtype);
  }
  /// y = x W^T + b (+ residual, shaped like y).
  DeviceTensor forward(Engine& e, const DeviceTensor& x, const DeviceTensor* residual = nullptr) const {
    return linear(e, x, weight_, has_bias_ ? &bias_ : nullptr, residual);
  }
  /// The weight [out, in].
  const DeviceTensor& weight() const noexcept { return weight_; }

 private:
  DeviceTensor weight_, bias_;
  bool has_bias_ = false;
};

/// torch.nn.Conv2d (square kernel, zero padding, bias) on NHWC images; 1x1 stride-1 convolutions run as GEMMs.
class Conv2d {
 public:
  Conv2d() = default;
  /// Loads prefix + "weight" [out, in, k, k] (stored on the device as [out, k, k, in]) and prefix + "bias".
  Conv2d(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t in, std::int64_t out, std::int64_t kernel,
         DType dtype, std::int64_t stride = 1, std::int64_t pad = -1)
      : kernel_(kernel), stride_(stride), pad_(pad < 0 ? kernel / 2 : pad) {
    const auto oihw = w.take(prefix + "weight", {out, in, kernel, kernel});
    std::vector<float> ohwi(oihw.size());
    for (std::int64_t o = 0; o < out; ++o)
      for (std::int64_t i = 0; i < in; ++i)
        for (std::int64_t y = 0; y < kernel; ++y)
          for (std::int64_t x = 0; x < kernel; ++x)
            ohwi[static_cast<std::size_t>(((o * kernel + y) * kernel + x) * in + i)] =
                oihw[static_cast<std::size_t>(((o * in + i) * kernel + y) * kernel + x)];
    gemm_ = kernel == 1 && stride == 1 && pad_ == 0;
    weight_ = gemm_ ? upload_weight(ohwi, {out, in}, dtype) : upload_weight(ohwi, {out, kernel, kernel, in}, dtype);
    bias_ = upload_weight(w.take(prefix + "bias", {out}), {out}, dtype);
  }
  /// x [B, H, W, in] -> [B, H', W', out]; adds `per_item` [B, out] (a time embedding) and `residual` when given.
  DeviceTensor forward(Engine& e, const DeviceTensor& x, const DeviceTensor* per_item = nullptr,
                       const DeviceTensor* residual = nullptr) const {
    DeviceTensor y = gemm_ ? gemm_forward(e, x) : conv2d_nhwc(e, x, weight_, stride_, pad_);
    add_epilogue(e, y, &bias_, per_item, residual);
    return y;
  }

 private:
  // A 1x1 stride-1 convolution as a GEMM over the pixels; a convolution still in the engine's profile (OpKind::conv),
  // as PyTorch's cuDNN kernel for it is in torch_unet.py's.
  DeviceTensor gemm_forward(Engine& e, const DeviceTensor& x) const {
    detail::OpScope scope(e, OpKind::conv);
    return linear(e, x, weight_, nullptr);
  }

  std::int64_t kernel_ = 1, stride_ = 1, pad_ = 0;
  bool gemm_ = false;
  DeviceTensor weight_, bias_;
};

/// torch.nn.GroupNorm (affine) on NHWC images, optionally followed by SiLU.
class GroupNorm {
 public:
  GroupNorm() = default;
  /// Loads prefix + "weight" and prefix + "bias" [channels] (kept in float32).
  GroupNorm(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t channels, std::int64_t groups,
            float eps)
      : groups_(groups),
        eps_(eps),
        gamma_(upload_weight(w.take(prefix + "weight", {channels}), {channels}, DType::f32)),
        beta_(upload_weight(w.take(prefix + "bias", {channels}), {channels}, DType::f32)) {}
  /// Normalises x [B, H, W, C]; SiLU afterwards when `silu`.
  DeviceTensor forward(Engine& e, const DeviceTensor& x, bool silu = false) const {
    return group_norm(e, x, groups_, eps_, gamma_, beta_, silu);
  }

 private:
  std::int64_t groups_ = 1;
  float eps_ = 1e-5f;
  DeviceTensor gamma_, beta_;
};

/// torch.nn.LayerNorm over the last dimension (affine, float32 parameters).
class LayerNorm {
 public:
  LayerNorm() = default;
  /// Loads prefix + "weight" and prefix + "bias" [width].
  LayerNorm(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t width, float eps)
      : eps_(eps),
        gamma_(upload_weight(w.take(prefix + "weight", {width}), {width}, DType::f32)),
        beta_(upload_weight(w.take(prefix + "bias", {width}), {width}, DType::f32)) {}
  /// Normalises every row of x.
  DeviceTensor forward(Engine& e, const DeviceTensor& x) const { return layer_norm(e, x, gamma_, beta_, eps_); }

 private:
  float eps_ = 1e-5f;
  DeviceTensor gamma_, beta_;
};

namespace detail {

// Rows of several [out_i, in] matrices (and their biases) stacked into one, for fused projections.
inline std::vector<float> stack(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> all;
  for (const auto* p : parts)
    all.insert(all.end(), p->begin(), p->end());
  return all;
}

}  // namespace detail

/// Parameter names of an attention layer's projections under its prefix.
struct AttentionNames {
  std::string q = "to_q", k = "to_k", v = "to_v", out = "to_out.0";  ///< diffusers' names
  /// transformers' CLIP names: q_proj, k_proj, v_proj, out_proj.
  static AttentionNames clip() { return {"q_proj", "k_proj", "v_proj", "out_proj"}; }
};

/// diffusers' Attention: to_q, to_k, to_v (bias optional), to_out.0 (bias); heads split the width as
/// c = head * head_dim + d. Self-attention runs one fused QKV GEMM, cross-attention a Q GEMM and a fused KV GEMM.
class Attention {
 public:
  Attention() = default;
  /// Loads prefix + "to_q/to_k/to_v/to_out.0" for query width `dim` and key/value input width `context_dim`
  /// (`self_attention`: context is the input itself, context_dim == dim).
  Attention(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t dim, std::int64_t context_dim,
            std::int64_t heads, bool qkv_bias, bool self_attention, DType dtype, const AttentionNames& names = {})
      : dim_(dim), heads_(heads), self_(self_attention), dtype_(dtype) {
    auto weight = [&](const std::string& name, std::int64_t in) {
      return w.take(prefix + name + ".weight", {dim, in});
    };
    auto bias = [&](const std::string& name) {
      return qkv_bias ? w.take(prefix + name + ".bias", {dim}) : std::vector<float>();
    };
    const auto wq = weight(names.q, dim), bq = bias(names.q);
    const auto wk = weight(names.k, context_dim), bk = bias(names.k);
    const auto wv = weight(names.v, context_dim), bv = bias(names.v);
    if (self_) {
      qkv_ = Linear(detail::stack({&wq, &wk, &wv}), detail::stack({&bq, &bk, &bv}), dim, 3 * dim, dtype);
    } else {
      q_ = Linear(wq, bq, dim, dim, dtype);
      kv_ = Linear(detail::stack({&wk, &wv}), detail::stack({&bk, &bv}), context_dim, 2 * dim, dtype);
    }
    out_ = Linear(w, prefix + names.out + ".", dim, dim, dtype);
  }

  /// x [B, ..., dim] (tokens = all but the first and last extents) attends to itself (self-attention; `context`
  /// ignored) or to context [B, lk, context_dim]; returns to_out(...) (+ residual, shaped like x).
  DeviceTensor forward(Engine& e, const DeviceTensor& x, const DeviceTensor* context, bool causal = false,
                       const DeviceTensor* residual = nullptr) const {
    const std::int64_t batch = x.dim(0), lq = x.numel() / (batch * dim_), head_dim = dim_ / heads_;
    DeviceTensor o = e.empty(x.shape(), dtype_);
    if (self_) {
      const DeviceTensor qkv = qkv_.forward(e, x);
      const std::size_t es = dtype_size(dtype_);
      const auto* base = static_cast<const unsigned char*>(qkv.data());
      attention(e, dtype_, base, 3 * dim_, base + dim_ * es, 3 * dim_, base + 2 * dim_ * es, 3 * dim_, batch, lq, lq,
                heads_, head_dim, causal, o.data(), dim_);
    } else {
      const DeviceTensor q = q_.forward(e, x);
      const DeviceTensor kv = kv_.forward(e, *context);
      const std::int64_t lk = context->dim(1);
      const auto* base = static_cast<const unsigned char*>(kv.data());
      attention(e, dtype_, q.data(), dim_, base, 2 * dim_, base + dim_ * dtype_size(dtype_), 2 * dim_, batch, lq, lk,
                heads_, head_dim, causal, o.data(), dim_);
    }
    return out_.forward(e, o, residual);
  }

 private:
  std::int64_t dim_ = 0, heads_ = 1;
  bool self_ = true;
  DType dtype_ = DType::f32;
  Linear qkv_, q_, kv_, out_;
};

/// diffusers' ResnetBlock2D (default time embedding norm, output scale 1):
/// h = conv1(SiLU(norm1(x))) [+ time_emb_proj(SiLU(temb))]; out = shortcut(x) + conv2(SiLU(norm2(h))).
class ResnetBlock2D {
 public:
  ResnetBlock2D() = default;
  /// Loads norm1, conv1, [time_emb_proj when temb_channels > 0], norm2, conv2, [conv_shortcut when in != out].
  ResnetBlock2D(checkpoint::WeightSource& w, const std::string& prefix, std::int64_t in, std::int64_t out,
                std::int64_t temb_channels, std::int64_t groups, float eps, DType dtype)
      : norm1_(w, prefix + "norm1.", in, groups, eps),
        conv1_(w, prefix + "conv1.", in, out, 3, dtype),
        norm2_(w, prefix + "norm2.", out, groups, eps),
        conv2_(w, prefix + "conv2.", out, out, 3, dtype) {
    if (temb_channels > 0) time_emb_proj_ = Linear(w, prefix + "time_emb_proj.", temb_channels, out, dtype);
    has_temb_ = temb_channels > 0;
    if (in != out) shortcut_ = Conv2d(w, prefix + "conv_shortcut.", in, out, 1, dtype, 1, 0);
    has_shortcut_ = in != out;
  }

  /// x [B, H, W, in]; `temb_silu` [B, temb_channels] is SiLU(temb) (null, or ignored without a time projection).
  DeviceTensor forward(Engine& e, const DeviceTensor& x, const DeviceTensor* temb_silu) const {
    DeviceTensor proj;
    const bool temb = has_temb_ && temb_silu;
    if (temb) proj = time_emb_proj_.forward(e, *temb_silu);
    const DeviceTensor h = conv1_.forward(e, norm1_.forward(e, x, true), temb ? &proj : nullptr);
    if (has_shortcut_) {
      const DeviceTensor shortcut = shortcut_.forward(e, x);
      return conv2_.forward(e, norm2_.forward(e, h, true), nullptr, &shortcut);
    }
    return conv2_.forward(e, norm2_.forward(e, h, true), nullptr, &x);
  }

 private:
  GroupNorm norm1_;
  Conv2d conv1_;
  Linear time_emb_proj_;
  bool has_temb_ = false;
  GroupNorm norm2_;
  Conv2d conv2_;
  Conv2d shortcut_;
  bool has_shortcut_ = false;
};

}  // namespace carousel::cuda
