#pragma once
// Normalisation statistics shared by group_norm and layer_norm_rows.

#include <cmath>
#include <cstdint>
#include <utility>

namespace carousel::cpu::detail {

// Mean and 1/sqrt(biased variance + eps) of n floats: two passes (robust to a large mean), double accumulation in
// four interleaved partial sums (instruction-level parallelism; the order depends only on n).
inline std::pair<double, double> mean_inv_std(const float* x, std::int64_t n, float eps) {
  double s[4] = {0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l)
      s[l] += x[i + l];
  for (; i < n; ++i)
    s[0] += x[i];
  const double mean = (s[0] + s[1] + s[2] + s[3]) / static_cast<double>(n);
  double q[4] = {0, 0, 0, 0};
  i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l)
      q[l] += (x[i + l] - mean) * (x[i + l] - mean);
  for (; i < n; ++i)
    q[0] += (x[i] - mean) * (x[i] - mean);
  return {mean, 1.0 / std::sqrt((q[0] + q[1] + q[2] + q[3]) / static_cast<double>(n) + eps)};
}

}  // namespace carousel::cpu::detail
