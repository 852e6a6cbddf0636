#pragma once
/// \file
/// A fused (flash) attention kernel for fp16 in the FlashAttention-2 manner, on `mma.sync.m16n8k16` (fp16 inputs, fp32
/// accumulation) with register-resident scores: softmax(Q K^T * scale) V without materialising the score matrix.
/// One block of 4 warps handles 64 * MT queries of one (batch item, head): each warp MT tiles of 16 query rows
/// (MT = 2 up to head dim 64, 1 above, where the accumulators would not fit the registers), so that every K and V
/// fragment read from shared memory feeds MT products. Keys stream through shared memory in tiles of 64, two stages
/// deep: `cp.async` copies the next tile while the warps compute on this one (when rows are 16-byte aligned; plain
/// loads otherwise). A warp keeps its Q fragments, its 16x64 score tiles and its 16xDP output accumulators in
/// registers: the score tile's accumulator layout is the A-operand layout of the P V product, so P never goes through
/// shared memory. K comes in through `ldmatrix`, V through `ldmatrix.trans`. Online softmax in float32 per query row
/// (its 4 threads reduce with shuffles) in base 2, P rounded to fp16 for the product as flash attention does; keys
/// past the end are masked in the last tile only. Head dims up to 160, zero-padded to DP (a multiple of 16).
/// Non-causal only. Needs sm_80 or later (`ldmatrix`, `mma.m16n8k16`, `cp.async`).

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace carousel::cuda::detail {

constexpr int mma_flash_keys = 64;  // keys per tile

// Query tiles of 16 rows per warp at a padded head dim DP, and the queries one block handles (4 warps).
template <int DP>
constexpr int mma_flash_m_tiles = DP <= 64 ? 2 : 1;
template <int DP>
constexpr int mma_flash_rows = 64 * mma_flash_m_tiles<DP>;

// Dynamic shared memory of flash_attention_mma<DP>: two stages of a K and a V tile of 64 rows (Q, at most 128 rows,
// passes through the second stage before the loop), rows padded by 8 halves (16 bytes apart at every DP used, so
// that ldmatrix's eight row reads fall in different banks).
constexpr std::size_t mma_flash_smem_bytes(int dp) {
  return static_cast<std::size_t>(4 * 64 * (dp + 8) * 2);
}

// Four 8x8 b16 matrices from shared memory, lanes 8j .. 8j + 7 naming the rows of matrix j; transposed when `Trans`.
template <bool Trans>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const __half* p) {
#if __CUDA_ARCH__ >= 800
  const auto a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (Trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  }
#else
  __trap();  // never launched below sm_80: ops.cuh picks another kernel there
#endif
}

// d += a (16x16, row major) * b (16x8, column major); fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched below sm_80: ops.cuh picks another kernel there
#endif
}

// 16 bytes from global to shared memory without passing through registers; zeros instead when `fill` is false (the
// source is then not read, but must still be a valid address).
__device__ __forceinline__ void cp_async_16(__half* dst, const __half* src, bool fill) {
#if __CUDA_ARCH__ >= 800
  const auto d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(fill ? 16 : 0));
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// 2^x (MUFU.EX2; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Copies ROWS x head_dim halves from global memory (row stride ld) into a ROWS x DP shared tile (row stride DP + 8),
// zero-filling the rows from `valid` on and the columns from head_dim on. `vec`: asynchronous 16-byte copies
// (head_dim and ld multiples of 8, src 16-byte aligned), to be committed and waited for by the caller; otherwise
// plain element loads, complete on return.
template <int DP, int ROWS>
__device__ __forceinline__ void mma_flash_load_tile(__half* dst, const __half* src, std::int64_t ld, std::int64_t valid,
                                                    int head_dim, bool vec) {
  constexpr int lds = DP + 8;
  if (vec) {
    constexpr int chunks = DP / 8;
    for (int i = static_cast<int>(threadIdx.x); i < ROWS * chunks; i += static_cast<int>(blockDim.x)) {
      const int r = i / chunks, c = (i % chunks) * 8;
      const bool in = r < valid && c < head_dim;
      cp_async_16(dst + r * lds + c, in ? src + r * ld + c : src, in);
    }
  } else {
    const __half zero = __float2half(0.0f);
    for (int i = static_cast<int>(threadIdx.x); i < ROWS * DP; i += static_cast<int>(blockDim.x)) {
      const int r = i / DP, c = i % DP;
      dst[r * lds + c] = (r < valid && c < head_dim) ? src[r * ld + c] : zero;
    }
  }
}

