#pragma once
/// \file
/// carousel::checkpoint::WeightSource — where a module's parameters come from while a backend builds it: a checkpoint
/// (StoreWeights, over WeightStore) or deterministic random values (RandomWeights, for benchmarks and tests of shapes
/// that have no file). Backend-neutral: the CPU and CUDA backends walk their module trees over the same source, so
/// RandomWeights(seed) gives both backends the same model.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "carousel/checkpoint/weights.hpp"

namespace carousel::checkpoint {

/// Supplies each parameter tensor by its checkpoint name ("down_blocks.0.resnets.1.conv1.weight") and expected
/// shape. Modules walk their tree and ask for every parameter exactly once.
/// Implementations need not be thread-safe: a module tree is built on one thread.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  /// The float32 values (row-major) of parameter `name`, which must have `shape`.
  /// \throws std::exception naming the tensor when it is missing or has another shape.
  virtual std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> shape) = 0;
};

/// Parameters read from a checkpoint: forwards to WeightStore::take, which checks the shape, converts
/// to float32 and marks the tensor used (so WeightStore::require_all_used() can report leftovers afterwards).
class StoreWeights final : public WeightSource {
 public:
  /// Reads from `store`, which must outlive this object.
  explicit StoreWeights(checkpoint::WeightStore& store) : store_(store) {}

  /// The stored tensor. \throws checkpoint::FormatError naming the tensor when missing or mis-shaped.
  std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> shape) override {
    return store_.take(name, shape);
  }

 private:
  checkpoint::WeightStore& store_;
};

/// Deterministic pseudo-random parameters: each tensor's values depend only on the seed and the tensor's name.
/// Rank >= 2 (weights): uniform in +-1/sqrt(fan_in), fan_in = product of the trailing extents (torch's default
/// bound for Linear/Conv2d); rank 1 named "*.weight" (norm scales): 1 + uniform(+-0.1); other rank 1 (biases):
/// uniform(+-0.1). Numerically tame enough for benchmarks of deep models (activations stay finite).
class RandomWeights final : public WeightSource {
 public:
  /// A source whose values are a function of `seed` and the tensor name.
  explicit RandomWeights(std::uint64_t seed = 0) : seed_(seed) {}

  /// Random values of the given shape (never throws for a valid shape).
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

/// How `load_component` reads a component folder.
struct ComponentLoad {
  std::string_view variant{};                         ///< weight variant, as diffusers' `variant=` ("fp16" or empty)
  std::string_view missing_prefix{};                  ///< added to names that lack it (transformers' "text_model.")
  std::initializer_list<std::string_view> skipped{};  ///< prefixes of tensors left unread on purpose ("encoder.")
};

/// As load_component(dir, how, build) over an opened store (e.g. DiffusersFolder::open_weights, which also serves
/// single-file checkpoints); `how.variant` is not used.
template <class Build>
auto load_component(WeightStore store, const ComponentLoad& how, Build&& build) {
  if (!how.missing_prefix.empty()) store.add_missing_prefix(how.missing_prefix);
  for (std::string_view prefix : how.skipped)
    store.ignore_prefix(prefix);
  StoreWeights weights(store);
  auto built = build(static_cast<WeightSource&>(weights));
  store.require_all_used();
  return built;
}

/// Opens the weights of the component folder `dir`, builds the module tree with `build(WeightSource&)` and checks
/// that it read every tensor but the skipped ones; returns what `build` returned. Both backends' loaders use it.
/// \throws FormatError naming the file, field or tensor at fault, or listing the tensors left unread.
template <class Build>
auto load_component(const std::filesystem::path& dir, const ComponentLoad& how, Build&& build) {
  return load_component(WeightStore::open(dir, how.variant), how, std::forward<Build>(build));
}

}  // namespace carousel::checkpoint
