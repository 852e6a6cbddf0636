# carousel_sd_server_lib: the header-only server class of carousel-sd-server (examples/sd_server/server.hpp) with its
# dependencies, for the binary (examples/sd_server) and its integration tests (tests/server). No backend: the server
# runs the diffusion::AnyBackend its user loads (the binary through carousel_examples_common, the tests on the CPU).
# Included from both: the packages are found in each including directory (imported targets are directory-scoped), the
# target is defined once.
# Debian's libcpp-httplib-dev (0.11) ships a compiled library with a pkg-config file but no CMake package, so a CMake
# package is used when present and pkg-config otherwise.
find_package(nlohmann_json REQUIRED CONFIG)
find_package(PNG REQUIRED)
find_package(httplib CONFIG QUIET)
if(NOT TARGET httplib::httplib)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(CPP_HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
endif()
if(NOT TARGET carousel_sd_server_lib)
  add_library(carousel_sd_server_lib INTERFACE)
  if(TARGET httplib::httplib)
    target_link_libraries(carousel_sd_server_lib INTERFACE httplib::httplib)
  else()
    target_link_libraries(carousel_sd_server_lib INTERFACE PkgConfig::CPP_HTTPLIB)
  endif()
  target_include_directories(carousel_sd_server_lib INTERFACE "${CMAKE_CURRENT_LIST_DIR}/..")
  target_link_libraries(carousel_sd_server_lib INTERFACE carousel::diffusion nlohmann_json::nlohmann_json PNG::PNG)
endif()
