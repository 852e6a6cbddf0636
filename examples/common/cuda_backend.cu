// carousel::examples::cuda_available / cuda_status / load_cuda_backend on the CUDA backend (builds with
// CAROUSEL_ENABLE_CUDA on; cuda_backend_none.cpp stands in otherwise).
#include <common/cuda_backend.hpp>

#include <cuda_runtime.h>
#include <carousel/cuda/backend.cuh>

#include <stdexcept>
#include <string>

namespace carousel::examples {

namespace {

// The device count, or the runtime's error (cleared, so that it does not linger as the "last error").
cudaError_t device_count(int& n) noexcept {
  n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    n = 0;
  }
  return err;
}

}  // namespace

bool cuda_available() noexcept {
  int n = 0;
  return device_count(n) == cudaSuccess && n > 0;
}

std::string cuda_status() {
  int n = 0;
  const cudaError_t err = device_count(n);
  if (err != cudaSuccess) return std::string("no CUDA device (cudaGetDeviceCount: ") + cudaGetErrorString(err) + ")";
  if (n == 0) return "no CUDA device (cudaGetDeviceCount: 0 devices)";
  cudaDeviceProp prop{};
  std::string name = "unknown";
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    name = prop.name;
  } else {
    static_cast<void>(cudaGetLastError());
  }
  return std::to_string(n) + " CUDA device(s); device 0: " + name;
}

diffusion::AnyBackend load_cuda_backend(const checkpoint::DiffusersFolder& folder, const CudaBackendOptions& options) {
  if (!cuda_available()) throw std::runtime_error("cannot load the CUDA backend: " + cuda_status());
  cuda::BackendOptions o;
  o.cuda_graphs = options.graphs;
  o.vae_dtype = options.vae_f32 ? cuda::DType::f32 : cuda::DType::f16;
  if (options.exhaustive_conv_search) o.conv_search = cuda::ConvSearch::exhaustive;
  return diffusion::AnyBackend::make<cuda::Backend>("cuda", folder, o);
}

}  // namespace carousel::examples
