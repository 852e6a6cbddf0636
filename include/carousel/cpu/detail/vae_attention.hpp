#pragma once
// The attention of the VAE decoder's mid block (diffusers' Attention with group_norm and a residual connection).

#include <cstdint>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu::detail {

// The VAE mid block's attention: GroupNorm(eps 1e-6) -> single-head attention over H*W tokens -> + x.
class VaeAttention {
 public:
  VaeAttention(checkpoint::WeightSource& w, const std::string& p, std::int64_t channels, std::int64_t groups)
      : channels_(channels),
        norm_(w, p + "group_norm.", channels, groups, 1e-6f),
        attn_(w, p, channels, channels, 1, true) {}

  Tensor forward(const Tensor& x) const {
    const Tensor normed = norm_.forward(x);
    Tensor y(x.shape());
    const std::int64_t spatial = x.sample_numel() / channels_;
    std::vector<float> tokens(static_cast<std::size_t>(spatial * channels_)), out(tokens.size());
    for (std::int64_t b = 0; b < x.dim(0); ++b) {
      const float* src = normed.sample(b);
      for (std::int64_t c = 0; c < channels_; ++c)
        for (std::int64_t i = 0; i < spatial; ++i)
          tokens[i * channels_ + c] = src[c * spatial + i];
      attn_.forward(tokens.data(), 1, spatial, tokens.data(), spatial, out.data());
      const float* xs = x.sample(b);
      float* ys = y.sample(b);
      for (std::int64_t c = 0; c < channels_; ++c)
        for (std::int64_t i = 0; i < spatial; ++i)
          ys[c * spatial + i] = out[i * channels_ + c] + xs[c * spatial + i];
    }
    return y;
  }

 private:
  std::int64_t channels_;
  GroupNorm norm_;
  Attention attn_;
};

}  // namespace carousel::cpu::detail
