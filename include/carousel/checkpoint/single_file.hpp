#pragma once
/// \file
/// carousel::checkpoint::SingleFileCheckpoint — a Stable Diffusion 1.x / 2.x checkpoint in the original LDM layout
/// (one `.safetensors` file, as AUTOMATIC1111, ComfyUI and stable-diffusion.cpp load), read as diffusers components:
/// its tensor names are mapped in memory to the diffusers / transformers names the backends ask for (no converted
/// copy on disk) and its configs are derived from the tensors' shapes, as diffusers' `from_single_file` does.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/detail/config_reader.hpp"
#include "carousel/checkpoint/format_error.hpp"
#include "carousel/checkpoint/safetensors.hpp"
#include "carousel/checkpoint/weights.hpp"

namespace carousel::checkpoint {

/// The model families a single-file checkpoint may hold.
enum class SingleFileFamily {
  sd1,  ///< SD 1.x: CLIP ViT-L text encoder under cond_stage_model.transformer.*
  sd2,  ///< SD 2.x: OpenCLIP ViT-H text encoder under cond_stage_model.model.* (q/k/v fused)
};

/// How DiffusersFolder::open reads a single-file checkpoint.
struct SingleFileOptions {
  /// The tokenizer folder (vocab.json + merges.txt, or tokenizer.json): a single file holds none. Empty: the
  /// `config` folder's tokenizer/ when `config` is given, else an error. The real CLIP vocabulary ships in
  /// carousel's models/shapes-32/tokenizer. For SD 2.x without `config` the pad token is "!" (as in SD 2.x tokenizers).
  std::filesystem::path tokenizer{};
  /// A diffusers folder whose unet/, vae/, text_encoder/ config.json and scheduler/scheduler_config.json are used
  /// instead of the family's (diffusers' `config=`): for models whose hyperparameters the shapes do not tell
  /// (norm groups, heads, prediction type). Empty: the family's known architecture, sized by the tensors.
  std::filesystem::path config{};
  /// Read the UNet from the EMA copy (`model_ema.*`) of a full checkpoint instead of `model.diffusion_model.*`
  /// (diffusers' `extract_ema`); ignored when the file has no EMA copy.
  bool use_ema = false;
};

/// One component of a model.
enum class Component { unet, text_encoder, vae };

/// A single-file SD 1.x / 2.x checkpoint: family, derived configs (diffusers config.json objects) and the
/// name-mapped weights of each component. Immutable after open(); const members may be called from several threads.
class SingleFileCheckpoint {
 public:
  /// Reads the header of `file` (tensor names, dtypes, shapes: F32, F16 and BF16 weights), detects the family and
  /// maps every name. \throws FormatError naming the file for a malformed file, an unsupported family (SDXL,
  /// inpainting, upscaler, ... — the message names what was found), or a layout that does not fit SD 1.x/2.x.
  static SingleFileCheckpoint open(const std::filesystem::path& file, const SingleFileOptions& options = {}) {
    std::map<std::string, std::vector<std::int64_t>, std::less<>> shapes;
    const auto stored = SafetensorsFile::open(file);
    for (const auto& t : stored.tensors())
      shapes.emplace(t.name, t.shape);
    return from_shapes(std::move(shapes), file, options);
  }

  /// As open(), from a checkpoint's tensor names and shapes alone (e.g. to inspect a header): family, names and
  /// configs; open_weights() then reads `file`. \throws FormatError as open().
  static SingleFileCheckpoint from_shapes(std::map<std::string, std::vector<std::int64_t>, std::less<>> shapes,
                                          const std::filesystem::path& file, const SingleFileOptions& options = {}) {
    SingleFileCheckpoint c;
    c.file_ = file;
    c.options_ = options;
    c.shapes_ = std::move(shapes);
    c.detect();
    c.map_unet();
    c.map_vae();
    c.map_text();
    c.derive_configs();
    return c;
  }

  SingleFileFamily family() const noexcept { return family_; }                         ///< SD 1.x or 2.x
  const std::filesystem::path& file() const noexcept { return file_; }                 ///< the checkpoint file
  const SingleFileOptions& options() const noexcept { return options_; }               ///< as given to open()
  const nlohmann::json& unet_config() const noexcept { return unet_config_; }          ///< UNet2DConditionModel config
  const nlohmann::json& vae_config() const noexcept { return vae_config_; }            ///< AutoencoderKL config
  const nlohmann::json& text_encoder_config() const noexcept { return text_config_; }  ///< CLIPTextConfig
  const nlohmann::json& scheduler_config() const noexcept { return scheduler_config_; }  ///< scheduler_config.json
  /// Where a component's config came from, for error messages.
  std::string config_source(Component part) const {
    if (!options_.config.empty()) return (options_.config / folder_of(part) / "config.json").string();
    return file_.string() + " (" + folder_of(part) + ", derived)";
  }

