#pragma once
/// \file
/// carousel::cuda::Backend — a diffusers Stable Diffusion folder on the GPU behind the interface the diffusion
/// Pipeline drives (tokenizer, encode_text, unet, decode on host tensors), plus the component loaders.
/// Weights are uploaded once at construction; each call uploads its inputs, runs on the device and downloads its
/// result (a device-resident latent path is a later step, see docs/cuda-backend.md).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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
#include <carousel/cuda/clip_text.cuh>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/graph.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>
#include <carousel/cuda/unet.cuh>
#include <carousel/cuda/vae.cuh>

namespace carousel::cuda {

/// Builds the UNet on the GPU in `dtype` from `weights` (a component's store: DiffusersFolder::open_weights).
/// \throws checkpoint::FormatError naming the file, field or tensor at fault (also for tensors left unused).
inline UNet2DConditionModel load_unet(checkpoint::WeightStore weights, const checkpoint::UNetConfig& config,
                                      DType dtype) {
  return checkpoint::load_component(
      std::move(weights), {}, [&](checkpoint::WeightSource& w) { return UNet2DConditionModel(config, w, dtype); });
}

/// As load_unet(weights, config, dtype) with the weights of the folder `dir`.
inline UNet2DConditionModel load_unet(const std::filesystem::path& dir, const checkpoint::UNetConfig& config,
                                      DType dtype, std::string_view variant = "") {
  return load_unet(checkpoint::WeightStore::open(dir, variant), config, dtype);
}

/// Builds the CLIP text tower (keys with or without "text_model.") on the GPU from `weights`.
/// \throws checkpoint::FormatError as load_unet.
inline ClipTextModel load_text_encoder(checkpoint::WeightStore weights, const checkpoint::ClipTextConfig& config,
                                       DType dtype) {
  return checkpoint::load_component(
      std::move(weights), {.missing_prefix = "text_model."},
      [&](checkpoint::WeightSource& w) { return ClipTextModel(config, w, dtype, "text_model."); });
}

/// As load_text_encoder(weights, config, dtype) with the weights of the folder `dir`.
inline ClipTextModel load_text_encoder(const std::filesystem::path& dir, const checkpoint::ClipTextConfig& config,
                                       DType dtype, std::string_view variant = "") {
  return load_text_encoder(checkpoint::WeightStore::open(dir, variant), config, dtype);
}

/// Builds the decode path of an AutoencoderKL on the GPU from `weights`; the encoder (encoder.*, quant_conv.*) is not
/// read, any other unused tensor is an error. \throws checkpoint::FormatError as load_unet.
inline VaeDecoder load_vae_decoder(checkpoint::WeightStore weights, const checkpoint::VaeConfig& config, DType dtype) {
  return checkpoint::load_component(std::move(weights), {.skipped = {"encoder.", "quant_conv."}},
                                    [&](checkpoint::WeightSource& w) { return VaeDecoder(config, w, dtype); });
}

/// As load_vae_decoder(weights, config, dtype) with the weights of the folder `dir`.
inline VaeDecoder load_vae_decoder(const std::filesystem::path& dir, const checkpoint::VaeConfig& config, DType dtype,
                                   std::string_view variant = "") {
  return load_vae_decoder(checkpoint::WeightStore::open(dir, variant), config, dtype);
}

/// Options of Backend's loading constructor.
struct BackendOptions {
  std::string variant;         ///< weight variant, as diffusers' `variant=` ("fp16" or empty)
  std::int64_t clip_skip = 0;  ///< encode_text uses the hidden state clip_skip layers before the last
  DType dtype = DType::f16;    ///< text encoder and UNet: f16 (tensor cores) or f32 (the exact reference)
  /// VAE decoder: f16 by default, as diffusers' StableDiffusionPipeline decodes SD 1.x / 2.x in the pipeline's dtype
  /// (only its SDXL pipelines upcast, on the VAE config's force_upcast, which SD 1.x / 2.x pipelines ignore); f32 is
  /// the exact reference and costs about twice the time.
  DType vae_dtype = DType::f16;
  bool cuda_graphs = false;  ///< run the UNet through UNetGraphs (one CUDA graph per batch/shape bucket)
  /// How convolution algorithms are chosen on both engines (ConvSearch::exhaustive times them on first use, like
  /// torch.backends.cudnn.benchmark; best with cuda_graphs, whose buckets keep the number of shapes small). Unset:
  /// the Engine's default (heuristic, or CAROUSEL_CUDA_CONV_SEARCH).
  std::optional<ConvSearch> conv_search;
};

/// A Stable Diffusion model on the GPU: CLIP tokenizer (host) and text tower, UNet and optionally the VAE decoder,
/// satisfying diffusion::DiffusionBackend with HostTensor at the boundary.
///
/// Work runs on two Engines (streams): text encoding and the UNet share one, VAE decode has its own, so a decode
/// called from another thread does not wait for a UNet step. Calls on one engine are serialised by its mutex, so all
/// members may be called from several threads. Batch items never influence each other. Move-only.
class Backend {
 public:
  /// Loads the diffusers folder at `root`. \throws checkpoint::FormatError naming what is at fault; CudaError.
  explicit Backend(const std::filesystem::path& root, const BackendOptions& options = {})
      : Backend(checkpoint::DiffusersFolder::open(root), options) {}

