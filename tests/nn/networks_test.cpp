// The network descriptions of carousel::nn, built over a recording layers trait whose layers only note the
// parameters they ask for: the weight keys and shapes a config walks, against the tensors diffusers and
// transformers wrote for the tiny models (tests/data/models, tools/make_tiny_models.py), and the configs' checks.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <carousel/checkpoint/clip_text_config.hpp>
#include <carousel/checkpoint/format_error.hpp>
#include <carousel/checkpoint/safetensors.hpp>
#include <carousel/checkpoint/unet_config.hpp>
#include <carousel/checkpoint/vae_config.hpp>
#include <carousel/nn/clip_text.hpp>
#include <carousel/nn/sd15.hpp>
#include <carousel/nn/unet.hpp>
#include <carousel/nn/vae.hpp>

namespace {

namespace fs = std::filesystem;
namespace nn = carousel::nn;
namespace checkpoint = carousel::checkpoint;

using Keys = std::map<std::string, std::vector<std::int64_t>>;

// The recording trait's Weights: every parameter a layer asks for, with its shape.
struct Recorder {
  Keys keys;
  void take(const std::string& name, std::vector<std::int64_t> shape) {
    CHECK_MESSAGE(keys.emplace(name, std::move(shape)).second, "parameter requested twice: " << name);
  }
};

// A layers trait whose layers record their parameters (as the backends' layers load them) and never run.
struct Recording {
  struct Tensor {};
  struct Context {};
  using Weights = Recorder;
  using TimestepInput = int;
  static constexpr std::string_view name = "recording";

