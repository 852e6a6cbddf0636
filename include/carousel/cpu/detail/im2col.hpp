#pragma once
// im2col for the CPU backend's convolutions: unfolds an image's receptive fields into the columns of a matrix that one
// sgemm multiplies by the weights.

#include <algorithm>
#include <cstdint>

#include <carousel/cpu/detail/parallel.hpp>

namespace carousel::cpu::detail {

// Geometry of a square-kernel convolution on one image [cin, h, w] with output width wo.
struct ConvGeometry {
  std::int64_t cin, h, w, k, stride, pad, wo;
};

// Unfolds output rows [oy0, oy0 + rows) of image xs into col: matrix row (c * k + ky) * k + kx holds, at column
// r * wo + ox, the input value under kernel tap (ky, kx) for output pixel (oy0 + r, ox), 0 in the padding. `ld` is
// col's row stride (>= rows * wo), so several images can fill side-by-side column blocks of one matrix.
inline void im2col(const float* xs, const ConvGeometry& g, std::int64_t oy0, std::int64_t rows, float* col,
                   std::int64_t ld) {
  const std::int64_t k = g.k, wo = g.wo, stride = g.stride, pad = g.pad, h = g.h, wd = g.w;
  parallel_for(g.cin, grain_for(k * k * rows * wo), [&](std::int64_t c0, std::int64_t c1) {
    for (std::int64_t c = c0; c < c1; ++c) {
      const float* plane = xs + c * h * wd;
      for (std::int64_t ky = 0; ky < k; ++ky) {
        for (std::int64_t kx = 0; kx < k; ++kx) {
          float* dst = col + ((c * k + ky) * k + kx) * ld;
          // Output columns [lo, hi) read inside the row (ix = ox * stride - pad + kx in [0, wd)); the rest is padding.
          const std::int64_t lo = std::min(wo, (std::max<std::int64_t>(pad - kx, 0) + stride - 1) / stride);
          const std::int64_t hi = std::max(lo, std::min(wo, (wd + pad - kx + stride - 1) / stride));
          for (std::int64_t r = 0; r < rows; ++r) {
            const std::int64_t iy = (oy0 + r) * stride - pad + ky;
            float* d = dst + r * wo;
            if (iy < 0 || iy >= h) {
              std::fill(d, d + wo, 0.0f);
              continue;
            }
            std::fill(d, d + lo, 0.0f);
            if (hi > lo) {
              const float* src = plane + iy * wd + lo * stride - pad + kx;
              if (stride == 1) {
                std::copy(src, src + (hi - lo), d + lo);
              } else {
                for (std::int64_t ox = lo; ox < hi; ++ox)
                  d[ox] = src[(ox - lo) * stride];
              }
            }
            std::fill(d + hi, d + wo, 0.0f);
          }
        }
      }
    }
  });
}

}  // namespace carousel::cpu::detail
