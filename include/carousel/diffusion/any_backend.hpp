#pragma once
/// \file carousel/diffusion/any_backend.hpp
/// `AnyBackend`: a type-erased DiffusionBackend, so that one `Pipeline<AnyBackend>` (and everything built on it, such
/// as a server) runs on whichever backend was chosen at run time (`carousel::cpu::Backend`, `carousel::cuda::Backend`,
/// a backend of your own).

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "carousel/diffusion/pipeline.hpp"
#include "carousel/tensor/host_tensor.hpp"

namespace carousel::diffusion {

/// A host tensor type that AnyBackend can copy to and from: constructible from (shape, values), with `shape()` (a
/// range of extents, outermost first) and `values()` (the row-major elements). `cpu::Tensor` and `cuda::HostTensor`
/// satisfy it.
template <class T>
concept ShapedHostTensor = std::constructible_from<T, std::vector<std::int64_t>, std::vector<float>> &&
    requires(const T& t) {
  { *std::begin(t.shape()) } -> std::convertible_to<std::int64_t>;
  std::end(t.shape());
  { t.values() } -> std::convertible_to<std::span<const float>>;
};

namespace detail {

// The erased interface: the DiffusionBackend calls on AnyBackend's tensor type.
struct AnyBackendConcept;
template <class B>
struct AnyBackendModel;

}  // namespace detail

/// A DiffusionBackend that holds any other DiffusionBackend chosen at run time, plus a short device name.
///
/// \code
///   const auto folder = checkpoint::DiffusersFolder::open(dir);
///   diffusion::AnyBackend backend("cpu", cpu::Backend(folder));        // a movable backend, by value
///   // or, in a .cu file: auto backend = diffusion::AnyBackend::make<cuda::Backend>("cuda", folder);
///   diffusion::Pipeline<diffusion::AnyBackend> pipeline(backend, diffusion::pipeline_scheduler_config(folder));
/// \endcode
///
/// Its tensor type is `tensor::HostTensor`, which both reference backends use, so their tensors pass through
/// untouched; a backend with another tensor type (a ShapedHostTensor) gets copies in and out (host memory copies,
/// small next to a UNet evaluation). Either way a Pipeline over an AnyBackend makes bitwise the images of a Pipeline
/// over the wrapped backend. Exceptions of the wrapped backend propagate unchanged.
///
/// Value semantics with shared ownership: copies share the one wrapped backend (immutable through AnyBackend, whose
/// calls are all const). Thread-safety: as the wrapped backend's const calls — `cpu::Backend` and `cuda::Backend`
/// may be called from several threads at once, so an AnyBackend over them may too. A default-constructed or
/// moved-from AnyBackend holds nothing; calling it is a precondition violation (checked: std::logic_error).
class AnyBackend {
 public:
  /// The host tensor at AnyBackend's boundary: tensor::HostTensor, the tensor type of both reference backends (a
  /// dense row-major float32 tensor; images NCHW, token sequences [B, L, C]).
  using Tensor = tensor::HostTensor;

  /// The wrapped backend's tokenizer, erased: `encode(text)` gives the token ids `encode_text` expects. A handle:
  /// valid while the AnyBackend it came from (or a copy of it) lives.
  class Tokenizer {
   public:
    /// The token ids of `text` (the wrapped tokenizer's `encode`; its exceptions propagate).
    std::vector<std::int32_t> encode(std::string_view text) const;

   private:
    friend class AnyBackend;
    explicit Tokenizer(const detail::AnyBackendConcept* backend) noexcept : backend_(backend) {}
    const detail::AnyBackendConcept* backend_;
  };

  /// Holds nothing (see the class comment); assign a real one before use.
  AnyBackend() = default;

  /// Wraps `backend` (moved in) under the device name `device` (e.g. "cpu", "cuda"). B must be a DiffusionBackend
  /// whose tensor type is a ShapedHostTensor.
  template <class B>
  requires(!std::same_as<std::remove_cvref_t<B>, AnyBackend>) AnyBackend(std::string device, B backend)
      : device_(std::move(device)),
        backend_(std::make_shared<const detail::AnyBackendModel<B>>(std::in_place, std::move(backend))) {}

  /// Constructs a B in place from `args` (no move: also for backends that cannot move) and wraps it under the device
  /// name `device`, e.g. `AnyBackend::make<cuda::Backend>("cuda", folder)`. Exceptions of B's constructor propagate.
  template <class B, class... Args>
  static AnyBackend make(std::string device, Args&&... args) {
    AnyBackend any;
    any.device_ = std::move(device);
    any.backend_ = std::make_shared<const detail::AnyBackendModel<B>>(std::in_place, std::forward<Args>(args)...);
    return any;
  }

  /// The device name given at construction ("" when holding nothing).
  const std::string& device() const noexcept { return device_; }
  /// Whether a backend is held.
  explicit operator bool() const noexcept { return backend_ != nullptr; }

