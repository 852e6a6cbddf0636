# carousel::cpu — the reference CPU backend (tensors, ops, CLIP text tower, UNet, VAE decoder) on OpenBLAS.
set(BLA_VENDOR OpenBLAS)
find_package(BLAS)
if(NOT BLAS_FOUND)
  message(FATAL_ERROR "carousel::cpu needs OpenBLAS (Debian: libopenblas-dev); configure with "
                      "-DCAROUSEL_BUILD_CPU=OFF to build without the CPU backend")
endif()
file(GLOB_RECURSE CAROUSEL_CPU_HEADERS CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/include/carousel/cpu/*.hpp")
add_library(carousel_cpu INTERFACE)
add_library(carousel::cpu ALIAS carousel_cpu)
set_target_properties(carousel_cpu PROPERTIES EXPORT_NAME cpu)
target_sources(carousel_cpu INTERFACE FILE_SET HEADERS BASE_DIRS include FILES ${CAROUSEL_CPU_HEADERS})
target_link_libraries(carousel_cpu INTERFACE carousel_diffusion BLAS::BLAS)
list(APPEND CAROUSEL_EXPORTED_TARGETS carousel_cpu)
