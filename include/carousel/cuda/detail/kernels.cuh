#pragma once
/// \file
/// The backend's own __global__ kernels (launched by ops.cuh). Element type T is float or __half; arithmetic is
/// float32; softmax sums accumulate in double as the CPU backend does, GroupNorm in float32 over short runs of values
/// shifted by a sample of their group and in double across them, LayerNorm in float32 over a row held in registers
/// (two passes), so fp32 results track the CPU backend within 1e-4.

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

// V consecutive elements as floats: one 16-byte access when V * sizeof(T) == 16 (p 16-byte aligned), else V scalar
// accesses.
template <class T, int V>
__device__ __forceinline__ void load_pack(const T* p, float (&v)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < V; ++i)
      v[i] = load(e, i);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      v[i] = load(p, i);
  }
}
template <class T, int V>
__device__ __forceinline__ void store_pack(T* p, const float (&v)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < V; ++i)
      store(e, i, v[i]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      store(p, i, v[i]);
  }
}
// V consecutive float32 values (gamma, beta): float4 accesses when V % 4 == 0 (p 16-byte aligned).
template <int V>
__device__ __forceinline__ void load_floats(const float* p, float (&v)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 f = *reinterpret_cast<const float4*>(p + i);
      v[i] = f.x;
      v[i + 1] = f.y;
      v[i + 2] = f.z;
      v[i + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      v[i] = p[i];
  }
}

// SiLU for the element type: fp16 outputs take the fast exponential and division (their rounding dwarfs the error).
template <class T>
__device__ __forceinline__ float silu_for(float v) {
  if constexpr (sizeof(T) == 2) {
    return __fdividef(v, 1.0f + __expf(-v));
  } else {
    return silu(v);
  }
}

// GroupNorm over NHWC in three kernels, so that every read is coalesced and the work spreads over the whole GPU
// whatever the batch (one block per (group, item) left a 512x512 VAE decode with 32 blocks):
//  1. group_norm_partial: block (chunk, b) reads positions [chunk * rows, (chunk + 1) * rows) of item b (all
//     channels, contiguous) and writes per-channel sums of (x - k) and (x - k)^2, float32, as
//     partial[b, chunk, c] = {sum, sum of squares}, where the shift k = x[b, position 0, first channel of c's group]
//     keeps the float32 sums free of cancellation whatever the mean;
//  2. group_norm_finalize: block (g, b) adds its group's partials in double and writes per-channel float32
//     scale_shift[b, c] = {scale, shift}: y = x * scale + shift with scale = gamma * inv, shift = beta - mean * inv *
//     gamma (biased variance);
//  3. group_norm_apply: x * scale + shift over the same blocks as 1, then SiLU when asked.
// Kernels 1 and 3 share one layout: each thread owns a pack of V consecutive channels (V = 16 bytes of T when the
// channels split into such packs and the pointers are aligned, else 1) and steps over the block's positions; a block
// of width * lanes threads covers `width` consecutive packs of `lanes` positions at a time, and loops over the packs
// of a row `width` at a time when a row has more than block_threads packs.
template <class T, int V>
__global__ void group_norm_partial(const T* __restrict__ x, float2* __restrict__ partial, std::int64_t spatial,
                                   int channels, int cpg, int width, std::int64_t rows) {
  __shared__ float s_sum[V][block_threads], s_sq[V][block_threads];
  const std::int64_t chunk = blockIdx.x, b = blockIdx.y, chunks = gridDim.x;
  const std::int64_t p0 = chunk * rows, p1 = min(spatial, p0 + rows);
  const int lanes = static_cast<int>(blockDim.x) / width;
  const int tc = static_cast<int>(threadIdx.x) % width, tr = static_cast<int>(threadIdx.x) / width;
  const T* xb = x + b * spatial * channels;
  for (int c0 = 0; c0 < channels; c0 += width * V) {
    const int c = c0 + tc * V;
    const bool active = c < channels;
    float sum[V], sq[V];
#pragma unroll
    for (int i = 0; i < V; ++i)
      sum[i] = sq[i] = 0.0f;
    if (active) {
      float k[V];
#pragma unroll
      for (int i = 0; i < V; ++i)
        k[i] = load(xb, (c + i) / cpg * cpg);
#pragma unroll 4
      for (std::int64_t p = p0 + tr; p < p1; p += lanes) {
        float v[V];
        load_pack<T, V>(xb + p * channels + c, v);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float d = v[i] - k[i];
          sum[i] += d;
          sq[i] = fmaf(d, d, sq[i]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
      s_sum[i][threadIdx.x] = sum[i];
      s_sq[i][threadIdx.x] = sq[i];
    }
    __syncthreads();
    if (tr == 0 && active) {
      for (int r = 1; r < lanes; ++r) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          sum[i] += s_sum[i][r * width + tc];
          sq[i] += s_sq[i][r * width + tc];
        }
      }
#pragma unroll
      for (int i = 0; i < V; ++i)
        partial[(b * chunks + chunk) * channels + c + i] = make_float2(sum[i], sq[i]);
    }
    __syncthreads();
  }
}

