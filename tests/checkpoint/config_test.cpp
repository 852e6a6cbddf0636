// Tests of the config.json readers: every tiny model's derived layout (heads, head dims, resnets, transformer
// blocks) against what diffusers / transformers built from the same config (tests/data/models/structure.json,
// written by tools/make_tiny_models.py), SD-1.5 / SD-2 style configs, defaults, and errors that name the field.

#include <carousel/checkpoint/config.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_files.hpp"

namespace fs = std::filesystem;
using carousel::checkpoint::ClipActivation;
using carousel::checkpoint::ClipTextConfig;
using carousel::checkpoint::DiffusersFolder;
using carousel::checkpoint::FormatError;
using carousel::checkpoint::UNetConfig;
using carousel::checkpoint::VaeConfig;
using nlohmann::json;
namespace t = carousel::checkpoint::test;

namespace {

const fs::path models = fs::path(CAROUSEL_TEST_DATA_DIR) / "models";

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

std::string unet_error(json patch) {
  json config = json::object();
  config.update(patch);
  return error_of([&] { UNetConfig::parse(config, "unet/config.json"); });
}

}  // namespace

TEST_CASE("Config.AllModels.MatchDiffusersStructure") {
  std::ifstream in(models / "structure.json");
  const auto expected = json::parse(in);
  REQUIRE(expected.size() == 5);
  for (const auto& item : expected.items()) {
    const std::string name = item.key();  // not a structured binding: CAPTURE's lambda captures it
    const auto& want = item.value();
    CAPTURE(name);
    const bool tiny = name.starts_with("sd-tiny");
    const fs::path dir = tiny ? models / name : models / "reference-configs" / name;
    const auto unet = UNetConfig::load(dir / "unet");
    const auto& u = want["unet"];
    REQUIRE(unet.num_blocks() == u["down"].size());
    for (std::size_t i = 0; i < unet.num_blocks(); ++i) {
      CAPTURE(i);
      const int channels = unet.block_out_channels[i];
      CHECK(unet.down_block_layers(i) == u["down"][i][0].get<int>());
      CHECK(unet.down_block_has_attention(i) == !u["down"][i][1].is_null());
      if (unet.down_block_has_attention(i)) {
        CHECK(unet.down_block_heads(i) == u["down"][i][1][0].get<int>());
        CHECK(UNetConfig::head_dim(channels, unet.down_block_heads(i)) == u["down"][i][1][1].get<int>());
        CHECK(unet.down_transformer_layers(i) == u["down"][i][1][2].get<int>());
      }
      CHECK(unet.up_block_layers(i) == u["up"][i][0].get<int>());
      CHECK(unet.up_block_channels(i) == u["up"][i][2].get<int>());
      CHECK(unet.up_block_has_attention(i) == !u["up"][i][1].is_null());
      if (unet.up_block_has_attention(i)) {
        CHECK(unet.up_block_heads(i) == u["up"][i][1][0].get<int>());
        CHECK(UNetConfig::head_dim(unet.up_block_channels(i), unet.up_block_heads(i)) == u["up"][i][1][1].get<int>());
        CHECK(unet.up_transformer_layers(i) == u["up"][i][1][2].get<int>());
      }
    }
    CHECK(unet.mid_block_heads() == u["mid"][0].get<int>());
    CHECK(UNetConfig::head_dim(unet.block_out_channels.back(), unet.mid_block_heads()) == u["mid"][1].get<int>());
    CHECK(unet.mid_transformer_layers() == u["mid"][2].get<int>());
    CHECK(unet.time_embed_dim() == u["time_embed_dim"].get<int>());
    CHECK(unet.use_linear_projection == u["linear_proj"].get<bool>());

    const auto vae = VaeConfig::load(dir / "vae");
    const auto& v = want["vae"];
    REQUIRE(vae.num_blocks() == v["up"].size());
    for (std::size_t i = 0; i < vae.num_blocks(); ++i) {
      CHECK(vae.layers_per_block + 1 == v["up"][i][0].get<int>());
      CHECK(vae.block_out_channels[vae.num_blocks() - 1 - i] == v["up"][i][1].get<int>());
    }
    CHECK(vae.latent_channels == v["latent"].get<int>());
    CHECK(vae.scaling_factor == 0.18215);  // the same decimal parses to the same double

    const auto clip = ClipTextConfig::load(dir / "text_encoder");
    CHECK(clip.num_hidden_layers == want["text_encoder"]["layers"].get<int>());
    CHECK(clip.num_attention_heads == want["text_encoder"]["heads"].get<int>());
    CHECK(clip.head_dim() == want["text_encoder"]["head_dim"].get<int>());
    CHECK(clip.vocab_size == (tiny ? 1000 : 49408));
    CHECK(clip.bos_token_id == (tiny ? 998 : 49406));
    CHECK(clip.eos_token_id == (tiny ? 999 : 49407));
    CHECK(clip.hidden_act == (name == "sd21" ? ClipActivation::gelu : ClipActivation::quick_gelu));
  }
}

