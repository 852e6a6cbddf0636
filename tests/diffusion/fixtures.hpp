#pragma once
// Shared helpers for the diffusion tests: reading tests/data/diffusion fixtures made by
// tools/make_sampler_fixtures.py (float32 arrays stored as concatenated 8-hex-digit bit patterns).

#include <bit>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace carousel::diffusion::test {

inline nlohmann::json load_fixture(const std::string& name) {
  const std::string path = std::string(CAROUSEL_TEST_DATA_DIR) + "/diffusion/" + name;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open fixture " + path);
  return nlohmann::json::parse(in);
}

inline std::vector<float> from_hex(const std::string& hex) {
  std::vector<float> out(hex.size() / 8);
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(std::stoul(hex.substr(i * 8, 8), nullptr, 16)));
  return out;
}

inline std::uint32_t bits(float f) {
  return std::bit_cast<std::uint32_t>(f);
}

// Number of values whose bit patterns differ.
inline std::size_t count_bit_mismatches(std::span<const float> a, std::span<const float> b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    n += bits(a[i]) != bits(b[i]) ? 1 : 0;
  return n;
}

// Largest |a - b| / |b| (values with |b| below `floor` use `floor` as the denominator).
inline double max_relative_error(std::span<const float> a, std::span<const float> b, double floor = 1e-6) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double ref = static_cast<double>(b[i]);
    const double err = std::fabs(static_cast<double>(a[i]) - ref) / std::fmax(std::fabs(ref), floor);
    if (!(err <= worst)) worst = err;
  }
  return worst;
}

// Largest |a - b|.
inline double max_abs_error(std::span<const float> a, std::span<const float> b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double err = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (!(err <= worst)) worst = err;
  }
  return worst;
}

}  // namespace carousel::diffusion::test
