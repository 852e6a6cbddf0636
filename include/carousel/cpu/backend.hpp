#pragma once
/// \file
/// carousel::cpu::Backend — a whole diffusers Stable Diffusion folder (text_encoder/, unet/, optional vae/) on the CPU,
/// behind the small interface the diffusion Pipeline drives: encode_text, unet, decode. Also the component loaders
/// (load_unet, load_text_encoder, load_vae_decoder).

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <carousel/checkpoint/clip_text_config.hpp>
#include <carousel/checkpoint/clip_tokenizer.hpp>
#include <carousel/checkpoint/diffusers_folder.hpp>
#include <carousel/checkpoint/format_error.hpp>
#include <carousel/checkpoint/unet_config.hpp>
#include <carousel/checkpoint/vae_config.hpp>
#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/checkpoint/weights.hpp>
#include <carousel/cpu/batch_mode.hpp>
#include <carousel/cpu/clip_text.hpp>
#include <carousel/cpu/tensor.hpp>
#include <carousel/cpu/unet.hpp>
#include <carousel/cpu/vae.hpp>

namespace carousel::cpu {

/// Builds the UNet from `weights` (a component's store: DiffusersFolder::open_weights; converted to float32).
/// \throws checkpoint::FormatError naming the file, field or tensor when the folder is incomplete, a tensor is missing,
///         mis-shaped or left over, or the config is unsupported.
inline UNet2DConditionModel load_unet(checkpoint::WeightStore weights, const checkpoint::UNetConfig& config) {
  return checkpoint::load_component(std::move(weights), {},
                                    [&](checkpoint::WeightSource& w) { return UNet2DConditionModel(config, w); });
}

/// As load_unet(weights, config) with the weights of the folder `dir`.
inline UNet2DConditionModel load_unet(const std::filesystem::path& dir, const checkpoint::UNetConfig& config,
                                      std::string_view variant = "") {
  return load_unet(checkpoint::WeightStore::open(dir, variant), config);
}

/// As load_unet(dir, config, variant) with the folder's own config.json.
inline UNet2DConditionModel load_unet(const std::filesystem::path& dir, std::string_view variant = "") {
  return load_unet(dir, checkpoint::UNetConfig::load(dir / "config.json"), variant);
}

/// Builds the CLIP text tower (CLIPTextModel; keys with or without the "text_model." prefix) from `weights`.
/// \throws checkpoint::FormatError as load_unet.
inline ClipTextModel load_text_encoder(checkpoint::WeightStore weights, const checkpoint::ClipTextConfig& config) {
  return checkpoint::load_component(
      std::move(weights), {.missing_prefix = "text_model."},
      [&](checkpoint::WeightSource& w) { return ClipTextModel(config, w, "text_model."); });
}

/// As load_text_encoder(weights, config) with the weights of the folder `dir`.
inline ClipTextModel load_text_encoder(const std::filesystem::path& dir, const checkpoint::ClipTextConfig& config,
                                       std::string_view variant = "") {
  return load_text_encoder(checkpoint::WeightStore::open(dir, variant), config);
}

/// As load_text_encoder(dir, config, variant) with the folder's own config.json.
inline ClipTextModel load_text_encoder(const std::filesystem::path& dir, std::string_view variant = "") {
  return load_text_encoder(dir, checkpoint::ClipTextConfig::load(dir / "config.json"), variant);
}

/// Builds the decode path of an AutoencoderKL from `weights`. The encoder (encoder.*, quant_conv.*) is not read; any
/// other tensor left unread is an error.
/// \throws checkpoint::FormatError as load_unet.
inline VaeDecoder load_vae_decoder(checkpoint::WeightStore weights, const checkpoint::VaeConfig& config) {
  return checkpoint::load_component(std::move(weights), {.skipped = {"encoder.", "quant_conv."}},
                                    [&](checkpoint::WeightSource& w) { return VaeDecoder(config, w); });
}

/// As load_vae_decoder(weights, config) with the weights of the folder `dir`.
inline VaeDecoder load_vae_decoder(const std::filesystem::path& dir, const checkpoint::VaeConfig& config,
                                   std::string_view variant = "") {
  return load_vae_decoder(checkpoint::WeightStore::open(dir, variant), config);
}

/// As load_vae_decoder(dir, config, variant) with the folder's own config.json.
inline VaeDecoder load_vae_decoder(const std::filesystem::path& dir, std::string_view variant = "") {
  return load_vae_decoder(dir, checkpoint::VaeConfig::load(dir / "config.json"), variant);
}

/// Options of Backend's loading constructor.
struct BackendOptions {
  /// Weight variant for every component, as diffusers' `variant=`: "fp16" reads *.fp16.safetensors where present
  /// and falls back to the plain file (values are converted to float32 either way).
  std::string variant{};
  std::int64_t clip_skip = 0;  ///< encode_text uses the hidden state clip_skip layers before the last
};

/// A Stable Diffusion model on the CPU: CLIP tokenizer and text tower, UNet, and (optionally) the VAE decoder.
/// Move-only (the tokenizer is).
///
/// The interface the diffusion Pipeline uses: encode_text (token ids -> context), unet (one denoising call with a
/// timestep per batch item), decode (latents -> images in [-1, 1]). The UNet runs in batch_mode(): BatchMode::batched
/// by default (items share GEMM calls: faster, but an item's values may differ in the last bits with its batch
/// neighbours); set_batch_mode(BatchMode::batch_invariant) makes each item's result bitwise the same in any batch, so
/// a request's image depends only on the request. Text encoding and decoding are batch-invariant in both modes. The
/// const members may be called from several threads at once (each call uses OpenBLAS's and the backend's own worker
/// threads); set_batch_mode may not run concurrently with them.
class Backend {
 public:
  /// Loads the diffusers folder at `root` (see the other constructor).
  /// \throws checkpoint::FormatError naming the folder, file, field or tensor at fault.
  explicit Backend(const std::filesystem::path& root, const BackendOptions& options = {})
      : Backend(checkpoint::DiffusersFolder::open(root), options) {}

