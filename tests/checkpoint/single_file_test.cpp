// Tests of single-file (original LDM layout) checkpoints: tests/data/models/single-file/*.safetensors, written from
// the tiny folders by tools/make_single_file_fixtures.py (which checks each file against diffusers' own conversion
// functions and from_single_file). Here: every mapped tensor equals the folder's, configs derived from the shapes
// equal the folder's where shapes tell them, EMA selection, refusals, and images bitwise equal to the folder's on the
// CPU backend.

#include <carousel/checkpoint/single_file.hpp>

#include <doctest/doctest.h>

#include <carousel/checkpoint/diffusers_folder.hpp>
#include <carousel/cpu/backend.hpp>
#include <carousel/diffusion/pipeline.hpp>
#include <carousel/step_batcher.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_files.hpp"

namespace fs = std::filesystem;
namespace cc = carousel::checkpoint;
namespace t = carousel::checkpoint::test;
using cc::Component;
using cc::DiffusersFolder;
using cc::FormatError;

namespace {

const fs::path models = fs::path(CAROUSEL_TEST_DATA_DIR) / "models";
const fs::path single = models / "single-file";

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

// Every tensor of the folder's component is in the single file's, with the same shape, and values within
// `relative` + 2^-25 (half of F16's subnormal spacing) of the folder's (relative 0: bitwise); and the single file
// holds nothing else.
void check_component(const DiffusersFolder& file, const DiffusersFolder& folder, Component part, double relative) {
  auto got = file.open_weights(part);
  auto want = folder.open_weights(part);
  if (part == Component::text_encoder) {
    got.add_missing_prefix("text_model.");
    want.add_missing_prefix("text_model.");
  }
  std::vector<std::string> got_names, want_names;
  for (const auto& n : got.names())
    if (!n.ends_with("position_ids")) got_names.push_back(n);
  for (const auto& n : want.names())
    if (!n.ends_with("position_ids")) want_names.push_back(n);
  REQUIRE(got_names == want_names);
  for (const auto& name : want_names) {
    CAPTURE(name);
    const auto& shape = want.shape(name);
    const auto a = got.take(name, shape);
    const auto b = want.take(name, shape);
    REQUIRE(a.size() == b.size());
    std::size_t off = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (relative == 0 ? a[i] != b[i] : std::fabs(a[i] - b[i]) > relative * std::fabs(b[i]) + 0x1p-25) ++off;
    CHECK(off == 0);
  }
}

DiffusersFolder open_single(const char* file, const char* folder) {
  return DiffusersFolder::open(single / file, {.config = models / folder});
}

}  // namespace

TEST_CASE("SingleFile.Sd1.TensorsMatchFolder") {
  const auto folder = DiffusersFolder::open(models / "sd-tiny");
  // Round to nearest: half an ulp, 2^-11 relative for F16 and 2^-8 for BF16 (the tiny values are normal numbers).
  for (const auto& [file, relative] :
       {std::pair{"sd1-tiny.safetensors", 0.0}, std::pair{"sd1-tiny-ema-fp16.safetensors", 1.0 / 2048},
        std::pair{"sd1-tiny-bf16.safetensors", 1.0 / 256}}) {
    CAPTURE(std::string(file));
    const auto sf = open_single(file, "sd-tiny");
    REQUIRE(sf.single_file);
    CHECK(sf.single_file->family() == cc::SingleFileFamily::sd1);
    for (const auto part : {Component::unet, Component::vae, Component::text_encoder})
      check_component(sf, folder, part, relative);
  }
}

TEST_CASE("SingleFile.Sd2.OpenClipTensorsMatchFolder") {
  const auto folder = DiffusersFolder::open(models / "sd-tiny-linear");
  const auto sf = open_single("sd2-tiny.safetensors", "sd-tiny-linear");
  CHECK(sf.single_file->family() == cc::SingleFileFamily::sd2);
  for (const auto part : {Component::unet, Component::vae, Component::text_encoder})
    check_component(sf, folder, part, 0.0);
}

