// Tests of carousel::checkpoint::WeightStore on the tiny model folders written by tools/make_tiny_models.py and on
// folders built here (shards, 1x1-conv attention weights, prefixes, ambiguous variants).

#include <carousel/checkpoint/weights.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_files.hpp"

namespace fs = std::filesystem;
using carousel::checkpoint::DType;
using carousel::checkpoint::FormatError;
using carousel::checkpoint::SafetensorsFile;
using carousel::checkpoint::WeightStore;
namespace t = carousel::checkpoint::test;

namespace {

const fs::path models = fs::path(CAROUSEL_TEST_DATA_DIR) / "models";

// Reads every floating-point tensor with its own shape.
void take_all(WeightStore& store) {
  for (const auto& name : store.names()) {
    const auto& info = store.info(name);
    if (info.dtype == DType::f32 || info.dtype == DType::f16) store.take(name, info.shape);
  }
}

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("WeightStore.Take.ValuesAndShapeChecks") {
  auto store = WeightStore::open(models / "sd-tiny/unet");
  REQUIRE(store.files().size() == 1);
  CHECK(store.files()[0].filename() == "diffusion_pytorch_model.safetensors");
  const auto file = SafetensorsFile::open(models / "sd-tiny/unet/diffusion_pytorch_model.safetensors");

  SUBCASE("values equal the file's") {
    CHECK(store.contains("conv_in.weight"));
    CHECK(store.take("conv_in.weight", {4, 4, 3, 3}) == file.to_float(*file.find("conv_in.weight")));
  }
  SUBCASE("missing tensor names the tensor and the folder") {
    const auto message = error_of([&] { store.take("conv_in.wieght", {4, 4, 3, 3}); });
    CHECK(message.find("'conv_in.wieght' is missing") != std::string::npos);
    CHECK(message.find("sd-tiny/unet") != std::string::npos);
  }
  SUBCASE("mis-shaped tensor names tensor, file, expected and actual shape") {
    const auto message = error_of([&] { store.take("conv_in.weight", {4, 4, 1, 1}); });
    CHECK(message.find("'conv_in.weight'") != std::string::npos);
    CHECK(message.find("diffusion_pytorch_model.safetensors") != std::string::npos);
    CHECK(message.find("expected shape [4, 4, 1, 1], file has [4, 4, 3, 3]") != std::string::npos);
    CHECK(store.unused().size() == store.names().size());  // a failed take marks nothing
  }
  SUBCASE("unused tensors are reported by name") {
    store.take("conv_in.weight", {4, 4, 3, 3});
    const auto left = store.unused();
    CHECK(left.size() == store.names().size() - 1);
    CHECK(std::find(left.begin(), left.end(), "conv_in.bias") != left.end());
    CHECK(error_of([&] { store.require_all_used(); }).find("conv_in.bias") != std::string::npos);
    take_all(store);
    CHECK(store.unused().empty());
    CHECK_NOTHROW(store.require_all_used());
  }
}

TEST_CASE("WeightStore.Variant.Fp16") {
  SUBCASE("the only file is the fp16 variant") {
    auto store = WeightStore::open(models / "sd-tiny-legacy/unet");
    CHECK(store.files()[0].filename() == "diffusion_pytorch_model.fp16.safetensors");
    CHECK(store.info("conv_in.weight").dtype == DType::f16);
    const auto w = store.take("conv_in.weight", {32, 4, 3, 3});
    const auto file = SafetensorsFile::open(store.files()[0]);
    CHECK(w == file.to_float(*file.find("conv_in.weight")));
  }
  SUBCASE("asked for") {
    auto store = WeightStore::open(models / "sd-tiny-legacy/unet", "fp16");
    CHECK(store.files()[0].filename() == "diffusion_pytorch_model.fp16.safetensors");
  }
  SUBCASE("asked for but absent: falls back like diffusers") {
    auto store = WeightStore::open(models / "sd-tiny-legacy/vae", "fp16");
    CHECK(store.files()[0].filename() == "diffusion_pytorch_model.safetensors");
  }
  SUBCASE("several variants and no plain file: ambiguous") {
    t::TempDir dir;
    t::write_file(dir.path() / "model.fp16.safetensors", t::f32_file({{"a", {1}, {1}}}));
    t::write_file(dir.path() / "model.bf16.safetensors", t::f32_file({{"a", {1}, {1}}}));
    CHECK(error_of([&] { WeightStore::open(dir.path()); }).find("ask for a variant") != std::string::npos);
    CHECK(WeightStore::open(dir.path(), "bf16").files()[0].filename() == "model.bf16.safetensors");
  }
}

TEST_CASE("WeightStore.TextEncoder.PositionIdsIgnored") {
  auto store = WeightStore::open(models / "sd-tiny-legacy/text_encoder");
  CHECK(store.files()[0].filename() == "model.safetensors");
  CHECK(store.contains("text_model.embeddings.position_ids"));
  CHECK(store.info("text_model.embeddings.position_ids").dtype == DType::i64);
  take_all(store);
  CHECK(store.unused().empty());
  CHECK_NOTHROW(store.require_all_used());
}

TEST_CASE("WeightStore.Legacy.VaeAttentionNames") {
  auto legacy = WeightStore::open(models / "sd-tiny/vae-legacy-names");
  auto current = WeightStore::open(models / "sd-tiny/vae");
  CHECK(legacy.names() == current.names());
  for (const char* part : {"to_q", "to_k", "to_v", "to_out.0"}) {
    const std::string name = std::string("decoder.mid_block.attentions.0.") + part + ".weight";
    CAPTURE(name);
    CHECK(legacy.take(name, {8, 8}) == current.take(name, {8, 8}));
  }
  take_all(legacy);
  CHECK_NOTHROW(legacy.require_all_used());
}

TEST_CASE("WeightStore.Legacy.ConvShapedAttention") {
  t::TempDir dir;
  t::write_file(dir.path() / "diffusion_pytorch_model.safetensors",
                t::f32_file({{"decoder.mid_block.attentions.0.query.weight", {2, 2, 1, 1}, {1, 2, 3, 4}},
                             {"decoder.mid_block.attentions.0.proj_attn.bias", {2}, {5, 6}},
                             {"decoder.conv_in.weight", {2, 2, 1, 1}, {7, 8, 9, 10}}}));
  auto store = WeightStore::open(dir.path());
  CHECK(store.take("decoder.mid_block.attentions.0.to_q.weight", {2, 2}) == std::vector<float>{1, 2, 3, 4});
  CHECK(store.take("decoder.mid_block.attentions.0.to_out.0.bias", {2}) == std::vector<float>{5, 6});
  // Only attention projections may drop the 1x1: a convolution stays strict.
  CHECK(error_of([&] {
          store.take("decoder.conv_in.weight", {2, 2});
        }).find("expected shape [2, 2]") != std::string::npos);
}

TEST_CASE("WeightStore.Sharded.IndexJson") {
  t::TempDir dir;
  t::write_file(dir.path() / "model-00001-of-00002.safetensors", t::f32_file({{"a", {2}, {1, 2}}}));
  t::write_file(dir.path() / "model-00002-of-00002.safetensors", t::f32_file({{"b", {1}, {3}}}));
  t::write_text(dir.path() / "model.safetensors.index.json",
                R"({"metadata": {"total_size": 12}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                    "b": "model-00002-of-00002.safetensors"}})");
  auto store = WeightStore::open(dir.path());
  CHECK(store.files().size() == 2);
  CHECK(store.take("a", {2}) == std::vector<float>{1, 2});
  CHECK(store.take("b", {1}) == std::vector<float>{3});
  SUBCASE("a tensor in two shards") {
    t::write_file(dir.path() / "model-00002-of-00002.safetensors", t::f32_file({{"a", {1}, {3}}}));
    CHECK(error_of([&] { WeightStore::open(dir.path()); }).find("'a' is stored in more than one file") !=
          std::string::npos);
  }
  SUBCASE("a broken index") {
    t::write_text(dir.path() / "model.safetensors.index.json", R"({"weight_map": 3})");
    CHECK(error_of([&] { WeightStore::open(dir.path()); }).find("no 'weight_map'") != std::string::npos);
  }
  SUBCASE("an index that points outside its folder") {
    t::TempDir outside;
    t::write_file(outside.path() / "secret.safetensors", t::f32_file({{"b", {1}, {3}}}));
    const std::string targets[] = {(outside.path() / "secret.safetensors").string(),
                                   "../" + outside.path().filename().string() + "/secret.safetensors",
                                   "sub/model-00002-of-00002.safetensors", "..", "model.safetensors.index.json"};
    for (const auto& target : targets) {
      CAPTURE(target);
      t::write_text(dir.path() / "model.safetensors.index.json",
                    nlohmann::json{{"weight_map", {{"a", "model-00001-of-00002.safetensors"}, {"b", target}}}}.dump());
      const auto message = error_of([&] { WeightStore::open(dir.path()); });
      CHECK(message.find("entry 'b' names '" + target +
                         "', which is not a .safetensors file name in the index's "
                         "folder") != std::string::npos);
      CHECK(message.find("model.safetensors.index.json") != std::string::npos);
    }
  }
}

TEST_CASE("WeightStore.Names.PrefixAndAlias") {
  t::TempDir dir;
  t::write_file(dir.path() / "model.safetensors",
                t::f32_file({{"embeddings.token_embedding.weight", {1}, {1}}, {"text_model.final.weight", {1}, {2}}}));
  auto store = WeightStore::open(dir.path());
  store.add_missing_prefix("text_model.");
  CHECK(store.names() ==
        std::vector<std::string>{"text_model.embeddings.token_embedding.weight", "text_model.final.weight"});
  store.alias("text_model.final.weight", "final.weight");
  CHECK(store.contains("final.weight"));
  CHECK(!store.contains("text_model.final.weight"));
  CHECK(store.take("final.weight", {1}) == std::vector<float>{2});
}

TEST_CASE("WeightStore.Open.Errors") {
  CHECK(error_of([] { WeightStore::open(models / "no-such-component"); }).find("is not a directory") !=
        std::string::npos);
  t::TempDir dir;
  const auto message = error_of([&] { WeightStore::open(dir.path()); });
  CHECK(message.find("no diffusion_pytorch_model.safetensors") != std::string::npos);
  CHECK(message.find(dir.path().string()) != std::string::npos);
  t::write_file(dir.path() / "model.safetensors", {});
  CHECK(error_of([&] { WeightStore::open(dir.path()); }).find("truncated") != std::string::npos);
}

TEST_CASE("WeightStore.Unused.IgnorePrefix") {
  auto store = WeightStore::open(models / "sd-tiny/vae");
  store.ignore_prefix("encoder.");
  store.ignore_prefix("quant_conv.");
  const auto left = store.unused();
  CHECK(!left.empty());
  for (const auto& name : left) {
    CAPTURE(name);
    CHECK((name.starts_with("decoder.") || name.starts_with("post_quant_conv.")));
  }
  for (const auto& name : left)
    store.take(name, store.info(name).shape);
  CHECK_NOTHROW(store.require_all_used());
}
