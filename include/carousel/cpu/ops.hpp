#pragma once
/// \file
/// The CPU backend's operators on float32 tensors: GEMM-based linear layers and convolutions, normalisations,
/// activations, attention, resampling and the sinusoidal timestep embedding.
///
/// Every operator treats dimension 0 as the batch. Except conv2d in BatchMode::batched, each processes batch items with
/// an evaluation order that depends only on the item's own shape: an item's result is bitwise the same whatever batch
/// it is part of (linear_rows is as invariant as the rows its caller passes together).
/// Operators are thread-safe on distinct outputs; they use OpenBLAS threads and the backend's thread pool inside.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/detail/blas.hpp>
#include <carousel/cpu/detail/im2col.hpp>
#include <carousel/cpu/detail/moments.hpp>
#include <carousel/cpu/detail/parallel.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu {

/// y[rows, out] = x[rows, in] * w[out, in]^T (+ bias[out] when bias is not null). Rows are contiguous.
inline void linear_rows(const float* x, std::int64_t rows, std::int64_t in, const float* w, const float* bias,
                        std::int64_t out, float* y) {
  if (bias) {
    for (std::int64_t r = 0; r < rows; ++r)
      std::memcpy(y + r * out, bias, static_cast<std::size_t>(out) * 4);
  }
  detail::sgemm(false, true, rows, out, in, 1.0f, x, in, w, in, bias ? 1.0f : 0.0f, y, out);
}

/// 2-D convolution of x [B, Cin, H, W] by w [Cout, Cin, k, k] (+ bias [Cout] when not null), square stride and
/// zero padding: output [B, Cout, (H + 2p - k)/s + 1, (W + 2p - k)/s + 1], by im2col + sgemm (a 1x1, stride 1,
/// unpadded convolution multiplies the input directly).
///
/// `mode` batch_invariant: one sgemm per item (per band of output rows); im2col runs over bands of output rows so
/// that its buffer holds at most about `max_col_floats` values (at least one output row).
/// `mode` batched: the im2col columns of several items side by side, so that one sgemm covers whole items and about
/// 1024 output pixels (small feature maps, where a per-item GEMM is narrow and re-reads the weights for every item),
/// within `max_col_floats` of scratch (im2col plus the product before it is scattered to NCHW); when that is one item
/// it runs as batch_invariant.
/// \throws std::invalid_argument when x is not 4-D or has a channel count other than cin.
inline Tensor conv2d(const Tensor& x, const float* w, const float* bias, std::int64_t cin, std::int64_t cout,
                     std::int64_t k, std::int64_t stride, std::int64_t pad, BatchMode mode = BatchMode::batched,
                     std::int64_t max_col_floats = std::int64_t{8} << 20) {
  if (x.rank() != 4 || x.dim(1) != cin)
    throw std::invalid_argument("carousel::cpu::conv2d: input " + shape_string(x.shape()) + " does not have " +
                                std::to_string(cin) + " channels");
  const std::int64_t batch = x.dim(0), h = x.dim(2), wd = x.dim(3);
  const std::int64_t ho = (h + 2 * pad - k) / stride + 1, wo = (wd + 2 * pad - k) / stride + 1;
  Tensor y({batch, cout, ho, wo});
  const std::int64_t hw_out = ho * wo, kk = cin * k * k;
  const detail::ConvGeometry geometry{cin, h, wd, k, stride, pad, wo};
  const float beta = bias ? 1.0f : 0.0f;
  // Fills rows [0, cout) of c (row stride ld, `n` columns) with the bias.
  auto fill_bias = [&](float* c, std::int64_t n, std::int64_t ld) {
    if (!bias) return;
    detail::parallel_for(cout, detail::grain_for(n), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch)
        std::fill(c + ch * ld, c + ch * ld + n, bias[ch]);
    });
  };
  const std::int64_t group =
      detail::items_per_call(mode, batch, hw_out, detail::batched_gemm_extent, (kk + cout) * hw_out, max_col_floats);
  if (group > 1) {
    std::vector<float> col(static_cast<std::size_t>(kk * group * hw_out)),
        prod(static_cast<std::size_t>(cout * group * hw_out));
    for (std::int64_t b0 = 0; b0 < batch; b0 += group) {
      const std::int64_t items = std::min(group, batch - b0), n = items * hw_out;
      for (std::int64_t i = 0; i < items; ++i)
        detail::im2col(x.sample(b0 + i), geometry, 0, ho, col.data() + i * hw_out, n);
      fill_bias(prod.data(), n, n);
      detail::sgemm(false, false, cout, n, kk, 1.0f, w, kk, col.data(), n, beta, prod.data(), n);
      detail::parallel_for(items * cout, detail::grain_for(hw_out), [&](std::int64_t p0, std::int64_t p1) {
        for (std::int64_t p = p0; p < p1; ++p) {
          const std::int64_t i = p / cout, ch = p % cout;
          const float* src = prod.data() + ch * n + i * hw_out;
          std::copy(src, src + hw_out, y.sample(b0 + i) + ch * hw_out);
        }
      });
    }
    return y;
  }
  const bool direct = k == 1 && stride == 1 && pad == 0;
  const std::int64_t band =
      direct ? ho : std::clamp<std::int64_t>(max_col_floats / std::max<std::int64_t>(kk * wo, 1), 1, ho);
  std::vector<float> col(direct ? 0 : static_cast<std::size_t>(kk * band * wo));
  for (std::int64_t b = 0; b < batch; ++b) {
    const float* xs = x.sample(b);
    float* ys = y.sample(b);
    fill_bias(ys, hw_out, hw_out);
    if (direct) {
      detail::sgemm(false, false, cout, hw_out, cin, 1.0f, w, cin, xs, h * wd, beta, ys, hw_out);
      continue;
    }
    for (std::int64_t oy0 = 0; oy0 < ho; oy0 += band) {
      const std::int64_t rows = std::min(band, ho - oy0), n = rows * wo;
      detail::im2col(xs, geometry, oy0, rows, col.data(), n);
      detail::sgemm(false, false, cout, n, kk, 1.0f, w, kk, col.data(), n, beta, ys + oy0 * wo, hw_out);
    }
  }
  return y;
}

