#pragma once
// The one place the CPU backend calls BLAS: a row-major sgemm with 64-bit extents, and a FLOP counter that the
// benchmarks read (every matrix product of convolutions, linears and attention goes through here).

#include <cblas.h>
#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>

namespace carousel::cpu::detail {

inline std::atomic<std::uint64_t>& gemm_flops() {
  static std::atomic<std::uint64_t> flops{0};
  return flops;
}

inline blasint blas_int(std::int64_t v) {
  if (v < 0 || v > INT_MAX) throw std::length_error("carousel::cpu: matrix extent exceeds the BLAS integer range");
  return static_cast<blasint>(v);
}

// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C, row-major with leading dimensions.
inline void sgemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                  const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                  std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, blas_int(m),
              blas_int(n), blas_int(k), alpha, a, blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
  gemm_flops().fetch_add(static_cast<std::uint64_t>(2 * m * n * k), std::memory_order_relaxed);
}

}  // namespace carousel::cpu::detail
