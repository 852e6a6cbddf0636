# carousel::cuda — the reference CUDA backend (include/carousel/cuda/*.cuh): device tensors, cuBLAS(Lt) GEMMs, cuDNN
# convolutions, own kernels, the UNet / CLIP / VAE modules and carousel::cuda::Backend.
#
# CAROUSEL_ENABLE_CUDA defaults to ON when a CUDA compiler is found and switches itself off (with a message) when
# cuBLAS or cuDNN is missing, so a machine without CUDA configures and builds everything else.
# CMAKE_CUDA_ARCHITECTURES defaults to 90 (H100/H200); override it on the command line.
# cuDNN has no CMake package: it is looked up with find_path/find_library in the toolkit's folders, in
# CAROUSEL_CUDNN_ROOT (cache variable or environment variable), e.g. a pip wheel's site-packages/nvidia/cudnn.
include(CheckLanguage)
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(ENV{CUDACXX} /usr/local/cuda/bin/nvcc)  # the toolkit's default location, often not on PATH
endif()
check_language(CUDA)
set(carousel_cuda_default OFF)
if(CMAKE_CUDA_COMPILER)
  set(carousel_cuda_default ON)
endif()
option(CAROUSEL_ENABLE_CUDA "Build the CUDA backend (carousel::cuda)" ${carousel_cuda_default})
set(CAROUSEL_CUDNN_ROOT "$ENV{CAROUSEL_CUDNN_ROOT}" CACHE PATH "Prefix of a cuDNN 9 installation (include/, lib/)")
set(CAROUSEL_CUBLAS_ROOT "$ENV{CAROUSEL_CUBLAS_ROOT}" CACHE PATH
    "Prefix of a cuBLAS + cuBLASLt installation when it is not inside the CUDA toolkit (include/, lib/)")

if(CAROUSEL_ENABLE_CUDA AND NOT CAROUSEL_BUILD_DIFFUSION)
  message(STATUS "carousel: the CUDA backend needs CAROUSEL_BUILD_DIFFUSION; it is not built")
  set(CAROUSEL_ENABLE_CUDA OFF CACHE BOOL "Build the CUDA backend (carousel::cuda)" FORCE)
endif()
if(CAROUSEL_ENABLE_CUDA AND NOT CMAKE_CUDA_COMPILER)
  message(STATUS "carousel: no CUDA compiler found; the CUDA backend is not built")
  set(CAROUSEL_ENABLE_CUDA OFF CACHE BOOL "Build the CUDA backend (carousel::cuda)" FORCE)
endif()

if(CAROUSEL_ENABLE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90)
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # cuDNN and cuBLAS are found, and wrapped as imported targets (carousel::cudnn, carousel::cublas for a cuBLAS outside
  # the toolkit), by the same code the installed package uses on a consumer's machine.
  include("${PROJECT_SOURCE_DIR}/cmake/carousel-cuda-deps.cmake")
  carousel_find_cuda_deps()
  if(NOT carousel_cuda_deps_FOUND)
    message(WARNING "carousel: cuDNN (${CAROUSEL_CUDNN_INCLUDE_DIR}, ${CAROUSEL_CUDNN_LIBRARY}) or cuBLAS "
                    "(${CAROUSEL_CUBLAS_INCLUDE_DIR}, ${CAROUSEL_CUBLAS_LIBRARY}, ${CAROUSEL_CUBLASLT_LIBRARY}) not "
                    "found; the CUDA backend is not built (set CAROUSEL_CUDNN_ROOT / CAROUSEL_CUBLAS_ROOT)")
    set(CAROUSEL_ENABLE_CUDA OFF CACHE BOOL "Build the CUDA backend (carousel::cuda)" FORCE)
  endif()
endif()

if(CAROUSEL_ENABLE_CUDA)
  file(GLOB_RECURSE CAROUSEL_CUDA_HEADERS CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/include/carousel/cuda/*.cuh")
  add_library(carousel_cuda INTERFACE)
  add_library(carousel::cuda ALIAS carousel_cuda)
  set_target_properties(carousel_cuda PROPERTIES EXPORT_NAME cuda)
  target_sources(carousel_cuda INTERFACE FILE_SET HEADERS BASE_DIRS include FILES ${CAROUSEL_CUDA_HEADERS})
  # C++20 for CUDA sources by flag: CMake 3.25 does not know nvcc 13's cuda_std_20 feature.
  target_compile_options(carousel_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  target_compile_features(carousel_cuda INTERFACE cxx_std_20)
  # The installed carousel::cuda names carousel::cudnn (and carousel::cublas, cuBLAS with cuBLASLt), which
  # carouselConfig.cmake makes again.
  if(TARGET CUDA::cublas AND TARGET CUDA::cublasLt)
    set(carousel_cublas CUDA::cublas CUDA::cublasLt)
  else()
    set(carousel_cublas carousel::cublas)
  endif()
  target_link_libraries(carousel_cuda INTERFACE carousel_diffusion CUDA::cudart ${carousel_cublas} carousel::cudnn)
  list(APPEND CAROUSEL_EXPORTED_TARGETS carousel_cuda)
endif()
