#pragma once
/// \file
/// The backend's own __global__ kernels (launched by ops.cuh). Element type T is float or __half; arithmetic is
/// float32; reductions accumulate in double where the CPU backend does, so fp32 results track it closely.

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace carousel::cuda::detail {

__device__ __forceinline__ float load(const float* p, std::int64_t i) {
  return p[i];
}
__device__ __forceinline__ float load(const __half* p, std::int64_t i) {
  return __half2float(p[i]);
}
__device__ __forceinline__ void store(float* p, std::int64_t i, float v) {
  p[i] = v;
}
__device__ __forceinline__ void store(__half* p, std::int64_t i, float v) {
  p[i] = __float2half_rn(v);
}

__device__ __forceinline__ float silu(float v) {
  return v / (1.0f + expf(-v));
}
__device__ __forceinline__ float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * 1.41421356237309504880f * 0.5f));
}
__device__ __forceinline__ float quick_gelu(float x) {
  return x / (1.0f + expf(-1.702f * x));
}

constexpr int block_threads = 256;

// Sum of one double per thread over a block of block_threads threads; every thread gets the total.
__device__ inline double block_sum(double v) {
  __shared__ double partial[block_threads / 32];
  __shared__ double total;
  for (int o = 16; o > 0; o /= 2)
    v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int w = 0; w < block_threads / 32; ++w)
      s += partial[w];
    total = s;
  }
  __syncthreads();
  return total;
}

__device__ inline float block_max(float v) {
  __shared__ float partial[block_threads / 32];
  __shared__ float total;
  for (int o = 16; o > 0; o /= 2)
    v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = partial[0];
    for (int w = 1; w < block_threads / 32; ++w)
      m = fmaxf(m, partial[w]);
    total = m;
  }
  __syncthreads();
  return total;
}

// GroupNorm over NHWC in three kernels, so that every read is coalesced and the work spreads over the whole GPU
// whatever the batch (one block per (group, item) left a 512x512 VAE decode with 32 blocks):
//  1. group_norm_partial: block (chunk, b) reads `rows` whole positions (all channels, contiguous) of item b and
//     writes per-channel partial sums and sums of squares in double: partial[b, chunk, c] = {sum, sum of squares};
//  2. group_norm_finalize: block (g, b) adds its group's partials and writes per-channel scale and shift (float32):
//     y = x * scale + shift with scale = gamma * inv, shift = beta - mean * inv * gamma (biased variance);
//  3. group_norm_apply: elementwise over the tensor, then SiLU when asked.
// Statistics in double as before (sum and sum of squares: no cancellation at these sizes).
template <class T>
__global__ void group_norm_partial(const T* x, double* partial, std::int64_t spatial, std::int64_t channels,
                                   std::int64_t rows) {
  __shared__ double s_sum[block_threads], s_sq[block_threads];
  const std::int64_t chunk = blockIdx.x, b = blockIdx.y, chunks = gridDim.x;
  const std::int64_t p0 = chunk * rows, p1 = min(spatial, p0 + rows);
  // Threads cover `width` consecutive channels of `lanes` positions at a time.
  const int width = static_cast<int>(min(channels, static_cast<std::int64_t>(blockDim.x)));
  const int lanes = static_cast<int>(blockDim.x) / width;
  const int tc = static_cast<int>(threadIdx.x) % width, tr = static_cast<int>(threadIdx.x) / width;
  const T* xb = x + b * spatial * channels;
  for (std::int64_t c0 = 0; c0 < channels; c0 += width) {
    const std::int64_t c = c0 + tc;
    double sum = 0, sq = 0;
    if (tr < lanes && c < channels) {
      for (std::int64_t p = p0 + tr; p < p1; p += lanes) {
        const double v = load(xb, p * channels + c);
        sum += v;
        sq += v * v;
      }
    }
    s_sum[threadIdx.x] = sum;
    s_sq[threadIdx.x] = sq;
    __syncthreads();
    if (tr == 0 && c < channels) {
      for (int r = 1; r < lanes; ++r) {
        sum += s_sum[r * width + tc];
        sq += s_sq[r * width + tc];
      }
      const std::int64_t o = ((b * chunks + chunk) * channels + c) * 2;
      partial[o] = sum;
      partial[o + 1] = sq;
    }
    __syncthreads();
  }
}

