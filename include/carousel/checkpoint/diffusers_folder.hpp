#pragma once
/// \file
/// carousel::checkpoint::DiffusersFolder — the component layout of a diffusers pipeline folder (model_index.json).

#include <filesystem>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/clip_text_config.hpp"
#include "carousel/checkpoint/clip_tokenizer.hpp"
#include "carousel/checkpoint/detail/config_reader.hpp"
#include "carousel/checkpoint/format_error.hpp"
#include "carousel/checkpoint/single_file.hpp"
#include "carousel/checkpoint/unet_config.hpp"
#include "carousel/checkpoint/vae_config.hpp"
#include "carousel/checkpoint/weights.hpp"

namespace carousel::checkpoint {

/// Where the components of a Stable-Diffusion-style diffusers folder are. model_index.json maps each component
/// name to [library, class] (or [null, null] when absent). Required: unet (UNet2DConditionModel), text_encoder
/// (CLIPTextModel or CLIPTextModelWithProjection), tokenizer (CLIPTokenizer / CLIPTokenizerFast) and scheduler
/// (any class; the diffusion layer reads scheduler_config.json); optional: vae (AutoencoderKL; absent for
/// pixel-space models). Other components (safety_checker, feature_extractor, image_encoder) are ignored.
///
/// A single-file checkpoint (SD 1.x / 2.x in the original LDM layout, see SingleFileCheckpoint) opens as the same
/// kind of model: open() takes a `.safetensors` path wherever it takes a folder. Read configs, weights and the
/// tokenizer through the member functions (unet_config(), open_weights(), load_tokenizer(), ...), which serve both;
/// for a single file the component paths all name the file, and `tokenizer` the tokenizer folder used.
struct DiffusersFolder {
  std::filesystem::path root;                               ///< the folder (or single file) given to open()
  std::string pipeline_class;                               ///< model_index.json's _class_name
  std::filesystem::path unet;                               ///< root / "unet"
  std::filesystem::path text_encoder;                       ///< root / "text_encoder"
  std::filesystem::path tokenizer;                          ///< root / "tokenizer"
  std::filesystem::path scheduler;                          ///< root / "scheduler"
  std::optional<std::filesystem::path> vae;                 ///< root / "vae" when listed
  std::map<std::string, std::string> component_class;       ///< e.g. "scheduler" -> "DDIMScheduler"
  std::shared_ptr<const SingleFileCheckpoint> single_file;  ///< set when root is a single-file checkpoint

  /// Reads root/model_index.json and checks that every listed required component folder exists.
  /// \throws FormatError naming the folder and the component when model_index.json is missing or malformed, a
  ///         required component is absent, has an unsupported class, or its folder is missing.
  /// A regular file is opened as a single-file checkpoint with `single` (see SingleFileOptions); the tokenizer
  /// folder is `single.tokenizer`, else `single.config`/tokenizer.
  /// \throws FormatError as SingleFileCheckpoint::open, or when no tokenizer folder is named.
  static DiffusersFolder open(const std::filesystem::path& root, const SingleFileOptions& single = {}) {
    if (std::filesystem::is_regular_file(root)) return open_single_file(root, single);
    const auto index = detail::read_json_object(root / "model_index.json");
    const std::string where = "model folder '" + root.string() + "'";
    DiffusersFolder folder;
    folder.root = root;
    if (const auto it = index.find("_class_name"); it != index.end() && it->is_string())
      folder.pipeline_class = it->get<std::string>();
    for (const auto& [name, value] : index.items()) {
      if (name.starts_with("_") || !value.is_array() || value.size() != 2 || !value[1].is_string()) continue;
      folder.component_class[name] = value[1].get<std::string>();
    }
    const auto component = [&](std::string_view name, std::initializer_list<std::string_view> classes,
                               bool required) -> std::optional<std::filesystem::path> {
      const auto it = folder.component_class.find(std::string(name));
      if (it == folder.component_class.end()) {
        if (required) throw FormatError(where + ": model_index.json lists no '" + std::string(name) + "' component");
        return std::nullopt;
      }
      bool supported = classes.size() == 0;
      for (auto c : classes)
        supported = supported || it->second == c;
      if (!supported)
        throw FormatError(where + ": component '" + std::string(name) + "' has class " + it->second +
                          ", which is not supported");
      const auto path = root / std::string(name);
      if (!std::filesystem::is_directory(path))
        throw FormatError(where + ": component '" + std::string(name) + "' is listed but folder '" + path.string() +
                          "' is missing");
      return path;
    };
    folder.unet = *component("unet", {"UNet2DConditionModel"}, true);
    folder.text_encoder = *component("text_encoder", {"CLIPTextModel", "CLIPTextModelWithProjection"}, true);
    folder.tokenizer = *component("tokenizer", {"CLIPTokenizer", "CLIPTokenizerFast"}, true);
    folder.scheduler = *component("scheduler", {}, true);
    folder.vae = component("vae", {"AutoencoderKL"}, false);
    return folder;
  }