TEST_CASE("Config.ReferenceConfigs.ShapesMatchSchema") {
  // The tensor shapes diffusers / transformers create for the real-size configs (schema.json), derived here from
  // the parsed configs alone.
  for (const char* name : {"sd15", "sd21"}) {
    CAPTURE(name);
    const fs::path dir = models / "reference-configs" / name;
    std::ifstream in(dir / "schema.json");
    const auto schema = json::parse(in);
    const auto shape = [&](const char* component, const std::string& tensor) {
      CAPTURE(tensor);
      REQUIRE(schema[component].contains(tensor));
      return schema[component][tensor].get<std::vector<std::int64_t>>();
    };
    const auto count = [&](const char* component, const std::string& prefix) {
      std::set<std::string> seen;
      for (const auto& entry : schema[component].items())
        if (entry.key().starts_with(prefix)) seen.insert(entry.key().substr(0, entry.key().find('.', prefix.size())));
      return static_cast<int>(seen.size());
    };
    using V = std::vector<std::int64_t>;
    const auto u = UNetConfig::load(dir / "unet");
    const std::int64_t c0 = u.block_out_channels[0];
    CHECK(shape("unet", "conv_in.weight") == V{c0, u.in_channels, 3, 3});
    CHECK(shape("unet", "time_embedding.linear_1.weight") == V{u.time_embed_dim(), c0});
    for (std::size_t i = 0; i < u.num_blocks(); ++i) {
      const std::string down = "down_blocks." + std::to_string(i) + ".";
      const std::string up = "up_blocks." + std::to_string(i) + ".";
      CHECK(count("unet", down + "resnets.") == u.down_block_layers(i));
      CHECK(count("unet", up + "resnets.") == u.up_block_layers(i));
      const std::int64_t c = u.block_out_channels[i];
      if (u.down_block_has_attention(i)) {
        const std::string t = down + "attentions.0.";
        CHECK(count("unet", t + "transformer_blocks.") == u.down_transformer_layers(i));
        CHECK(shape("unet", t + "transformer_blocks.0.attn2.to_k.weight") == V{c, u.cross_attention_dim});
        CHECK(shape("unet", t + "proj_in.weight") == (u.use_linear_projection ? V{c, c} : V{c, c, 1, 1}));
      }
      const std::int64_t uc = u.up_block_channels(i);
      CHECK(shape("unet", up + "resnets.0.conv1.weight")[0] == uc);
    }
    const auto v = VaeConfig::load(dir / "vae");
    for (std::size_t i = 0; i < v.num_blocks(); ++i) {
      const std::string up = "decoder.up_blocks." + std::to_string(i) + ".";
      CHECK(count("vae", up + "resnets.") == v.layers_per_block + 1);
      CHECK(shape("vae", up + "resnets.0.conv1.weight")[0] == v.block_out_channels[v.num_blocks() - 1 - i]);
    }
    CHECK(shape("vae", "post_quant_conv.weight") == V{v.latent_channels, v.latent_channels, 1, 1});
    const auto c = ClipTextConfig::load(dir / "text_encoder");
    CHECK(shape("text_encoder", "text_model.embeddings.token_embedding.weight") == V{c.vocab_size, c.hidden_size});
    CHECK(shape("text_encoder", "text_model.embeddings.position_embedding.weight") ==
          V{c.max_position_embeddings, c.hidden_size});
    CHECK(shape("text_encoder", "text_model.encoder.layers.0.mlp.fc1.weight") == V{c.intermediate_size, c.hidden_size});
    CHECK(count("text_encoder", "text_model.encoder.layers.") == c.num_hidden_layers);
  }
}

