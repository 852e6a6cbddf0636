#pragma once
/// \file common/device.hpp
/// The examples' `--device auto|cpu|cuda`: resolving the request against what this build and machine have, and
/// loading a diffusers folder on the chosen device as a `diffusion::AnyBackend`.

#include <carousel/cpu/backend.hpp>
#include <carousel/diffusion/any_backend.hpp>
#include <carousel/model/diffusers_folder.hpp>
#include <common/cuda_backend.hpp>

#include <stdexcept>
#include <string>

namespace carousel::examples {

/// The requested device is known but cannot be used here (no GPU, or a build without CUDA). The message names the
/// flag, the reason and the way out.
class DeviceUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The device to run on for `--device requested`: "auto" gives "cuda" when cuda_available() and "cpu" otherwise;
/// "cpu" and "cuda" give themselves. \throws DeviceUnavailable for "cuda" without a usable CUDA device or CUDA build;
/// std::invalid_argument for any other name. Thread-safe.
inline std::string resolve_device(const std::string& requested) {
  if (requested == "auto") return cuda_available() ? "cuda" : "cpu";
  if (requested == "cpu") return requested;
  if (requested == "cuda") {
    if (!cuda_available()) {
      throw DeviceUnavailable("--device cuda: the CUDA backend cannot run here: " + cuda_status() +
                              "; use --device cpu (or auto)");
    }
    return requested;
  }
  throw std::invalid_argument("--device: expected auto, cpu or cuda, got '" + requested + "'");
}

/// Loads `folder` on `device` ("cpu" or "cuda", as resolve_device returns): `cpu::Backend` or, through
/// load_cuda_backend, `cuda::Backend`. \throws std::invalid_argument for another device name; what the backend's
/// loading throws (model::FormatError for a broken folder, ...).
inline diffusion::AnyBackend load_backend(const model::DiffusersFolder& folder, const std::string& device) {
  if (device == "cpu") return diffusion::AnyBackend("cpu", cpu::Backend(folder));
  if (device == "cuda") return load_cuda_backend(folder);
  throw std::invalid_argument("device: expected cpu or cuda, got '" + device + "'");
}

}  // namespace carousel::examples
