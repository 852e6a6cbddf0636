#pragma once
/// \file
/// carousel::checkpoint::ClipTextConfig — transformers' CLIPTextConfig (text_encoder/config.json).

#include <filesystem>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/detail/config_reader.hpp"
#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint {

/// Activation of the CLIP MLP: quick_gelu (x * sigmoid(1.702 x); SD-1.x) or exact erf gelu (SD-2.x).
enum class ClipActivation { quick_gelu, gelu };

/// A CLIPTextConfig. Field names and defaults are transformers' (used when a field is absent or null). A full
/// CLIPConfig (with a `text_config` object) is read through its text_config.
struct ClipTextConfig {
  int vocab_size = 49408;                                  ///< rows of token_embedding
  int hidden_size = 512;                                   ///< model width
  int intermediate_size = 2048;                            ///< MLP width (fc1 out)
  int projection_dim = 512;                                ///< text_projection width (unused by SD)
  int num_hidden_layers = 12;                              ///< encoder layers
  int num_attention_heads = 8;                             ///< heads per self-attention
  int max_position_embeddings = 77;                        ///< rows of position_embedding (the token sequence length)
  ClipActivation hidden_act = ClipActivation::quick_gelu;  ///< MLP activation
  double layer_norm_eps = 1e-5;                            ///< LayerNorm eps
  int pad_token_id = 1;                                    ///< as written; the tokenizer folder decides padding
  int bos_token_id = 49406;                                ///< beginning-of-text id
  int eos_token_id = 49407;                                ///< end-of-text id

  /// hidden_size / num_attention_heads.
  int head_dim() const noexcept { return hidden_size / num_attention_heads; }

  /// Parses a config object; `source` names it in errors.
  /// \throws FormatError naming the field for a wrong type, an inconsistent value or an unsupported activation.
  static ClipTextConfig parse(const nlohmann::json& json, const std::string& source = "<json>") {
    if (const auto text = json.find("text_config"); text != json.end() && text->is_object())
      return parse(*text, source + " (text_config)");
    const detail::ConfigReader r(json, source);
    ClipTextConfig c;
    c.vocab_size = r.get_int("vocab_size", c.vocab_size);
    c.hidden_size = r.get_int("hidden_size", c.hidden_size);
    c.intermediate_size = r.get_int("intermediate_size", c.intermediate_size);
    c.projection_dim = r.get_int("projection_dim", c.projection_dim);
    c.num_hidden_layers = r.get_int("num_hidden_layers", c.num_hidden_layers);
    c.num_attention_heads = r.get_int("num_attention_heads", c.num_attention_heads);
    c.max_position_embeddings = r.get_int("max_position_embeddings", c.max_position_embeddings);
    const auto act = r.get_string("hidden_act", "quick_gelu");
    if (act == "quick_gelu")
      c.hidden_act = ClipActivation::quick_gelu;
    else if (act == "gelu")
      c.hidden_act = ClipActivation::gelu;
    else
      r.fail("hidden_act", "= \"" + act + "\" is not supported (supported: quick_gelu, gelu)");
    c.layer_norm_eps = r.get_double("layer_norm_eps", c.layer_norm_eps);
    c.pad_token_id = r.get_int("pad_token_id", c.pad_token_id);
    c.bos_token_id = r.get_int("bos_token_id", c.bos_token_id);
    c.eos_token_id = r.get_int("eos_token_id", c.eos_token_id);
    c.validate(source);
    return c;
  }

  /// Checks what parse() checks of the fields themselves: positive sizes, the LayerNorm eps, heads dividing the
  /// width. parse() calls it; the networks call it for a config made in code. `source` names the config in errors.
  /// \throws FormatError naming the field.
  void validate(const std::string& source = "ClipTextConfig") const {
    const nlohmann::json none = nlohmann::json::object();
    const detail::ConfigReader r(none, source);
    for (const auto& [field, value] : {std::pair<const char*, int>{"vocab_size", vocab_size},
                                       {"hidden_size", hidden_size},
                                       {"intermediate_size", intermediate_size},
                                       {"projection_dim", projection_dim},
                                       {"num_hidden_layers", num_hidden_layers},
                                       {"num_attention_heads", num_attention_heads},
                                       {"max_position_embeddings", max_position_embeddings}})
      r.require_positive(field, value);
    r.require_epsilon("layer_norm_eps", layer_norm_eps);
    if (hidden_size % num_attention_heads != 0)
      r.fail("num_attention_heads", "= " + std::to_string(num_attention_heads) +
                                        " does not divide hidden_size = " + std::to_string(hidden_size));
  }

  /// Reads `path`: a config.json or a text_encoder/ folder holding one. \throws FormatError naming the file.
  static ClipTextConfig load(const std::filesystem::path& path) {
    return parse(detail::read_json_object(path), detail::config_source(path));
  }
};

}  // namespace carousel::checkpoint
