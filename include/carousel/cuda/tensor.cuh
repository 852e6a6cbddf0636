#pragma once
/// \file
/// carousel::cuda::HostTensor (the float32 host tensor at the backend's boundary) and DeviceTensor (a dense device
/// tensor of float32 or float16 values in a DeviceBuffer).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <carousel/cuda/allocator.cuh>
#include <carousel/cuda/check.cuh>
#include <carousel/tensor/host_tensor.hpp>

namespace carousel::cuda {

using tensor::Shape;
using tensor::shape_numel;
using tensor::shape_string;
/// The float32 host tensor at the backend's boundary (images NCHW, token sequences [B, L, C]): the same type as
/// cpu::Tensor, so it satisfies the diffusion Pipeline's tensor requirements.
using HostTensor = tensor::HostTensor;

/// Element type of a DeviceTensor.
enum class DType : std::uint8_t {
  f32,  ///< float
  f16,  ///< __half (IEEE binary16); arithmetic accumulates in float32
};

/// Bytes per element.
constexpr std::size_t dtype_size(DType t) noexcept {
  return t == DType::f32 ? 4 : 2;
}

/// A dense, contiguous, row-major device tensor of one DType. The backend keeps images NHWC ([B, H, W, C]) on the
/// device so that cuDNN's tensor-core convolutions and the token view of a transformer ([B, H*W, C]) need no
/// transposes. Move-only; not synchronised (the owning Engine's stream orders all work on it).
class DeviceTensor {
 public:
  DeviceTensor() = default;
  /// Uninitialised storage for `shape` from `allocator` (nullptr: cudaMalloc, for weights).
  DeviceTensor(Shape shape, DType dtype, CachingAllocator* allocator)
      : shape_(std::move(shape)),
        dtype_(dtype),
        buffer_(static_cast<std::size_t>(shape_numel(shape_)) * dtype_size(dtype), allocator) {}

  /// The shape.
  const Shape& shape() const noexcept { return shape_; }
  /// Extent of dimension i (negative i counts from the end).
  std::int64_t dim(std::ptrdiff_t i) const {
    return shape_.at(static_cast<std::size_t>(i < 0 ? i + static_cast<std::ptrdiff_t>(shape_.size()) : i));
  }
  /// Number of dimensions.
  std::size_t rank() const noexcept { return shape_.size(); }
  /// Number of elements.
  std::int64_t numel() const { return shape_numel(shape_); }
  /// The element type.
  DType dtype() const noexcept { return dtype_; }
  /// Device address of the first element.
  void* data() const noexcept { return buffer_.get(); }
  /// Typed device address. Precondition: T matches dtype() (float or __half).
  template <class T>
  T* as() const noexcept {
    return static_cast<T*>(buffer_.get());
  }
  /// Size in bytes.
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  /// The same storage under another shape of equal numel. \throws std::invalid_argument otherwise.
  DeviceTensor reshaped(Shape shape) && {
    if (shape_numel(shape) != numel())
      throw std::invalid_argument("carousel::cuda::DeviceTensor: cannot reshape " + shape_string(shape_) + " to " +
                                  shape_string(shape));
    shape_ = std::move(shape);
    return std::move(*this);
  }

 private:
  Shape shape_{0};
  DType dtype_ = DType::f32;
  DeviceBuffer buffer_;
};

/// Host float32 values converted to `dtype` in host memory (bytes ready for a copy to the device).
inline std::vector<unsigned char> to_dtype_bytes(std::span<const float> values, DType dtype) {
  std::vector<unsigned char> bytes(values.size() * dtype_size(dtype));
  if (dtype == DType::f32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    auto* h = reinterpret_cast<__half*>(bytes.data());
    for (std::size_t i = 0; i < values.size(); ++i)
      h[i] = __float2half_rn(values[i]);
  }
  return bytes;
}

/// A weight-style tensor (cudaMalloc'd, not from a cache) holding `values` converted to `dtype`. Synchronous: the
/// values are on the device when it returns, so any stream (the Engines' are non-blocking) may read them.
inline DeviceTensor upload_weight(std::span<const float> values, Shape shape, DType dtype) {
  if (static_cast<std::int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("carousel::cuda::upload_weight: " + std::to_string(values.size()) +
                                " values do not fill shape " + shape_string(shape));
  DeviceTensor t(std::move(shape), dtype, nullptr);
  const auto bytes = to_dtype_bytes(values, dtype);
  CAROUSEL_CUDA_CHECK(cudaMemcpy(t.data(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  // A pageable host-to-device cudaMemcpy may return before its DMA has finished, and non-blocking streams do not
  // wait for the default stream it ran on: wait for it here.
  CAROUSEL_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  return t;
}

}  // namespace carousel::cuda