template <int DP>
__global__ void __launch_bounds__(128)
    flash_attention_mma(const __half* q, std::int64_t ldq, const __half* k, std::int64_t ldk, const __half* v,
                        std::int64_t ldv, __half* out, std::int64_t ldo, std::int64_t lq, std::int64_t lk, int head_dim,
                        float scale, bool vec) {
  static_assert(DP % 16 == 0 && DP <= 160, "DP: a multiple of 16, at most 160");
  constexpr int MT = mma_flash_m_tiles<DP>, lds = DP + 8, tile = 64 * lds;
  extern __shared__ __align__(128) unsigned char smem[];
  // Stage s holds a K tile at stage(s) and its V tile at stage(s) + tile; Q goes through stage 1 first.
  __half* const base = reinterpret_cast<__half*>(smem);
  const auto stage = [base](std::int64_t s) { return base + (s % 2) * 2 * tile; };

  const float scale_log2 = scale * 1.4426950408889634f;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;  // the fragment's row group and the thread within it
  const std::int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<std::int64_t>(blockIdx.x) * 64 * MT;
  const __half* qb = q + b * lq * ldq + h * head_dim;
  const __half* kb = k + b * lk * ldk + h * head_dim;
  const __half* vb = v + b * lk * ldv + h * head_dim;

  mma_flash_load_tile<DP, 64 * MT>(stage(1), qb + q0 * ldq, ldq, lq - q0, head_dim, vec);
  mma_flash_load_tile<DP, 64>(stage(0), kb, ldk, lk, head_dim, vec);
  mma_flash_load_tile<DP, 64>(stage(0) + tile, vb, ldv, lk, head_dim, vec);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  // This warp's query tiles m (rows (4m + warp) * 16 ..) as A fragments, one per 16 columns of the head dim.
  // ldmatrix.x4: lane l names row (l % 8) + 8 * ((l / 8) % 2), columns 8 * (l / 16) of the 16x16 block (matrices:
  // rows 0-7 / 8-15 x cols 0-7 / 8-15).
  unsigned qf[MT][DP / 16][4];
  const int a_row = (lane % 8) + 8 * ((lane / 8) % 2), a_col = 8 * (lane / 16);
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk)
      ldmatrix_x4<false>(qf[m][kk], stage(1) + ((4 * m + warp) * 16 + a_row) * lds + kk * 16 + a_col);
  __syncthreads();  // Q is in registers: stage 1 is free for the second key tile

  float o[MT][DP / 8][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < DP / 8; ++n)
      o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
  // Per query tile: running max (unscaled scores) of rows g and g + 8, and this thread's share of the running sums.
  float m_lo[MT], m_hi[MT], l_lo[MT], l_hi[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    m_lo[m] = m_hi[m] = -INFINITY;
    l_lo[m] = l_hi[m] = 0.0f;
  }

  // ldmatrix row addresses for K (non-transposed: matrices keys 0-7 / 8-15 x dims 0-7 / 8-15 of a 16x16 block, in
  // the order b0, b1 of key tile 0, then of key tile 1) and V (transposed: keys 0-7 / 8-15 x dims 0-7 / 8-15, in the
  // order b0, b1 of dim tile 0, then of dim tile 1).
  const int k_row = (lane % 8) + 8 * (lane / 16), k_col = 8 * ((lane / 8) % 2);
  const int v_row = (lane % 8) + 8 * ((lane / 8) % 2), v_col = 8 * (lane / 16);

  const std::int64_t tiles = (lk + mma_flash_keys - 1) / mma_flash_keys;
  for (std::int64_t j = 0; j < tiles; ++j) {
    const std::int64_t k0 = j * mma_flash_keys;
    // The next tile goes into the other stage, which every warp finished reading at the end of the last iteration.
    if (j + 1 < tiles) {
      __half* const next = stage(j + 1);
      mma_flash_load_tile<DP, 64>(next, kb + (k0 + 64) * ldk, ldk, lk - k0 - 64, head_dim, vec);
      mma_flash_load_tile<DP, 64>(next + tile, vb + (k0 + 64) * ldv, ldv, lk - k0 - 64, head_dim, vec);
      cp_async_commit();
      cp_async_wait<1>();  // this tile's copies (committed one iteration ago) are done; the next may still run
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // every thread's part of this tile is in shared memory
    const __half* const ks = stage(j);
    const __half* const vs = ks + tile;

    // S = Q K^T: per query tile 8 accumulator tiles of 16 rows x 8 keys; s[m][n][0..1] row g, keys n*8 + 2t, +1;
    // s[m][n][2..3] row g + 8.
    float s[MT][8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < 8; ++n)
        s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        unsigned kf[4];
        ldmatrix_x4<false>(kf, ks + (p * 16 + k_row) * lds + kk * 16 + k_col);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_16816(s[m][2 * p], qf[m][kk], kf[0], kf[1]);
          mma_16816(s[m][2 * p + 1], qf[m][kk], kf[2], kf[3]);
        }
      }
    }

    // Online softmax per row in base 2: running max and rescale, P = 2^((S - max) * scale * log2(e)), keys past lk
    // masked (only the last tile can have them).
    const bool partial = k0 + mma_flash_keys > lk;
    unsigned pf[MT][4][4];  // P as the A fragments of the P V product, one per 16 keys
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (partial) {
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            if (k0 + n * 8 + 2 * t + (i % 2) >= lk) s[m][n][i] = -INFINITY;
      }
      float tile_lo = -INFINITY, tile_hi = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        tile_lo = fmaxf(tile_lo, fmaxf(s[m][n][0], s[m][n][1]));
        tile_hi = fmaxf(tile_hi, fmaxf(s[m][n][2], s[m][n][3]));
      }
