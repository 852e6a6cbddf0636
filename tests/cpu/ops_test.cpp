// Operators of the CPU backend against straightforward float64 re-implementations written here from the
// definitions (torch semantics), on random inputs.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>

namespace {

using carousel::cpu::Shape;
using carousel::cpu::Tensor;

std::vector<float> random_values(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v)
    x = dist(gen);
  return v;
}

Tensor random_tensor(Shape shape, std::uint32_t seed) {
  const auto n = static_cast<std::size_t>(carousel::cpu::shape_numel(shape));
  return Tensor(std::move(shape), random_values(n, seed));
}

// max |a - b| / max |b| (the relative norm used throughout tests/cpu).
double rel_error(std::span<const float> a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0.0, ref = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(a[i] - b[i]));
    ref = std::max(ref, std::fabs(b[i]));
  }
  return diff / std::max(ref, 1e-30);
}

std::vector<double> conv_ref(const Tensor& x, const std::vector<float>& w, const std::vector<float>& b,
                             std::int64_t cout, std::int64_t k, std::int64_t s, std::int64_t p) {
  const auto n = x.dim(0), cin = x.dim(1), h = x.dim(2), wd = x.dim(3);
  const auto ho = (h + 2 * p - k) / s + 1, wo = (wd + 2 * p - k) / s + 1;
  std::vector<double> y(static_cast<std::size_t>(n * cout * ho * wo));
  for (std::int64_t bi = 0; bi < n; ++bi)
    for (std::int64_t o = 0; o < cout; ++o)
      for (std::int64_t oy = 0; oy < ho; ++oy)
        for (std::int64_t ox = 0; ox < wo; ++ox) {
          double acc = b[o];
          for (std::int64_t c = 0; c < cin; ++c)
            for (std::int64_t ky = 0; ky < k; ++ky)
              for (std::int64_t kx = 0; kx < k; ++kx) {
                const auto iy = oy * s - p + ky, ix = ox * s - p + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                acc += double(w[((o * cin + c) * k + ky) * k + kx]) * x.data()[((bi * cin + c) * h + iy) * wd + ix];
              }
          y[((bi * cout + o) * ho + oy) * wo + ox] = acc;
        }
  return y;
}

}  // namespace

TEST_CASE("Cpu.Tensor.Shape") {
  Tensor t({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.sample_numel() == 12);
  CHECK(t.dim(-1) == 4);
  CHECK(t.sample(1) == t.data() + 12);
  CHECK_THROWS_AS(Tensor({2, 2}, std::vector<float>(3)), std::invalid_argument);
  CHECK(t.reshaped({6, 4}).shape() == Shape{6, 4});
  CHECK_THROWS_AS((void)t.reshaped({5, 5}), std::invalid_argument);
}

TEST_CASE("Cpu.Ops.Linear") {
  const std::int64_t rows = 5, in = 7, out = 3;
  const auto x = random_values(rows * in, 1), w = random_values(out * in, 2), b = random_values(out, 3);
  std::vector<float> y(rows * out);
  std::vector<double> ref(rows * out);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t o = 0; o < out; ++o) {
      double acc = b[o];
      for (std::int64_t i = 0; i < in; ++i)
        acc += double(x[r * in + i]) * w[o * in + i];
      ref[r * out + o] = acc;
    }
  carousel::cpu::linear_rows(x.data(), rows, in, w.data(), b.data(), out, y.data());
  CHECK(rel_error(y, ref) < 1e-6);
}

TEST_CASE("Cpu.Ops.Conv2d") {
  struct Case {
    std::int64_t cin, cout, h, w, k, s, p, max_col;
  };
  for (const Case c :
       {Case{3, 4, 7, 6, 3, 1, 1, 1 << 23}, Case{3, 5, 7, 6, 3, 2, 1, 1 << 23}, Case{4, 6, 5, 5, 1, 1, 0, 1 << 23},
        Case{2, 3, 9, 8, 3, 1, 1, 40}, Case{2, 3, 9, 8, 3, 2, 1, 1}, Case{2, 3, 7, 6, 3, 2, 0, 1 << 23},
        Case{2, 2, 5, 4, 3, 1, 2, 1 << 23}, Case{1, 2, 2, 3, 3, 2, 1, 1 << 23},
        // (kk + cout) * hw = 1512 floats per item: batched mode puts items {0, 1} in one GEMM and item 2 in another.
        Case{2, 3, 9, 8, 3, 1, 1, 3100}, Case{4, 6, 5, 5, 1, 1, 0, 500}}) {
    for (const auto mode : {carousel::cpu::BatchMode::batched, carousel::cpu::BatchMode::batch_invariant}) {
      CAPTURE(c.k);
      CAPTURE(c.s);
      CAPTURE(c.max_col);
      CAPTURE(static_cast<int>(mode));
      const Tensor x = random_tensor({3, c.cin, c.h, c.w}, 4);
      const auto w = random_values(static_cast<std::size_t>(c.cout * c.cin * c.k * c.k), 5);
      const auto b = random_values(static_cast<std::size_t>(c.cout), 6);
      const Tensor y = carousel::cpu::conv2d(x, w.data(), b.data(), c.cin, c.cout, c.k, c.s, c.p, mode, c.max_col);
      CHECK(y.shape() == Shape{3, c.cout, (c.h + 2 * c.p - c.k) / c.s + 1, (c.w + 2 * c.p - c.k) / c.s + 1});
      CHECK(rel_error(y.values(), conv_ref(x, w, b, c.cout, c.k, c.s, c.p)) < 1e-6);
    }
  }
  CHECK_THROWS_AS(carousel::cpu::conv2d(Tensor({1, 2, 4, 4}), nullptr, nullptr, 3, 1, 3, 1, 1), std::invalid_argument);
}

