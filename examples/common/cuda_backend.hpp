#pragma once
/// \file common/cuda_backend.hpp
/// The examples' door to the CUDA backend: plain C++ declarations, so the examples themselves stay ordinary C++
/// translation units. Defined in cuda_backend.cu (compiled by nvcc, includes carousel/cuda/backend.cuh) when the build
/// has CAROUSEL_ENABLE_CUDA on, and in cuda_backend_none.cpp otherwise. A library user wanting CUDA does the same: one
/// .cu file of their own that constructs `cuda::Backend` into a `diffusion::AnyBackend` (docs/server.md).

#include <carousel/checkpoint/diffusers_folder.hpp>
#include <carousel/diffusion/any_backend.hpp>

#include <string>

namespace carousel::examples {

/// Whether this build has the CUDA backend and the machine has at least one CUDA device (cudaGetDeviceCount > 0).
/// Thread-safe.
bool cuda_available() noexcept;

/// One line on the CUDA situation, for messages: "1 CUDA device(s); device 0: NVIDIA H100 80GB HBM3",
/// "no CUDA device (cudaGetDeviceCount: no CUDA-capable device is detected)" or "built without CUDA". Thread-safe.
std::string cuda_status();

/// The examples' choices among cuda::BackendOptions (the `--cuda-*` flags; cuda_flag() in device.hpp parses them).
struct CudaBackendOptions {
  bool graphs = false;                  ///< BackendOptions::cuda_graphs: the UNet from CUDA graphs per batch bucket
  bool exhaustive_conv_search = false;  ///< BackendOptions::conv_search = exhaustive (cudnnFind on first use)
  bool vae_f32 = false;                 ///< BackendOptions::vae_dtype = f32 instead of the default f16
};

/// Loads the diffusers folder with `carousel::cuda::Backend` (float16 text encoder, UNet and VAE, and `options`) on
/// device 0, wrapped as an AnyBackend with device name "cuda". \throws std::runtime_error "built without CUDA" in a
/// build without the CUDA backend, or naming cuda_status() when no device is present; checkpoint::FormatError for a
/// broken folder; cuda::CudaError from the CUDA runtime.
diffusion::AnyBackend load_cuda_backend(const checkpoint::DiffusersFolder& folder,
                                        const CudaBackendOptions& options = {});

}  // namespace carousel::examples