  /// The wrapped backend's tokenizer.
  Tokenizer tokenizer() const { return Tokenizer(&held()); }
  /// Token id rows -> text embeddings [B, L, D].
  Tensor encode_text(std::span<const std::vector<std::int32_t>> token_ids) const;
  /// One UNet evaluation: sample [B, C, h, w], timesteps[B], context [B, L, D] -> model output [B, C, h, w].
  Tensor unet(const Tensor& sample, std::span<const float> timesteps, const Tensor& context) const;
  /// Scaled latents [B, C, h, w] -> images [B, 3, H, W] nominally in [-1, 1].
  Tensor decode(const Tensor& latents) const;
  /// Channels of the latents (the UNet's in_channels).
  std::int64_t latent_channels() const;
  /// Pixels per latent pixel along each side.
  std::int64_t vae_scale_factor() const;

 private:
  const detail::AnyBackendConcept& held() const {
    if (!backend_) throw std::logic_error("carousel::diffusion::AnyBackend: called while holding no backend");
    return *backend_;
  }

  std::string device_;
  std::shared_ptr<const detail::AnyBackendConcept> backend_;
};

namespace detail {

struct AnyBackendConcept {
  virtual ~AnyBackendConcept() = default;
  virtual std::vector<std::int32_t> tokenize(std::string_view text) const = 0;
  virtual AnyBackend::Tensor encode_text(std::span<const std::vector<std::int32_t>> token_ids) const = 0;
  virtual AnyBackend::Tensor unet(const AnyBackend::Tensor& sample, std::span<const float> timesteps,
                                  const AnyBackend::Tensor& context) const = 0;
  virtual AnyBackend::Tensor decode(const AnyBackend::Tensor& latents) const = 0;
  virtual std::int64_t latent_channels() const = 0;
  virtual std::int64_t vae_scale_factor() const = 0;
};

template <class B>
struct AnyBackendModel final : AnyBackendConcept {
  static_assert(DiffusionBackend<B>, "carousel::diffusion::AnyBackend: the backend lacks part of DiffusionBackend");
  static_assert(ShapedHostTensor<backend_tensor_t<B>>,
                "carousel::diffusion::AnyBackend: the backend's tensor type lacks part of ShapedHostTensor");
  using Native = backend_tensor_t<B>;

  template <class... Args>
  explicit AnyBackendModel(std::in_place_t, Args&&... args) : backend(std::forward<Args>(args)...) {}

  // The wrapped backend's tensors: passed through when they are tensor::HostTensor (cpu::Backend, cuda::Backend),
  // copied otherwise.
  static decltype(auto) to_native(const AnyBackend::Tensor& t) {
    if constexpr (std::same_as<Native, AnyBackend::Tensor>) {
      return (t);
    } else {
      return Native(t.shape(), std::vector<float>(t.values().begin(), t.values().end()));
    }
  }
  static AnyBackend::Tensor from_native(Native&& t) {
    if constexpr (std::same_as<Native, AnyBackend::Tensor>) {
      return std::move(t);
    } else {
      const std::span<const float> v = t.values();
      const auto& shape = t.shape();
      return AnyBackend::Tensor(std::vector<std::int64_t>(std::begin(shape), std::end(shape)),
                                std::vector<float>(v.begin(), v.end()));
    }
  }

  std::vector<std::int32_t> tokenize(std::string_view text) const override { return backend.tokenizer().encode(text); }
  AnyBackend::Tensor encode_text(std::span<const std::vector<std::int32_t>> token_ids) const override {
    return from_native(backend.encode_text(token_ids));
  }
  AnyBackend::Tensor unet(const AnyBackend::Tensor& sample, std::span<const float> timesteps,
                          const AnyBackend::Tensor& context) const override {
    return from_native(backend.unet(to_native(sample), timesteps, to_native(context)));
  }
  AnyBackend::Tensor decode(const AnyBackend::Tensor& latents) const override {
    return from_native(backend.decode(to_native(latents)));
  }
  std::int64_t latent_channels() const override { return backend.latent_channels(); }
  std::int64_t vae_scale_factor() const override { return backend.vae_scale_factor(); }

  B backend;
};

}  // namespace detail

inline std::vector<std::int32_t> AnyBackend::Tokenizer::encode(std::string_view text) const {
  return backend_->tokenize(text);
}

inline AnyBackend::Tensor AnyBackend::encode_text(std::span<const std::vector<std::int32_t>> token_ids) const {
  return held().encode_text(token_ids);
}

inline AnyBackend::Tensor AnyBackend::unet(const Tensor& sample, std::span<const float> timesteps,
                                           const Tensor& context) const {
  return held().unet(sample, timesteps, context);
}

inline AnyBackend::Tensor AnyBackend::decode(const Tensor& latents) const {
  return held().decode(latents);
}

inline std::int64_t AnyBackend::latent_channels() const {
  return held().latent_channels();
}

inline std::int64_t AnyBackend::vae_scale_factor() const {
  return held().vae_scale_factor();
}

static_assert(DiffusionBackend<AnyBackend>);

}  // namespace carousel::diffusion
