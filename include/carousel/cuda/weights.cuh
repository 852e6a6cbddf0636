#pragma once
/// \file
/// carousel::cuda::WeightSource — where a module's parameters come from while it is built: a checkpoint
/// (StoreWeights over carousel::model::WeightStore) or deterministic random values (RandomWeights, the same values
/// as carousel::cpu::RandomWeights for the same seed and name, so both backends can build one random model).

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <carousel/model/weights.hpp>

namespace carousel::cuda {

/// Supplies each parameter tensor as float32 host values by checkpoint name and expected shape; modules walk their
/// tree and take every parameter exactly once, then upload it. Implementations need not be thread-safe.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  /// The row-major float32 values of `name`, which must have `shape`.
  /// \throws std::exception naming the tensor when it is missing or has another shape.
  virtual std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> shape) = 0;
};

/// Parameters read from a checkpoint through model::WeightStore::take (shape check, conversion to float32, marks the
/// tensor used for WeightStore::require_all_used()).
class StoreWeights final : public WeightSource {
 public:
  /// Reads from `store`, which must outlive this object.
  explicit StoreWeights(model::WeightStore& store) : store_(store) {}
  /// The stored tensor. \throws model::FormatError naming the tensor when missing or mis-shaped.
  std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> shape) override {
    return store_.take(name, shape);
  }

 private:
  model::WeightStore& store_;
};

/// Deterministic pseudo-random parameters, a function of the seed and the tensor name only: rank >= 2 uniform in
/// +-1/sqrt(fan_in); rank-1 "*.weight" 1 + uniform(+-0.1); other rank 1 uniform(+-0.1). Bit-identical to
/// carousel::cpu::RandomWeights (benchmarks and CPU-vs-GPU tests of shapes without a checkpoint).
class RandomWeights final : public WeightSource {
 public:
  /// A source whose values depend on `seed` and the name.
  explicit RandomWeights(std::uint64_t seed = 0) : seed_(seed) {}
  /// Random values of the given shape.
  std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> shape) override {
    std::int64_t numel = 1, fan_in = 1;
    std::size_t dim = 0;
    for (auto e : shape) {
      numel *= e;
      if (dim++ > 0) fan_in *= e;
    }
    std::uint64_t state = seed_ ^ 0x9E3779B97F4A7C15ull;
    for (char c : name)
      state = (state ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
    const bool weight = shape.size() >= 2;
    const bool norm_scale = shape.size() == 1 && name.ends_with(".weight");
    const float bound = weight ? 1.0f / std::sqrt(static_cast<float>(fan_in)) : 0.1f;
    std::vector<float> values(static_cast<std::size_t>(numel));
    for (auto& v : values) {
      state += 0x9E3779B97F4A7C15ull;  // splitmix64
      std::uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
      v = (norm_scale ? 1.0f : 0.0f) + bound * u;
    }
    return values;
  }

 private:
  std::uint64_t seed_;
};

}  // namespace carousel::cuda