TEST_CASE("Cpu.Ops.GroupNorm") {
  const Tensor x = random_tensor({2, 6, 3, 5}, 7);
  const auto gamma = random_values(6, 8), beta = random_values(6, 9);
  for (bool silu : {false, true}) {
    CAPTURE(silu);
    const Tensor y = carousel::cpu::group_norm(x, 3, 1e-5f, gamma.data(), beta.data(), silu);
    std::vector<double> ref(static_cast<std::size_t>(x.numel()));
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t g = 0; g < 3; ++g) {
        const std::int64_t base = (b * 6 + g * 2) * 15;
        double mean = 0, var = 0;
        for (std::int64_t i = 0; i < 30; ++i)
          mean += x.data()[base + i];
        mean /= 30;
        for (std::int64_t i = 0; i < 30; ++i)
          var += (x.data()[base + i] - mean) * (x.data()[base + i] - mean);
        var /= 30;
        for (std::int64_t i = 0; i < 30; ++i) {
          const std::int64_t ch = g * 2 + i / 15;
          double v = (x.data()[base + i] - mean) / std::sqrt(var + 1e-5) * gamma[ch] + beta[ch];
          ref[base + i] = silu ? v / (1 + std::exp(-v)) : v;
        }
      }
    CHECK(rel_error(y.values(), ref) < 1e-6);
  }
  CHECK_THROWS_AS(carousel::cpu::group_norm(x, 4, 1e-5f, gamma.data(), beta.data()), std::invalid_argument);
}

TEST_CASE("Cpu.Ops.LayerNorm") {
  const std::int64_t rows = 4, width = 9;
  const auto x = random_values(rows * width, 10), g = random_values(width, 11), b = random_values(width, 12);
  std::vector<float> y(x.size());
  carousel::cpu::layer_norm_rows(x.data(), rows, width, g.data(), b.data(), 1e-5f, y.data());
  std::vector<double> ref(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (std::int64_t i = 0; i < width; ++i)
      mean += x[r * width + i];
    mean /= width;
    for (std::int64_t i = 0; i < width; ++i)
      var += (x[r * width + i] - mean) * (x[r * width + i] - mean);
    var /= width;
    for (std::int64_t i = 0; i < width; ++i)
      ref[r * width + i] = (x[r * width + i] - mean) / std::sqrt(var + 1e-5) * g[i] + b[i];
  }
  CHECK(rel_error(y, ref) < 1e-6);
}

TEST_CASE("Cpu.Ops.Activations") {
  for (float x : {-6.0f, -1.5f, -0.1f, 0.0f, 0.3f, 2.0f, 7.0f}) {
    CAPTURE(x);
    const double d = x;
    CHECK(carousel::cpu::gelu(x) == doctest::Approx(0.5 * d * (1 + std::erf(d / std::sqrt(2.0)))).epsilon(1e-6));
    CHECK(carousel::cpu::quick_gelu(x) == doctest::Approx(d / (1 + std::exp(-1.702 * d))).epsilon(1e-6));
    std::vector<float> v{x};
    carousel::cpu::silu_inplace(v);
    CHECK(v[0] == doctest::Approx(d / (1 + std::exp(-d))).epsilon(1e-6));
  }
}

TEST_CASE("Cpu.Ops.Attention") {
  const std::int64_t heads = 3, d = 4, c = heads * d;
  for (bool causal : {false, true}) {
    for (std::int64_t max_scores : {std::int64_t{1} << 22, std::int64_t{7}}) {
      CAPTURE(causal);
      CAPTURE(max_scores);
      const std::int64_t lq = causal ? 6 : 5, lk = causal ? 6 : 8;
      const auto q = random_values(lq * c, 13, 2.0f), k = random_values(lk * c, 14, 2.0f),
                 v = random_values(lk * c, 15);
      std::vector<float> out(lq * c);
      carousel::cpu::attention(q.data(), c, k.data(), c, v.data(), c, lq, lk, heads, d, causal, out.data(), c,
                               max_scores);
      std::vector<double> ref(out.size());
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < lq; ++i) {
          std::vector<double> s(lk);
          double mx = -1e300, sum = 0;
          const std::int64_t valid = causal ? i + 1 : lk;
          for (std::int64_t j = 0; j < valid; ++j) {
            double dot = 0;
            for (std::int64_t e = 0; e < d; ++e)
              dot += double(q[i * c + h * d + e]) * k[j * c + h * d + e];
            s[j] = dot / std::sqrt(double(d));
            mx = std::max(mx, s[j]);
          }
          for (std::int64_t j = 0; j < valid; ++j)
            sum += s[j] = std::exp(s[j] - mx);
          for (std::int64_t e = 0; e < d; ++e) {
            double acc = 0;
            for (std::int64_t j = 0; j < valid; ++j)
              acc += s[j] / sum * v[j * c + h * d + e];
            ref[i * c + h * d + e] = acc;
          }
        }
      CHECK(rel_error(out, ref) < 1e-5);
    }
  }
}

