# carousel::diffusion — samplers, schedules, RNG, the Pipeline adapter (diffusion/) and the backend-neutral model
# format (checkpoint/: safetensors, diffusers folders and configs, CLIP tokenizer). Host-side C++ only.
find_package(nlohmann_json 3 CONFIG)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "carousel::diffusion needs nlohmann-json 3 (Debian: nlohmann-json3-dev); configure with "
                      "-DCAROUSEL_BUILD_DIFFUSION=OFF -DCAROUSEL_BUILD_CPU=OFF for the core alone")
endif()
file(GLOB_RECURSE CAROUSEL_DIFFUSION_HEADERS CONFIGURE_DEPENDS
     "${PROJECT_SOURCE_DIR}/include/carousel/diffusion/*.hpp" "${PROJECT_SOURCE_DIR}/include/carousel/checkpoint/*.hpp"
     "${PROJECT_SOURCE_DIR}/include/carousel/tensor/*.hpp" "${PROJECT_SOURCE_DIR}/include/carousel/nn/*.hpp")
add_library(carousel_diffusion INTERFACE)
add_library(carousel::diffusion ALIAS carousel_diffusion)
set_target_properties(carousel_diffusion PROPERTIES EXPORT_NAME diffusion)
target_sources(carousel_diffusion INTERFACE FILE_SET HEADERS BASE_DIRS include FILES ${CAROUSEL_DIFFUSION_HEADERS})
target_link_libraries(carousel_diffusion INTERFACE carousel nlohmann_json::nlohmann_json)
# Exported on purpose, the one flag consumers get: the samplers reproduce torch's float32 arithmetic bit for bit, and
# a fused multiply-add (GCC contracts by default where the target has FMA: aarch64, or x86-64 with -march=haswell and
# later) would round differently in the consumer's own translation units. See docs/architecture.md.
target_compile_options(carousel_diffusion INTERFACE $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-ffp-contract=off>)
list(APPEND CAROUSEL_EXPORTED_TARGETS carousel_diffusion)