  /// The tokenizer, checked against the text encoder: its max_length() (model_max_length) must not exceed the
  /// text encoder's max_position_embeddings, or every prompt would fail at encoding time. For an SD 2.x single
  /// file without a config folder the pad token is "!", as in SD 2.x tokenizers.
  /// \throws FormatError naming the tokenizer and text-encoder files when they disagree or cannot be read.
  ClipTokenizer load_tokenizer() const {
    const bool sd2 =
        single_file && single_file->family() == SingleFileFamily::sd2 && single_file->options().config.empty();
    auto loaded = ClipTokenizer::load(tokenizer, sd2 ? "!" : "");
    const auto text = text_encoder_config();
    if (loaded.max_length() > static_cast<std::size_t>(text.max_position_embeddings))
      throw FormatError("tokenizer '" + tokenizer.string() + "': model_max_length " +
                        std::to_string(loaded.max_length()) + " exceeds max_position_embeddings " +
                        std::to_string(text.max_position_embeddings) + " of '" +
                        config_source(Component::text_encoder) + "'");
    return loaded;
  }

  /// The UNet's config (unet/config.json, or derived from a single file). \throws FormatError naming the source.
  UNetConfig unet_config() const {
    return single_file ? UNetConfig::parse(single_file->unet_config(), config_source(Component::unet))
                       : UNetConfig::load(unet);
  }

  /// The text encoder's config. \throws FormatError naming the source.
  ClipTextConfig text_encoder_config() const {
    return single_file
               ? ClipTextConfig::parse(single_file->text_encoder_config(), config_source(Component::text_encoder))
               : ClipTextConfig::load(text_encoder);
  }

  /// The VAE's config, or nothing for a pixel-space model. \throws FormatError naming the source.
  std::optional<VaeConfig> vae_config() const {
    if (single_file) return VaeConfig::parse(single_file->vae_config(), config_source(Component::vae));
    if (!vae) return std::nullopt;
    return VaeConfig::load(*vae);
  }

  /// The scheduler_config.json object and where it came from (the diffusion layer's SchedulerConfig reads it).
  /// \throws FormatError naming the file when it cannot be read.
  std::pair<nlohmann::json, std::string> scheduler_config_json() const {
    if (single_file)
      return {single_file->scheduler_config(),
              single_file->options().config.empty()
                  ? root.string() + " (scheduler, family defaults)"
                  : (single_file->options().config / "scheduler" / "scheduler_config.json").string()};
    return {detail::read_json_object(scheduler, "scheduler_config.json"),
            detail::config_source(scheduler, "scheduler_config.json")};
  }

  /// The weights of a component (`variant` as WeightStore::open; a single file has none). Requires a vae for
  /// Component::vae. \throws FormatError naming the files.
  WeightStore open_weights(Component part, std::string_view variant = "") const {
    if (single_file) return single_file->open_weights(part);
    if (part == Component::vae && !vae) throw FormatError("model folder '" + root.string() + "' has no vae");
    return WeightStore::open(part == Component::unet ? unet : part == Component::vae ? *vae : text_encoder, variant);
  }

 private:
  std::string config_source(Component part) const {
    if (single_file) return single_file->config_source(part);
    return detail::config_source(part == Component::unet ? unet : part == Component::vae ? *vae : text_encoder);
  }

  static DiffusersFolder open_single_file(const std::filesystem::path& file, const SingleFileOptions& options) {
    DiffusersFolder folder;
    folder.root = folder.unet = folder.text_encoder = folder.scheduler = file;
    folder.vae = file;
    folder.pipeline_class = "StableDiffusionPipeline";
    folder.component_class = {{"unet", "UNet2DConditionModel"},
                              {"text_encoder", "CLIPTextModel"},
                              {"tokenizer", "CLIPTokenizer"},
                              {"scheduler", "DDIMScheduler"},
                              {"vae", "AutoencoderKL"}};
    folder.tokenizer = !options.tokenizer.empty() ? options.tokenizer
                       : !options.config.empty()  ? options.config / "tokenizer"
                                                  : std::filesystem::path();
    if (folder.tokenizer.empty())
      throw FormatError("single-file checkpoint '" + file.string() +
                        "': it holds no tokenizer; name a tokenizer folder (carousel's models/shapes-32/tokenizer "
                        "holds the real CLIP vocabulary)");
    folder.single_file = std::make_shared<const SingleFileCheckpoint>(SingleFileCheckpoint::open(file, options));
    return folder;
  }
};

}  // namespace carousel::checkpoint
