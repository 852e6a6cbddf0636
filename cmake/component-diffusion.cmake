# carousel::diffusion — samplers, schedules, RNG, the Pipeline adapter (diffusion/) and the backend-neutral model
# format (checkpoint/: safetensors, diffusers folders and configs, CLIP tokenizer). Host-side C++ only.
find_package(nlohmann_json 3 REQUIRED CONFIG)
file(GLOB_RECURSE CAROUSEL_DIFFUSION_HEADERS CONFIGURE_DEPENDS
     "${PROJECT_SOURCE_DIR}/include/carousel/diffusion/*.hpp" "${PROJECT_SOURCE_DIR}/include/carousel/checkpoint/*.hpp"
     "${PROJECT_SOURCE_DIR}/include/carousel/tensor/*.hpp")
add_library(carousel_diffusion INTERFACE)
add_library(carousel::diffusion ALIAS carousel_diffusion)
set_target_properties(carousel_diffusion PROPERTIES EXPORT_NAME diffusion)
target_sources(carousel_diffusion INTERFACE FILE_SET HEADERS BASE_DIRS include FILES ${CAROUSEL_DIFFUSION_HEADERS})
target_link_libraries(carousel_diffusion INTERFACE carousel nlohmann_json::nlohmann_json)
# The samplers reproduce torch's float32 arithmetic bit for bit: a fused multiply-add would round differently.
target_compile_options(carousel_diffusion INTERFACE $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-ffp-contract=off>)
list(APPEND CAROUSEL_EXPORTED_TARGETS carousel_diffusion)