/// SiLU x * sigmoid(x), in place.
inline void silu_inplace(std::span<float> x) {
  detail::parallel_for(static_cast<std::int64_t>(x.size()), 1 << 14, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i)
      x[i] = x[i] / (1.0f + std::exp(-x[i]));
  });
}

/// Exact GELU 0.5 * x * (1 + erf(x / sqrt 2)) (torch's default approximate="none").
inline float gelu(float x) {
  return 0.5f * x * (1.0f + std::erf(x * std::numbers::sqrt2_v<float> * 0.5f));
}

/// QuickGELU x * sigmoid(1.702 x) (CLIP's "quick_gelu").
inline float quick_gelu(float x) {
  return x / (1.0f + std::exp(-1.702f * x));
}

/// Group normalisation of x [B, C, ...] over `groups` groups of C/groups channels (biased variance, eps inside the
/// square root), then a per-channel affine transform gamma, beta [C], then SiLU when `silu`.
/// Statistics accumulate in double. \throws std::invalid_argument when C is not a multiple of groups.
inline Tensor group_norm(const Tensor& x, std::int64_t groups, float eps, const float* gamma, const float* beta,
                         bool silu = false) {
  const std::int64_t batch = x.dim(0), channels = x.dim(1);
  if (groups <= 0 || channels % groups != 0)
    throw std::invalid_argument("carousel::cpu::group_norm: " + std::to_string(channels) +
                                " channels do not split into " + std::to_string(groups) + " groups");
  const std::int64_t spatial = x.sample_numel() / channels, per_group = channels / groups;
  Tensor y(x.shape());
  detail::parallel_for(
      batch * groups, detail::grain_for(2 * per_group * spatial), [&](std::int64_t g0, std::int64_t g1) {
        for (std::int64_t bg = g0; bg < g1; ++bg) {
          const std::int64_t b = bg / groups, g = bg % groups;
          const std::int64_t base = b * x.sample_numel() + g * per_group * spatial, count = per_group * spatial;
          const float* src = x.data() + base;
          const auto [mean, inv] = detail::mean_inv_std(src, count, eps);
          float* dst = y.data() + base;
          for (std::int64_t c = 0; c < per_group; ++c) {
            const std::int64_t ch = g * per_group + c;
            const float scale = static_cast<float>(inv) * gamma[ch];
            const float shift = beta[ch] - static_cast<float>(mean * inv) * gamma[ch];
            for (std::int64_t i = c * spatial; i < (c + 1) * spatial; ++i) {
              const float v = src[i] * scale + shift;
              dst[i] = silu ? v / (1.0f + std::exp(-v)) : v;
            }
          }
        }
      });
  return y;
}

