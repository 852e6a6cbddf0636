#pragma once
/// \file
/// \brief Scalar replicas of torch's `avx_mathfun.h` log and sincos (Cephes polynomials), including the fused
/// multiply-adds GCC forms when torch's AVX2 kernels are built, so that `torch.randn` on AVX2/AVX-512 CPUs can be
/// reproduced bit for bit.

#include <bit>
#include <cmath>
#include <cstdint>

namespace carousel::diffusion::detail {

/// One lane of `log256_ps`: natural log of x > 0.
inline float cephes_logf(float x) {
  x = std::fmax(x, std::bit_cast<float>(0x00800000u));
  auto bits = std::bit_cast<std::uint32_t>(x);
  const auto exponent = static_cast<std::int32_t>(bits >> 23) - 0x7f;
  x = std::bit_cast<float>((bits & ~0x7f800000u) | std::bit_cast<std::uint32_t>(0.5f));
  auto e = static_cast<float>(exponent) + 1.0f;
  const bool below = x < 0.707106781186547524f;
  const float tmp = below ? x : 0.0f;
  x = x - 1.0f;
  if (below) e = e - 1.0f;
  x = x + tmp;
  const float z = x * x;
  float y = 7.0376836292E-2f;
  y = std::fma(y, x, -1.1514610310E-1f);
  y = std::fma(y, x, 1.1676998740E-1f);
  y = std::fma(y, x, -1.2420140846E-1f);
  y = std::fma(y, x, 1.4249322787E-1f);
  y = std::fma(y, x, -1.6668057665E-1f);
  y = std::fma(y, x, 2.0000714765E-1f);
  y = std::fma(y, x, -2.4999993993E-1f);
  y = std::fma(y, x, 3.3333331174E-1f);
  y = y * x;
  y = std::fma(y, z, e * -2.12194440e-4f);
  y = std::fma(z, -0.5f, y);
  x = x + y;
  return std::fma(e, 0.693359375f, x);
}

/// One lane of `sincos256_ps`: sine and cosine of x (|x| well below 8192).
inline void cephes_sincosf(float x, float& sine, float& cosine) {
  std::uint32_t sign_sin = std::bit_cast<std::uint32_t>(x) & 0x80000000u;
  x = std::fabs(x);
  auto j = static_cast<std::int32_t>(x * 1.27323954473516f);
  j = (j + 1) & ~1;
  const auto yq = static_cast<float>(j);
  sign_sin ^= static_cast<std::uint32_t>(j & 4) << 29;
  const bool poly = (j & 2) == 0;
  const std::uint32_t sign_cos = static_cast<std::uint32_t>(~(j - 2) & 4) << 29;
  x = std::fma(yq, -0.78515625f, x);
  x = std::fma(yq, -2.4187564849853515625e-4f, x);
  x = std::fma(yq, -3.77489497744594108e-8f, x);
  const float z = x * x;
  float yc = std::fma(2.443315711809948E-005f, z, -1.388731625493765E-003f);
  yc = std::fma(yc, z, 4.166664568298827E-002f);
  yc = yc * z;
  yc = std::fma(yc, z, -(z * 0.5f));
  yc = yc + 1.0f;
  float ys = std::fma(-1.9515295891E-4f, z, 8.3321608736E-3f);
  ys = std::fma(ys, z, -1.6666654611E-1f);
  ys = ys * z;
  ys = std::fma(ys, x, x);
  const float s = poly ? ys : yc;
  const float c = poly ? yc : ys;
  sine = std::bit_cast<float>(std::bit_cast<std::uint32_t>(s) ^ sign_sin);
  cosine = std::bit_cast<float>(std::bit_cast<std::uint32_t>(c) ^ sign_cos);
}

}  // namespace carousel::diffusion::detail
