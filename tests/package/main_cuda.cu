// Builds against the installed carousel::cuda: the CUDA backend satisfies the Pipeline's backend concept, and the
// program links against cudart, cuBLAS and cuDNN. Run, it says whether a GPU is there.
#include <carousel/cuda/backend.cuh>
#include <carousel/diffusion/pipeline.hpp>

#include <cstdio>

static_assert(carousel::diffusion::DiffusionBackend<carousel::cuda::Backend>);

int main() {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  std::printf("carousel::cuda consumer: %d CUDA device(s)%s\n", status == cudaSuccess ? devices : 0,
              status == cudaSuccess ? "" : " (no usable driver)");
  return 0;
}
