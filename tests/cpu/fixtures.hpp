// Shared helpers of the CPU-backend tests: reference tensors written by tools/make_cpu_fixtures.py and the
// comparison norm.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <carousel/checkpoint/safetensors.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu::test {

inline std::filesystem::path data_dir() {
  return CAROUSEL_TEST_DATA_DIR;
}
inline std::filesystem::path model_dir(const std::string& name) {
  return data_dir() / "models" / name;
}

// tests/data/cpu/<model>.safetensors
class Reference {
 public:
  explicit Reference(const std::string& model)
      : file_(checkpoint::SafetensorsFile::open(data_dir() / "cpu" / (model + ".safetensors"))) {}

  Tensor tensor(const std::string& name) const {
    const auto* info = file_.find(name);
    REQUIRE_MESSAGE(info != nullptr, "fixture tensor " << name);
    return Tensor(Shape(info->shape.begin(), info->shape.end()), file_.to_float(*info));
  }

  // I32 [B, L] -> rows
  std::vector<std::vector<std::int32_t>> ids(const std::string& name) const {
    const auto* info = file_.find(name);
    REQUIRE(info != nullptr);
    REQUIRE(info->dtype == checkpoint::DType::i32);
    const auto rows = static_cast<std::size_t>(info->shape[0]), len = static_cast<std::size_t>(info->shape[1]);
    std::vector<std::vector<std::int32_t>> out(rows, std::vector<std::int32_t>(len));
    const auto bytes = file_.bytes(*info);
    for (std::size_t r = 0; r < rows; ++r)
      std::memcpy(out[r].data(), bytes.data() + r * len * 4, len * 4);
    return out;
  }

 private:
  checkpoint::SafetensorsFile file_;
};

// The comparison used for every model output: norm-wise max|a-b| / max|b| <= rel, and element-wise
// |a-b| <= rel * |b| + floor * max|b| (the floor keeps near-zero elements from demanding impossible relative accuracy).
inline void check_close(const Tensor& actual, const Tensor& expected, double rel = 1e-4, double floor = 1e-5) {
  REQUIRE(actual.shape() == expected.shape());
  double max_diff = 0.0, max_ref = 0.0;
  for (std::int64_t i = 0; i < expected.numel(); ++i)
    max_ref = std::max(max_ref, std::fabs(double(expected.data()[i])));
  std::int64_t bad = 0;
  for (std::int64_t i = 0; i < expected.numel(); ++i) {
    const double a = actual.data()[i], b = expected.data()[i], d = std::fabs(a - b);
    max_diff = std::max(max_diff, d);
    if (!(d <= rel * std::fabs(b) + floor * max_ref)) ++bad;
  }
  MESSAGE("max|a-b| = " << max_diff << ", max|b| = " << max_ref << ", relative " << max_diff / max_ref);
  CHECK(max_diff <= rel * max_ref);
  CHECK(bad == 0);
}

}  // namespace carousel::cpu::test
