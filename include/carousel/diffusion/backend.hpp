#pragma once
/// \file carousel/diffusion/backend.hpp
/// `DiffusionBackend`: what a Pipeline needs of the network backend (the CPU one, the CUDA one, `AnyBackend`), and
/// the tensor type a backend works on.

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace carousel::diffusion {

/// What the Pipeline needs of a backend: a tokenizer, and three batched calls on host tensors of one tensor type T
/// (constructible from a shape and a float vector, with `values()`, `dim(i)`):
/// `encode_text(ids rows) -> [B, L, D]`, `unet(sample [B, C, h, w], timesteps[B], context [B, L, D]) -> [B, C, h, w]`,
/// `decode(latents [B, C, h, w]) -> images [B, 3, H, W]` in [-1, 1] (dividing by the VAE scaling factor itself), plus
/// `latent_channels()` and `vae_scale_factor()`. Batch items must not influence each other.
template <class B>
concept DiffusionBackend = requires(const B& b, std::span<const std::vector<std::int32_t>> ids, std::string_view text) {
  { b.tokenizer().encode(text) } -> std::convertible_to<std::vector<std::int32_t>>;
  b.encode_text(ids);
  b.unet(b.encode_text(ids), std::span<const float>{}, b.encode_text(ids));
  b.decode(b.encode_text(ids));
  { b.latent_channels() } -> std::convertible_to<std::int64_t>;
  { b.vae_scale_factor() } -> std::convertible_to<std::int64_t>;
  { b.encode_text(ids).values() } -> std::convertible_to<std::span<const float>>;
};

/// The tensor type of a DiffusionBackend (what its `encode_text` returns).
template <class B>
using backend_tensor_t =
    std::remove_cvref_t<decltype(std::declval<const B&>().encode_text(std::span<const std::vector<std::int32_t>>{}))>;

}  // namespace carousel::diffusion