TEST_CASE("Config.DiffusersFolder.Components") {
  const auto folder = DiffusersFolder::open(models / "sd-tiny");
  CHECK(folder.pipeline_class == "StableDiffusionPipeline");
  CHECK(folder.unet == models / "sd-tiny" / "unet");
  CHECK(folder.tokenizer == models / "sd-tiny" / "tokenizer");
  CHECK(folder.scheduler == models / "sd-tiny" / "scheduler");
  CHECK(folder.component_class.at("scheduler") == "DDIMScheduler");
  CHECK(DiffusersFolder::open(models / "sd-tiny-legacy").component_class.at("scheduler") == "DDPMScheduler");

  t::TempDir dir;
  for (const char* c : {"unet", "text_encoder", "tokenizer", "scheduler"})
    fs::create_directories(dir.path() / c);
  json index = {{"_class_name", "StableDiffusionPipeline"},          {"unet", {"diffusers", "UNet2DConditionModel"}},
                {"text_encoder", {"transformers", "CLIPTextModel"}}, {"tokenizer", {"transformers", "CLIPTokenizer"}},
                {"scheduler", {"diffusers", "DDPMScheduler"}},       {"vae", {nullptr, nullptr}}};
  t::write_text(dir.path() / "model_index.json", index.dump());
  SUBCASE("pixel space: no vae") {
    CHECK(!DiffusersFolder::open(dir.path()).vae.has_value());
  }
  SUBCASE("listed component without its folder") {
    index["vae"] = {"diffusers", "AutoencoderKL"};
    t::write_text(dir.path() / "model_index.json", index.dump());
    CHECK(error_of([&] { DiffusersFolder::open(dir.path()); }).find("component 'vae' is listed but folder") !=
          std::string::npos);
  }
  SUBCASE("unsupported class") {
    index["unet"] = {"diffusers", "UNet2DModel"};
    t::write_text(dir.path() / "model_index.json", index.dump());
    CHECK(error_of([&] { DiffusersFolder::open(dir.path()); }).find("'unet' has class UNet2DModel") !=
          std::string::npos);
  }
  SUBCASE("missing component") {
    index.erase("tokenizer");
    t::write_text(dir.path() / "model_index.json", index.dump());
    CHECK(error_of([&] { DiffusersFolder::open(dir.path()); }).find("no 'tokenizer' component") != std::string::npos);
  }
  SUBCASE("no model_index.json") {
    CHECK(error_of([&] { DiffusersFolder::open(dir.path() / "unet"); }).find("model_index.json': cannot open") !=
          std::string::npos);
  }
}

TEST_CASE("Config.DiffusersFolder.TokenizerFitsTextEncoder") {
  t::TempDir dir;
  fs::copy(models / "sd-tiny", dir.path(), fs::copy_options::recursive);
  const auto folder = DiffusersFolder::open(dir.path());
  CHECK(folder.load_tokenizer().max_length() == 77);
  auto config = json::parse(std::ifstream(dir.path() / "tokenizer/tokenizer_config.json"));
  config["model_max_length"] = 100;
  t::write_text(dir.path() / "tokenizer/tokenizer_config.json", config.dump());
  const auto message = error_of([&] { folder.load_tokenizer(); });
  CHECK(message.find("model_max_length 100 exceeds max_position_embeddings 77") != std::string::npos);
  CHECK(message.find((dir.path() / "tokenizer").string()) != std::string::npos);
  CHECK(message.find((dir.path() / "text_encoder" / "config.json").string()) != std::string::npos);
}

TEST_CASE("Config.DiffusersFolder.TokenizerJsonOnly") {
  // A folder as transformers 5 saves it: tokenizer/ holds tokenizer.json and tokenizer_config.json only.
  t::TempDir dir;
  fs::copy(models / "sd-tiny", dir.path(), fs::copy_options::recursive);
  fs::remove_all(dir.path() / "tokenizer");
  fs::copy(fs::path(CAROUSEL_TEST_DATA_DIR) / "tokenizer/json-pairs", dir.path() / "tokenizer");
  const auto json_only = DiffusersFolder::open(dir.path()).load_tokenizer();
  const auto classic = DiffusersFolder::open(models / "sd-tiny").load_tokenizer();
  for (const char* prompt : {"a photo of a cat", "an astronaut riding a horse on mars, 8k"})
    CHECK(json_only.encode(prompt) == classic.encode(prompt));
}