template <class T>
__global__ void group_norm_finalize(const T* __restrict__ x, const float2* __restrict__ partial,
                                    float2* __restrict__ scale_shift, std::int64_t spatial, int chunks, int channels,
                                    int cpg, float eps, const float* __restrict__ gamma,
                                    const float* __restrict__ beta) {
  const int g = static_cast<int>(blockIdx.x);
  const std::int64_t b = blockIdx.y;
  const float2* pb = partial + b * chunks * channels + g * cpg;
  double sum = 0, sq = 0;
  for (int i = static_cast<int>(threadIdx.x); i < chunks * cpg; i += static_cast<int>(blockDim.x)) {
    const float2 s = pb[static_cast<std::int64_t>(i / cpg) * channels + i % cpg];
    sum += s.x;
    sq += s.y;
  }
  sum = block_sum(sum);
  sq = block_sum(sq);
  const double count = static_cast<double>(spatial) * cpg;
  const double shifted_mean = sum / count;
  const double mean = static_cast<double>(load(x, b * spatial * channels + g * cpg)) + shifted_mean;
  const double var = fmax(sq / count - shifted_mean * shifted_mean, 0.0);
  const double inv = 1.0 / sqrt(var + eps);
  for (int j = static_cast<int>(threadIdx.x); j < cpg; j += static_cast<int>(blockDim.x)) {
    const int c = g * cpg + j;
    scale_shift[b * channels + c] =
        make_float2(static_cast<float>(inv) * gamma[c], beta[c] - static_cast<float>(mean * inv) * gamma[c]);
  }
}

template <class T, int V>
__global__ void group_norm_apply(const T* __restrict__ x, T* __restrict__ y, const float2* __restrict__ scale_shift,
                                 std::int64_t spatial, int channels, int width, std::int64_t rows, bool apply_silu) {
  // Blocks in the reverse order of group_norm_partial's, so that the first to run find the input it read last still
  // in L2.
  const std::int64_t chunk = gridDim.x - 1 - blockIdx.x, b = gridDim.y - 1 - blockIdx.y;
  const std::int64_t p0 = chunk * rows, p1 = min(spatial, p0 + rows);
  const int lanes = static_cast<int>(blockDim.x) / width;
  const int tc = static_cast<int>(threadIdx.x) % width, tr = static_cast<int>(threadIdx.x) / width;
  const T* xb = x + b * spatial * channels;
  T* yb = y + b * spatial * channels;
  for (int c = tc * V; c < channels; c += width * V) {
    float scale[V], shift[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const float2 s = scale_shift[b * channels + c + i];
      scale[i] = s.x;
      shift[i] = s.y;
    }
#pragma unroll 4
    for (std::int64_t p = p0 + tr; p < p1; p += lanes) {
      float v[V];
      load_pack<T, V>(xb + p * channels + c, v);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        v[i] = fmaf(v[i], scale[i], shift[i]);
        if (apply_silu) v[i] = silu_for<T>(v[i]);
      }
      store_pack<T, V>(yb + p * channels + c, v);
    }
  }
}

// Sum over each aligned group of `lanes` lanes of a warp (a power of two, at most 32); every lane gets its group's
// total.
__device__ __forceinline__ float lane_group_sum(float v, int lanes) {
  for (int o = lanes / 2; o > 0; o /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// LayerNorm, `lanes` lanes per row of `width` values (a warp holds 32 / lanes rows; width % V == 0, width <= lanes *
// N * V; x, y, gamma and beta 16-byte aligned when V > 1): lane l of a row holds packs l, l + lanes, ... of V values in
// registers, so x is read once. Float32 two-pass statistics over the registers: the mean, then the sums of
// d = x - mean and d^2 (the first corrects the mean's rounding: the corrected two-pass formula).
template <class T, int V, int N>
__global__ void layer_norm_rows(const T* __restrict__ x, T* __restrict__ y, std::int64_t rows, int width, int lanes,
                                float eps, const float* __restrict__ gamma, const float* __restrict__ beta) {
  const int lane = static_cast<int>(threadIdx.x) % 32, sub = lane % lanes;
  const std::int64_t row =
      (static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * (32 / lanes) + lane / lanes;
  // Lanes past the last row hold no packs but still take part in the shuffles.
  const int packs = row < rows ? width / V : 0;
  const T* xr = x + (row < rows ? row : 0) * width;
  T* yr = y + (row < rows ? row : 0) * width;
  float v[N][V];
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int k = sub + lanes * j;
    if (k < packs) {
      load_pack<T, V>(xr + k * V, v[j]);
#pragma unroll
      for (int i = 0; i < V; ++i)
        sum += v[j][i];
    }
  }
  const float n = static_cast<float>(width);
  float mean = lane_group_sum(sum, lanes) / n;
  float dsum = 0.0f, sq = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (sub + lanes * j < packs) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float d = v[j][i] - mean;
        dsum += d;
        sq = fmaf(d, d, sq);
      }
    }
  }
  const float dmean = lane_group_sum(dsum, lanes) / n;
  const float inv = 1.0f / sqrtf(fmaxf(lane_group_sum(sq, lanes) / n - dmean * dmean, 0.0f) + eps);
  mean += dmean;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int k = sub + lanes * j;
    if (k < packs) {
      float g[V], b[V];
      load_floats<V>(gamma + k * V, g);
      load_floats<V>(beta + k * V, b);
#pragma unroll
      for (int i = 0; i < V; ++i)
        v[j][i] = fmaf((v[j][i] - mean) * inv, g[i], b[i]);
      store_pack<T, V>(yr + k * V, v[j]);
    }
  }
}

// LayerNorm of rows too wide for layer_norm_rows' registers: one block per row, statistics in double.
template <class T>
__global__ void layer_norm_rows_wide(const T* x, T* y, std::int64_t width, float eps, const float* gamma,
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