#pragma unroll
      for (int o_ = 1; o_ < 4; o_ *= 2) {  // the 4 threads of a row group hold the row's 64 keys
        tile_lo = fmaxf(tile_lo, __shfl_xor_sync(0xffffffffu, tile_lo, o_));
        tile_hi = fmaxf(tile_hi, __shfl_xor_sync(0xffffffffu, tile_hi, o_));
      }
      const float new_lo = fmaxf(m_lo[m], tile_lo), new_hi = fmaxf(m_hi[m], tile_hi);  // finite: a tile has a key
      const float alpha_lo = fast_exp2((m_lo[m] - new_lo) * scale_log2);               // 0 on the first tile
      const float alpha_hi = fast_exp2((m_hi[m] - new_hi) * scale_log2);
      m_lo[m] = new_lo;
      m_hi[m] = new_hi;
      const float base_lo = new_lo * scale_log2, base_hi = new_hi * scale_log2;
      float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const float p0 = fast_exp2(fmaf(s[m][n][0], scale_log2, -base_lo));
        const float p1 = fast_exp2(fmaf(s[m][n][1], scale_log2, -base_lo));
        const float p2 = fast_exp2(fmaf(s[m][n][2], scale_log2, -base_hi));
        const float p3 = fast_exp2(fmaf(s[m][n][3], scale_log2, -base_hi));
        sum_lo += p0 + p1;
        sum_hi += p2 + p3;
        const __half2 lo = __floats2half2_rn(p0, p1), hi = __floats2half2_rn(p2, p3);
        // Keys 16j .. 16j + 7 are tile 2j (A registers 0 and 1), 16j + 8 .. 16j + 15 tile 2j + 1 (registers 2, 3).
        pf[m][n / 2][2 * (n % 2)] = *reinterpret_cast<const unsigned*>(&lo);
        pf[m][n / 2][2 * (n % 2) + 1] = *reinterpret_cast<const unsigned*>(&hi);
      }
      l_lo[m] = l_lo[m] * alpha_lo + sum_lo;
      l_hi[m] = l_hi[m] * alpha_hi + sum_hi;
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        o[m][n][0] *= alpha_lo;
        o[m][n][1] *= alpha_lo;
        o[m][n][2] *= alpha_hi;
        o[m][n][3] *= alpha_hi;
      }
    }

    // O += P V: k16 steps over the tile's keys, two 8-wide dim tiles per ldmatrix.
#pragma unroll
    for (int kj = 0; kj < 4; ++kj) {
#pragma unroll
      for (int d = 0; d < DP / 16; ++d) {
        unsigned vf[4];
        ldmatrix_x4<true>(vf, vs + (kj * 16 + v_row) * lds + d * 16 + v_col);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_16816(o[m][2 * d], pf[m][kj], vf[0], vf[1]);
          mma_16816(o[m][2 * d + 1], pf[m][kj], vf[2], vf[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration copies into it
  }

  // Finish the row sums across the row group, normalise, store the valid rows and dims.
  __half* out_b = out + b * lq * ldo + h * head_dim;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int o_ = 1; o_ < 4; o_ *= 2) {
      l_lo[m] += __shfl_xor_sync(0xffffffffu, l_lo[m], o_);
      l_hi[m] += __shfl_xor_sync(0xffffffffu, l_hi[m], o_);
    }
    const float inv_lo = 1.0f / l_lo[m], inv_hi = 1.0f / l_hi[m];
    const std::int64_t row_lo = q0 + (4 * m + warp) * 16 + g, row_hi = row_lo + 8;
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int c = n * 8 + 2 * t + i;
        if (c >= head_dim) continue;
        if (row_lo < lq) out_b[row_lo * ldo + c] = __float2half_rn(o[m][n][i] * inv_lo);
        if (row_hi < lq) out_b[row_hi * ldo + c] = __float2half_rn(o[m][n][2 + i] * inv_hi);
      }
    }
  }
}

}  // namespace carousel::cuda::detail
