#pragma once
/// \file
/// carousel::cuda::ClipTextModel — transformers' CLIPTextModel (the Stable Diffusion text tower) on the GPU: token +
/// position embeddings, pre-LN encoder layers with causal self-attention and a quick-GELU (or GELU) MLP, final
/// LayerNorm. Same key walk as the CPU backend's ClipTextModel.

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/checkpoint/clip_text_config.hpp>
#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/layers.cuh>
#include <carousel/cuda/ops.cuh>
#include <carousel/cuda/tensor.cuh>

namespace carousel::cuda {

/// CLIPTextModel's last hidden state (after final_layer_norm), optionally `clip_skip` layers early.
/// Immutable after construction; concurrent forward calls need distinct Engines.
class ClipTextModel {
 public:
  /// Loads `prefix` + "embeddings.*", "encoder.layers.N.*", "final_layer_norm.*" from `w` in `dtype`.
  ClipTextModel(const checkpoint::ClipTextConfig& config, checkpoint::WeightSource& w, DType dtype,
                const std::string& prefix = "text_model.")
      : config_(config), dtype_(dtype) {
    const std::int64_t d = config.hidden_size, inner = config.intermediate_size;
    if (config.num_attention_heads <= 0 || d % config.num_attention_heads != 0)
      throw std::invalid_argument("carousel::cuda::ClipTextModel: hidden_size is not a multiple of the heads");
    token_embedding_ = upload_weight(w.take(prefix + "embeddings.token_embedding.weight", {config.vocab_size, d}),
                                     {config.vocab_size, d}, dtype);
    position_embedding_ =
        upload_weight(w.take(prefix + "embeddings.position_embedding.weight", {config.max_position_embeddings, d}),
                      {config.max_position_embeddings, d}, dtype);
    for (int i = 0; i < config.num_hidden_layers; ++i) {
      const std::string p = prefix + "encoder.layers." + std::to_string(i) + ".";
      layers_.push_back(Layer{
          LayerNorm(w, p + "layer_norm1.", d, static_cast<float>(config.layer_norm_eps)),
          Attention(w, p + "self_attn.", d, d, config.num_attention_heads, true, true, dtype, AttentionNames::clip()),
          LayerNorm(w, p + "layer_norm2.", d, static_cast<float>(config.layer_norm_eps)),
          Linear(w, p + "mlp.fc1.", d, inner, dtype), Linear(w, p + "mlp.fc2.", inner, d, dtype)});
    }
    final_norm_ = LayerNorm(w, prefix + "final_layer_norm.", d, static_cast<float>(config.layer_norm_eps));
  }

  /// Token id rows (one length L <= max_position_embeddings) -> device [B, L, hidden_size] in dtype().
  /// \throws std::invalid_argument for ragged rows, too many tokens, ids outside the vocabulary or a bad clip_skip.
  DeviceTensor forward(Engine& e, std::span<const std::vector<std::int32_t>> ids, std::int64_t clip_skip = 0) const {
    const auto batch = static_cast<std::int64_t>(ids.size());
    const std::int64_t len = batch ? static_cast<std::int64_t>(ids[0].size()) : 0, d = config_.hidden_size;
    if (len > config_.max_position_embeddings)
      throw std::invalid_argument("carousel::cuda::ClipTextModel: " + std::to_string(len) + " tokens exceed " +
                                  std::to_string(config_.max_position_embeddings) + " positions");
    if (clip_skip < 0 || clip_skip >= config_.num_hidden_layers)
      throw std::invalid_argument("carousel::cuda::ClipTextModel: clip_skip " + std::to_string(clip_skip) +
                                  " out of range");
    std::vector<std::int32_t> flat;
    for (const auto& row : ids) {
      if (static_cast<std::int64_t>(row.size()) != len)
        throw std::invalid_argument("carousel::cuda::ClipTextModel: token rows have different lengths");
      for (auto id : row)
        if (id < 0 || id >= config_.vocab_size)
          throw std::invalid_argument("carousel::cuda::ClipTextModel: token id " + std::to_string(id) +
                                      " outside the vocabulary of " + std::to_string(config_.vocab_size));
      flat.insert(flat.end(), row.begin(), row.end());
    }
    DeviceBuffer device_ids(flat.size() * sizeof(std::int32_t), &e.allocator());
    CAROUSEL_CUDA_CHECK(cudaMemcpyAsync(device_ids.get(), flat.data(), flat.size() * sizeof(std::int32_t),
                                        cudaMemcpyHostToDevice, e.stream()));
    // `flat` is pageable and dies with this call: wait for the copy (microseconds; the stream is idle here, as every
    // Backend call ends by waiting for its result) rather than rely on the staging rules of pageable copies.
    e.synchronize();
    DeviceTensor h = e.empty({batch, len, d}, dtype_);
    if (h.numel() > 0) {
      detail::with_dtype(dtype_, [&](auto t) {
        using T = decltype(t);
        detail::clip_embed<T><<<detail::grid_for(h.numel()), detail::block_threads, 0, e.stream()>>>(
            static_cast<const std::int32_t*>(device_ids.get()), token_embedding_.as<T>(), position_embedding_.as<T>(),
            h.as<T>(), batch, len, d);
      });
      detail::check_kernel();
    }
    const Activation act =
        config_.hidden_act == checkpoint::ClipActivation::quick_gelu ? Activation::quick_gelu : Activation::gelu;
    const std::int64_t run = config_.num_hidden_layers - clip_skip;
    for (std::int64_t i = 0; i < run; ++i) {
      const Layer& layer = layers_[static_cast<std::size_t>(i)];
      h = layer.attention.forward(e, layer.norm1.forward(e, h), nullptr, true, &h);
      DeviceTensor mid = layer.fc1.forward(e, layer.norm2.forward(e, h));
      activate(e, mid, act);
      h = layer.fc2.forward(e, mid, &h);
    }
    return final_norm_.forward(e, h);
  }

  /// The configuration.
  const checkpoint::ClipTextConfig& config() const noexcept { return config_; }

 private:
  struct Layer {
    LayerNorm norm1;
    Attention attention;
    LayerNorm norm2;
    Linear fc1, fc2;
  };
  checkpoint::ClipTextConfig config_;
  DType dtype_;
  DeviceTensor token_embedding_, position_embedding_;
  std::vector<Layer> layers_;
  LayerNorm final_norm_;
};

}  // namespace carousel::cuda
