#pragma once
/// \file
/// carousel::checkpoint::DiffusersFolder — the component layout of a diffusers pipeline folder (model_index.json).

#include <filesystem>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/clip_text_config.hpp"
#include "carousel/checkpoint/clip_tokenizer.hpp"
#include "carousel/checkpoint/detail/config_reader.hpp"
#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint {

/// Where the components of a Stable-Diffusion-style diffusers folder are. model_index.json maps each component
/// name to [library, class] (or [null, null] when absent). Required: unet (UNet2DConditionModel), text_encoder
/// (CLIPTextModel or CLIPTextModelWithProjection), tokenizer (CLIPTokenizer / CLIPTokenizerFast) and scheduler
/// (any class; the diffusion layer reads scheduler_config.json); optional: vae (AutoencoderKL; absent for
/// pixel-space models). Other components (safety_checker, feature_extractor, image_encoder) are ignored.
struct DiffusersFolder {
  std::filesystem::path root;                          ///< the folder given to open()
  std::string pipeline_class;                          ///< model_index.json's _class_name
  std::filesystem::path unet;                          ///< root / "unet"
  std::filesystem::path text_encoder;                  ///< root / "text_encoder"
  std::filesystem::path tokenizer;                     ///< root / "tokenizer"
  std::filesystem::path scheduler;                     ///< root / "scheduler"
  std::optional<std::filesystem::path> vae;            ///< root / "vae" when listed
  std::map<std::string, std::string> component_class;  ///< e.g. "scheduler" -> "DDIMScheduler"

  /// Reads root/model_index.json and checks that every listed required component folder exists.
  /// \throws FormatError naming the folder and the component when model_index.json is missing or malformed, a
  ///         required component is absent, has an unsupported class, or its folder is missing.
  static DiffusersFolder open(const std::filesystem::path& root) {
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
  /// text encoder's max_position_embeddings, or every prompt would fail at encoding time.
  /// \throws FormatError naming the tokenizer and text-encoder files when they disagree or cannot be read.
  ClipTokenizer load_tokenizer() const {
    auto loaded = ClipTokenizer::load(tokenizer);
    const auto text = ClipTextConfig::load(text_encoder);
    if (loaded.max_length() > static_cast<std::size_t>(text.max_position_embeddings))
      throw FormatError("tokenizer '" + tokenizer.string() + "': model_max_length " +
                        std::to_string(loaded.max_length()) + " exceeds max_position_embeddings " +
                        std::to_string(text.max_position_embeddings) + " of '" + detail::config_source(text_encoder) +
                        "'");
    return loaded;
  }
};

}  // namespace carousel::checkpoint