  struct Linear {
    Linear(Recorder& w, const std::string& p, const nn::LinearOptions& o) {
      w.take(p + "weight",
             o.conv1x1 ? std::vector<std::int64_t>{o.out, o.in, 1, 1} : std::vector<std::int64_t>{o.out, o.in});
      if (o.bias) w.take(p + "bias", {o.out});
    }
  };
  struct Conv2d {
    Conv2d(Recorder& w, const std::string& p, const nn::Conv2dOptions& o) {
      w.take(p + "weight", {o.out, o.in, o.kernel, o.kernel});
      w.take(p + "bias", {o.out});
    }
  };
  struct GroupNorm {
    GroupNorm(Recorder& w, const std::string& p, const nn::GroupNormOptions& o) {
      w.take(p + "weight", {o.channels});
      w.take(p + "bias", {o.channels});
    }
  };
  struct LayerNorm {
    LayerNorm(Recorder& w, const std::string& p, const nn::LayerNormOptions& o) {
      w.take(p + "weight", {o.width});
      w.take(p + "bias", {o.width});
    }
  };
  struct Attention {
    Attention(Recorder& w, const std::string& p, const nn::AttentionOptions& o) {
      const std::int64_t kv_in = o.context_dim > 0 ? o.context_dim : o.dim;
      for (const auto& [name, in] : {std::pair{o.names.q, o.dim}, {o.names.k, kv_in}, {o.names.v, kv_in}})
        Linear(w, p + name + ".", {.in = in, .out = o.dim, .bias = o.qkv_bias});
      Linear(w, p + o.names.out + ".", {.in = o.dim, .out = o.dim});
    }
  };
  struct Embedding {
    Embedding(Recorder& w, const std::string& p, const nn::EmbeddingOptions& o) {
      w.take(p + "weight", {o.rows, o.width});
    }
  };
  struct Timesteps {
    Timesteps(Recorder&, const nn::TimestepsOptions&) {}
  };
};
static_assert(nn::LayerTypes<Recording>, "the recording trait builds every network");
static_assert(!nn::Layers<Recording>, "the recording trait cannot run one: it has no forward calls");

fs::path models() {
  return fs::path(CAROUSEL_TEST_DATA_DIR) / "models";
}

// Every tensor of the component's safetensors file whose name does not start with one of `skipped`.
Keys file_keys(const fs::path& component, std::initializer_list<std::string_view> skipped = {}) {
  Keys keys;
  for (const auto& entry : fs::directory_iterator(component)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto file = checkpoint::SafetensorsFile::open(entry.path());
    for (const auto& t : file.tensors()) {
      bool skip = false;
      for (auto s : skipped)
        skip = skip || t.name.starts_with(s);
      if (!skip) keys.emplace(t.name, std::vector<std::int64_t>(t.shape.begin(), t.shape.end()));
    }
  }
  return keys;
}

template <class Network, class Config, class... Args>
Keys walked(const Config& config, Args&&... args) {
  Recorder w;
  (void)Network(config, w, std::forward<Args>(args)...);
  return w.keys;
}

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

// The tiny models cover conv and linear projections, one and two resnets per block, 4 and 8 heads, a down block
// without attention first or last, and 2 to 5 CLIP layers; each walk must ask for exactly the file's tensors.
TEST_CASE("Nn.KeyWalk.TinyModels") {
  const char* const names[] = {"sd-tiny", "sd-tiny-linear", "sd-tiny-legacy"};
  SUBCASE("unet") {
    for (const char* name : names) {
      CAPTURE(name);
      const auto config = checkpoint::UNetConfig::load(models() / name / "unet");
      CHECK(walked<nn::UNet2DConditionModel<Recording>>(config) == file_keys(models() / name / "unet"));
    }
  }
  SUBCASE("vae decoder: decoder.* and post_quant_conv.*") {
    for (const char* name : names) {
      CAPTURE(name);
      const auto config = checkpoint::VaeConfig::load(models() / name / "vae");
      CHECK(walked<nn::VaeDecoder<Recording>>(config) ==
            file_keys(models() / name / "vae", {"encoder.", "quant_conv."}));
    }
  }
  SUBCASE("text encoder (without the position_ids buffer older files carry, which is no parameter)") {
    for (const char* name : names) {
      CAPTURE(name);
      const auto config = checkpoint::ClipTextConfig::load(models() / name / "text_encoder");
      CHECK(walked<nn::ClipTextModel<Recording>>(config, "text_model.") ==
            file_keys(models() / name / "text_encoder", {"text_model.embeddings.position_ids"}));
    }
  }
}

// The SD-1.5 factories build the same trees as the configs diffusers and transformers write for SD-1.5
// (tests/data/models/reference-configs/sd15), with the parameter counts of the released model.
TEST_CASE("Nn.Sd15.FactoriesMatchTheReleasedConfigs") {
  const fs::path ref = models() / "reference-configs" / "sd15";
  auto parameters = [](const Keys& keys) {
    std::int64_t n = 0;
    for (const auto& [key, shape] : keys) {
      std::int64_t size = 1;
      for (auto e : shape)
        size *= e;
      n += size;
    }
    return n;
  };
  const Keys unet = walked<nn::UNet2DConditionModel<Recording>>(nn::sd15_unet_config());
  CHECK(unet == walked<nn::UNet2DConditionModel<Recording>>(checkpoint::UNetConfig::load(ref / "unet")));
  CHECK(unet.size() == 686);
  CHECK(parameters(unet) == 859'520'964);
  CHECK(nn::sd15_unet_config().sample_size == checkpoint::UNetConfig::load(ref / "unet").sample_size);
  const Keys vae = walked<nn::VaeDecoder<Recording>>(nn::sd15_vae_config());
  CHECK(vae == walked<nn::VaeDecoder<Recording>>(checkpoint::VaeConfig::load(ref / "vae")));
  CHECK(parameters(vae) == 49'490'199);
  const Keys text = walked<nn::ClipTextModel<Recording>>(nn::sd15_text_config());
  CHECK(text == walked<nn::ClipTextModel<Recording>>(checkpoint::ClipTextConfig::load(ref / "text_encoder")));
  CHECK(parameters(text) == 123'060'480);
}

// A config made in code meets the checks parse() applies to a file: the networks refuse it, naming the field,
// before asking for any parameter.
TEST_CASE("Nn.Config.MadeInCodeIsChecked") {
  struct Case {
    const char* what;
    void (*edit)(checkpoint::UNetConfig&);
    const char* named;
  };
  const Case unet_cases[] = {
      {"unsupported down block", [](auto& c) { c.down_block_types[1] = "AttnDownBlock2D"; }, "AttnDownBlock2D"},
      {"unsupported up block", [](auto& c) { c.up_block_types[0] = "AttnUpBlock2D"; }, "AttnUpBlock2D"},
      {"short per-block list", [](auto& c) { c.layers_per_block.pop_back(); }, "layers_per_block"},
      {"block types for another depth", [](auto& c) { c.up_block_types.pop_back(); }, "up_block_types"},
      {"heads that do not divide", [](auto& c) { c.attention_head_dim[3] = 7; }, "attention_head_dim"},
      {"groups that do not divide", [](auto& c) { c.norm_num_groups = 48; }, "norm_num_groups"},
      {"no blocks", [](auto& c) { c.block_out_channels.clear(); }, "block_out_channels"},
      {"negative width", [](auto& c) { c.cross_attention_dim = -768; }, "cross_attention_dim"},
      {"absurd eps", [](auto& c) { c.norm_eps = -1000; }, "norm_eps"},
      {"other activation", [](auto& c) { c.act_fn = "gelu"; }, "act_fn"},
      {"downsampling without padding", [](auto& c) { c.downsample_padding = 0; }, "downsample_padding"},
  };
  for (const auto& c : unet_cases) {
    CAPTURE(c.what);
    auto config = nn::sd15_unet_config();
    c.edit(config);
    Recorder w;
    const std::string what = error_of([&] { (void)nn::UNet2DConditionModel<Recording>(config, w); });
    CHECK_MESSAGE(what.find(c.named) != std::string::npos, what);
    CHECK(w.keys.empty());
  }
  SUBCASE("vae") {
    auto config = nn::sd15_vae_config();
    config.block_out_channels = {128, 256, 500, 512};
    Recorder w;
    const std::string what = error_of([&] { (void)nn::VaeDecoder<Recording>(config, w); });
    CHECK_MESSAGE(what.find("norm_num_groups") != std::string::npos, what);
    config = nn::sd15_vae_config();
    config.up_block_types.pop_back();
    CHECK_THROWS_AS((void)nn::VaeDecoder<Recording>(config, w), checkpoint::FormatError);
    CHECK(w.keys.empty());
  }
  SUBCASE("text encoder") {
    auto config = nn::sd15_text_config();
    config.num_attention_heads = 5;
    Recorder w;
    const std::string what = error_of([&] { (void)nn::ClipTextModel<Recording>(config, w); });
    CHECK_MESSAGE(what.find("num_attention_heads") != std::string::npos, what);
    config = nn::sd15_text_config();
    config.num_hidden_layers = 0;
    CHECK_THROWS_AS((void)nn::ClipTextModel<Recording>(config, w), checkpoint::FormatError);
    CHECK(w.keys.empty());
  }
}
