#pragma once
/// \file
/// carousel::checkpoint::UNetConfig — diffusers' UNet2DConditionModel config.json, restricted to what this project runs
/// (Stable Diffusion 1.x / 2.x style UNets).

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/detail/config_reader.hpp"
#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint {

/// A UNet2DConditionModel configuration. Field names and defaults are diffusers' (used when a field is absent or
/// null). Per-block fields that diffusers accepts as an int or a list are stored as one entry per down block.
///
/// Supported: down blocks DownBlock2D / CrossAttnDownBlock2D, up blocks UpBlock2D / CrossAttnUpBlock2D, mid block
/// UNetMidBlock2DCrossAttn, positional time embedding, SiLU. parse() rejects, naming the field, everything else that
/// changes the computation (class / addition embeddings, other block or attention types, time-conditioning
/// projections, scale-shift resnets, conv kernels other than 3, ...).
///
/// Trap: in SD-1.x configs `attention_head_dim` is the number of heads (num_attention_heads is null); use
/// down_block_heads() / mid_block_heads() / up_block_heads() and head_dim(), never attention_head_dim directly.
struct UNetConfig {
  int in_channels = 4;               ///< latent channels in
  int out_channels = 4;              ///< channels out (the noise / v prediction)
  std::optional<int> sample_size;    ///< latent side; diffusers' default is null
  bool center_input_sample = false;  ///< x = 2x - 1 before conv_in
  bool flip_sin_to_cos = true;       ///< timestep embedding order [cos, sin] (true) or [sin, cos]
  double freq_shift = 0;             ///< f_i = exp(-ln(10000) i / (half - freq_shift))
  /// Down block kinds, one per entry of block_out_channels.
  std::vector<std::string> down_block_types{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                            "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  ///< the only supported mid block
  /// Up block kinds, one per entry of block_out_channels (up block i mirrors down block n-1-i).
  std::vector<std::string> up_block_types{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                          "CrossAttnUpBlock2D"};
  bool only_cross_attention = false;                          ///< must be false
  std::vector<int> block_out_channels{320, 640, 1280, 1280};  ///< channels of each down block
  std::vector<int> layers_per_block{2, 2, 2, 2};  ///< per down block; up block i has layers_per_block[n-1-i] + 1
  int downsample_padding = 1;                     ///< padding of the stride-2 downsampling convolutions
  std::string act_fn = "silu";                    ///< resnet / time-embedding activation (only silu)
  int norm_num_groups = 32;                       ///< GroupNorm groups everywhere in the UNet
  double norm_eps = 1e-5;          ///< GroupNorm eps of resnets and conv_norm_out (transformer norms: 1e-6 / 1e-5)
  int cross_attention_dim = 1280;  ///< width of the text embeddings attn2 attends to
  std::vector<int> transformer_layers_per_block{1, 1, 1, 1};  ///< per down block; up reversed; mid uses the last
  std::vector<int> attention_head_dim{8, 8, 8, 8};            ///< per down block, as written (heads, see trap)
  bool use_linear_projection = false;  ///< proj_in / proj_out are Linear [C, C] (true) or 1x1 Conv [C, C, 1, 1]
  bool upcast_attention = false;       ///< attention scores in float32 (no effect on a float32 backend)
  std::string time_embedding_type = "positional";  ///< only positional (sinusoidal)

  /// Number of down (= up) blocks.
  std::size_t num_blocks() const noexcept { return block_out_channels.size(); }
  /// Width of the time embedding: 4 * block_out_channels[0].
  int time_embed_dim() const { return 4 * block_out_channels.at(0); }

  /// Whether down block i is a CrossAttnDownBlock2D.
  bool down_block_has_attention(std::size_t i) const { return down_block_types.at(i) == "CrossAttnDownBlock2D"; }
  /// Whether up block i is a CrossAttnUpBlock2D.
  bool up_block_has_attention(std::size_t i) const { return up_block_types.at(i) == "CrossAttnUpBlock2D"; }

  /// Attention heads in down block i (diffusers: num_attention_heads[i], which defaults to attention_head_dim[i]).
  int down_block_heads(std::size_t i) const { return attention_head_dim.at(i); }
  /// Attention heads in the mid block (the last down block's value).
  int mid_block_heads() const { return attention_head_dim.back(); }
  /// Attention heads in up block i (the per-block list reversed).
  int up_block_heads(std::size_t i) const { return attention_head_dim.at(num_blocks() - 1 - i); }
  /// Transformer blocks per attention in down block i.
  int down_transformer_layers(std::size_t i) const { return transformer_layers_per_block.at(i); }
  /// Transformer blocks per attention in up block i (the per-block list reversed).
  int up_transformer_layers(std::size_t i) const { return transformer_layers_per_block.at(num_blocks() - 1 - i); }
  /// Transformer blocks in the mid block's attention.
  int mid_transformer_layers() const { return transformer_layers_per_block.back(); }
  /// Resnets in down block i.
  int down_block_layers(std::size_t i) const { return layers_per_block.at(i); }
  /// Resnets in up block i: the mirrored down block's count + 1.
  int up_block_layers(std::size_t i) const { return layers_per_block.at(num_blocks() - 1 - i) + 1; }
  /// Output channels of up block i: block_out_channels reversed.
  int up_block_channels(std::size_t i) const { return block_out_channels.at(num_blocks() - 1 - i); }
  /// Channels per head for `heads` heads over `channels` channels (diffusers: channels // heads).
  static int head_dim(int channels, int heads) { return channels / heads; }

  /// Parses a config object; `source` names it in errors.
  /// \throws FormatError naming the field for a wrong type, an inconsistent value or an unsupported feature.
  static UNetConfig parse(const nlohmann::json& json, const std::string& source = "<json>") {
    const detail::ConfigReader r(json, source);
    UNetConfig c;
    c.in_channels = r.get_int("in_channels", c.in_channels);
    c.out_channels = r.get_int("out_channels", c.out_channels);
    if (r.has("sample_size")) {
      if (r.find("sample_size")->is_array()) r.fail("sample_size", "as a list (non-square) is not supported");
      c.sample_size = r.get_int("sample_size", 0);
    }
    c.center_input_sample = r.get_bool("center_input_sample", c.center_input_sample);
    c.flip_sin_to_cos = r.get_bool("flip_sin_to_cos", c.flip_sin_to_cos);
    c.freq_shift = r.get_double("freq_shift", c.freq_shift);
    c.down_block_types = r.get_strings("down_block_types", c.down_block_types);
    c.up_block_types = r.get_strings("up_block_types", c.up_block_types);
    if (json.contains("mid_block_type") && json["mid_block_type"].is_null())
      r.fail("mid_block_type", "= null (no mid block) is not supported");
    c.mid_block_type = r.get_string("mid_block_type", c.mid_block_type);
    c.block_out_channels = r.get_ints("block_out_channels", c.block_out_channels);
    const std::size_t n = c.block_out_channels.size();
    c.layers_per_block = r.get_ints_per_block("layers_per_block", 2, n);
    c.downsample_padding = r.get_int("downsample_padding", c.downsample_padding);
    c.act_fn = r.get_string("act_fn", c.act_fn);
    c.norm_eps = r.get_double("norm_eps", c.norm_eps);
    if (json.contains("norm_num_groups") && json["norm_num_groups"].is_null())
      r.fail("norm_num_groups", "= null (no output norm) is not supported");
    c.norm_num_groups = r.get_int("norm_num_groups", c.norm_num_groups);
    if (const auto* v = r.find("cross_attention_dim"); v && v->is_array())
      r.fail("cross_attention_dim", "as a per-block list is not supported");
    c.cross_attention_dim = r.get_int("cross_attention_dim", c.cross_attention_dim);
    c.transformer_layers_per_block = r.get_ints_per_block("transformer_layers_per_block", 1, n);
    c.attention_head_dim = r.get_ints_per_block("attention_head_dim", 8, n);
    c.use_linear_projection = r.get_bool("use_linear_projection", c.use_linear_projection);
    c.upcast_attention = r.get_bool("upcast_attention", c.upcast_attention);
    c.time_embedding_type = r.get_string("time_embedding_type", c.time_embedding_type);
    if (const auto* v = r.find("only_cross_attention"); v && v->is_array()) {
      for (const auto& item : *v)
        if (item != false) r.fail("only_cross_attention", "= " + v->dump() + " is not supported (only false)");
    } else {
      c.only_cross_attention = r.get_bool("only_cross_attention", false);
    }

    // Features that change the computation and that this project does not implement.
    r.require_null("num_attention_heads");  // diffusers itself refuses it for UNet2DConditionModel
    for (const char* field : {"class_embed_type", "addition_embed_type", "num_class_embeds", "time_cond_proj_dim",
                              "encoder_hid_dim", "encoder_hid_dim_type", "time_embedding_dim", "time_embedding_act_fn",
                              "timestep_post_act", "projection_class_embeddings_input_dim", "cross_attention_norm",
                              "reverse_transformer_layers_per_block", "addition_time_embed_dim"})
      r.require_null(field);
    r.require_default("resnet_time_scale_shift", "default");
    r.require_default("conv_in_kernel", 3);
    r.require_default("conv_out_kernel", 3);
    r.require_default("attention_type", "default");
    r.require_default("dual_cross_attention", false);
    r.require_default("resnet_skip_time_act", false);
    r.require_default("resnet_out_scale_factor", 1.0);
    r.require_default("mid_block_scale_factor", 1.0);
    r.require_default("class_embeddings_concat", false);
    r.require_default("mid_block_only_cross_attention", false);
    r.require_default("downsample_type", "conv");
    r.require_default("upsample_type", "conv");

    c.validate(source);
    return c;
  }

  /// Checks what parse() checks of the fields themselves: the block types and counts, the per-block lists' lengths,
  /// sizes, divisibility, and the features this project runs (only_cross_attention false, act_fn silu, positional
  /// time embedding). parse() calls it; the networks call it for a config made in code. `source` names the config in
  /// errors. \throws FormatError naming the field.
  void validate(const std::string& source = "UNetConfig") const {
    const nlohmann::json none = nlohmann::json::object();
    const detail::ConfigReader r(none, source);
    if (only_cross_attention) r.fail("only_cross_attention", "= true is not supported (only false)");
    if (act_fn != "silu") r.fail("act_fn", "= \"" + act_fn + "\" is not supported (only \"silu\")");
    if (time_embedding_type != "positional")
      r.fail("time_embedding_type", "= \"" + time_embedding_type + "\" is not supported (only \"positional\")");
    const std::size_t n = num_blocks();
    if (n == 0 || n > 8) r.fail("block_out_channels", "must have 1 to 8 entries, has " + std::to_string(n));
    for (const auto& [field, list] :
         {std::pair<const char*, const std::vector<int>*>{"layers_per_block", &layers_per_block},
          {"transformer_layers_per_block", &transformer_layers_per_block},
          {"attention_head_dim", &attention_head_dim}})
      if (list->size() != n)
        r.fail(field,
               "has " + std::to_string(list->size()) + " entries, one per block (" + std::to_string(n) + ") expected");
    r.require_one_of("down_block_types", down_block_types, {"DownBlock2D", "CrossAttnDownBlock2D"});
    r.require_one_of("up_block_types", up_block_types, {"UpBlock2D", "CrossAttnUpBlock2D"});
    r.require_one_of("mid_block_type", {mid_block_type}, {"UNetMidBlock2DCrossAttn"});
    if (down_block_types.size() != n)
      r.fail("down_block_types",
             "has " + std::to_string(down_block_types.size()) + " entries but block_out_channels " + std::to_string(n));
    if (up_block_types.size() != n)
      r.fail("up_block_types",
             "has " + std::to_string(up_block_types.size()) + " entries but block_out_channels " + std::to_string(n));
    r.require_positive("in_channels", in_channels);
    r.require_positive("out_channels", out_channels);
    r.require_positive("norm_num_groups", norm_num_groups);
    r.require_positive("cross_attention_dim", cross_attention_dim);
    r.require_epsilon("norm_eps", norm_eps);
    if (sample_size) r.require_positive("sample_size", *sample_size);
    if (downsample_padding != 0 && downsample_padding != 1)
      r.fail("downsample_padding", "must be 0 or 1, got " + std::to_string(downsample_padding));
    for (std::size_t i = 0; i < n; ++i) {
      const int channels = block_out_channels[i];
      r.require_positive("block_out_channels", channels);
      r.require_positive("layers_per_block", layers_per_block[i]);
      r.require_positive("transformer_layers_per_block", transformer_layers_per_block[i]);
      r.require_positive("attention_head_dim", attention_head_dim[i]);
      if (channels % norm_num_groups != 0)
        r.fail("norm_num_groups", "= " + std::to_string(norm_num_groups) + " does not divide block_out_channels[" +
                                      std::to_string(i) + "] = " + std::to_string(channels));
      const bool attention = down_block_has_attention(i) || up_block_has_attention(n - 1 - i) || i == n - 1;
      if (attention && channels % attention_head_dim[i] != 0)
        r.fail("attention_head_dim", "entry " + std::to_string(i) + " = " + std::to_string(attention_head_dim[i]) +
                                         " heads do not divide block_out_channels[" + std::to_string(i) +
                                         "] = " + std::to_string(channels));
    }
  }

  /// Reads `path`: a config.json or a unet/ folder holding one. \throws FormatError naming the file.
  static UNetConfig load(const std::filesystem::path& path) {
    return parse(detail::read_json_object(path), detail::config_source(path));
  }
};

}  // namespace carousel::checkpoint
