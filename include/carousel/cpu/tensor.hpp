#pragma once
/// \file
/// carousel::cpu::Tensor — the CPU backend's tensor: model::HostTensor, a dense float32 tensor (row-major; images are
/// NCHW) owned by a std::vector.

#include "carousel/model/host_tensor.hpp"

namespace carousel::cpu {

using model::Shape;
using model::shape_numel;
using model::shape_string;
/// The CPU backend's tensor.
using Tensor = model::HostTensor;

}  // namespace carousel::cpu