TEST_CASE("SingleFile.Configs.DerivedFromShapes") {
  for (const auto& [file, name] :
       {std::pair{"sd1-tiny.safetensors", "sd-tiny"}, std::pair{"sd2-tiny.safetensors", "sd-tiny-linear"}}) {
    CAPTURE(file);
    const auto c = cc::SingleFileCheckpoint::open(single / file);
    const auto unet = nlohmann::json::parse(std::ifstream(models / name / "unet/config.json"));
    for (const char* field : {"block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                              "cross_attention_dim", "use_linear_projection", "in_channels", "out_channels"}) {
      CAPTURE(field);
      CHECK(c.unet_config()[field] == unet[field]);
    }
    CHECK(c.unet_config()["norm_num_groups"] == 32);  // the family's, not a shape
    const auto vae = nlohmann::json::parse(std::ifstream(models / name / "vae/config.json"));
    for (const char* field : {"block_out_channels", "layers_per_block", "latent_channels", "in_channels"}) {
      CAPTURE(field);
      CHECK(c.vae_config()[field] == vae[field]);
    }
    const auto text = nlohmann::json::parse(std::ifstream(models / name / "text_encoder/config.json"));
    for (const char* field :
         {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"}) {
      CAPTURE(field);
      CHECK(c.text_encoder_config()[field] == text[field]);
    }
  }
  const auto sd1 = cc::SingleFileCheckpoint::open(single / "sd1-tiny.safetensors");
  const auto sd2 = cc::SingleFileCheckpoint::open(single / "sd2-tiny.safetensors");
  CHECK(sd1.unet_config()["attention_head_dim"] == nlohmann::json{8, 8});
  CHECK(sd1.text_encoder_config()["hidden_act"] == "quick_gelu");
  CHECK(sd2.text_encoder_config()["hidden_act"] == "gelu");
  CHECK(sd1.scheduler_config()["prediction_type"] == "epsilon");
  CHECK(sd2.scheduler_config()["prediction_type"] == "v_prediction");
  // The tiny UNet's 4 channels do not take the family's 32 groups: the derived config names where it came from.
  const auto folder =
      DiffusersFolder::open(single / "sd1-tiny.safetensors", {.tokenizer = models / "sd-tiny/tokenizer"});
  const auto message = error_of([&] { folder.unet_config(); });
  CHECK(message.find("sd1-tiny.safetensors (unet, derived)': field 'norm_num_groups' = 32 does not divide") !=
        std::string::npos);
}

// Real-size SD 1.5 and SD 2.1 single files, as names and shapes (tools/make_single_file_fixtures.py writes them from
// the reference schemas and checks them with diffusers' conversion functions): the family's constants (heads, norm
// groups, activation, SD 2.x's 23 of 24 OpenCLIP blocks) give diffusers' reference configs, and every mapped name is
// the reference schema's.
TEST_CASE("SingleFile.RealSize.ConfigsAndNamesMatchDiffusers") {
  for (const char* name : {"sd15", "sd21"}) {
    CAPTURE(std::string(name));
    const auto shapes = nlohmann::json::parse(std::ifstream(single / (std::string(name) + "-ldm-shapes.json")));
    std::map<std::string, std::vector<std::int64_t>, std::less<>> map;
    for (const auto& [key, value] : shapes.items())
      map.emplace(key, value.get<std::vector<std::int64_t>>());
    const auto c = cc::SingleFileCheckpoint::from_shapes(std::move(map), std::string(name) + ".safetensors");
    CHECK(c.family() == (std::string(name) == "sd15" ? cc::SingleFileFamily::sd1 : cc::SingleFileFamily::sd2));
    const fs::path ref = models / "reference-configs" / name;
    const auto unet = cc::UNetConfig::parse(c.unet_config());
    const auto want_unet = cc::UNetConfig::load(ref / "unet");
    CHECK(unet.block_out_channels == want_unet.block_out_channels);
    CHECK(unet.layers_per_block == want_unet.layers_per_block);
    CHECK(unet.down_block_types == want_unet.down_block_types);
    CHECK(unet.up_block_types == want_unet.up_block_types);
    CHECK(unet.cross_attention_dim == want_unet.cross_attention_dim);
    CHECK(unet.use_linear_projection == want_unet.use_linear_projection);
    CHECK(unet.transformer_layers_per_block == want_unet.transformer_layers_per_block);
    CHECK(unet.norm_num_groups == want_unet.norm_num_groups);
    CHECK(unet.sample_size == want_unet.sample_size);
    for (std::size_t i = 0; i < unet.block_out_channels.size(); ++i) {
      CHECK(unet.down_block_heads(static_cast<int>(i)) == want_unet.down_block_heads(static_cast<int>(i)));
      CHECK(unet.up_block_heads(static_cast<int>(i)) == want_unet.up_block_heads(static_cast<int>(i)));
    }
    CHECK(unet.mid_block_heads() == want_unet.mid_block_heads());
    const auto vae = cc::VaeConfig::parse(c.vae_config());
    const auto want_vae = cc::VaeConfig::load(ref / "vae");
    CHECK(vae.block_out_channels == want_vae.block_out_channels);
    CHECK(vae.layers_per_block == want_vae.layers_per_block);
    CHECK(vae.latent_channels == want_vae.latent_channels);
    CHECK(vae.norm_num_groups == want_vae.norm_num_groups);
    CHECK(vae.scaling_factor == want_vae.scaling_factor);
    const auto text = cc::ClipTextConfig::parse(c.text_encoder_config());
    const auto want_text = cc::ClipTextConfig::load(ref / "text_encoder");
    CHECK(text.hidden_size == want_text.hidden_size);
    CHECK(text.intermediate_size == want_text.intermediate_size);
    CHECK(text.num_hidden_layers == want_text.num_hidden_layers);
    CHECK(text.num_attention_heads == want_text.num_attention_heads);
    CHECK(text.max_position_embeddings == want_text.max_position_embeddings);
    CHECK(text.vocab_size == want_text.vocab_size);
    CHECK(text.hidden_act == want_text.hidden_act);
    const auto schema = nlohmann::json::parse(std::ifstream(ref / "schema.json"));
    for (const auto& [part, key] : {std::pair{Component::unet, "unet"}, std::pair{Component::vae, "vae"},
                                    std::pair{Component::text_encoder, "text_encoder"}}) {
      CAPTURE(std::string(key));
      std::set<std::string> got, want;
      for (const auto& n : c.names(part))
        got.insert(n.name);
      for (const auto& [n, shape] : schema[key].items())
        if (!n.ends_with("position_ids")) want.insert(n);
      CHECK(got == want);
    }
  }
}

TEST_CASE("SingleFile.Ema.FullFileChoosesCopy") {
  const auto plain = DiffusersFolder::open(single / "sd1-tiny.safetensors", {.config = models / "sd-tiny"});
  const auto ema =
      DiffusersFolder::open(single / "sd1-tiny.safetensors", {.config = models / "sd-tiny", .use_ema = true});
  const auto file = cc::SafetensorsFile::open(single / "sd1-tiny.safetensors");
  const auto stored = [&](const std::string& name) {
    for (const auto& t : file.tensors())
      if (t.name == name) return file.to_float(t);
    FAIL("no tensor " << name);
    return std::vector<float>{};
  };
  auto a = plain.open_weights(Component::unet);
  auto b = ema.open_weights(Component::unet);
  const std::vector<std::int64_t> shape{4, 4, 3, 3};
  CHECK(a.take("conv_in.weight", shape) == stored("model.diffusion_model.input_blocks.0.0.weight"));
  CHECK(b.take("conv_in.weight", shape) == stored("model_ema.diffusion_modelinput_blocks00weight"));
  CHECK(stored("model.diffusion_model.input_blocks.0.0.weight") !=
        stored("model_ema.diffusion_modelinput_blocks00weight"));
  // An EMA-only file has no copy: use_ema reads model.diffusion_model.*.
  const auto ema_only =
      DiffusersFolder::open(single / "sd1-tiny-ema-fp16.safetensors", {.config = models / "sd-tiny", .use_ema = true});
  CHECK(ema_only.open_weights(Component::unet).contains("conv_in.weight"));
}

TEST_CASE("SingleFile.Refusals.NameWhatWasFound") {
  t::TempDir dir;
  const auto refuse = [&](const std::vector<t::F32Tensor>& tensors) {
    t::write_file(dir.path() / "m.safetensors", t::f32_file(tensors));
    return error_of([&] { cc::SingleFileCheckpoint::open(dir.path() / "m.safetensors"); });
  };
  CHECK(refuse({{"conditioner.embedders.0.transformer.x", {1}, {0}},
                {"model.diffusion_model.input_blocks.0.0.weight", {1}, {0}}})
            .find("an SDXL checkpoint (conditioner.embedders.*)") != std::string::npos);
  CHECK(refuse({{"transformer_blocks.0.attn.to_q.weight", {1}, {0}}})
            .find("not a Stable Diffusion 1.x/2.x checkpoint in the LDM layout") != std::string::npos);
  CHECK(refuse({{"model.diffusion_model.input_blocks.0.0.weight", {1, 9, 1, 1}, std::vector<float>(9)}})
            .find("the UNet takes 9 input channels") != std::string::npos);
  CHECK(refuse({{"model.diffusion_model.input_blocks.0.0.weight", {1, 4, 1, 1}, std::vector<float>(4)},
                {"first_stage_model.x", {1}, {0}}})
            .find("no text encoder") != std::string::npos);
  const auto message = error_of([] { DiffusersFolder::open(single / "sd1-tiny.safetensors"); });
  CHECK(message.find("holds no tokenizer; name a tokenizer folder") != std::string::npos);
}

TEST_CASE("SingleFile.Images.BitwiseEqualToFolder") {
  using Pipeline = carousel::diffusion::Pipeline<carousel::cpu::Backend>;
  const auto images = [](const DiffusersFolder& folder) {
    carousel::cpu::Backend backend(folder);
    Pipeline pipeline(backend, carousel::diffusion::pipeline_scheduler_config(folder),
                      carousel::diffusion::pipeline_options(folder, backend.vae_scale_factor()));
    carousel::StepBatcher<Pipeline, carousel::diffusion::Job> batcher{pipeline, {.max_batch_size = 4}};
    std::vector<carousel::Ticket<carousel::diffusion::Job>> tickets;
    for (std::uint64_t seed = 0; seed < 3; ++seed) {
      carousel::diffusion::Job job;
      job.prompt = seed == 1 ? "a red circle" : "a photo of a cat";
      job.width = job.height = 32;
      job.steps = 3;
      job.seed = seed;
      pipeline.validate(job);
      tickets.push_back(batcher.submit(std::move(job)));
    }
    while (batcher.step_once()) {
    }
    std::vector<std::vector<std::uint8_t>> out;
    for (auto& ticket : tickets)
      out.push_back(ticket.get().image.rgb);
    return out;
  };
  for (const auto& [file, name] :
       {std::pair{"sd1-tiny.safetensors", "sd-tiny"}, std::pair{"sd2-tiny.safetensors", "sd-tiny-linear"}}) {
    CAPTURE(file);
    const auto want = images(DiffusersFolder::open(models / name));
    const auto got = images(open_single(file, name));
    REQUIRE(want.size() == 3);
    CHECK(got == want);
    CHECK(want[0] != want[1]);
  }
}
