#pragma once
// Included once by each GPU test executable: before main runs, exits with 77 (ctest "skipped") when no CUDA device
// is usable, so CPU-only machines report the GPU tests as skipped rather than failed.

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

namespace carousel::cuda::test {

struct GpuGuard {
  GpuGuard() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      std::fprintf(stderr, "no CUDA device: GPU tests skipped\n");
      std::exit(77);
    }
  }
};

inline const GpuGuard gpu_guard;

}  // namespace carousel::cuda::test
