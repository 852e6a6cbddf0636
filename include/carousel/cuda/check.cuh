#pragma once
/// \file
/// carousel::cuda::CudaError and the checking macros every CUDA, cuBLAS and cuDNN call goes through:
/// CAROUSEL_CUDA_CHECK, CAROUSEL_CUBLAS_CHECK, CAROUSEL_CUDNN_CHECK. A failing call throws with file:line, the
/// expression and the library's own error string.

#include <stdexcept>
#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

namespace carousel::cuda {

/// Thrown by the checking macros: a CUDA runtime, cuBLAS or cuDNN call returned an error.
class CudaError : public std::runtime_error {
 public:
  /// `what()` is "file:line: expression failed: library error string".
  CudaError(const char* file, int line, const char* expression, const std::string& error)
      : std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expression + " failed: " + error) {}
};

namespace detail {

inline const char* cublas_status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "unknown cuBLAS status";
  }
}

inline void check_cuda(cudaError_t e, const char* file, int line, const char* expr) {
  if (e != cudaSuccess)
    throw CudaError(file, line, expr, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
}
inline void check_cublas(cublasStatus_t s, const char* file, int line, const char* expr) {
  if (s != CUBLAS_STATUS_SUCCESS) throw CudaError(file, line, expr, cublas_status_string(s));
}
inline void check_cudnn(cudnnStatus_t s, const char* file, int line, const char* expr) {
  if (s != CUDNN_STATUS_SUCCESS) throw CudaError(file, line, expr, cudnnGetErrorString(s));
}

}  // namespace detail

}  // namespace carousel::cuda

/// Evaluates a CUDA runtime call; throws carousel::cuda::CudaError (file:line, expression, error name and string)
/// unless it returns cudaSuccess.
#define CAROUSEL_CUDA_CHECK(expr) ::carousel::cuda::detail::check_cuda((expr), __FILE__, __LINE__, #expr)
/// Evaluates a cuBLAS / cuBLASLt call; throws carousel::cuda::CudaError unless it returns CUBLAS_STATUS_SUCCESS.
#define CAROUSEL_CUBLAS_CHECK(expr) ::carousel::cuda::detail::check_cublas((expr), __FILE__, __LINE__, #expr)
/// Evaluates a cuDNN call; throws carousel::cuda::CudaError unless it returns CUDNN_STATUS_SUCCESS.
#define CAROUSEL_CUDNN_CHECK(expr) ::carousel::cuda::detail::check_cudnn((expr), __FILE__, __LINE__, #expr)
