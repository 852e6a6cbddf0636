# carousel::cudnn (and carousel::cublas, cuBLAS with cuBLASLt, for a cuBLAS outside the CUDA toolkit): imported
# targets made from the paths found for cuDNN / cuBLAS. Used by the build (cmake/component-cuda.cmake) and, installed
# next to carouselConfig.cmake, by consumers of the package, which look the libraries up again on their own machine
# (CAROUSEL_CUDNN_ROOT, CAROUSEL_CUBLAS_ROOT, the toolkit's folders).
function(carousel_cuda_imported_targets)
  if(NOT TARGET carousel::cudnn AND CAROUSEL_CUDNN_INCLUDE_DIR AND CAROUSEL_CUDNN_LIBRARY)
    add_library(carousel::cudnn INTERFACE IMPORTED GLOBAL)
    set_target_properties(carousel::cudnn PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CAROUSEL_CUDNN_INCLUDE_DIR}"
                                                     INTERFACE_LINK_LIBRARIES "${CAROUSEL_CUDNN_LIBRARY}")
  endif()
  if(NOT TARGET carousel::cublas AND CAROUSEL_CUBLAS_INCLUDE_DIR AND CAROUSEL_CUBLAS_LIBRARY
     AND CAROUSEL_CUBLASLT_LIBRARY)
    add_library(carousel::cublas INTERFACE IMPORTED GLOBAL)
    set_target_properties(
      carousel::cublas PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CAROUSEL_CUBLAS_INCLUDE_DIR}"
                                  INTERFACE_LINK_LIBRARIES "${CAROUSEL_CUBLAS_LIBRARY};${CAROUSEL_CUBLASLT_LIBRARY}")
  endif()
endfunction()

# Finds the CUDA toolkit, cuDNN 9 and cuBLAS with cuBLASLt for carousel::cuda (the build and the installed package)
# and makes the imported targets; sets carousel_cuda_deps_FOUND.
macro(carousel_find_cuda_deps)
  set(carousel_cuda_deps_FOUND FALSE)
  find_package(CUDAToolkit QUIET)
  if(NOT DEFINED CAROUSEL_CUDNN_ROOT)
    set(CAROUSEL_CUDNN_ROOT "$ENV{CAROUSEL_CUDNN_ROOT}")
  endif()
  if(NOT DEFINED CAROUSEL_CUBLAS_ROOT)
    set(CAROUSEL_CUBLAS_ROOT "$ENV{CAROUSEL_CUBLAS_ROOT}")
  endif()
  if(CUDAToolkit_FOUND)
    find_path(CAROUSEL_CUDNN_INCLUDE_DIR cudnn.h
              HINTS ${CAROUSEL_CUDNN_ROOT} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
    find_library(CAROUSEL_CUDNN_LIBRARY NAMES cudnn libcudnn.so.9
                 HINTS ${CAROUSEL_CUDNN_ROOT} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
    if(NOT (TARGET CUDA::cublas AND TARGET CUDA::cublasLt))
      find_path(CAROUSEL_CUBLAS_INCLUDE_DIR cublas_v2.h HINTS ${CAROUSEL_CUBLAS_ROOT} PATH_SUFFIXES include)
      find_library(CAROUSEL_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 libcublas.so.12
                   HINTS ${CAROUSEL_CUBLAS_ROOT} PATH_SUFFIXES lib lib64)
      find_library(CAROUSEL_CUBLASLT_LIBRARY NAMES cublasLt libcublasLt.so.13 libcublasLt.so.12
                   HINTS ${CAROUSEL_CUBLAS_ROOT} PATH_SUFFIXES lib lib64)
    endif()
    carousel_cuda_imported_targets()
    if(TARGET carousel::cudnn AND ((TARGET CUDA::cublas AND TARGET CUDA::cublasLt) OR TARGET carousel::cublas))
      set(carousel_cuda_deps_FOUND TRUE)
    endif()
  endif()
endmacro()
