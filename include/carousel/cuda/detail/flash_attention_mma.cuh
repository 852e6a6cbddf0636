#pragma once
/// \file
/// A fused (flash) attention kernel for fp16 in the FlashAttention-2 manner, on `mma.sync.m16n8k16` (fp16 inputs, fp32
/// accumulation) with register-resident scores: softmax(Q K^T * scale) V without materialising the score matrix.
/// One block of 4 warps handles 64 queries of one (batch item, head), 16 per warp; keys stream through shared memory in
/// tiles of 64. A warp keeps its Q fragments, its 16x64 score tile and its 16xDP output accumulators in registers: the
/// score tile's accumulator layout is the A-operand layout of the P V product, so P never goes through shared memory
/// (the difference from detail/flash_attention.cuh's WMMA kernel, which stores S and P in shared memory). K comes in
/// through `ldmatrix`, V through `ldmatrix.trans`. Online softmax in float32 per query row (its 4 threads reduce with
/// shuffles), P rounded to fp16 for the product as flash attention does. Head dims up to 160, zero-padded to DP (a
/// multiple of 16). Non-causal only. Needs sm_80 or later (`ldmatrix`, `mma.m16n8k16`).

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace carousel::cuda::detail {

constexpr int mma_flash_rows = 64;  // queries per block (16 per warp)
constexpr int mma_flash_keys = 64;  // keys per tile

// Dynamic shared memory of flash_attention_mma<DP>: Q, K and V tiles of 64 rows, rows padded by 8 halves (16 bytes
// apart at every DP used, so that ldmatrix's eight row reads fall in different banks).
constexpr std::size_t mma_flash_smem_bytes(int dp) {
  return static_cast<std::size_t>(3 * 64 * (dp + 8) * 2);
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
  __trap();  // never launched below sm_80: ops.cuh picks the WMMA kernel there
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
  __trap();  // never launched below sm_80: ops.cuh picks the WMMA kernel there
#endif
}

// Copies `rows` x head_dim halves from global memory (row stride ld) into a 64 x DP shared tile (row stride DP + 8),
// zero-filling the rows from `valid` on and the columns from head_dim on. `vec`: 16-byte loads (head_dim and ld
// multiples of 8, src 16-byte aligned).
template <int DP>
__device__ __forceinline__ void mma_flash_load_tile(__half* dst, const __half* src, std::int64_t ld, std::int64_t valid,
                                                    int head_dim, bool vec) {
  constexpr int lds = DP + 8;
  if (vec) {
    constexpr int chunks = DP / 8;
    for (int i = static_cast<int>(threadIdx.x); i < 64 * chunks; i += static_cast<int>(blockDim.x)) {
      const int r = i / chunks, c = (i % chunks) * 8;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (r < valid && c < head_dim) v = *reinterpret_cast<const uint4*>(src + r * ld + c);
      *reinterpret_cast<uint4*>(dst + r * lds + c) = v;
    }
  } else {
    const __half zero = __float2half(0.0f);
    for (int i = static_cast<int>(threadIdx.x); i < 64 * DP; i += static_cast<int>(blockDim.x)) {
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
  constexpr int lds = DP + 8;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* qs = reinterpret_cast<__half*>(smem);
  __half* ks = qs + 64 * lds;
  __half* vs = ks + 64 * lds;

  const float scale_log2 = scale * 1.4426950408889634f;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;  // the fragment's row group and the thread within it
  const std::int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<std::int64_t>(blockIdx.x) * mma_flash_rows;
  const __half* qb = q + b * lq * ldq + h * head_dim;
  const __half* kb = k + b * lk * ldk + h * head_dim;
  const __half* vb = v + b * lk * ldv + h * head_dim;

  mma_flash_load_tile<DP>(qs, qb + q0 * ldq, ldq, lq - q0, head_dim, vec);
  __syncthreads();
  // This warp's 16 query rows as A fragments, one per 16 columns of the head dim. ldmatrix.x4: lane l names row
  // (l % 8) + 8 * ((l / 8) % 2), columns 8 * (l / 16) of the 16x16 block (matrices: rows 0-7 / 8-15 x cols 0-7 / 8-15).
  unsigned qf[DP / 16][4];
  const int a_row = warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2), a_col = 8 * (lane / 16);
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk)
    ldmatrix_x4<false>(qf[kk], qs + a_row * lds + kk * 16 + a_col);

  float o[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n)
    o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running max of rows g and g + 8
  float l_lo = 0.0f, l_hi = 0.0f;            // this thread's share of the running sums

  // ldmatrix row addresses for K (non-transposed: matrices keys 0-7 / 8-15 x dims 0-7 / 8-15 of a 16x16 block, in
  // the order b0, b1 of key tile 0, then of key tile 1) and V (transposed: keys 0-7 / 8-15 x dims 0-7 / 8-15, in the
  // order b0, b1 of dim tile 0, then of dim tile 1).
  const int k_row = (lane % 8) + 8 * (lane / 16), k_col = 8 * ((lane / 8) % 2);
  const int v_row = (lane % 8) + 8 * ((lane / 8) % 2), v_col = 8 * (lane / 16);

  for (std::int64_t k0 = 0; k0 < lk; k0 += mma_flash_keys) {
    __syncthreads();  // the previous tile's K and V are no longer read
    mma_flash_load_tile<DP>(ks, kb + k0 * ldk, ldk, lk - k0, head_dim, vec);
    mma_flash_load_tile<DP>(vs, vb + k0 * ldv, ldv, lk - k0, head_dim, vec);
    __syncthreads();

    // S = Q K^T: 8 accumulator tiles of 16 rows x 8 keys; s[n][0..1] row g, keys n*8 + 2t, +1; s[n][2..3] row g + 8.
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        unsigned kf[4];
        ldmatrix_x4<false>(kf, ks + (p * 16 + k_row) * lds + kk * 16 + k_col);
        mma_16816(s[2 * p], qf[kk], kf[0], kf[1]);
        mma_16816(s[2 * p + 1], qf[kk], kf[2], kf[3]);
      }
    }

    // Online softmax per row in base 2 (scores times scale * log2(e), so that exp2 gives exp): mask the keys past lk,
    // running max and rescale, P = 2^(S - max).
    float tile_lo = -INFINITY, tile_hi = -INFINITY;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool valid = k0 + n * 8 + 2 * t + (i % 2) < lk;
        s[n][i] = valid ? s[n][i] * scale_log2 : -INFINITY;
      }
      tile_lo = fmaxf(tile_lo, fmaxf(s[n][0], s[n][1]));
      tile_hi = fmaxf(tile_hi, fmaxf(s[n][2], s[n][3]));
    }