  /// Loads the folder's text_encoder, unet and, when model_index.json lists one, vae (a pixel-space model has none:
  /// decode is then the identity and vae_scale_factor() is 1).
  /// \throws checkpoint::FormatError naming the folder, file, field or tensor at fault.
  explicit Backend(const checkpoint::DiffusersFolder& folder, const BackendOptions& options = {})
      : folder_(folder),
        tokenizer_(folder.load_tokenizer()),
        text_encoder_config_(folder.text_encoder_config()),
        unet_config_(folder.unet_config()),
        text_encoder_(load_text_encoder(folder.open_weights(checkpoint::Component::text_encoder, options.variant),
                                        text_encoder_config_)),
        unet_(load_unet(folder.open_weights(checkpoint::Component::unet, options.variant), unet_config_)),
        clip_skip_(options.clip_skip) {
    if ((vae_config_ = folder.vae_config()))
      vae_.emplace(load_vae_decoder(folder.open_weights(checkpoint::Component::vae, options.variant), *vae_config_));
    if (text_encoder_config_.hidden_size != unet_config_.cross_attention_dim)
      throw checkpoint::FormatError("'" + folder.root.string() + "': text encoder hidden_size " +
                                    std::to_string(text_encoder_config_.hidden_size) +
                                    " differs from the UNet's cross_attention_dim " +
                                    std::to_string(unet_config_.cross_attention_dim));
  }

  /// The folder's tokenizer: `tokenizer().encode(prompt)` gives the 77 ids encode_text expects.
  const checkpoint::ClipTokenizer& tokenizer() const noexcept { return tokenizer_; }

  /// Token id rows (all of one length, normally 77) -> text embeddings [B, L, context_dim()].
  /// \throws std::invalid_argument for ragged rows or ids outside the vocabulary.
  Tensor encode_text(std::span<const std::vector<std::int32_t>> token_ids) const {
    return text_encoder_.forward(token_ids, clip_skip_, BatchMode::batch_invariant);
  }

  /// One UNet evaluation: sample [B, latent_channels(), h, w], timesteps[B], context [B, L, context_dim()]
  /// -> model output [B, latent_channels(), h, w]. \throws std::invalid_argument for inconsistent shapes.
  Tensor unet(const Tensor& sample, std::span<const float> timesteps, const Tensor& context) const {
    return unet_.forward(sample, timesteps, context, batch_mode_);
  }

  /// How unet() groups batch items into GEMM calls (BatchMode::batched unless set).
  BatchMode batch_mode() const noexcept { return batch_mode_; }
  /// Sets how unet() groups batch items into GEMM calls; BatchMode::batch_invariant for bitwise reproducible images
  /// whatever the batch. Not thread-safe against concurrent calls of the other members.
  void set_batch_mode(BatchMode mode) noexcept { batch_mode_ = mode; }

  /// Scaled latents [B, latent_channels(), h, w] -> images [B, 3, h*f, w*f] nominally in [-1, 1] (not clamped),
  /// f = vae_scale_factor(); divides by the VAE's scaling_factor first (and adds shift_factor). Without a VAE the
  /// latents are returned unchanged.
  Tensor decode(const Tensor& latents) const { return vae_ ? decode_latents(*vae_, latents) : latents; }

  /// Channels of the UNet's input (the latent channels).
  std::int64_t latent_channels() const noexcept { return unet_config_.in_channels; }
  /// Image pixels per latent pixel: 2^(len(vae block_out_channels) - 1), 1 without a VAE.
  std::int64_t vae_scale_factor() const noexcept { return vae_config_ ? vae_config_->downscale_factor() : 1; }
  /// Width of a context vector (the UNet's cross_attention_dim = the text encoder's hidden_size).
  std::int64_t context_dim() const noexcept { return unet_config_.cross_attention_dim; }
  /// Whether a VAE was loaded.
  bool has_vae() const noexcept { return vae_.has_value(); }
  /// The folder's layout (component paths, e.g. scheduler/, and classes from model_index.json).
  const checkpoint::DiffusersFolder& folder() const noexcept { return folder_; }
  /// unet/config.json as parsed (e.g. sample_size, the latent side the model was trained at).
  const checkpoint::UNetConfig& unet_config() const noexcept { return unet_config_; }
  /// text_encoder/config.json as parsed (e.g. bos/eos/pad token ids).
  const checkpoint::ClipTextConfig& text_encoder_config() const noexcept { return text_encoder_config_; }
  /// vae/config.json as parsed, or nullptr without a VAE.
  const checkpoint::VaeConfig* vae_config() const noexcept { return vae_config_ ? &*vae_config_ : nullptr; }

 private:
  checkpoint::DiffusersFolder folder_;
  checkpoint::ClipTokenizer tokenizer_;
  checkpoint::ClipTextConfig text_encoder_config_;
  checkpoint::UNetConfig unet_config_;
  std::optional<checkpoint::VaeConfig> vae_config_;
  ClipTextModel text_encoder_;
  UNet2DConditionModel unet_;
  std::optional<VaeDecoder> vae_;
  std::int64_t clip_skip_ = 0;
  BatchMode batch_mode_ = BatchMode::batched;
};

}  // namespace carousel::cpu
