// carousel::examples::cuda_available / cuda_status / load_cuda_backend in a build without the CUDA backend
// (CAROUSEL_ENABLE_CUDA off or no CUDA toolkit): no device, and loading refuses.
#include <common/cuda_backend.hpp>

#include <stdexcept>
#include <string>

namespace carousel::examples {

bool cuda_available() noexcept {
  return false;
}

std::string cuda_status() {
  return "built without CUDA";
}

diffusion::AnyBackend load_cuda_backend(const checkpoint::DiffusersFolder&, const CudaBackendOptions&) {
  throw std::runtime_error("cannot load the CUDA backend: built without CUDA");
}

}  // namespace carousel::examples
