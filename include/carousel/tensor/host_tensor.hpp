#pragma once
/// \file
/// carousel::tensor::HostTensor — a dense float32 host tensor (row-major; images are NCHW) owned by a std::vector: the
/// CPU backend's tensor (`cpu::Tensor`) and the host side of the CUDA backend (`cuda::HostTensor`).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace carousel::tensor {

/// A shape: extents from the outermost to the innermost dimension.
using Shape = std::vector<std::int64_t>;

/// Number of elements of a shape (1 for the scalar shape `{}`).
/// \throws std::invalid_argument when an extent is negative.
inline std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto e : shape) {
    if (e < 0) throw std::invalid_argument("carousel: negative tensor extent");
    n *= e;
  }
  return n;
}

/// Formats a shape as "[2, 4, 8, 8]" for error messages.
inline std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i)
    out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

/// A dense, contiguous, row-major float32 tensor. Images are NCHW, token sequences [B, L, C].
///
/// Dimension 0 is the batch: `sample(i)` addresses item i, and every CPU-backend op processes batch items
/// independently, so a batch item's result never depends on its neighbours.
/// Value semantics (copyable, movable); not synchronised: share a const HostTensor between threads freely, never
/// a HostTensor that one of them writes.
class HostTensor {
 public:
  /// An empty tensor of shape {0}.
  HostTensor() : shape_{0} {}

  /// A zero-filled tensor of the given shape.
  explicit HostTensor(Shape shape) : shape_(std::move(shape)), data_(static_cast<std::size_t>(shape_numel(shape_))) {}

  /// A tensor holding `data`. \throws std::invalid_argument when data.size() differs from the shape's numel.
  HostTensor(Shape shape, std::vector<float> data) : shape_(std::move(shape)), data_(std::move(data)) {
    if (static_cast<std::int64_t>(data_.size()) != shape_numel(shape_))
      throw std::invalid_argument("carousel::tensor::HostTensor: " + std::to_string(data_.size()) +
                                  " values do not fill shape " + shape_string(shape_));
  }

  /// The shape.
  const Shape& shape() const noexcept { return shape_; }
  /// Number of dimensions.
  std::size_t rank() const noexcept { return shape_.size(); }
  /// Extent of dimension i (negative i counts from the end). Precondition: -rank <= i < rank.
  std::int64_t dim(std::ptrdiff_t i) const {
    const auto r = static_cast<std::ptrdiff_t>(shape_.size());
    return shape_.at(static_cast<std::size_t>(i < 0 ? i + r : i));
  }
  /// Number of elements.
  std::int64_t numel() const noexcept { return static_cast<std::int64_t>(data_.size()); }
  /// Elements per batch item (numel / dim(0)); 0 for an empty batch.
  std::int64_t sample_numel() const { return shape_.empty() || shape_[0] == 0 ? 0 : numel() / shape_[0]; }

  /// Contiguous element storage.
  float* data() noexcept { return data_.data(); }
  /// Contiguous element storage.
  const float* data() const noexcept { return data_.data(); }
  /// The elements as a span.
  std::span<float> values() noexcept { return data_; }
  /// The elements as a span.
  std::span<const float> values() const noexcept { return data_; }
  /// First element of batch item i. Precondition: 0 <= i < dim(0).
  float* sample(std::int64_t i) noexcept { return data_.data() + i * sample_numel(); }
  /// First element of batch item i. Precondition: 0 <= i < dim(0).
  const float* sample(std::int64_t i) const noexcept { return data_.data() + i * sample_numel(); }

  /// The same elements under another shape of equal numel. \throws std::invalid_argument otherwise.
  HostTensor reshaped(Shape shape) const& { return HostTensor(std::move(shape), data_); }
  /// The same elements under another shape of equal numel, without a copy.
  HostTensor reshaped(Shape shape) && { return HostTensor(std::move(shape), std::move(data_)); }

  /// Moves the storage out (the tensor is left empty).
  std::vector<float> release() && {
    shape_ = {0};
    return std::move(data_);
  }

 private:
  Shape shape_;
  std::vector<float> data_;
};

}  // namespace carousel::tensor
