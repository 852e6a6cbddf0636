#pragma once
/// \file common/device.hpp
/// The examples' `--device auto|cpu|cuda`: resolving the request against what this build and machine have, and
/// loading a diffusers folder on the chosen device as a `diffusion::AnyBackend`.

#include <carousel/checkpoint/diffusers_folder.hpp>
#include <carousel/cpu/backend.hpp>
#include <carousel/diffusion/any_backend.hpp>
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

/// The `--cuda-*` flags both examples take (they matter only when the device is cuda):
///   --cuda-graphs on|off                      the UNet from CUDA graphs per batch bucket (default off)
///   --cuda-conv-search heuristic|exhaustive   cuDNN algorithms from its heuristic (default) or timed on first use
///   --cuda-vae f16|f32                        the VAE decode in float16 (default, as diffusers' SD pipelines) or
///                                             float32
inline constexpr const char* cuda_flags_usage =
    "[--cuda-graphs on|off] [--cuda-conv-search heuristic|exhaustive] [--cuda-vae f16|f32]";

/// Applies `flag value` to `options` when `flag` is one of the `--cuda-*` flags and returns true; returns false for
/// any other flag. \throws std::invalid_argument naming the flag, the choices and the value for a bad value.
inline bool cuda_flag(const std::string& flag, const std::string& value, CudaBackendOptions& options) {
  const auto choose = [&](const char* off, const char* on) {
    if (value != off && value != on)
      throw std::invalid_argument(flag + ": expected " + off + " or " + on + ", got '" + value + "'");
    return value == on;
  };
  if (flag == "--cuda-graphs") {
    options.graphs = choose("off", "on");
  } else if (flag == "--cuda-conv-search") {
    options.exhaustive_conv_search = choose("heuristic", "exhaustive");
  } else if (flag == "--cuda-vae") {
    options.vae_f32 = choose("f16", "f32");
  } else {
    return false;
  }
  return true;
}

/// Loads `folder` on `device` ("cpu" or "cuda", as resolve_device returns): `cpu::Backend` or, through
/// load_cuda_backend with `cuda_options`, `cuda::Backend`. \throws std::invalid_argument for another device name;
/// what the backend's loading throws (checkpoint::FormatError for a broken folder, ...).
inline diffusion::AnyBackend load_backend(const checkpoint::DiffusersFolder& folder, const std::string& device,
                                          const CudaBackendOptions& cuda_options = {}) {
  if (device == "cpu") return diffusion::AnyBackend("cpu", cpu::Backend(folder));
  if (device == "cuda") return load_cuda_backend(folder, cuda_options);
  throw std::invalid_argument("device: expected cpu or cuda, got '" + device + "'");
}

}  // namespace carousel::examples
