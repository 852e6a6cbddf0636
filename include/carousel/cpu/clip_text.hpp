#pragma once
/// \file
/// carousel::cpu::ClipTextModel — transformers' CLIPTextModel (the text tower of Stable Diffusion):
/// token + position embeddings, pre-LN causal transformer layers, final LayerNorm.

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <carousel/checkpoint/weight_source.hpp>
#include <carousel/cpu/layers.hpp>
#include <carousel/cpu/ops.hpp>
#include <carousel/cpu/tensor.hpp>

namespace carousel::cpu {

/// The architecture of a CLIP text tower (fields as in transformers' CLIPTextConfig).
struct ClipTextSpec {
  std::int64_t vocab_size = 49408;            ///< token embedding rows
  std::int64_t hidden_size = 768;             ///< model width
  std::int64_t intermediate_size = 3072;      ///< MLP width
  std::int64_t num_hidden_layers = 12;        ///< encoder layers
  std::int64_t num_attention_heads = 12;      ///< heads per layer
  std::int64_t max_position_embeddings = 77;  ///< position embedding rows (the longest sequence)
  std::string hidden_act = "quick_gelu";      ///< "quick_gelu" or "gelu" (erf)
  float layer_norm_eps = 1e-5f;               ///< all LayerNorms

  /// \throws std::invalid_argument naming the field when unsupported or inconsistent.
  void validate() const {
    if (hidden_act != "quick_gelu" && hidden_act != "gelu")
      throw std::invalid_argument("carousel::cpu::ClipTextSpec: unsupported hidden_act '" + hidden_act + "'");
    if (num_attention_heads <= 0 || hidden_size % num_attention_heads != 0)
      throw std::invalid_argument("carousel::cpu::ClipTextSpec: hidden_size is not a multiple of num_attention_heads");
  }
};

/// CLIPTextModel forward for SD: last hidden state after final_layer_norm, causal mask, no padding mask.
/// Loading walks prefix + {embeddings.token_embedding, embeddings.position_embedding, encoder.layers.N.{layer_norm1,
/// self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}, final_layer_norm}; the prefix is "text_model." for
/// classic checkpoints and "" for files written by transformers >= 5. Batch items are independent.
/// Immutable; forward is safe to call concurrently.
class ClipTextModel {
 public:
  /// Builds the tower from `spec` with parameters from `w` under `prefix`.
  ClipTextModel(ClipTextSpec spec, checkpoint::WeightSource& w, const std::string& prefix = "text_model.")
      : spec_(std::move(spec)) {
    spec_.validate();
    const std::int64_t d = spec_.hidden_size;
    token_embedding_ = w.take(prefix + "embeddings.token_embedding.weight", {spec_.vocab_size, d});
    position_embedding_ = w.take(prefix + "embeddings.position_embedding.weight", {spec_.max_position_embeddings, d});
    for (std::int64_t i = 0; i < spec_.num_hidden_layers; ++i) {
      const std::string p = prefix + "encoder.layers." + std::to_string(i) + ".";
      Layer layer{LayerNorm(w, p + "layer_norm1.", d, spec_.layer_norm_eps),
                  Linear(w, p + "self_attn.q_proj.", d, d),
                  Linear(w, p + "self_attn.k_proj.", d, d),
                  Linear(w, p + "self_attn.v_proj.", d, d),
                  Linear(w, p + "self_attn.out_proj.", d, d),
                  LayerNorm(w, p + "layer_norm2.", d, spec_.layer_norm_eps),
                  Linear(w, p + "mlp.fc1.", d, spec_.intermediate_size),
                  Linear(w, p + "mlp.fc2.", spec_.intermediate_size, d)};
      layers_.push_back(std::move(layer));
    }
    final_norm_ = LayerNorm(w, prefix + "final_layer_norm.", d, spec_.layer_norm_eps);
  }