template <class Unused = void>
__global__ void group_norm_finalize(const double* partial, float* scale_shift, std::int64_t chunks,
                                    std::int64_t channels, std::int64_t cpg, std::int64_t count, float eps,
                                    const float* gamma, const float* beta) {
  const std::int64_t g = blockIdx.x, b = blockIdx.y;
  double sum = 0, sq = 0;
  for (std::int64_t i = threadIdx.x; i < chunks * cpg; i += blockDim.x) {
    const std::int64_t o = ((b * chunks + i / cpg) * channels + g * cpg + i % cpg) * 2;
    sum += partial[o];
    sq += partial[o + 1];
  }
  sum = block_sum(sum);
  sq = block_sum(sq);
  const double mean = sum / static_cast<double>(count);
  const double var = fmax(sq / static_cast<double>(count) - mean * mean, 0.0);
  const double inv = 1.0 / sqrt(var + eps);
  for (std::int64_t j = threadIdx.x; j < cpg; j += blockDim.x) {
    const std::int64_t c = g * cpg + j;
    scale_shift[(b * channels + c) * 2] = static_cast<float>(inv) * gamma[c];
    scale_shift[(b * channels + c) * 2 + 1] = beta[c] - static_cast<float>(mean * inv) * gamma[c];
  }
}

template <class T, class I>
__global__ void group_norm_apply(const T* x, T* y, I n, I per_item, I channels, const float* scale_shift,
                                 bool apply_silu) {
  for (I i = static_cast<I>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<I>(gridDim.x * blockDim.x)) {
    const I k = (i / per_item) * channels + i % channels;
    const float v = load(x, i) * scale_shift[2 * k] + scale_shift[2 * k + 1];
    store(y, i, apply_silu ? silu(v) : v);
  }
}

// LayerNorm: one block per row of `width` values.
template <class T>
__global__ void layer_norm_rows(const T* x, T* y, std::int64_t width, float eps, const float* gamma,
                                const float* beta) {
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * width;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x)
    sum += load(x, base + i);
  const double mean = block_sum(sum) / static_cast<double>(width);
  double sq = 0;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const double d = load(x, base + i) - mean;
    sq += d * d;
  }
  const double inv = 1.0 / sqrt(block_sum(sq) / static_cast<double>(width) + eps);
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x)
    store(y, base + i, static_cast<float>((load(x, base + i) - mean) * inv) * gamma[i] + beta[i]);
}

// Softmax of scores (S: float or __half) into T probabilities, one block per row; in place when both alias. Row r is
// query r % lq for the causal mask (keys j > query get probability 0).
template <class S, class T>
__global__ void softmax_rows(const S* scores, T* probs, std::int64_t width, std::int64_t lq, bool causal) {
  const std::int64_t r = blockIdx.x, base = r * width;
  const std::int64_t valid = causal ? min(width, r % lq + 1) : width;
  float m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < valid; j += blockDim.x)
    m = fmaxf(m, load(scores, base + j));
  m = block_max(m);
  double sum = 0;
  for (std::int64_t j = threadIdx.x; j < valid; j += blockDim.x)
    sum += expf(load(scores, base + j) - m);
  const float inv = static_cast<float>(1.0 / block_sum(sum));
  // Each thread rewrites only the elements it read, so scores and probs may be the same buffer.
  for (std::int64_t j = threadIdx.x; j < width; j += blockDim.x)
    store(probs, base + j, j < valid ? expf(load(scores, base + j) - m) * inv : 0.0f);
}

// y[r, c] = a[r, c] * gelu(g[r, c]) with [a | g] = proj[r, 0:2*inner].
template <class T, class I>
__global__ void geglu(const T* proj, T* y, I rows, I inner) {
  const I n = rows * inner;
  for (I i = static_cast<I>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<I>(gridDim.x * blockDim.x)) {
    const I r = i / inner, c = i - r * inner;
    store(y, i, load(proj, r * 2 * inner + c) * gelu_erf(load(proj, r * 2 * inner + inner + c)));
  }
}

// In-place activation: 0 = SiLU, 1 = quick GELU, 2 = GELU (erf).
template <class T>
__global__ void activation(T* x, std::int64_t n, int kind) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float v = load(x, i);
    store(x, i, kind == 0 ? silu(v) : kind == 1 ? quick_gelu(v) : gelu_erf(v));
  }
}

// y[b, p, c] += bias[c] + per_item[b, c] + residual[b, p, c] (each term optional), y viewed as [B, P, C]. Index type
// I: int where the element count allows (with_index), so that the divisions are 32-bit.
template <class T, class I>
__global__ void epilogue(T* y, I items, I positions, I channels, const T* bias, const T* per_item, const T* residual) {
  const I n = items * positions * channels, per_item_n = positions * channels;
  for (I i = static_cast<I>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<I>(gridDim.x * blockDim.x)) {
    const I c = i % channels, b = i / per_item_n;
    float v = load(y, i);
    if (bias) v += load(bias, c);
    if (per_item) v += load(per_item, b * channels + c);
    if (residual) v += load(residual, i);
    store(y, i, v);
  }
}

