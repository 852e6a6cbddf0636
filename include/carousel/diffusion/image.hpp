#pragma once
/// \file carousel/diffusion/image.hpp
/// An 8-bit RGB image, and the conversion from a decoder's [-1, 1] output as diffusers does it.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace carousel::diffusion {

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (R, G, B).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;  ///< width * height * 3 bytes
};

/// Converts one decoded image (planar CHW, 3 channels, nominally in [-1, 1]) to RGB8 like diffusers' image processor:
/// x = clamp(x / 2 + 0.5, 0, 1); byte = round_half_even(x * 255). Throws `std::invalid_argument` on a size mismatch,
/// and `std::domain_error` when a value is NaN or infinite (broken weights or configuration: such a value has no
/// byte, and the request must fail rather than answer a black image).
inline Image to_rgb8(std::span<const float> chw, int width, int height) {
  const auto plane = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
  if (width <= 0 || height <= 0 || chw.size() != 3 * plane) {
    throw std::invalid_argument("to_rgb8: expected 3 x " + std::to_string(height) + " x " + std::to_string(width) +
                                " values, got " + std::to_string(chw.size()));
  }
  Image img{width, height, std::vector<std::uint8_t>(3 * plane)};
  for (std::size_t c = 0; c < 3; ++c) {
    for (std::size_t p = 0; p < plane; ++p) {
      const float v = chw[c * plane + p];
      if (!std::isfinite(v)) {
        throw std::domain_error(
            "the decoded image has non-finite values (NaN or infinity): the model's weights or "
            "configuration are broken");
      }
      float x = v / 2.0f + 0.5f;
      x = x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x);
      img.rgb[p * 3 + c] = static_cast<std::uint8_t>(std::nearbyint(x * 255.0f));
    }
  }
  return img;
}

}  // namespace carousel::diffusion
