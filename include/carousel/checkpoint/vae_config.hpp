#pragma once
/// \file
/// carousel::checkpoint::VaeConfig — diffusers' AutoencoderKL config.json.

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/detail/config_reader.hpp"
#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint {

/// An AutoencoderKL configuration. Field names and defaults are diffusers' (used when a field is absent or null).
/// Supported: DownEncoderBlock2D / UpDecoderBlock2D blocks, SiLU; parse() rejects anything else naming the field.
/// The decoder's up block i has layers_per_block + 1 resnets and block_out_channels[n-1-i] output channels;
/// all its GroupNorms use norm_eps (1e-6, fixed in diffusers, not a config field).
struct VaeConfig {
  int in_channels = 3;                                              ///< image channels into the encoder
  int out_channels = 3;                                             ///< image channels out of the decoder
  std::vector<std::string> down_block_types{"DownEncoderBlock2D"};  ///< encoder blocks (only DownEncoderBlock2D)
  std::vector<std::string> up_block_types{"UpDecoderBlock2D"};      ///< decoder blocks (only UpDecoderBlock2D)
  std::vector<int> block_out_channels{64};          ///< encoder block channels (the decoder runs them reversed)
  int layers_per_block = 1;                         ///< encoder resnets per block (decoder: one more)
  std::string act_fn = "silu";                      ///< only silu
  int latent_channels = 4;                          ///< channels of the latent z
  int norm_num_groups = 32;                         ///< GroupNorm groups
  int sample_size = 32;                             ///< nominal image side (informational)
  double scaling_factor = 0.18215;                  ///< latents = z * scaling_factor; decode divides by it first
  std::optional<double> shift_factor;               ///< when set, decode uses z / scaling_factor + shift_factor
  std::optional<std::vector<double>> latents_mean;  ///< per-channel latent statistics (SDXL-style), if given
  std::optional<std::vector<double>> latents_std;   ///< per-channel latent statistics, if given
  bool force_upcast = true;                         ///< diffusers decodes in float32 even for a half model
  bool use_quant_conv = true;                       ///< the encoder ends with quant_conv (1x1)
  bool use_post_quant_conv = true;                  ///< decode starts with post_quant_conv (1x1)
  bool mid_block_add_attention = true;              ///< the mid blocks have their self-attention
  static constexpr double norm_eps = 1e-6;          ///< GroupNorm eps (fixed by diffusers)

  /// Number of encoder (= decoder) blocks.
  std::size_t num_blocks() const noexcept { return block_out_channels.size(); }
  /// Image side / latent side: 2^(num_blocks - 1).
  int downscale_factor() const noexcept { return 1 << (num_blocks() - 1); }

  /// Parses a config object; `source` names it in errors.
  /// \throws FormatError naming the field for a wrong type, an inconsistent value or an unsupported feature.
  static VaeConfig parse(const nlohmann::json& json, const std::string& source = "<json>") {
    const detail::ConfigReader r(json, source);
    VaeConfig c;
    c.in_channels = r.get_int("in_channels", c.in_channels);
    c.out_channels = r.get_int("out_channels", c.out_channels);
    c.down_block_types = r.get_strings("down_block_types", c.down_block_types);
    c.up_block_types = r.get_strings("up_block_types", c.up_block_types);
    c.block_out_channels = r.get_ints("block_out_channels", c.block_out_channels);
    c.layers_per_block = r.get_int("layers_per_block", c.layers_per_block);
    c.act_fn = r.get_string("act_fn", c.act_fn);
    c.latent_channels = r.get_int("latent_channels", c.latent_channels);
    c.norm_num_groups = r.get_int("norm_num_groups", c.norm_num_groups);
    if (const auto* v = r.find("sample_size"); v && v->is_array()) {
      const auto sizes = r.get_ints("sample_size", {});
      if (sizes.empty()) r.fail("sample_size", "is an empty list");
      c.sample_size = sizes[0];
    } else
      c.sample_size = r.get_int("sample_size", c.sample_size);
    c.scaling_factor = r.get_double("scaling_factor", c.scaling_factor);
    c.shift_factor = r.get_optional_double("shift_factor");
    c.latents_mean = r.get_optional_doubles("latents_mean");
    c.latents_std = r.get_optional_doubles("latents_std");
    c.force_upcast = r.get_bool("force_upcast", c.force_upcast);
    c.use_quant_conv = r.get_bool("use_quant_conv", c.use_quant_conv);
    c.use_post_quant_conv = r.get_bool("use_post_quant_conv", c.use_post_quant_conv);
    c.mid_block_add_attention = r.get_bool("mid_block_add_attention", c.mid_block_add_attention);

    c.validate(source);
    return c;
  }

  /// Checks what parse() checks of the fields themselves: block types and counts, sizes, divisibility, the scaling
  /// factor, the latent statistics' lengths, act_fn silu. parse() calls it; the networks call it for a config made in
  /// code. `source` names the config in errors. \throws FormatError naming the field.
  void validate(const std::string& source = "VaeConfig") const {
    const nlohmann::json none = nlohmann::json::object();
    const detail::ConfigReader r(none, source);
    if (act_fn != "silu") r.fail("act_fn", "= \"" + act_fn + "\" is not supported (only \"silu\")");
    r.require_one_of("down_block_types", down_block_types, {"DownEncoderBlock2D"});
    r.require_one_of("up_block_types", up_block_types, {"UpDecoderBlock2D"});
    const std::size_t n = num_blocks();
    if (n == 0 || n > 8) r.fail("block_out_channels", "must have 1 to 8 entries, has " + std::to_string(n));
    if (down_block_types.size() != n)
      r.fail("down_block_types",
             "has " + std::to_string(down_block_types.size()) + " entries but block_out_channels " + std::to_string(n));
    if (up_block_types.size() != n)
      r.fail("up_block_types",
             "has " + std::to_string(up_block_types.size()) + " entries but block_out_channels " + std::to_string(n));
    r.require_positive("in_channels", in_channels);
    r.require_positive("out_channels", out_channels);
    r.require_positive("latent_channels", latent_channels);
    r.require_positive("layers_per_block", layers_per_block);
    r.require_positive("norm_num_groups", norm_num_groups);
    r.require_positive("sample_size", sample_size);
    for (std::size_t i = 0; i < n; ++i) {
      r.require_positive("block_out_channels", block_out_channels[i]);
      if (block_out_channels[i] % norm_num_groups != 0)
        r.fail("norm_num_groups", "= " + std::to_string(norm_num_groups) + " does not divide block_out_channels[" +
                                      std::to_string(i) + "] = " + std::to_string(block_out_channels[i]));
    }
    if (scaling_factor == 0) r.fail("scaling_factor", "must not be 0");
    for (const auto* stats : {&latents_mean, &latents_std})
      if (*stats && (*stats)->size() != static_cast<std::size_t>(latent_channels))
        r.fail(stats == &latents_mean ? "latents_mean" : "latents_std",
               "must have latent_channels = " + std::to_string(latent_channels) + " entries");
  }

  /// Reads `path`: a config.json or a vae/ folder holding one. \throws FormatError naming the file.
  static VaeConfig load(const std::filesystem::path& path) {
    return parse(detail::read_json_object(path), detail::config_source(path));
  }
};

}  // namespace carousel::checkpoint