  /// Loads the folder's text_encoder, unet and, when listed, vae (without one decode is the identity and
  /// vae_scale_factor() is 1). \throws checkpoint::FormatError naming what is at fault; CudaError.
  explicit Backend(const checkpoint::DiffusersFolder& folder, const BackendOptions& options = {})
      : folder_(folder),
        tokenizer_(folder.load_tokenizer()),
        text_encoder_config_(folder.text_encoder_config()),
        unet_config_(folder.unet_config()),
        text_encoder_(std::make_unique<ClipTextModel>(
            load_text_encoder(folder.open_weights(checkpoint::Component::text_encoder, options.variant),
                              text_encoder_config_, options.dtype))),
        unet_(std::make_unique<UNet2DConditionModel>(
            load_unet(folder.open_weights(checkpoint::Component::unet, options.variant), unet_config_, options.dtype))),
        clip_skip_(options.clip_skip),
        main_(std::make_unique<Engine>()),
        decode_engine_(std::make_unique<Engine>()) {
    if (options.conv_search) {
      main_->set_conv_search(*options.conv_search);
      decode_engine_->set_conv_search(*options.conv_search);
    }
    if (options.cuda_graphs) graphs_ = std::make_unique<UNetGraphs>(*unet_);
    if ((vae_config_ = folder.vae_config()))
      vae_ = std::make_unique<VaeDecoder>(load_vae_decoder(
          folder.open_weights(checkpoint::Component::vae, options.variant), *vae_config_, options.vae_dtype));
    if (text_encoder_config_.hidden_size != unet_config_.cross_attention_dim)
      throw checkpoint::FormatError("'" + folder.root.string() + "': text encoder hidden_size " +
                                    std::to_string(text_encoder_config_.hidden_size) +
                                    " differs from the UNet's cross_attention_dim " +
                                    std::to_string(unet_config_.cross_attention_dim));
  }

  /// The folder's tokenizer (`tokenizer().encode(prompt)` gives the ids encode_text expects).
  const checkpoint::ClipTokenizer& tokenizer() const noexcept { return tokenizer_; }

  /// Token id rows -> text embeddings [B, L, context_dim()] (float32 host).
  /// \throws std::invalid_argument for ragged rows or ids outside the vocabulary.
  HostTensor encode_text(std::span<const std::vector<std::int32_t>> token_ids) const {
    if (token_ids.empty()) return HostTensor({0, 0, text_encoder_config_.hidden_size}, {});  // as the CPU backend
    std::lock_guard lock(main_->mutex());
    return to_host(*main_, text_encoder_->forward(*main_, token_ids, clip_skip_));
  }

  /// One UNet evaluation: sample [B, latent_channels(), h, w], timesteps[B], context [B, L, context_dim()] ->
  /// model output [B, out_channels, h, w] (host, float32). \throws std::invalid_argument for inconsistent shapes.
  HostTensor unet(const HostTensor& sample, std::span<const float> timesteps, const HostTensor& context) const {
    if (sample.rank() != 4)
      throw std::invalid_argument("carousel::cuda::Backend::unet: sample " + shape_string(sample.shape()) +
                                  " is not [B, C, H, W]");
    if (static_cast<std::int64_t>(timesteps.size()) != sample.dim(0))
      throw std::invalid_argument("carousel::cuda::Backend::unet: " + std::to_string(timesteps.size()) +
                                  " timesteps for a batch of " + std::to_string(sample.dim(0)));
    if (sample.dim(0) == 0) {  // nothing to launch (zero-size grids are errors); the shapes are still checked
      if (sample.dim(1) != unet_config_.in_channels || context.rank() != 3 || context.dim(0) != 0 ||
          context.dim(2) != unet_config_.cross_attention_dim)
        throw std::invalid_argument("carousel::cuda::Backend::unet: sample " + shape_string(sample.shape()) +
                                    " and context " + shape_string(context.shape()) + " are not [0, " +
                                    std::to_string(unet_config_.in_channels) + ", h, w] and [0, L, " +
                                    std::to_string(unet_config_.cross_attention_dim) + "]");
      return HostTensor({0, unet_config_.out_channels, sample.dim(2), sample.dim(3)}, {});
    }
    std::lock_guard lock(main_->mutex());
    Engine& e = *main_;
    const DType dt = unet_->dtype();
    const DeviceTensor x =
        to_nhwc(e, sample.values(), sample.shape(), dt, InputTransform{.center = unet_config_.center_input_sample});
    const DeviceTensor t = upload(e, timesteps, {static_cast<std::int64_t>(timesteps.size())}, DType::f32);
    const DeviceTensor ctx = upload(e, context.values(), context.shape(), dt);
    return to_host_nchw(e, graphs_ ? graphs_->forward(e, x, t, ctx) : unet_->forward(e, x, t, ctx));
  }

