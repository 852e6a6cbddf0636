#pragma once
/// \file
/// carousel::nn::ClipTextModel — transformers' CLIPTextModel (the text tower of Stable Diffusion) written once over a
/// layers trait L (nn/layers.hpp): token + position embeddings, pre-LN encoder layers with causal self-attention and
/// a quick-GELU (or GELU) MLP, final LayerNorm. carousel::cpu::ClipTextModel is ClipTextModel<cpu::Layers>.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/checkpoint/clip_text_config.hpp>
#include <carousel/nn/layers.hpp>

namespace carousel::nn {

/// CLIPTextModel's last hidden state (after final_layer_norm), optionally `clip_skip` layers early; causal mask, no
/// padding mask. Building walks prefix + {embeddings.token_embedding, embeddings.position_embedding,
/// encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}, final_layer_norm}; the
/// prefix is "text_model." for classic checkpoints (the loaders also accept files without it). Batch items are
/// independent. Immutable after construction; concurrent forward calls are as safe as L's layers make them.
template <class L>
requires LayerTypes<L>
class ClipTextModel {
 public:
  using Tensor = typename L::Tensor;    ///< L's tensor
  using Context = typename L::Context;  ///< L's per-call context

  /// Builds the tower for `config` (checked with config.validate()) with parameters from `w` under `prefix`.
  /// \throws checkpoint::FormatError naming the field for an inconsistent config; whatever `w` throws for a bad tensor.
  ClipTextModel(const checkpoint::ClipTextConfig& config, typename L::Weights& w,
                const std::string& prefix = "text_model.")
      : config_(checked(config)),
        token_embedding_(w, prefix + "embeddings.token_embedding.",
                         {.rows = config.vocab_size, .width = config.hidden_size}),
        position_embedding_(w, prefix + "embeddings.position_embedding.",
                            {.rows = config.max_position_embeddings, .width = config.hidden_size}),
        final_layer_norm_(w, prefix + "final_layer_norm.", norm()) {
    const std::int64_t d = config_.hidden_size, inner = config_.intermediate_size;
    for (int i = 0; i < config_.num_hidden_layers; ++i) {
      const std::string p = prefix + "encoder.layers." + std::to_string(i) + ".";
      layers_.push_back(EncoderLayer{
          .layer_norm1 = {w, p + "layer_norm1.", norm()},
          .self_attn =
              {w,
               p + "self_attn.",
               {.dim = d, .heads = config_.num_attention_heads, .qkv_bias = true, .names = AttentionNames::clip()}},
          .layer_norm2 = {w, p + "layer_norm2.", norm()},
          .fc1 = {w, p + "mlp.fc1.", {.in = d, .out = inner}},
          .fc2 = {w, p + "mlp.fc2.", {.in = inner, .out = d}},
      });
    }
  }

  /// ids: batch rows of one length L <= max_position_embeddings -> [batch, L, hidden_size]. clip_skip = k > 0 returns
  /// the hidden state k layers before the last one, passed through final_layer_norm (diffusers' clip_skip).
  /// `ctx` is L's per-call context (the CPU's BatchMode).
  /// \throws std::invalid_argument for ragged rows, too many tokens, an id outside [0, vocab_size) or a clip_skip
  ///         outside [0, num_hidden_layers).
  Tensor forward(TokenIds ids, std::int64_t clip_skip = 0, Context ctx = {}) const requires Layers<L> {
    const std::size_t len = ids.empty() ? 0 : ids[0].size();
    if (len > static_cast<std::size_t>(config_.max_position_embeddings))
      fail(std::to_string(len) + " tokens exceed " + std::to_string(config_.max_position_embeddings) + " positions");
    if (clip_skip < 0 || clip_skip >= config_.num_hidden_layers)
      fail("clip_skip " + std::to_string(clip_skip) + " out of range");
    for (const auto& row : ids) {
      if (row.size() != len) fail("token rows have different lengths");
      for (const std::int32_t id : row)
        if (id < 0 || id >= config_.vocab_size)
          fail("token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(config_.vocab_size));
    }
    Tensor h = L::text_embeddings(ctx, token_embedding_, position_embedding_, ids);
    const Activation act =
        config_.hidden_act == checkpoint::ClipActivation::quick_gelu ? Activation::quick_gelu : Activation::gelu;
    const std::int64_t run = config_.num_hidden_layers - clip_skip;
    for (std::int64_t i = 0; i < run; ++i) {
      const EncoderLayer& layer = layers_[static_cast<std::size_t>(i)];
      h = layer.self_attn.forward(ctx, layer.layer_norm1.forward(ctx, h), {.causal = true, .residual = &h});
      Tensor mid = layer.fc1.forward(ctx, layer.layer_norm2.forward(ctx, h));
      L::activate(ctx, mid, act);
      h = layer.fc2.forward(ctx, mid, {.residual = &h});
    }
    return final_layer_norm_.forward(ctx, h);
  }

  /// The configuration the tower was built from.
  const checkpoint::ClipTextConfig& config() const noexcept { return config_; }

 private:
  struct EncoderLayer {
    typename L::LayerNorm layer_norm1;
    typename L::Attention self_attn;
    typename L::LayerNorm layer_norm2;
    typename L::Linear fc1, fc2;
  };

  static const checkpoint::ClipTextConfig& checked(const checkpoint::ClipTextConfig& config) {
    config.validate();
    return config;
  }

  [[noreturn]] static void fail(const std::string& what) {
    throw std::invalid_argument(std::string(L::name) + "::ClipTextModel: " + what);
  }

  LayerNormOptions norm() const {
    return {.width = config_.hidden_size, .eps = static_cast<float>(config_.layer_norm_eps)};
  }

  checkpoint::ClipTextConfig config_;
  typename L::Embedding token_embedding_, position_embedding_;
  typename L::LayerNorm final_layer_norm_;
  std::vector<EncoderLayer> layers_;
};

}  // namespace carousel::nn
