// Loading errors of the CPU backend: each names the tensor, file or field at fault.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <carousel/checkpoint/safetensors.hpp>
#include <carousel/cpu/backend.hpp>
#include <carousel/nn/sd15.hpp>

#include "fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using carousel::cpu::test::model_dir;

struct StoredTensor {
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};
using TensorMap = std::map<std::string, StoredTensor>;

TensorMap read_all(const fs::path& file) {
  const auto f = carousel::checkpoint::SafetensorsFile::open(file);
  TensorMap out;
  for (const auto& t : f.tensors())
    if (t.dtype != carousel::checkpoint::DType::i64) out[t.name] = {t.shape, f.to_float(t)};
  return out;
}

// A minimal F32 safetensors writer (header JSON, then the tensors back to back).
void write_all(const fs::path& file, const TensorMap& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const std::size_t bytes = t.values.size() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  const std::string text = header.dump();
  std::ofstream out(file, std::ios::binary);
  const std::uint64_t size = text.size();
  out.write(reinterpret_cast<const char*>(&size), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, t] : tensors)
    out.write(reinterpret_cast<const char*>(t.values.data()), static_cast<std::streamsize>(t.values.size() * 4));
}

// A fresh temporary folder, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    root_ = fs::temp_directory_path() /
            ("carousel-cpu-errors-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }
  const fs::path& path() const noexcept { return root_; }

 private:
  fs::path root_;
};

// A copy of sd-tiny/<component> under `tmp`, its tensors passed through `edit`.
fs::path edited_copy(const TempDir& tmp, const std::string& component, const std::function<void(TensorMap&)>& edit) {
  const fs::path dir = tmp.path() / component;
  fs::create_directories(dir);
  const fs::path src = model_dir("sd-tiny") / component;
  fs::copy_file(src / "config.json", dir / "config.json");
  const std::string file = component == "text_encoder" ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
  TensorMap tensors = read_all(src / file);
  edit(tensors);
  write_all(dir / file, tensors);
  return dir;
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("Cpu.Errors.MissingTensor") {
  SUBCASE("unet") {
    const TempDir tmp;
    const auto dir = edited_copy(tmp, "unet", [](TensorMap& t) { t.erase("down_blocks.1.attentions.0.proj_in.bias"); });
    const auto what = error_of([&] { (void)carousel::cpu::load_unet(dir); });
    CHECK_MESSAGE(contains(what, "down_blocks.1.attentions.0.proj_in.bias"), what);
  }
  SUBCASE("text_encoder") {
    const TempDir tmp;
    const auto dir =
        edited_copy(tmp, "text_encoder", [](TensorMap& t) { t.erase("text_model.encoder.layers.1.mlp.fc2.weight"); });
    const auto what = error_of([&] { (void)carousel::cpu::load_text_encoder(dir); });
    CHECK_MESSAGE(contains(what, "encoder.layers.1.mlp.fc2.weight"), what);
  }
  SUBCASE("vae") {
    const TempDir tmp;
    const auto dir = edited_copy(tmp, "vae", [](TensorMap& t) { t.erase("decoder.mid_block.attentions.0.to_v.bias"); });
    const auto what = error_of([&] { (void)carousel::cpu::load_vae_decoder(dir); });
    CHECK_MESSAGE(contains(what, "decoder.mid_block.attentions.0.to_v.bias"), what);
  }
}

TEST_CASE("Cpu.Errors.MisShapedTensor") {
  const TempDir tmp;
  const auto dir = edited_copy(tmp, "unet", [](TensorMap& t) {
    auto& w = t.at("up_blocks.0.resnets.1.conv1.weight");
    w.shape = {w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]};
  });
  const auto what = error_of([&] { (void)carousel::cpu::load_unet(dir); });
  CHECK_MESSAGE(contains(what, "up_blocks.0.resnets.1.conv1.weight"), what);
}

TEST_CASE("Cpu.Errors.ExtraTensor") {
  SUBCASE("unet") {
    const TempDir tmp;
    const auto dir = edited_copy(tmp, "unet", [](TensorMap& t) {
      t["down_blocks.0.resnets.7.conv1.bias"] = {{4}, {1, 2, 3, 4}};
    });
    const auto what = error_of([&] { (void)carousel::cpu::load_unet(dir); });
    CHECK_MESSAGE(contains(what, "down_blocks.0.resnets.7.conv1.bias"), what);
  }
  SUBCASE("vae: the encoder may be left unread, nothing else") {
    const TempDir tmp;
    const auto dir = edited_copy(tmp, "vae", [](TensorMap& t) { t["decoder.up_blocks.9.bias"] = {{1}, {0}}; });
    const auto what = error_of([&] { (void)carousel::cpu::load_vae_decoder(dir); });
    CHECK_MESSAGE(contains(what, "decoder.up_blocks.9.bias"), what);
    CHECK_FALSE(contains(what, "encoder.conv_in"));
  }
}

TEST_CASE("Cpu.Errors.MissingFile") {
  const TempDir tmp;
  const fs::path dir = tmp.path() / "unet";
  fs::create_directories(dir);
  fs::copy_file(model_dir("sd-tiny") / "unet" / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  const auto what = error_of([&] { (void)carousel::cpu::load_unet(dir); });
  CHECK_MESSAGE(contains(what, dir.string()), what);
  const auto no_folder = error_of([&] { (void)carousel::cpu::Backend(dir.parent_path() / "nowhere"); });
  CHECK_MESSAGE(contains(no_folder, "nowhere"), no_folder);
}

TEST_CASE("Cpu.Errors.UnsupportedBlockType") {
  SUBCASE("config made in code") {
    auto config = carousel::nn::sd15_unet_config();
    config.down_block_types[1] = "AttnDownBlock2D";
    carousel::checkpoint::RandomWeights w;
    const auto what = error_of([&] { carousel::cpu::UNet2DConditionModel(config, w); });
    CHECK_MESSAGE(contains(what, "AttnDownBlock2D"), what);
  }
  SUBCASE("config.json") {
    const TempDir tmp;
    const auto dir = edited_copy(tmp, "unet", [](TensorMap&) {});
    nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    config["up_block_types"][1] = "AttnUpBlock2D";
    std::ofstream(dir / "config.json") << config.dump(2);
    const auto what = error_of([&] { (void)carousel::cpu::load_unet(dir); });
    CHECK_MESSAGE(contains(what, "AttnUpBlock2D"), what);
  }
}

TEST_CASE("Cpu.Errors.MismatchedComponents") {
  const TempDir tmp;
  const fs::path root = tmp.path() / "mixed";
  fs::create_directories(root);
  fs::copy_file(model_dir("sd-tiny") / "model_index.json", root / "model_index.json");
  for (const char* component : {"unet", "vae", "tokenizer", "scheduler"})
    fs::create_directory_symlink(model_dir("sd-tiny") / component, root / component);
  fs::create_directory_symlink(model_dir("sd-tiny-legacy") / "text_encoder", root / "text_encoder");
  const auto what = error_of([&] { (void)carousel::cpu::Backend(root); });
  CHECK_MESSAGE(contains(what, "hidden_size 32"), what);
  CHECK_MESSAGE(contains(what, "cross_attention_dim 8"), what);
}