  /// Scaled latents [B, latent_channels(), h, w] -> images [B, 3, h*f, w*f] nominally in [-1, 1] (not clamped);
  /// divides by the VAE's scaling_factor (and adds shift_factor) first. Without a VAE the latents come back unchanged.
  HostTensor decode(const HostTensor& latents) const {
    if (!vae_) return latents;
    if (latents.rank() != 4)
      throw std::invalid_argument("carousel::cuda::Backend::decode: latents " + shape_string(latents.shape()) +
                                  " are not [B, C, h, w]");
    if (latents.dim(0) == 0) {  // nothing to launch; the shape is still checked
      if (latents.dim(1) != vae_config_->latent_channels)
        throw std::invalid_argument("carousel::cuda::Backend::decode: latents " + shape_string(latents.shape()) +
                                    " do not have " + std::to_string(vae_config_->latent_channels) + " channels");
      const std::int64_t f = vae_scale_factor();
      return HostTensor({0, vae_config_->out_channels, latents.dim(2) * f, latents.dim(3) * f}, {});
    }
    std::lock_guard lock(decode_engine_->mutex());
    Engine& e = *decode_engine_;
    const DeviceTensor z =
        to_nhwc(e, latents.values(), latents.shape(), vae_->dtype(),
                InputTransform{.divisor = static_cast<float>(vae_config_->scaling_factor),
                               .shift = static_cast<float>(vae_config_->shift_factor.value_or(0.0))});
    return to_host_nchw(e, vae_->forward(e, z));
  }

  /// Channels of the UNet's input.
  std::int64_t latent_channels() const noexcept { return unet_config_.in_channels; }
  /// Image pixels per latent pixel: 2^(len(vae block_out_channels) - 1), 1 without a VAE.
  std::int64_t vae_scale_factor() const noexcept { return vae_ ? vae_config_->downscale_factor() : 1; }
  /// Width of a context vector (the UNet's cross_attention_dim).
  std::int64_t context_dim() const noexcept { return unet_config_.cross_attention_dim; }
  /// Whether a VAE was loaded.
  bool has_vae() const noexcept { return vae_ != nullptr; }
  /// The folder's layout.
  const checkpoint::DiffusersFolder& folder() const noexcept { return folder_; }
  /// unet/config.json as parsed.
  const checkpoint::UNetConfig& unet_config() const noexcept { return unet_config_; }
  /// The device UNet (for device-resident callers, with an Engine of their own).
  const UNet2DConditionModel& unet_model() const noexcept { return *unet_; }
  /// The device text encoder.
  const ClipTextModel& text_encoder_model() const noexcept { return *text_encoder_; }
  /// The device VAE decoder, or nullptr without a VAE.
  const VaeDecoder* vae_model() const noexcept { return vae_.get(); }

 private:
  checkpoint::DiffusersFolder folder_;
  checkpoint::ClipTokenizer tokenizer_;
  checkpoint::ClipTextConfig text_encoder_config_;
  checkpoint::UNetConfig unet_config_;
  std::optional<checkpoint::VaeConfig> vae_config_;
  std::unique_ptr<ClipTextModel> text_encoder_;
  std::unique_ptr<UNet2DConditionModel> unet_;
  std::unique_ptr<VaeDecoder> vae_;
  std::int64_t clip_skip_ = 0;
  std::unique_ptr<Engine> main_;           // text encoder + UNet stream
  std::unique_ptr<Engine> decode_engine_;  // VAE decode stream
  std::unique_ptr<UNetGraphs> graphs_;     // used under main_'s mutex; destroyed before the engines
};

}  // namespace carousel::cuda