#pragma unroll
    for (int o_ = 1; o_ < 4; o_ *= 2) {  // the 4 threads of a row group hold the row's 64 keys
      tile_lo = fmaxf(tile_lo, __shfl_xor_sync(0xffffffffu, tile_lo, o_));
      tile_hi = fmaxf(tile_hi, __shfl_xor_sync(0xffffffffu, tile_hi, o_));
    }
    const float new_lo = fmaxf(m_lo, tile_lo), new_hi = fmaxf(m_hi, tile_hi);      // finite: a tile has a valid key
    const float alpha_lo = exp2f(m_lo - new_lo), alpha_hi = exp2f(m_hi - new_hi);  // 0 on the first tile
    m_lo = new_lo;
    m_hi = new_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
    unsigned pf[4][4];  // P as the A fragments of the P V product, one per 16 keys
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const __half2 lo = __floats2half2_rn(exp2f(s[n][0] - new_lo), exp2f(s[n][1] - new_lo));
      const __half2 hi = __floats2half2_rn(exp2f(s[n][2] - new_hi), exp2f(s[n][3] - new_hi));
      sum_lo += __low2float(lo) + __high2float(lo);  // the sums use the rounded P, as the product does
      sum_hi += __low2float(hi) + __high2float(hi);
      // Keys 16j .. 16j + 7 are tile 2j (A registers 0 and 1), 16j + 8 .. 16j + 15 tile 2j + 1 (registers 2, 3).
      pf[n / 2][2 * (n % 2)] = *reinterpret_cast<const unsigned*>(&lo);
      pf[n / 2][2 * (n % 2) + 1] = *reinterpret_cast<const unsigned*>(&hi);
    }
    l_lo = l_lo * alpha_lo + sum_lo;
    l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
      o[n][0] *= alpha_lo;
      o[n][1] *= alpha_lo;
      o[n][2] *= alpha_hi;
      o[n][3] *= alpha_hi;
    }

    // O += P V: k16 steps over the tile's keys, two 8-wide dim tiles per ldmatrix.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int d = 0; d < DP / 16; ++d) {
        unsigned vf[4];
        ldmatrix_x4<true>(vf, vs + (j * 16 + v_row) * lds + d * 16 + v_col);
        mma_16816(o[2 * d], pf[j], vf[0], vf[1]);
        mma_16816(o[2 * d + 1], pf[j], vf[2], vf[3]);
      }
    }
  }

  // Finish the row sums across the row group, normalise, store the valid rows and dims.
#pragma unroll
  for (int o_ = 1; o_ < 4; o_ *= 2) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o_);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o_);
  }
  const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
  const std::int64_t row_lo = q0 + warp * 16 + g, row_hi = row_lo + 8;
  __half* out_b = out + b * lq * ldo + h * head_dim;
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = n * 8 + 2 * t + i;
      if (c >= head_dim) continue;
      if (row_lo < lq) out_b[row_lo * ldo + c] = __float2half_rn(o[n][i] * inv_lo);
      if (row_hi < lq) out_b[row_hi * ldo + c] = __float2half_rn(o[n][2 + i] * inv_hi);
    }
  }
}

}  // namespace carousel::cuda::detail