  /// ids: B rows of equal length L <= max_position_embeddings -> [B, L, hidden_size].
  /// clip_skip = k > 0 returns the hidden state k layers before the last one, passed through final_layer_norm
  /// (diffusers' clip_skip convention). \throws std::invalid_argument for ragged rows, a bad length or clip_skip,
  /// or an id outside [0, vocab_size).
  Tensor forward(std::span<const std::vector<std::int32_t>> ids, std::int64_t clip_skip = 0) const {
    const std::int64_t batch = static_cast<std::int64_t>(ids.size());
    const std::int64_t len = batch ? static_cast<std::int64_t>(ids[0].size()) : 0, d = spec_.hidden_size;
    if (len > spec_.max_position_embeddings)
      throw std::invalid_argument("carousel::cpu::ClipTextModel: " + std::to_string(len) + " tokens exceed " +
                                  std::to_string(spec_.max_position_embeddings) + " positions");
    if (clip_skip < 0 || clip_skip >= spec_.num_hidden_layers)
      throw std::invalid_argument("carousel::cpu::ClipTextModel: clip_skip " + std::to_string(clip_skip) +
                                  " out of range");
    Tensor h({batch, len, d});
    for (std::int64_t b = 0; b < batch; ++b) {
      if (static_cast<std::int64_t>(ids[b].size()) != len)
        throw std::invalid_argument("carousel::cpu::ClipTextModel: token rows have different lengths");
      for (std::int64_t t = 0; t < len; ++t) {
        const std::int64_t id = ids[b][t];
        if (id < 0 || id >= spec_.vocab_size)
          throw std::invalid_argument("carousel::cpu::ClipTextModel: token id " + std::to_string(id) +
                                      " outside the vocabulary of " + std::to_string(spec_.vocab_size));
        float* row = h.sample(b) + t * d;
        for (std::int64_t c = 0; c < d; ++c)
          row[c] = token_embedding_[id * d + c] + position_embedding_[t * d + c];
      }
    }
    const std::int64_t run = spec_.num_hidden_layers - clip_skip;
    const auto n = static_cast<std::size_t>(len * d), ni = static_cast<std::size_t>(len * spec_.intermediate_size);
    std::vector<float> normed(n), q(n), k(n), v(n), o(n), out(n), mid(ni);
    const bool quick = spec_.hidden_act == "quick_gelu";
    for (std::int64_t b = 0; b < batch; ++b) {
      float* hs = h.sample(b);
      for (std::int64_t i = 0; i < run; ++i) {
        const Layer& layer = layers_[static_cast<std::size_t>(i)];
        layer.norm1.forward(hs, len, normed.data());
        layer.q.forward(normed.data(), len, q.data());
        layer.k.forward(normed.data(), len, k.data());
        layer.v.forward(normed.data(), len, v.data());
        attention(q.data(), d, k.data(), d, v.data(), d, len, len, spec_.num_attention_heads,
                  d / spec_.num_attention_heads, true, o.data(), d);
        layer.out.forward(o.data(), len, out.data());
        for (std::size_t j = 0; j < n; ++j)
          hs[j] += out[j];
        layer.norm2.forward(hs, len, normed.data());
        layer.fc1.forward(normed.data(), len, mid.data());
        for (auto& x : mid)
          x = quick ? quick_gelu(x) : gelu(x);
        layer.fc2.forward(mid.data(), len, out.data());
        for (std::size_t j = 0; j < n; ++j)
          hs[j] += out[j];
      }
      final_norm_.forward(hs, len, hs);
    }
    return h;
  }

  /// The architecture.
  const ClipTextSpec& spec() const noexcept { return spec_; }

 private:
  struct Layer {
    LayerNorm norm1;
    Linear q, k, v, out;
    LayerNorm norm2;
    Linear fc1, fc2;
  };
  ClipTextSpec spec_;
  std::vector<float> token_embedding_, position_embedding_;
  std::vector<Layer> layers_;
  LayerNorm final_norm_;
};

}  // namespace carousel::cpu