TEST_CASE("Cpu.Ops.UpsampleNearest") {
  const Tensor x = random_tensor({2, 3, 4, 3}, 16);
  for (auto [oh, ow] : {std::pair<std::int64_t, std::int64_t>{8, 6}, {7, 5}, {4, 3}}) {
    CAPTURE(oh);
    CAPTURE(ow);
    const Tensor y = carousel::cpu::upsample_nearest(x, oh, ow);
    std::vector<double> ref(static_cast<std::size_t>(y.numel()));
    for (std::int64_t p = 0; p < 6; ++p)
      for (std::int64_t oy = 0; oy < oh; ++oy)
        for (std::int64_t ox = 0; ox < ow; ++ox)
          ref[(p * oh + oy) * ow + ox] = x.data()[(p * 4 + oy * 4 / oh) * 3 + ox * 3 / ow];
    CHECK(rel_error(y.values(), ref) == 0.0);
  }
}

TEST_CASE("Cpu.Ops.ConcatChannels") {
  const Tensor a = random_tensor({2, 3, 2, 2}, 17), b = random_tensor({2, 1, 2, 2}, 18);
  const Tensor y = carousel::cpu::concat_channels(a, b);
  REQUIRE(y.shape() == Shape{2, 4, 2, 2});
  CHECK(std::memcmp(y.sample(1), a.sample(1), 12 * sizeof(float)) == 0);
  CHECK(std::memcmp(y.sample(1) + 12, b.sample(1), 4 * sizeof(float)) == 0);
  CHECK_THROWS_AS(carousel::cpu::concat_channels(a, Tensor({2, 1, 3, 2})), std::invalid_argument);
}

TEST_CASE("Cpu.Ops.TimestepEmbedding") {
  const std::vector<float> t{0.0f, 1.0f, 500.0f, 999.0f};
  for (bool flip : {true, false}) {
    for (float shift : {0.0f, 1.0f}) {
      const Tensor y = carousel::cpu::timestep_embedding(t, 10, flip, shift);
      REQUIRE(y.shape() == Shape{4, 10});
      for (std::size_t b = 0; b < t.size(); ++b)
        for (std::int64_t i = 0; i < 5; ++i) {
          const double e = t[b] * std::exp(-std::log(10000.0) * double(i) / (5.0 - shift));
          // |e| <= 999: float32 rounding of the argument alone moves sin/cos by up to ~1e-4.
          CHECK(std::fabs(y.sample(static_cast<std::int64_t>(b))[flip ? i : i + 5] - std::cos(e)) < 2e-4);
          CHECK(std::fabs(y.sample(static_cast<std::int64_t>(b))[flip ? i + 5 : i] - std::sin(e)) < 2e-4);
        }
    }
  }
}

TEST_CASE("Cpu.Detail.ParallelFor") {
  using carousel::cpu::detail::parallel_for;
  SUBCASE("every index exactly once, for any grain") {
    for (std::int64_t n : {0, 1, 7, 1000, 100003}) {
      for (std::int64_t grain : {1, 3, 1 << 20}) {
        std::vector<int> hits(static_cast<std::size_t>(n));
        parallel_for(n, grain, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t i = b; i < e; ++i)
            ++hits[static_cast<std::size_t>(i)];
        });
        CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      }
    }
  }
  SUBCASE("an exception reaches the caller, and the pool keeps working") {
    CHECK_THROWS_AS(parallel_for(1000, 1,
                                 [](std::int64_t b, std::int64_t) {
                                   if (b == 0) throw std::runtime_error("chunk failed");
                                 }),
                    std::runtime_error);
    std::atomic<std::int64_t> sum{0};
    parallel_for(1000, 1, [&](std::int64_t b, std::int64_t e) { sum += e - b; });
    CHECK(sum == 1000);
  }
  SUBCASE("concurrent callers") {
    std::vector<std::thread> threads;
    std::vector<std::int64_t> sums(4);
    for (std::size_t t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int round = 0; round < 50; ++round) {
          std::atomic<std::int64_t> sum{0};
          parallel_for(4096, 1, [&](std::int64_t b, std::int64_t e) { sum += e - b; });
          sums[t] += sum;
        }
      });
    for (auto& th : threads)
      th.join();
    for (auto s : sums)
      CHECK(s == 50 * 4096);
  }
}
