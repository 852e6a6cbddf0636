#pragma once
/// \file
/// A fused (flash) attention kernel for fp16 on the tensor cores through WMMA: softmax(Q K^T * scale) V without
/// materialising the score matrix. One block of 4 warps handles 64 queries of one (batch item, head); keys stream
/// through shared memory in tiles of 64 with the online softmax (running max and sum per query row, float32), P is
/// rounded to fp16 for the P V product as flash attention does. Head dims up to 160, zero-padded to DP (a multiple of
/// 16). Non-causal only (the UNet's and the VAE's attention); ops.cuh falls back to the plain path otherwise.

#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

namespace carousel::cuda::detail {

constexpr int flash_rows = 64;  // queries per block (16 per warp)
constexpr int flash_keys = 64;  // keys per tile

// Dynamic shared memory of flash_attention<DP>.
constexpr std::size_t flash_smem_bytes(int dp) {
  return static_cast<std::size_t>(3 * 64 * (dp + 8) * 2    // Q, K, V tiles (half)
                                  + 4 * 16 * 68 * 4        // scores per warp (float)
                                  + 4 * 16 * 72 * 2        // probabilities per warp (half)
                                  + 4 * 16 * (dp + 4) * 4  // output accumulators per warp (float)
                                  + 2 * 4 * 16 * 4);       // running max and sum per row
}

template <int DP>
__global__ void __launch_bounds__(128)
    flash_attention(const __half* q, std::int64_t ldq, const __half* k, std::int64_t ldk, const __half* v,
                    std::int64_t ldv, __half* out, std::int64_t ldo, std::int64_t lq, std::int64_t lk, int head_dim,
                    float scale) {
  namespace wmma = nvcuda::wmma;
  constexpr int ldh = DP + 8, lds = 68, ldp = 72, ldo_s = DP + 4;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* qs = reinterpret_cast<__half*>(smem);
  __half* ks = qs + 64 * ldh;
  __half* vs = ks + 64 * ldh;
  float* s_all = reinterpret_cast<float*>(vs + 64 * ldh);
  __half* p_all = reinterpret_cast<__half*>(s_all + 4 * 16 * lds);
  float* o_all = reinterpret_cast<float*>(p_all + 4 * 16 * ldp);
  float* m_all = o_all + 4 * 16 * ldo_s;
  float* l_all = m_all + 64;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<std::int64_t>(blockIdx.x) * flash_rows;
  const __half* qb = q + b * lq * ldq + h * head_dim;
  const __half* kb = k + b * lk * ldk + h * head_dim;
  const __half* vb = v + b * lk * ldv + h * head_dim;
  const __half zero = __float2half(0.0f);

  for (int i = tid; i < 64 * DP; i += blockDim.x) {
    const int r = i / DP, c = i % DP;
    qs[r * ldh + c] = (q0 + r < lq && c < head_dim) ? qb[(q0 + r) * ldq + c] : zero;
  }
  float* s_w = s_all + warp * 16 * lds;
  __half* p_w = p_all + warp * 16 * ldp;
  float* o_w = o_all + warp * 16 * ldo_s;
  float* m_w = m_all + warp * 16;
  float* l_w = l_all + warp * 16;
  for (int i = lane; i < 16 * ldo_s; i += 32)
    o_w[i] = 0.0f;
  if (lane < 16) {
    m_w[lane] = -INFINITY;
    l_w[lane] = 0.0f;
  }
  const int row = lane / 2, half_id = lane % 2;  // two lanes per query row in the softmax stage

  for (std::int64_t k0 = 0; k0 < lk; k0 += flash_keys) {
    __syncthreads();  // the previous tile's K and V are no longer read
    for (int i = tid; i < 64 * DP; i += blockDim.x) {
      const int r = i / DP, c = i % DP;
      const bool valid = k0 + r < lk && c < head_dim;
      ks[r * ldh + c] = valid ? kb[(k0 + r) * ldk + c] : zero;
      vs[r * ldh + c] = valid ? vb[(k0 + r) * ldv + c] : zero;
    }
    __syncthreads();

    // S = Q_w K^T for this warp's 16 queries and the tile's 64 keys.
    for (int j = 0; j < 4; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < DP / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> bt;
        wmma::load_matrix_sync(a, qs + warp * 16 * ldh + kk * 16, ldh);
        wmma::load_matrix_sync(bt, ks + j * 16 * ldh + kk * 16, ldh);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(s_w + j * 16, acc, lds, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: lanes 2r and 2r+1 share query row r, 32 keys each.
    const int valid_keys = static_cast<int>(lk - k0 < flash_keys ? lk - k0 : flash_keys);
    float tile_max = -INFINITY;
    for (int c = half_id * 32; c < half_id * 32 + 32; ++c)
      if (c < valid_keys) tile_max = fmaxf(tile_max, s_w[row * lds + c] * scale);
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_old = m_w[row];
    const float m_new = fmaxf(m_old, tile_max);
    const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
    float sum = 0.0f;
    for (int c = half_id * 32; c < half_id * 32 + 32; ++c) {
      const float p = c < valid_keys ? expf(s_w[row * lds + c] * scale - m_new) : 0.0f;
      const __half ph = __float2half_rn(p);
      p_w[row * ldp + c] = ph;
      sum += __half2float(ph);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    for (int c = half_id * (DP / 2); c < (half_id + 1) * (DP / 2); ++c)
      o_w[row * ldo_s + c] *= alpha;
    __syncwarp();
    if (half_id == 0) {
      m_w[row] = m_new;
      l_w[row] = l_w[row] * alpha + sum;
    }
    __syncwarp();

    // O_w += P_w V for the tile.
    for (int n = 0; n < DP / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_w + n * 16, ldo_s, wmma::mem_row_major);
      for (int kk = 0; kk < 4; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> bv;
        wmma::load_matrix_sync(a, p_w + kk * 16, ldp);
        wmma::load_matrix_sync(bv, vs + kk * 16 * ldh + n * 16, ldh);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(o_w + n * 16, acc, ldo_s, wmma::mem_row_major);
    }
    __syncwarp();
  }

  const std::int64_t qrow = q0 + warp * 16 + row;
  if (qrow < lq) {
    const float inv = 1.0f / l_w[row];
    __half* o = out + (b * lq + qrow) * ldo + h * head_dim;
    for (int c = half_id; c < head_dim; c += 2)
      o[c] = __float2half_rn(o_w[row * ldo_s + c] * inv);
  }
}

}  // namespace carousel::cuda::detail