// Sinusoidal timestep embedding [B, 2*half] from per-item timesteps and precomputed frequencies.
template <class T>
__global__ void timestep_embedding(const float* timesteps, const float* freqs, T* y, std::int64_t batch,
                                   std::int64_t half, bool flip_sin_to_cos) {
  const std::int64_t n = batch * half;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = i / half, k = i % half;
    const float e = timesteps[b] * freqs[k];
    const float s = sinf(e), c = cosf(e);
    store(y, b * 2 * half + k, flip_sin_to_cos ? c : s);
    store(y, b * 2 * half + half + k, flip_sin_to_cos ? s : c);
  }
}

// Nearest upsampling NHWC [B, h, w, C] -> [B, oh, ow, C] with torch's source index floor(o * in/out).
template <class T, class I>
__global__ void upsample_nearest_nhwc(const T* x, T* y, I batch, I h, I w, I channels, I oh, I ow, float sy, float sx) {
  const I n = batch * oh * ow * channels;
  for (I i = static_cast<I>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<I>(gridDim.x * blockDim.x)) {
    const I pixel = i / channels, c = i - pixel * channels;
    const I row = pixel / ow, ox = pixel - row * ow;
    const I b = row / oh, oy = row - b * oh;
    const I iy = min(static_cast<I>(floorf(static_cast<float>(oy) * sy)), h - 1);
    const I ix = min(static_cast<I>(floorf(static_cast<float>(ox) * sx)), w - 1);
    y[i] = x[((b * h + iy) * w + ix) * channels + c];
  }
}

// Channel concatenation of two NHWC tensors with the same B, H, W: y[..., 0:ca] = a, y[..., ca:ca+cb] = b.
template <class T, class I>
__global__ void concat_channels_nhwc(const T* a, const T* b, T* y, I pixels, I ca, I cb) {
  const I c_all = ca + cb, n = pixels * c_all;
  for (I i = static_cast<I>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<I>(gridDim.x * blockDim.x)) {
    const I p = i / c_all, c = i - p * c_all;
    y[i] = c < ca ? a[p * ca + c] : b[p * cb + c - ca];
  }
}

// NCHW float -> NHWC T (optionally y = 2x - 1 or y = x / divisor + shift: mode 0 copy, 1 centre, 2 scale).
template <class T>
__global__ void nchw_to_nhwc(const float* x, T* y, std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                             int mode, float divisor, float shift) {
  const std::int64_t n = batch * channels * spatial;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = i % channels, p = (i / channels) % spatial, b = i / (channels * spatial);
    float v = x[(b * channels + c) * spatial + p];
    if (mode == 1) v = 2.0f * v - 1.0f;
    if (mode == 2) v = v / divisor + shift;
    store(y, i, v);
  }
}

// NHWC T -> NCHW float.
template <class T>
__global__ void nhwc_to_nchw(const T* x, float* y, std::int64_t batch, std::int64_t channels, std::int64_t spatial) {
  const std::int64_t n = batch * channels * spatial;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t p = i % spatial, c = (i / spatial) % channels, b = i / (channels * spatial);
    y[i] = load(x, (b * spatial + p) * channels + c);
  }
}

// h[b, t, :] = token_embedding[ids[b, t], :] + position_embedding[t, :].
template <class T>
__global__ void clip_embed(const std::int32_t* ids, const T* token, const T* position, T* h, std::int64_t batch,
                           std::int64_t len, std::int64_t width) {
  const std::int64_t n = batch * len * width;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = i % width, t = (i / width) % len, b = i / (width * len);
    store(h, i, load(token, static_cast<std::int64_t>(ids[b * len + t]) * width + c) + load(position, t * width + c));
  }
}

// Element conversion between float and __half (or a copy).
template <class From, class To>
__global__ void convert(const From* x, To* y, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    store(y, i, load(x, i));
}

// Calls f(int{}) when a grid-stride loop over n elements can index with int (n up to 2^30, so that i + stride, the
// stride at most grid_for's 65535 * 8 * 256 < 2^28, cannot overflow), else f(std::int64_t{}).
template <class F>
void with_index(std::int64_t n, F&& f) {
  if (n <= (std::int64_t{1} << 30)) {
    f(int{});
  } else {
    f(std::int64_t{});
  }
}

// A grid for a grid-stride loop over n elements.
inline unsigned grid_for(std::int64_t n) {
  const std::int64_t blocks = (n + block_threads - 1) / block_threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace carousel::cuda::detail