/// Layer normalisation of each of `rows` contiguous rows of `width` values (biased variance), affine gamma, beta.
inline void layer_norm_rows(const float* x, std::int64_t rows, std::int64_t width, const float* gamma,
                            const float* beta, float eps, float* y) {
  detail::parallel_for(rows, detail::grain_for(2 * width), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* src = x + r * width;
      float* dst = y + r * width;
      const auto [mean, inv] = detail::mean_inv_std(src, width, eps);
      for (std::int64_t i = 0; i < width; ++i)
        dst[i] = static_cast<float>((src[i] - mean) * inv) * gamma[i] + beta[i];
    }
  });
}

/// Softmax of each of `rows` rows of `width` values with row stride `ld`, in place (max-subtracted).
/// With `causal`, entries j > row_offset + r are masked out (probability 0).
inline void softmax_rows(float* x, std::int64_t rows, std::int64_t width, std::int64_t ld, bool causal = false,
                         std::int64_t row_offset = 0) {
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    const std::int64_t valid = causal ? std::min(width, row_offset + r + 1) : width;
    float max_v = row[0];
    for (std::int64_t j = 1; j < valid; ++j)
      max_v = std::max(max_v, row[j]);
    double sum = 0.0;
    for (std::int64_t j = 0; j < valid; ++j) {
      row[j] = std::exp(row[j] - max_v);
      sum += row[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (std::int64_t j = 0; j < valid; ++j)
      row[j] *= inv;
    for (std::int64_t j = valid; j < width; ++j)
      row[j] = 0.0f;
  }
}

/// Multi-head scaled dot-product attention for one batch item: q [lq, heads*d] (row stride ldq), k and v [lk, heads*d]
/// (strides ldk, ldv) -> out [lq, heads*d] (stride ldo); head h uses columns h*d .. h*d+d-1;
/// out_h = softmax(q_h k_h^T / sqrt(d)) v_h, with a causal mask (query i sees keys j <= i) when `causal`.
/// Queries are processed in bands so that the score buffer holds at most about `max_score_floats` values.
inline void attention(const float* q, std::int64_t ldq, const float* k, std::int64_t ldk, const float* v,
                      std::int64_t ldv, std::int64_t lq, std::int64_t lk, std::int64_t heads, std::int64_t head_dim,
                      bool causal, float* out, std::int64_t ldo,
                      std::int64_t max_score_floats = std::int64_t{4} << 20) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const std::int64_t band = std::clamp<std::int64_t>(max_score_floats / std::max<std::int64_t>(lk, 1), 1, lq);
  std::vector<float> scores(static_cast<std::size_t>(band * lk));
  for (std::int64_t h = 0; h < heads; ++h) {
    for (std::int64_t q0 = 0; q0 < lq; q0 += band) {
      const std::int64_t rows = std::min(band, lq - q0);
      detail::sgemm(false, true, rows, lk, head_dim, scale, q + q0 * ldq + h * head_dim, ldq, k + h * head_dim, ldk,
                    0.0f, scores.data(), lk);
      detail::parallel_for(rows, detail::grain_for(4 * lk), [&](std::int64_t r0, std::int64_t r1) {
        softmax_rows(scores.data() + r0 * lk, r1 - r0, lk, lk, causal, q0 + r0);
      });
      detail::sgemm(false, false, rows, head_dim, lk, 1.0f, scores.data(), lk, v + h * head_dim, ldv, 0.0f,
                    out + q0 * ldo + h * head_dim, ldo);
    }
  }
}