  /// The diffusers / transformers name -> stored tensor map of a component.
  const std::vector<WeightStore::Renamed>& names(Component part) const { return names_[static_cast<int>(part)]; }

  /// The weights of a component under diffusers / transformers names (the text encoder's with "text_model.").
  /// \throws FormatError naming the file when it cannot be opened.
  WeightStore open_weights(Component part) const {
    return WeightStore::open_renamed(file_, names(part), "'" + file_.string() + "' (" + folder_of(part) + ")");
  }

 private:
  static std::string folder_of(Component part) {
    return part == Component::unet ? "unet" : part == Component::vae ? "vae" : "text_encoder";
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError("single-file checkpoint '" + file_.string() + "': " + what);
  }

  bool has(const std::string& name) const { return shapes_.count(name) != 0; }
  const std::vector<std::int64_t>& shape(const std::string& name) const {
    const auto it = shapes_.find(name);
    if (it == shapes_.end()) fail("tensor '" + name + "' is missing");
    return it->second;
  }
  bool any_with_prefix(std::string_view prefix) const {
    const auto it = shapes_.lower_bound(std::string(prefix));
    return it != shapes_.end() && it->first.starts_with(prefix);
  }

  void detect() {
    if (any_with_prefix("conditioner.embedders."))
      fail("an SDXL checkpoint (conditioner.embedders.*); only SD 1.x and 2.x are supported");
    if (!has(unet_prefix + "input_blocks.0.0.weight"))
      fail(
          "not a Stable Diffusion 1.x/2.x checkpoint in the LDM layout (no model.diffusion_model.input_blocks.*); "
          "other families (SD3, Flux, ...) are not supported");
    if (any_with_prefix(unet_prefix + "label_emb."))
      fail("a UNet with class/label embeddings (upscaler or SDXL-like); only SD 1.x and 2.x are supported");
    const auto& conv_in = shape(unet_prefix + "input_blocks.0.0.weight");
    if (conv_in.size() != 4 || conv_in[1] != 4)
      fail("the UNet takes " + std::to_string(conv_in.size() == 4 ? conv_in[1] : 0) +
           " input channels (inpainting / instruct-pix2pix models take 9 / 8); only text-to-image (4) is supported");
    if (any_with_prefix("cond_stage_model.transformer."))
      family_ = SingleFileFamily::sd1;
    else if (any_with_prefix("cond_stage_model.model."))
      family_ = SingleFileFamily::sd2;
    else
      fail("no text encoder (cond_stage_model.transformer.* or cond_stage_model.model.*)");
    if (!any_with_prefix("first_stage_model.")) fail("no VAE (first_stage_model.*)");
  }

  // The stored UNet tensor of LDM name `ldm` (after "model.diffusion_model."): itself, or its EMA copy, whose name
  // is "model_ema." + the name after "model." with the dots removed (diffusers' convert_ldm_unet_checkpoint).
  std::string unet_source(const std::string& ldm) const {
    if (!use_ema_) return unet_prefix + ldm;
    std::string flat = "model_ema.diffusion_model";
    for (char ch : ldm)
      if (ch != '.') flat += ch;
    return flat;
  }

  static std::string resnet_name(std::string_view rest) {
    static constexpr std::pair<std::string_view, std::string_view> renames[] = {
        {"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."},          {"out_layers.0.", "norm2."},
        {"out_layers.3.", "conv2."}, {"emb_layers.1.", "time_emb_proj."}, {"skip_connection.", "conv_shortcut."}};
    for (const auto& [from, to] : renames)
      if (rest.starts_with(from)) return std::string(to) + std::string(rest.substr(from.size()));
    return {};
  }

  // Splits "down.7.rest" (kind "down.") into {7, "rest"}.
  static std::optional<std::pair<int, std::string>> split_index(std::string_view name, std::string_view kind) {
    if (!name.starts_with(kind)) return std::nullopt;
    name.remove_prefix(kind.size());
    int index = 0;
    std::size_t digits = 0;
    while (digits < name.size() && digits < 6 && name[digits] >= '0' && name[digits] <= '9')
      index = index * 10 + (name[digits++] - '0');
    if (digits == 0 || digits >= name.size() || name[digits] != '.') return std::nullopt;
    return std::pair{index, std::string(name.substr(digits + 1))};
  }