TEST_CASE("Config.UNet.DefaultsAreSd15") {
  const auto c = UNetConfig::parse(json::object());
  CHECK(c.block_out_channels == std::vector<int>{320, 640, 1280, 1280});
  CHECK(c.cross_attention_dim == 1280);  // diffusers' default; SD-1.5's file says 768
  CHECK(!c.sample_size.has_value());
  for (std::size_t i = 0; i < 4; ++i)
    CHECK(c.down_block_heads(i) == 8);
  CHECK(c.down_block_has_attention(0));
  CHECK(!c.down_block_has_attention(3));
  CHECK(!c.up_block_has_attention(0));
  CHECK(c.up_block_layers(0) == 3);
  CHECK(c.norm_eps == 1e-5);
  CHECK(c.flip_sin_to_cos);
}

TEST_CASE("Config.UNet.Sd2PerBlockHeads") {
  // SD-2.x: attention_head_dim is a per-block list of head counts (64 channels per head).
  const auto c = UNetConfig::parse(
      {{"attention_head_dim", {5, 10, 20, 20}}, {"use_linear_projection", true}, {"cross_attention_dim", 1024}});
  CHECK(c.down_block_heads(0) == 5);
  CHECK(UNetConfig::head_dim(320, c.down_block_heads(0)) == 64);
  CHECK(c.mid_block_heads() == 20);
  CHECK(c.up_block_heads(1) == 20);
  CHECK(c.up_block_heads(3) == 5);
  CHECK(c.use_linear_projection);
}

TEST_CASE("Config.UNet.ErrorsNameTheField") {
  SUBCASE("unsupported block type") {
    const auto e = unet_error({{"down_block_types", {"SimpleCrossAttnDownBlock2D", "DownBlock2D"}},
                               {"up_block_types", {"UpBlock2D", "UpBlock2D"}},
                               {"block_out_channels", {32, 64}}});
    CHECK(e.find("config 'unet/config.json': field 'down_block_types' entry 0 = \"SimpleCrossAttnDownBlock2D\" is "
                 "not supported") != std::string::npos);
  }
  SUBCASE("class embeddings") {
    CHECK(unet_error({{"class_embed_type", "timestep"}}).find("field 'class_embed_type'") != std::string::npos);
  }
  SUBCASE("num_attention_heads") {
    CHECK(unet_error({{"num_attention_heads", 8}}).find("field 'num_attention_heads'") != std::string::npos);
  }
  SUBCASE("scale-shift resnets") {
    CHECK(unet_error({{"resnet_time_scale_shift", "scale_shift"}}).find("'resnet_time_scale_shift'") !=
          std::string::npos);
  }
  SUBCASE("wrong type") {
    CHECK(unet_error({{"layers_per_block", "two"}}).find("field 'layers_per_block' must be an integer") !=
          std::string::npos);
    CHECK(unet_error({{"use_linear_projection", 1}}).find("'use_linear_projection' must be true or false") !=
          std::string::npos);
  }
  SUBCASE("inconsistent lengths") {
    CHECK(unet_error({{"block_out_channels", {32, 64}}}).find("field 'down_block_types' has 4 entries") !=
          std::string::npos);
    CHECK(unet_error({{"attention_head_dim", {8, 8}}}).find("field 'attention_head_dim' has 2 entries") !=
          std::string::npos);
  }
  SUBCASE("groups and heads must divide the channels") {
    CHECK(unet_error({{"norm_num_groups", 24}}).find("'norm_num_groups' = 24 does not divide") != std::string::npos);
    CHECK(unet_error({{"attention_head_dim", 7}}).find("'attention_head_dim' entry 0 = 7 heads do not divide") !=
          std::string::npos);
  }
  SUBCASE("absurd values") {
    CHECK(unet_error({{"norm_eps", -1000}}).find("field 'norm_eps' must lie in (0, 1), got -1000") !=
          std::string::npos);
    CHECK(unet_error({{"norm_eps", 0}}).find("field 'norm_eps'") != std::string::npos);
    CHECK(unet_error({{"norm_eps", std::numeric_limits<double>::infinity()}})
              .find("field 'norm_eps' must be a finite number") != std::string::npos);
    CHECK(unet_error({{"in_channels", 0}}).find("field 'in_channels' must lie in 1..") != std::string::npos);
    CHECK(unet_error({{"cross_attention_dim", -768}}).find("field 'cross_attention_dim'") != std::string::npos);
    CHECK(unet_error({{"layers_per_block", 1 << 30}}).find("field 'layers_per_block' must lie in 1..1048576") !=
          std::string::npos);
    CHECK(unet_error({{"block_out_channels", json::array()}}).find("field 'block_out_channels' must have 1 to 8") !=
          std::string::npos);
  }
  SUBCASE("no mid block") {
    CHECK(unet_error({{"mid_block_type", nullptr}}).find("'mid_block_type' = null") != std::string::npos);
  }
  SUBCASE("missing file") {
    CHECK(error_of([] { UNetConfig::load(models / "sd-tiny/nothing-here.json"); }).find("cannot open") !=
          std::string::npos);
  }
}