/// Nearest-neighbour resize of x [B, C, H, W] to [B, C, out_h, out_w] with torch's "nearest" rule
/// src = min(floor(dst * (in / out)), in - 1); out = 2 * in is the exact x2 upsample.
inline Tensor upsample_nearest(const Tensor& x, std::int64_t out_h, std::int64_t out_w) {
  const std::int64_t batch = x.dim(0), channels = x.dim(1), h = x.dim(2), w = x.dim(3);
  Tensor y({batch, channels, out_h, out_w});
  const float sy = static_cast<float>(h) / static_cast<float>(out_h);
  const float sx = static_cast<float>(w) / static_cast<float>(out_w);
  std::vector<std::int64_t> src_x(static_cast<std::size_t>(out_w));
  for (std::int64_t ox = 0; ox < out_w; ++ox)
    src_x[ox] = std::min(static_cast<std::int64_t>(std::floor(static_cast<float>(ox) * sx)), w - 1);
  detail::parallel_for(batch * channels, detail::grain_for(out_h * out_w), [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p) {
      const float* src = x.data() + p * h * w;
      float* dst = y.data() + p * out_h * out_w;
      for (std::int64_t oy = 0; oy < out_h; ++oy) {
        const std::int64_t iy = std::min(static_cast<std::int64_t>(std::floor(static_cast<float>(oy) * sy)), h - 1);
        for (std::int64_t ox = 0; ox < out_w; ++ox)
          dst[oy * out_w + ox] = src[iy * w + src_x[ox]];
      }
    }
  });
  return y;
}

/// Concatenation of a [B, Ca, ...] and b [B, Cb, ...] along dimension 1 -> [B, Ca + Cb, ...].
/// \throws std::invalid_argument when the batch or trailing dimensions differ.
inline Tensor concat_channels(const Tensor& a, const Tensor& b) {
  if (a.rank() != b.rank() || a.rank() < 2 || a.dim(0) != b.dim(0) ||
      !std::equal(a.shape().begin() + 2, a.shape().end(), b.shape().begin() + 2))
    throw std::invalid_argument("carousel::cpu::concat_channels: shapes " + shape_string(a.shape()) + " and " +
                                shape_string(b.shape()) + " do not concatenate along channels");
  Shape shape = a.shape();
  shape[1] += b.dim(1);
  Tensor y(shape);
  const std::int64_t na = a.sample_numel(), nb = b.sample_numel();
  for (std::int64_t i = 0; i < a.dim(0); ++i) {
    std::copy(a.sample(i), a.sample(i) + na, y.sample(i));
    std::copy(b.sample(i), b.sample(i) + nb, y.sample(i) + na);
  }
  return y;
}

/// a += b element-wise. \throws std::invalid_argument when the shapes differ.
inline void add_inplace(Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw std::invalid_argument("carousel::cpu::add_inplace: shapes " + shape_string(a.shape()) + " and " +
                                shape_string(b.shape()) + " differ");
  float* pa = a.data();
  const float* pb = b.data();
  detail::parallel_for(a.numel(), 1 << 15, [&](std::int64_t s, std::int64_t e) {
    for (std::int64_t i = s; i < e; ++i)
      pa[i] += pb[i];
  });
}

/// diffusers' get_timestep_embedding for per-sample timesteps: [B, dim] with half = dim/2,
/// f_i = exp(-ln(10000) * i / (half - freq_shift)), e = t * f, rows [sin e, cos e] or, with flip_sin_to_cos,
/// [cos e, sin e]; an odd dim gets a zero last column. Computed in float32 like torch.
inline Tensor timestep_embedding(std::span<const float> timesteps, std::int64_t dim, bool flip_sin_to_cos,
                                 float freq_shift) {
  const std::int64_t half = dim / 2, batch = static_cast<std::int64_t>(timesteps.size());
  Tensor y({batch, dim});
  std::vector<float> freqs(static_cast<std::size_t>(half));
  const float log_period = static_cast<float>(std::log(10000.0));
  for (std::int64_t i = 0; i < half; ++i)
    freqs[i] = std::exp(-log_period * static_cast<float>(i) / (static_cast<float>(half) - freq_shift));
  for (std::int64_t b = 0; b < batch; ++b) {
    float* row = y.sample(b);
    for (std::int64_t i = 0; i < half; ++i) {
      const float e = timesteps[b] * freqs[i];
      const float s = std::sin(e), c = std::cos(e);
      row[i] = flip_sin_to_cos ? c : s;
      row[half + i] = flip_sin_to_cos ? s : c;
    }
  }
  return y;
}

}  // namespace carousel::cpu