  // Splits "input_blocks.7.1.rest" into {7, 1, "rest"}.
  static std::optional<std::tuple<int, int, std::string>> split_block(std::string_view name, std::string_view kind) {
    const auto outer = split_index(name, kind);
    if (!outer) return std::nullopt;
    const auto inner = split_index(outer->second, "");
    if (!inner) return std::nullopt;
    return std::tuple{outer->first, inner->first, inner->second};
  }

  void map_unet() {
    use_ema_ = options_.use_ema && any_with_prefix("model_ema.diffusion_model");
    // Blocks: input_blocks 1.. hold `layers` resnet (+ attention) entries per level, then a downsampler (".0.op").
    std::set<int> inputs, outputs;
    for (const auto& [name, s] : shapes_) {
      if (!name.starts_with(unet_prefix)) continue;
      const std::string_view rest = std::string_view(name).substr(unet_prefix.size());
      if (const auto b = split_block(rest, "input_blocks.")) inputs.insert(std::get<0>(*b));
      if (const auto b = split_block(rest, "output_blocks.")) outputs.insert(std::get<0>(*b));
    }
    layers_ = 0;
    while (inputs.count(layers_ + 1) &&
           !has(unet_prefix + "input_blocks." + std::to_string(layers_ + 1) + ".0.op.weight"))
      ++layers_;
    // input_blocks: conv_in, then per level `layers_` blocks and a downsampler (none after the last level).
    const int inputs_count = inputs.empty() ? 0 : *inputs.rbegin() + 1;
    if (layers_ == 0 || inputs_count % (layers_ + 1) != 0 || static_cast<int>(inputs.size()) != inputs_count)
      fail("the UNet's input_blocks do not form levels of equal depth");
    levels_ = inputs_count / (layers_ + 1);
    if (static_cast<int>(outputs.size()) != levels_ * (layers_ + 1))
      fail("the UNet has " + std::to_string(outputs.size()) + " output_blocks, " +
           std::to_string(levels_ * (layers_ + 1)) + " expected for its input_blocks");
    const int per = layers_ + 1;
    auto& out = names_[static_cast<int>(Component::unet)];
    for (const auto& [name, s] : shapes_) {
      if (!name.starts_with(unet_prefix)) continue;
      const std::string ldm = name.substr(unet_prefix.size());
      std::string mapped;
      static constexpr std::pair<std::string_view, std::string_view> fixed[] = {
          {"input_blocks.0.0.", "conv_in."},
          {"time_embed.0.", "time_embedding.linear_1."},
          {"time_embed.2.", "time_embedding.linear_2."},
          {"out.0.", "conv_norm_out."},
          {"out.2.", "conv_out."}};
      for (const auto& [from, to] : fixed)
        if (ldm.starts_with(from)) mapped = std::string(to) + ldm.substr(from.size());
      if (mapped.empty()) {
        if (const auto b = split_block(ldm, "input_blocks.")) {
          const auto& [i, j, rest] = *b;
          const int level = (i - 1) / per, layer = (i - 1) % per;
          const std::string down = "down_blocks." + std::to_string(level) + ".";
          if (j == 0 && rest.starts_with("op."))
            mapped = down + "downsamplers.0.conv." + rest.substr(3);
          else if (j == 0 && layer < layers_ && !resnet_name(rest).empty())
            mapped = down + "resnets." + std::to_string(layer) + "." + resnet_name(rest);
          else if (j == 1 && layer < layers_)
            mapped = down + "attentions." + std::to_string(layer) + "." + rest;
        } else if (const auto m = split_index(ldm, "middle_block.")) {
          const auto& [index, tail] = *m;
          if ((index == 0 || index == 2) && !resnet_name(tail).empty())
            mapped = "mid_block.resnets." + std::to_string(index / 2) + "." + resnet_name(tail);
          else if (index == 1)
            mapped = "mid_block.attentions.0." + tail;
        } else if (const auto o = split_block(ldm, "output_blocks.")) {
          const auto& [i, j, rest] = *o;
          const std::string up = "up_blocks." + std::to_string(i / per) + ".";
          if (j == 0 && !resnet_name(rest).empty())
            mapped = up + "resnets." + std::to_string(i % per) + "." + resnet_name(rest);
          else if ((j == 1 || j == 2) && rest.starts_with("conv."))
            mapped = up + "upsamplers.0.conv." + rest.substr(5);
          else if (j == 1)
            mapped = up + "attentions." + std::to_string(i % per) + "." + rest;
        }
      }
      if (mapped.empty()) fail("tensor '" + name + "' does not fit the SD 1.x/2.x UNet layout");
      out.push_back({mapped, unet_source(ldm), 0, 0});
      if (use_ema_ && !has(out.back().stored))
        fail("tensor '" + name + "' has no EMA copy '" + out.back().stored + "'");
    }
  }

