#pragma once
/// \file
/// \brief `TorchGenerator`: a per-request random stream that reproduces `torch.Generator().manual_seed(s)` followed by
/// `torch.randn` / `torch.rand`-style draws on the CPU, bit for bit.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "carousel/diffusion/detail/cephes_float.hpp"

namespace carousel::diffusion {

/// Which of torch's CPU `normal_fill` kernels to reproduce for draws of 16 or more values. torch picks one by the
/// CPU it runs on: x86-64 builds with AVX2 or AVX-512 kernels use Cephes polynomials for log/sin/cos (`avx2`);
/// other CPUs (e.g. ARM) and `ATEN_CPU_CAPABILITY=default` use the C library's `logf`/`sinf`/`cosf` (`scalar`).
/// The two agree to about one ulp; pick the one the reference images were made on.
enum class RandnKernel {
  avx2,    ///< torch's `normal_fill_AVX2` (the common x86-64 case).
  scalar,  ///< torch's portable `normal_fill`.
};

/// A value-type copy of torch's CPU generator (`at::CPUGeneratorImpl`): an mt19937 engine plus the cached second
/// Box-Muller value torch keeps for element-wise normal draws.
///
/// `randn(out)` reproduces `torch.randn(out.size(), generator=g)` for a contiguous float32 tensor, including
///  - numel >= 16: all numel uniforms are drawn first, then turned into normals 16 at a time (pairs j, j+8);
///    when numel % 16 != 0 the last 16 uniforms are redrawn and transformed again (torch's `normal_fill`);
///  - numel < 16: torch's element-wise `normal_distribution<double>` (53-bit uniforms, a cached sine value that
///    survives into the next small draw).
/// Consecutive calls continue the stream exactly as consecutive torch calls on one generator do. The scalar
/// path for numel >= 16 follows `RandnKernel`.
///
/// Thread-safety: a value type with no shared state; distinct objects may be used concurrently.
///
/// \code
///   carousel::diffusion::TorchGenerator g{42};
///   std::vector<float> latents(4 * 64 * 64);
///   g.randn(latents);  // == torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(42))
/// \endcode
class TorchGenerator {
 public:
  /// Seeds like `torch.Generator().manual_seed(seed)` (torch keeps the low 32 bits for mt19937); `kernel` selects
  /// which of torch's bulk normal kernels to reproduce. The default seed is torch's default (67280421310721).
  explicit TorchGenerator(std::uint64_t seed = 67280421310721ULL, RandnKernel kernel = RandnKernel::avx2)
      : kernel_(kernel) {
    manual_seed(seed);
  }

  /// The bulk normal kernel this generator reproduces.
  [[nodiscard]] RandnKernel kernel() const noexcept { return kernel_; }

  /// Reseeds and drops any cached normal value, as `manual_seed` does.
  void manual_seed(std::uint64_t seed) {
    seed_ = seed;
    engine_.seed(static_cast<std::uint32_t>(seed & 0xffffffffULL));
    next_double_normal_.reset();
  }

  /// The seed last given to `manual_seed` (torch's `initial_seed()`).
  [[nodiscard]] std::uint64_t initial_seed() const noexcept { return seed_; }

  /// One 32-bit draw of the engine (torch's `random()`).
  std::uint32_t random() { return static_cast<std::uint32_t>(engine_()); }

  /// Two 32-bit draws combined high word first (torch's `random64()`).
  std::uint64_t random64() {
    const std::uint64_t hi = random();
    const std::uint64_t lo = random();
    return (hi << 32) | lo;
  }

  /// Fills `out` with standard normal float32 values exactly as `torch.randn(out.size(), generator=g)`.
  void randn(std::span<float> out) {
    const std::size_t n = out.size();
    if (n >= 16) {
      for (float& v : out)
        v = uniform_float();
      for (std::size_t i = 0; i + 16 <= n; i += 16)
        box_muller_16(out.data() + i);
      if (n % 16 != 0) {
        float* tail = out.data() + n - 16;
        for (std::size_t j = 0; j < 16; ++j)
          tail[j] = uniform_float();
        box_muller_16(tail);
      }
    } else {
      for (float& v : out)
        v = static_cast<float>(normal_double());
    }
  }

  /// Returns `n` standard normal float32 values (see `randn(std::span<float>)`).
  std::vector<float> randn(std::size_t n) {
    std::vector<float> out(n);
    randn(out);
    return out;
  }

  /// Two generators are equal when their future streams are equal.
  friend bool operator==(const TorchGenerator&, const TorchGenerator&) = default;

 private:
  // torch's uniform_real_distribution<float>: the low 24 bits of one draw, times 2^-24.
  float uniform_float() { return static_cast<float>(static_cast<double>(random() & 0xffffffu) * 0x1.0p-24); }

  // torch's uniform_real_distribution<double>: the low 53 bits of random64(), times 2^-53.
  double uniform_double() { return static_cast<double>(random64() & ((1ULL << 53) - 1)) * 0x1.0p-53; }

  // torch's normal_distribution<double> with the generator's cached sine value.
  double normal_double() {
    if (next_double_normal_) {
      const double cached = *next_double_normal_;
      next_double_normal_.reset();
      return cached;
    }
    const double u1 = uniform_double();
    const double u2 = uniform_double();
    const double r = std::sqrt(-2.0 * std::log1p(-u2));
    const double theta = 2.0 * std::numbers::pi * u1;
    next_double_normal_ = r * std::sin(theta);
    return r * std::cos(theta);
  }

  // torch's normal_fill_16 (mean 0, std 1): float arithmetic with theta formed in double then rounded.
  void box_muller_16(float* data) const {
    if (kernel_ == RandnKernel::avx2) {
      const auto two_pi = static_cast<float>(2.0 * std::numbers::pi);
      for (std::size_t j = 0; j < 8; ++j) {
        const float radius = std::sqrt(-2.0f * detail::cephes_logf(1.0f - data[j]));
        float sine = 0.0f;
        float cosine = 0.0f;
        detail::cephes_sincosf(two_pi * data[j + 8], sine, cosine);
        data[j] = radius * cosine;
        data[j + 8] = radius * sine;
      }
      return;
    }
    for (std::size_t j = 0; j < 8; ++j) {
      const float u1 = 1.0f - data[j];
      const float u2 = data[j + 8];
      const float radius = std::sqrt(-2.0f * std::log(u1));
      const auto theta = static_cast<float>(2.0 * std::numbers::pi * static_cast<double>(u2));
      data[j] = radius * std::cos(theta);
      data[j + 8] = radius * std::sin(theta);
    }
  }

  RandnKernel kernel_ = RandnKernel::avx2;
  std::uint64_t seed_ = 0;
  std::mt19937 engine_;
  std::optional<double> next_double_normal_;
};

}  // namespace carousel::diffusion