TEST_CASE("Config.Vae.DefaultsAndErrors") {
  const auto c = VaeConfig::parse(json::object());
  CHECK(c.block_out_channels == std::vector<int>{64});
  CHECK(c.layers_per_block == 1);
  CHECK(!c.shift_factor.has_value());
  CHECK(c.mid_block_add_attention);
  CHECK(c.downscale_factor() == 1);
  const auto sd = VaeConfig::parse(
      {{"block_out_channels", {128, 256, 512, 512}},
       {"down_block_types",
        json::array({"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"})},
       {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}},
       {"layers_per_block", 2},
       {"shift_factor", 0.1159}});
  CHECK(sd.downscale_factor() == 8);
  CHECK(sd.shift_factor.value() == 0.1159);
  CHECK(error_of([] {
          VaeConfig::parse({{"up_block_types", {"UpDecoderBlockTemporal"}}}, "vae/config.json");
        }).find("field 'up_block_types' entry 0") != std::string::npos);
  CHECK(error_of([] { VaeConfig::parse({{"act_fn", "gelu"}}); }).find("'act_fn'") != std::string::npos);
  CHECK(error_of([] { VaeConfig::parse({{"latents_mean", {0.1, 0.2}}}); }).find("'latents_mean'") != std::string::npos);
  SUBCASE("absurd values") {
    for (const auto& [field, value] : {std::pair{"sample_size", json(0)}, std::pair{"sample_size", json::array()},
                                       std::pair{"latent_channels", json(-4)}, std::pair{"norm_num_groups", json(0)},
                                       std::pair{"scaling_factor", json(std::numeric_limits<double>::infinity())}}) {
      CAPTURE(field);
      CHECK(error_of([&] {
              VaeConfig::parse({{field, value}}, "vae/config.json");
            }).find(std::string("config 'vae/config.json': field '") + field + "'") != std::string::npos);
    }
  }
}

TEST_CASE("Config.Clip.DefaultsAndErrors") {
  const auto c = ClipTextConfig::parse(json::object());
  CHECK(c.vocab_size == 49408);
  CHECK(c.bos_token_id == 49406);
  CHECK(c.eos_token_id == 49407);
  CHECK(c.max_position_embeddings == 77);
  const auto full = ClipTextConfig::parse({{"text_config", {{"hidden_size", 768}, {"num_attention_heads", 12}}}});
  CHECK(full.head_dim() == 64);
  CHECK(ClipTextConfig::parse({{"hidden_act", "gelu"}}).hidden_act == ClipActivation::gelu);
  CHECK(error_of([] {
          ClipTextConfig::parse({{"hidden_act", "relu"}});
        }).find("'hidden_act' = \"relu\"") != std::string::npos);
  CHECK(error_of([] {
          ClipTextConfig::parse({{"num_attention_heads", 5}});
        }).find("does not divide hidden_size") != std::string::npos);
  SUBCASE("absurd values") {
    for (const auto& [field, value] :
         {std::pair{"layer_norm_eps", json(-1000)}, std::pair{"layer_norm_eps", json(2.0)},
          std::pair{"projection_dim", json(0)}, std::pair{"hidden_size", json(-768)},
          std::pair{"max_position_embeddings", json(0)}, std::pair{"vocab_size", json(1 << 30)}}) {
      CAPTURE(field);
      CHECK(error_of([&] {
              ClipTextConfig::parse({{field, value}}, "text_encoder/config.json");
            }).find(std::string("config 'text_encoder/config.json': field '") + field + "'") != std::string::npos);
    }
  }
}