  void map_vae() {
    // Levels: encoder.down.N; the decoder's up.N is level N counted from the top (diffusers' up_blocks reversed).
    int levels = 0;
    while (any_with_prefix(vae_prefix + "encoder.down." + std::to_string(levels) + ".") ||
           any_with_prefix(vae_prefix + "decoder.up." + std::to_string(levels) + "."))
      ++levels;
    vae_levels_ = levels;
    auto& out = names_[static_cast<int>(Component::vae)];
    for (const auto& [name, s] : shapes_) {
      if (!name.starts_with(vae_prefix)) continue;
      const std::string ldm = name.substr(vae_prefix.size());
      std::string mapped;
      if (ldm.starts_with("quant_conv.") || ldm.starts_with("post_quant_conv.")) mapped = ldm;
      for (const std::string side : {"encoder.", "decoder."}) {
        if (!mapped.empty() || !ldm.starts_with(side)) continue;
        const std::string rest = ldm.substr(side.size());
        const auto resnet = [](const std::string& r) {
          const auto at = r.find("nin_shortcut.");
          return at == std::string::npos ? r : r.substr(0, at) + "conv_shortcut." + r.substr(at + 13);
        };
        if (rest.starts_with("conv_in.") || rest.starts_with("conv_out."))
          mapped = side + rest;
        else if (rest.starts_with("norm_out."))
          mapped = side + "conv_norm_out." + rest.substr(9);
        else if (rest.starts_with("mid.block_1."))
          mapped = side + "mid_block.resnets.0." + resnet(rest.substr(12));
        else if (rest.starts_with("mid.block_2."))
          mapped = side + "mid_block.resnets.1." + resnet(rest.substr(12));
        else if (rest.starts_with("mid.attn_1.")) {
          static constexpr std::pair<std::string_view, std::string_view> attn[] = {
              {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."}};
          const std::string tail = rest.substr(11);
          for (const auto& [from, to] : attn)
            if (tail.starts_with(from))
              mapped = side + "mid_block.attentions.0." + std::string(to) + tail.substr(from.size());
        } else if (const auto b = split_index(rest, side == "encoder." ? "down." : "up.")) {
          const auto& [level, after] = *b;
          const std::string index = std::to_string(side == "encoder." ? level : levels - 1 - level);
          const std::string group = side == "encoder." ? "down_blocks." : "up_blocks.";
          if (after.starts_with("block."))
            mapped = side + group + index + ".resnets." + resnet(after.substr(6));
          else if (after.starts_with("downsample.conv.") && side == "encoder.")
            mapped = side + group + index + ".downsamplers.0.conv." + after.substr(16);
          else if (after.starts_with("upsample.conv.") && side == "decoder.")
            mapped = side + group + index + ".upsamplers.0.conv." + after.substr(14);
        }
      }
      if (mapped.empty()) fail("tensor '" + name + "' does not fit the SD 1.x/2.x VAE layout");
      out.push_back({mapped, name, 0, 0});
    }
  }

  void map_text() {
    auto& out = names_[static_cast<int>(Component::text_encoder)];
    if (family_ == SingleFileFamily::sd1) {
      const std::string prefix = "cond_stage_model.transformer.";
      for (const auto& [name, s] : shapes_)
        if (name.starts_with(prefix)) out.push_back({name.substr(prefix.size()), name, 0, 0});
      return;
    }
    // OpenCLIP: the last of 24 resblocks and the projection are not part of diffusers' CLIPTextModel (SD 2.x uses
    // the penultimate layer), as in diffusers' convert_open_clip_checkpoint.
    const std::string prefix = "cond_stage_model.model.";
    int blocks = 0;
    while (any_with_prefix(prefix + "transformer.resblocks." + std::to_string(blocks) + "."))
      ++blocks;
    text_layers_ = blocks == 24 ? 23 : blocks;
    const std::int64_t hidden = shape(prefix + "token_embedding.weight").at(1);
    for (const auto& [name, s] : shapes_) {
      if (!name.starts_with(prefix)) continue;
      const std::string rest = name.substr(prefix.size());
      if (rest == "text_projection" || rest == "logit_scale" || rest == "attn_mask") continue;
      if (rest == "token_embedding.weight")
        out.push_back({"text_model.embeddings.token_embedding.weight", name});
      else if (rest == "positional_embedding")
        out.push_back({"text_model.embeddings.position_embedding.weight", name});
      else if (rest.starts_with("ln_final."))
        out.push_back({"text_model.final_layer_norm." + rest.substr(9), name});
      else if (const auto b = split_index(rest, "transformer.resblocks.")) {
        const auto& [layer, tail] = *b;
        if (layer >= text_layers_) continue;
        const std::string at = "text_model.encoder.layers." + std::to_string(layer) + ".";
        static constexpr std::pair<std::string_view, std::string_view> renames[] = {
            {"ln_1.", "layer_norm1."},
            {"ln_2.", "layer_norm2."},
            {"mlp.c_fc.", "mlp.fc1."},
            {"mlp.c_proj.", "mlp.fc2."},
            {"attn.out_proj.", "self_attn.out_proj."}};
        bool done = false;
        for (const auto& [from, to] : renames)
          if (tail.starts_with(from)) {
            out.push_back({at + std::string(to) + tail.substr(from.size()), name});
            done = true;
          }
        if (!done && (tail == "attn.in_proj_weight" || tail == "attn.in_proj_bias")) {
          const std::string kind = tail == "attn.in_proj_weight" ? "weight" : "bias";
          if (s.empty() || s[0] != 3 * hidden) fail("tensor '" + name + "' is not q, k, v fused (3 x hidden rows)");
          const char* parts[] = {"q_proj.", "k_proj.", "v_proj."};
          for (std::int64_t k = 0; k < 3; ++k)
            out.push_back({at + "self_attn." + parts[k] + kind, name, k * hidden, hidden});
          done = true;
        }
        if (!done) fail("tensor '" + name + "' does not fit the OpenCLIP text encoder layout");
      } else {
        fail("tensor '" + name + "' does not fit the OpenCLIP text encoder layout");
      }
    }
  }

  void derive_configs() {
    if (!options_.config.empty()) {
      unet_config_ = detail::read_json_object(options_.config / "unet");
      vae_config_ = detail::read_json_object(options_.config / "vae");
      text_config_ = detail::read_json_object(options_.config / "text_encoder");
      scheduler_config_ = detail::read_json_object(options_.config / "scheduler", "scheduler_config.json");
      return;
    }
    const bool sd2 = family_ == SingleFileFamily::sd2;
    const int per = layers_ + 1;
    nlohmann::json channels = nlohmann::json::array(), heads = nlohmann::json::array(), depth = nlohmann::json::array(),
                   down = nlohmann::json::array(), up = nlohmann::json::array();
    std::int64_t cross = 0;
    bool linear = false;
    for (int level = 0; level < levels_; ++level) {
      const std::string block = unet_prefix + "input_blocks." + std::to_string(1 + level * per) + ".";
      const std::int64_t c = shape(block + "0.out_layers.3.weight").at(0);
      channels.push_back(c);
      const bool attention = has(block + "1.proj_in.weight");
      down.push_back(attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
      int transformers = 0;
      while (has(block + "1.transformer_blocks." + std::to_string(transformers) + ".attn2.to_k.weight"))
        ++transformers;
      depth.push_back(std::max(transformers, 1));
      if (attention) {
        cross = shape(block + "1.transformer_blocks.0.attn2.to_k.weight").at(1);
        linear = shape(block + "1.proj_in.weight").size() == 2;
      }
      // SD 1.x: 8 heads everywhere; SD 2.x: heads of 64 channels (diffusers' attention_head_dim is the head count).
      heads.push_back(sd2 ? std::max<std::int64_t>(c / 64, 1) : 8);
      const bool up_attention = has(unet_prefix + "output_blocks." + std::to_string(level * per) + ".1.proj_in.weight");
      up.push_back(up_attention ? "CrossAttnUpBlock2D" : "UpBlock2D");
    }
    if (cross == 0) fail("the UNet has no cross-attention");
    unet_config_ = {{"_class_name", "UNet2DConditionModel"},
                    {"in_channels", 4},
                    {"out_channels", shape(unet_prefix + "out.2.weight").at(0)},
                    {"block_out_channels", channels},
                    {"layers_per_block", layers_},
                    {"down_block_types", down},
                    {"up_block_types", up},
                    {"cross_attention_dim", cross},
                    {"attention_head_dim", heads},
                    {"transformer_layers_per_block", depth},
                    {"use_linear_projection", linear},
                    {"norm_num_groups", 32},
                    {"sample_size", sd2 ? 96 : 64}};
    nlohmann::json vae_channels = nlohmann::json::array();
    for (int level = 0; level < vae_levels_; ++level)
      vae_channels.push_back(
          shape(vae_prefix + "encoder.down." + std::to_string(level) + ".block.0.conv1.weight").at(0));
    int vae_layers = 0;
    while (has(vae_prefix + "encoder.down.0.block." + std::to_string(vae_layers) + ".conv1.weight"))
      ++vae_layers;
    vae_config_ = {{"_class_name", "AutoencoderKL"},
                   {"in_channels", shape(vae_prefix + "encoder.conv_in.weight").at(1)},
                   {"out_channels", shape(vae_prefix + "decoder.conv_out.weight").at(0)},
                   {"latent_channels", shape(vae_prefix + "post_quant_conv.weight").at(0)},
                   {"block_out_channels", vae_channels},
                   {"down_block_types", std::vector<std::string>(vae_channels.size(), "DownEncoderBlock2D")},
                   {"up_block_types", std::vector<std::string>(vae_channels.size(), "UpDecoderBlock2D")},
                   {"layers_per_block", vae_layers},
                   {"norm_num_groups", 32},
                   {"sample_size", sd2 ? 768 : 512},
                   {"scaling_factor", 0.18215}};
    const std::string text = sd2 ? "cond_stage_model.model." : "cond_stage_model.transformer.text_model.";
    const auto& tokens = shape(text + (sd2 ? "token_embedding.weight" : "embeddings.token_embedding.weight"));
    const auto& positions = shape(text + (sd2 ? "positional_embedding" : "embeddings.position_embedding.weight"));
    int text_layers = text_layers_;
    if (!sd2)
      while (has(text + "encoder.layers." + std::to_string(text_layers) + ".mlp.fc1.weight"))
        ++text_layers;
    const auto& fc1 =
        shape(sd2 ? text + "transformer.resblocks.0.mlp.c_fc.weight" : text + "encoder.layers.0.mlp.fc1.weight");
    text_config_ = {{"architectures", {"CLIPTextModel"}},
                    {"vocab_size", tokens.at(0)},
                    {"hidden_size", tokens.at(1)},
                    {"intermediate_size", fc1.at(0)},
                    {"num_hidden_layers", text_layers},
                    {"num_attention_heads", std::max<std::int64_t>(tokens.at(1) / 64, 1)},
                    {"max_position_embeddings", positions.at(0)},
                    {"hidden_act", sd2 ? "gelu" : "quick_gelu"},
                    {"layer_norm_eps", 1e-5},
                    {"projection_dim", sd2 ? 1024 : 768}};
    // diffusers' single-file scheduler defaults (DDIM-compatible settings of the SD releases); SD 2.x: v-prediction
    // (the 768-v releases; pass `config` for SD 2.x base, which predicts epsilon).
    scheduler_config_ = {{"_class_name", "DDIMScheduler"}, {"beta_schedule", "scaled_linear"},
                         {"beta_start", 0.00085},          {"beta_end", 0.012},
                         {"num_train_timesteps", 1000},    {"prediction_type", sd2 ? "v_prediction" : "epsilon"},
                         {"set_alpha_to_one", false},      {"steps_offset", 1},
                         {"clip_sample", false},           {"timestep_spacing", "leading"}};
  }

  inline static const std::string unet_prefix = "model.diffusion_model.";
  inline static const std::string vae_prefix = "first_stage_model.";

  std::filesystem::path file_;
  SingleFileOptions options_;
  SingleFileFamily family_ = SingleFileFamily::sd1;
  std::map<std::string, std::vector<std::int64_t>, std::less<>> shapes_;
  std::vector<WeightStore::Renamed> names_[3];
  bool use_ema_ = false;
  int layers_ = 0, levels_ = 0, vae_levels_ = 0, text_layers_ = 0;
  nlohmann::json unet_config_, vae_config_, text_config_, scheduler_config_;
};

}  // namespace carousel::checkpoint
