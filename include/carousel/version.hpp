#pragma once
/// \file carousel/version.hpp
/// The library version.

#define CAROUSEL_VERSION_MAJOR 0
#define CAROUSEL_VERSION_MINOR 1
#define CAROUSEL_VERSION_PATCH 0

namespace carousel {
/// The library version as text, e.g. "0.1.0".
inline constexpr const char* version = "0.1.0";
}  // namespace carousel
