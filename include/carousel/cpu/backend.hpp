#pragma once
/// \file
/// carousel::cpu::Backend — a whole diffusers Stable Diffusion folder (text_encoder/, unet/, optional vae/) on the CPU,
/// behind the small interface the diffusion Pipeline drives: encode_text, unet, decode. Also the component loaders
/// (load_unet, load_text_encoder, load_vae_decoder) and the config -> spec conversions.

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

/// The UNet architecture described by a parsed config.json.
/// \throws checkpoint::FormatError naming the field for what the CPU UNet does not implement (downsample_padding 0).
inline UNetSpec unet_spec(const checkpoint::UNetConfig& c) {
  if (c.downsample_padding != 1)
    throw checkpoint::FormatError("UNet config: downsample_padding = " + std::to_string(c.downsample_padding) +
                                  " is not supported by the CPU backend (only 1)");
  UNetSpec s;
  s.in_channels = c.in_channels;
  s.out_channels = c.out_channels;
  s.mid_block_type = c.mid_block_type;
  s.down_block_types = c.down_block_types;
  s.up_block_types = c.up_block_types;
  for (std::size_t i = 0; i < c.num_blocks(); ++i) {
    s.block_out_channels.push_back(c.block_out_channels[i]);
    s.layers_per_block.push_back(c.down_block_layers(i));
    s.attention_heads.push_back(c.down_block_heads(i));
    s.transformer_layers.push_back(c.down_transformer_layers(i));
    s.up_transformer_layers.push_back(c.up_transformer_layers(i));
  }
  s.cross_attention_dim = c.cross_attention_dim;
  s.norm_num_groups = c.norm_num_groups;
  s.norm_eps = static_cast<float>(c.norm_eps);
  s.use_linear_projection = c.use_linear_projection;
  s.flip_sin_to_cos = c.flip_sin_to_cos;
  s.freq_shift = static_cast<float>(c.freq_shift);
  s.center_input_sample = c.center_input_sample;
  return s;
}

/// The VAE decoder architecture described by a parsed config.json.
inline VaeSpec vae_spec(const checkpoint::VaeConfig& c) {
  VaeSpec s;
  s.latent_channels = c.latent_channels;
  s.out_channels = c.out_channels;
  s.block_out_channels.assign(c.block_out_channels.begin(), c.block_out_channels.end());
  s.layers_per_block = c.layers_per_block;
  s.norm_num_groups = c.norm_num_groups;
  s.scaling_factor = static_cast<float>(c.scaling_factor);
  s.shift_factor = static_cast<float>(c.shift_factor.value_or(0.0));
  s.use_post_quant_conv = c.use_post_quant_conv;
  s.mid_block_add_attention = c.mid_block_add_attention;
  return s;
}

/// The CLIP text tower architecture described by a parsed config.json.
inline ClipTextSpec clip_text_spec(const checkpoint::ClipTextConfig& c) {
  ClipTextSpec s;
  s.vocab_size = c.vocab_size;
  s.hidden_size = c.hidden_size;
  s.intermediate_size = c.intermediate_size;
  s.num_hidden_layers = c.num_hidden_layers;
  s.num_attention_heads = c.num_attention_heads;
  s.max_position_embeddings = c.max_position_embeddings;
  s.hidden_act = c.hidden_act == checkpoint::ClipActivation::gelu ? "gelu" : "quick_gelu";
  s.layer_norm_eps = static_cast<float>(c.layer_norm_eps);
  return s;
}

/// Builds the UNet from `weights` (a component's store: DiffusersFolder::open_weights; converted to float32).
/// \throws checkpoint::FormatError naming the file, field or tensor when the folder is incomplete, a tensor is missing,
///         mis-shaped or left over, or the config is unsupported.
inline UNet2DConditionModel load_unet(checkpoint::WeightStore weights, const checkpoint::UNetConfig& config) {
  const auto spec = unet_spec(config);
  return checkpoint::load_component(std::move(weights), {},
                                    [&](checkpoint::WeightSource& w) { return UNet2DConditionModel(spec, w); });
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
  const auto spec = clip_text_spec(config);
  return checkpoint::load_component(std::move(weights), {.missing_prefix = "text_model."},
                                    [&](checkpoint::WeightSource& w) { return ClipTextModel(spec, w, "text_model."); });
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
  const auto spec = vae_spec(config);
  return checkpoint::load_component(std::move(weights), {.skipped = {"encoder.", "quant_conv."}},
                                    [&](checkpoint::WeightSource& w) { return VaeDecoder(spec, w); });
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
    if (text_encoder_.spec().hidden_size != unet_.spec().cross_attention_dim)
      throw checkpoint::FormatError("'" + folder.root.string() + "': text encoder hidden_size " +
                                    std::to_string(text_encoder_.spec().hidden_size) +
                                    " differs from the UNet's cross_attention_dim " +
                                    std::to_string(unet_.spec().cross_attention_dim));
  }

  /// The folder's tokenizer: `tokenizer().encode(prompt)` gives the 77 ids encode_text expects.
  const checkpoint::ClipTokenizer& tokenizer() const noexcept { return tokenizer_; }

  /// Token id rows (all of one length, normally 77) -> text embeddings [B, L, context_dim()].
  /// \throws std::invalid_argument for ragged rows or ids outside the vocabulary.
  Tensor encode_text(std::span<const std::vector<std::int32_t>> token_ids) const {
    return text_encoder_.forward(token_ids, clip_skip_);
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
  Tensor decode(const Tensor& latents) const { return vae_ ? vae_->decode(latents) : latents; }

  /// Channels of the UNet's input (the latent channels).
  std::int64_t latent_channels() const noexcept { return unet_.spec().in_channels; }
  /// Image pixels per latent pixel: 2^(len(vae block_out_channels) - 1), 1 without a VAE.
  std::int64_t vae_scale_factor() const noexcept { return vae_ ? vae_->spec().scale_factor() : 1; }
  /// Width of a context vector (the UNet's cross_attention_dim = the text encoder's hidden_size).
  std::int64_t context_dim() const noexcept { return unet_.spec().cross_attention_dim; }
  /// Whether a VAE was loaded.
  bool has_vae() const noexcept { return vae_.has_value(); }
  /// The UNet's architecture.
  const UNetSpec& unet_spec() const noexcept { return unet_.spec(); }
  /// The text encoder's architecture.
  const ClipTextSpec& text_encoder_spec() const noexcept { return text_encoder_.spec(); }
  /// The VAE decoder's architecture, or nullptr without a VAE.
  const VaeSpec* vae_spec() const noexcept { return vae_ ? &vae_->spec() : nullptr; }
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
