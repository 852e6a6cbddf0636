#pragma once
/// \file
/// carousel::cpu::Tensor — the CPU backend's tensor: tensor::HostTensor, a dense float32 tensor (row-major; images are
/// NCHW) owned by a std::vector.

#include "carousel/tensor/host_tensor.hpp"

namespace carousel::cpu {

using tensor::Shape;
using tensor::shape_numel;
using tensor::shape_string;
/// The CPU backend's tensor.
using Tensor = tensor::HostTensor;

}  // namespace carousel::cpu
