// The CPU backend's models against diffusers / transformers (fixtures of tools/make_cpu_fixtures.py) on the tiny
// model folders, the batch invariance of the UNet's batch_invariant mode and the accuracy of its batched mode.
#include <doctest/doctest.h>

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <carousel/cpu/backend.hpp>
#include <carousel/nn/sd15.hpp>

#include "fixtures.hpp"

namespace {

using carousel::cpu::BatchMode;
using carousel::cpu::Tensor;
using carousel::cpu::test::check_close;
using carousel::cpu::test::model_dir;
using carousel::cpu::test::Reference;

const char* const models[] = {"sd-tiny-linear", "sd-tiny-legacy", "sd-tiny"};

// Rows [first, first + count) of a batch tensor.
Tensor rows(const Tensor& t, std::int64_t first, std::int64_t count) {
  auto shape = t.shape();
  shape[0] = count;
  return Tensor(shape, std::vector<float>(t.sample(first), t.sample(first) + count * t.sample_numel()));
}

bool bitwise_equal(const float* a, const float* b, std::int64_t n) {
  return std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("Cpu.Models.TextEncoder") {
  for (const std::string name : models) {
    CAPTURE(name);
    const Reference ref(name);
    const carousel::cpu::Backend backend(model_dir(name));
    const auto ids = ref.ids("text_ids");
    const Tensor out = backend.encode_text(ids);
    check_close(out, ref.tensor("text_out_f64"));
    check_close(out, ref.tensor("text_out"));
    const auto clip = carousel::cpu::load_text_encoder(model_dir(name) / "text_encoder");
    check_close(clip.forward(ids, 1), ref.tensor("text_out_skip1_f64"));
    const carousel::cpu::Backend skip1(model_dir(name), {.clip_skip = 1});
    check_close(skip1.encode_text(ids), ref.tensor("text_out_skip1_f64"));
  }
}

TEST_CASE("Cpu.Models.PromptToEmbedding") {
  for (const std::string name : models) {
    CAPTURE(name);
    const Reference ref(name);
    const carousel::cpu::Backend backend(model_dir(name));
    const auto expected_ids = ref.ids("prompt_ids");
    const std::vector<std::vector<std::int32_t>> ids{
        backend.tokenizer().encode("a photo of a cat"),
        backend.tokenizer().encode("An astronaut riding a horse, oil painting")};
    CHECK(ids == expected_ids);
    check_close(backend.encode_text(ids), ref.tensor("prompt_out_f64"));
  }
}

TEST_CASE("Cpu.Models.UNet") {
  for (const std::string name : models) {
    const Reference ref(name);
    carousel::cpu::Backend backend(model_dir(name));
    for (const auto mode : {BatchMode::batched, BatchMode::batch_invariant}) {
      backend.set_batch_mode(mode);
      for (const std::string key : {"unet", "unet_odd"}) {
        CAPTURE(name);
        CAPTURE(key);
        CAPTURE(static_cast<int>(mode));
        const Tensor timesteps = ref.tensor(key + "_timesteps");
        const Tensor out = backend.unet(ref.tensor(key + "_sample"), timesteps.values(), ref.tensor(key + "_context"));
        check_close(out, ref.tensor(key + "_out_f64"));
        check_close(out, ref.tensor(key + "_out"));
      }
    }
  }
}

// Batched mode against batch-invariant mode on a batch of 8 (the fixture's items, repeated with other timesteps and
// contexts scaled so that no two items are equal). Both are float32 evaluations of the same sums, grouped into
// different GEMM calls: BLAS may block a dot product's K terms differently, which moves each sum by a few units in
// the last place of its largest terms. Measured: max|batched - invariant| / max|invariant| <= 9e-7 on these models;
// required: 1e-5 norm-wise and |a-b| <= 1e-5 * |b| + 1e-6 * max|b| element-wise, ten times below the tolerance that
// both modes meet against diffusers (Cpu.Models.UNet).
TEST_CASE("Cpu.Models.UNet.BatchedMode") {
  for (const std::string name : models) {
    CAPTURE(name);
    const Reference ref(name);
    carousel::cpu::Backend backend(model_dir(name));
    const Tensor sample3 = ref.tensor("unet_sample"), context3 = ref.tensor("unet_context");
    const std::int64_t batch = 8;
    auto shape = sample3.shape();
    shape[0] = batch;
    Tensor sample(shape);
    shape = context3.shape();
    shape[0] = batch;
    Tensor context(shape);
    std::vector<float> timesteps;
    for (std::int64_t i = 0; i < batch; ++i) {
      const float scale = 1.0f + 0.1f * static_cast<float>(i / 3);
      std::copy(sample3.sample(i % 3), sample3.sample(i % 3) + sample3.sample_numel(), sample.sample(i));
      for (std::int64_t j = 0; j < context3.sample_numel(); ++j)
        context.sample(i)[j] = context3.sample(i % 3)[j] * scale;
      timesteps.push_back(static_cast<float>(999 - 131 * i));
    }
    backend.set_batch_mode(BatchMode::batch_invariant);
    const Tensor invariant = backend.unet(sample, timesteps, context);
    backend.set_batch_mode(BatchMode::batched);
    const Tensor batched = backend.unet(sample, timesteps, context);
    check_close(batched, invariant, 1e-5, 1e-6);
    SUBCASE("a batch of one is the same in both modes, bitwise") {
      const Tensor one = backend.unet(rows(sample, 5, 1), std::span(timesteps).subspan(5, 1), rows(context, 5, 1));
      CHECK(bitwise_equal(one.data(), invariant.sample(5), invariant.sample_numel()));
    }
  }
}

TEST_CASE("Cpu.Models.UNet.BatchInvariance") {
  for (const std::string name : models) {
    CAPTURE(name);
    const Reference ref(name);
    carousel::cpu::Backend backend(model_dir(name));
    backend.set_batch_mode(carousel::cpu::BatchMode::batch_invariant);
    const Tensor sample = ref.tensor("unet_sample"), context = ref.tensor("unet_context");
    const Tensor timesteps = ref.tensor("unet_timesteps");
    const Tensor batched = backend.unet(sample, timesteps.values(), context);
    const std::int64_t n = batched.sample_numel();
    for (std::int64_t i = 0; i < 3; ++i) {
      CAPTURE(i);
      const Tensor alone = backend.unet(rows(sample, i, 1), timesteps.values().subspan(i, 1), rows(context, i, 1));
      CHECK(bitwise_equal(alone.data(), batched.sample(i), n));
    }
    // Items 1 and 2 in a batch of two, in the other order.
    Tensor pair_sample = rows(sample, 1, 2), pair_context = rows(context, 1, 2);
    std::swap_ranges(pair_sample.sample(0), pair_sample.sample(1), pair_sample.sample(1));
    std::swap_ranges(pair_context.sample(0), pair_context.sample(1), pair_context.sample(1));
    const float pair_t[] = {timesteps.values()[2], timesteps.values()[1]};
    const Tensor pair = backend.unet(pair_sample, pair_t, pair_context);
    CHECK(bitwise_equal(pair.sample(0), batched.sample(2), n));
    CHECK(bitwise_equal(pair.sample(1), batched.sample(1), n));
  }
}

TEST_CASE("Cpu.Models.UNet.ConcurrentCalls") {
  const Reference ref("sd-tiny-legacy");
  const carousel::cpu::Backend backend(model_dir("sd-tiny-legacy"));
  const Tensor sample = ref.tensor("unet_sample"), context = ref.tensor("unet_context");
  const Tensor timesteps = ref.tensor("unet_timesteps");
  const Tensor serial = backend.unet(sample, timesteps.values(), context);
  std::vector<Tensor> results(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < results.size(); ++t)
    threads.emplace_back([&, t] { results[t] = backend.unet(sample, timesteps.values(), context); });
  for (auto& thread : threads)
    thread.join();
  for (const auto& r : results)
    CHECK(bitwise_equal(r.data(), serial.data(), serial.numel()));
}

TEST_CASE("Cpu.Models.VaeDecoder") {
  for (const std::string name : models) {
    CAPTURE(name);
    const Reference ref(name);
    const carousel::cpu::Backend backend(model_dir(name));
    check_close(backend.decode(ref.tensor("vae_latents")), ref.tensor("vae_out_f64"));
    check_close(backend.decode(ref.tensor("vae_latents")), ref.tensor("vae_out"));
  }
  SUBCASE("batch invariance") {
    const carousel::cpu::Backend backend(model_dir("sd-tiny"));
    const Tensor latents = Reference("sd-tiny").tensor("vae_latents");
    const Tensor both = backend.decode(latents), second = backend.decode(rows(latents, 1, 1));
    CHECK(bitwise_equal(second.data(), both.sample(1), second.numel()));
  }
  SUBCASE("pre-0.14 attention names load to the same decoder") {
    const Reference ref("sd-tiny");
    const auto vae = carousel::cpu::load_vae_decoder(model_dir("sd-tiny") / "vae-legacy-names");
    check_close(carousel::cpu::decode_latents(vae, ref.tensor("vae_latents")), ref.tensor("vae_out_f64"));
  }
}

TEST_CASE("Cpu.Models.Backend.Accessors") {
  const carousel::cpu::Backend tiny(model_dir("sd-tiny"));
  CHECK(tiny.latent_channels() == 4);
  CHECK(tiny.vae_scale_factor() == 2);
  CHECK(tiny.context_dim() == 8);
  CHECK(tiny.has_vae());
  CHECK(tiny.unet_config().sample_size == 16);
  REQUIRE(tiny.vae_config() != nullptr);
  CHECK(tiny.vae_config()->scaling_factor == doctest::Approx(0.18215));
  CHECK(tiny.text_encoder_config().eos_token_id == 999);
  CHECK(tiny.folder().scheduler == model_dir("sd-tiny") / "scheduler");
  const carousel::cpu::Backend legacy(model_dir("sd-tiny-legacy"));
  CHECK(legacy.context_dim() == 32);
  CHECK(legacy.unet_config().block_out_channels == std::vector<int>{32, 32});
  // variant "fp16": the UNet's fp16 file, plain files for the components without one (diffusers' fallback).
  const carousel::cpu::Backend fp16(model_dir("sd-tiny-legacy"), {.variant = "fp16"});
  const Reference ref("sd-tiny-legacy");
  const Tensor timesteps = ref.tensor("unet_timesteps");
  check_close(fp16.unet(ref.tensor("unet_sample"), timesteps.values(), ref.tensor("unet_context")),
              ref.tensor("unet_out_f64"));
}

TEST_CASE("Cpu.Models.Backend.WithoutVae") {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("carousel-cpu-novae-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  const fs::path src = model_dir("sd-tiny");
  for (const char* component : {"unet", "text_encoder", "tokenizer", "scheduler"})
    fs::create_directory_symlink(src / component, root / component);
  auto index = nlohmann::json::parse(std::ifstream(src / "model_index.json"));
  index.erase("vae");
  std::ofstream(root / "model_index.json") << index.dump(2);
  {
    const carousel::cpu::Backend backend(root);
    CHECK_FALSE(backend.has_vae());
    CHECK(backend.vae_scale_factor() == 1);
    CHECK(backend.vae_config() == nullptr);
    const Tensor latents = Reference("sd-tiny").tensor("vae_latents");
    const Tensor out = backend.decode(latents);
    CHECK(out.shape() == latents.shape());
    CHECK(bitwise_equal(out.data(), latents.data(), latents.numel()));
  }
  fs::remove_all(root);
}

// Deeper configurations than the tiny folders, with weights that both sides generate (RandomWeights and its Python
// twin in tools/make_cpu_fixtures.py).
TEST_CASE("Cpu.Models.RandomShapes") {
  using carousel::checkpoint::RandomWeights;
  const Reference ref("random-shapes");
  SUBCASE("UNet with SD-1.5's topology") {
    auto config = carousel::nn::sd15_unet_config();
    config.block_out_channels = {32, 64, 64, 64};
    config.cross_attention_dim = 64;
    RandomWeights weights(1515);
    const carousel::cpu::UNet2DConditionModel unet(config, weights);
    const Tensor timesteps = ref.tensor("sd15_timesteps");
    for (const auto mode : {BatchMode::batched, BatchMode::batch_invariant}) {
      CAPTURE(static_cast<int>(mode));
      const Tensor out = unet.forward(ref.tensor("sd15_sample"), timesteps.values(), ref.tensor("sd15_context"), mode);
      check_close(out, ref.tensor("sd15_out_f64"));
      check_close(out, ref.tensor("sd15_out"));
    }
  }
  SUBCASE("UNet with linear projections, per-block layers and heads, shifted frequencies, odd size") {
    carousel::checkpoint::UNetConfig config;
    config.block_out_channels = {32, 64, 64};
    config.layers_per_block = {1, 2, 1};
    config.down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
    config.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    config.attention_head_dim = {2, 4, 8};
    config.transformer_layers_per_block = {1, 2, 1};
    config.use_linear_projection = true;
    config.flip_sin_to_cos = false;
    config.freq_shift = 1.0;
    config.center_input_sample = true;
    config.cross_attention_dim = 48;
    RandomWeights weights(2002);
    const carousel::cpu::UNet2DConditionModel unet(config, weights);
    const Tensor timesteps = ref.tensor("sd2_timesteps");
    const Tensor out = unet.forward(ref.tensor("sd2_sample"), timesteps.values(), ref.tensor("sd2_context"));
    check_close(out, ref.tensor("sd2_out_f64"));
    check_close(out, ref.tensor("sd2_out"));
  }
  SUBCASE("VAE decoder with SD's topology") {
    auto config = carousel::nn::sd15_vae_config();
    config.block_out_channels = {32, 64, 64, 64};
    RandomWeights weights(8080);
    const carousel::cpu::VaeDecoder vae(config, weights);
    const Tensor out = carousel::cpu::decode_latents(vae, ref.tensor("vae_latents"));
    check_close(out, ref.tensor("vae_out_f64"));
    check_close(out, ref.tensor("vae_out"));
  }
  SUBCASE("CLIP text tower with exact GELU") {
    carousel::checkpoint::ClipTextConfig config;
    config.vocab_size = 1000;
    config.hidden_size = 64;
    config.intermediate_size = 128;
    config.num_hidden_layers = 3;
    config.num_attention_heads = 4;
    config.hidden_act = carousel::checkpoint::ClipActivation::gelu;
    RandomWeights weights(3003);
    const carousel::cpu::ClipTextModel clip(config, weights);
    const Tensor out = clip.forward(ref.ids("clip_ids"));
    check_close(out, ref.tensor("clip_out_f64"));
    check_close(out, ref.tensor("clip_out"));
  }
}

namespace {

// Records every requested tensor and hands back no values: enough to build a module tree (not to run it) and
// count its parameters without allocating them.
class ShapeRecorder final : public carousel::checkpoint::WeightSource {
 public:
  std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> shape) override {
    CHECK_MESSAGE(names_.insert(std::string(name)).second, "tensor requested twice: " << name);
    std::int64_t n = 1;
    for (auto e : shape)
      n *= e;
    parameters_ += n;
    return {};
  }
  std::size_t tensors() const { return names_.size(); }
  std::int64_t parameters() const { return parameters_; }

 private:
  std::set<std::string> names_;
  std::int64_t parameters_ = 0;
};

}  // namespace

// The module trees at Stable Diffusion 1.5 size ask for exactly the checkpoint's tensors: totals from
// diffusers-numerics.md (UNet, CLIP-L) and from diffusers' AutoencoderKL (decoder + post_quant_conv).
TEST_CASE("Cpu.Models.Sd15.ParameterCounts") {
  ShapeRecorder unet;
  (void)carousel::cpu::UNet2DConditionModel(carousel::nn::sd15_unet_config(), unet);
  CHECK(unet.tensors() == 686);
  CHECK(unet.parameters() == 859'520'964);

  ShapeRecorder clip;
  (void)carousel::cpu::ClipTextModel(carousel::nn::sd15_text_config(), clip);
  CHECK(clip.tensors() == 196);
  CHECK(clip.parameters() == 123'060'480);

  ShapeRecorder vae;
  (void)carousel::cpu::VaeDecoder(carousel::nn::sd15_vae_config(), vae);
  CHECK(vae.tensors() == 140);
  CHECK(vae.parameters() == 49'490'199);
}

TEST_CASE("Cpu.Models.Backend.InputErrors") {
  const carousel::cpu::Backend backend(model_dir("sd-tiny"));
  const Tensor sample({2, 4, 8, 8}), context({2, 77, 8});
  const float two[] = {1.0f, 2.0f}, one[] = {1.0f};
  CHECK_NOTHROW((void)backend.unet(sample, two, context));
  CHECK_THROWS_AS((void)backend.unet(sample, one, context), std::invalid_argument);
  CHECK_THROWS_AS((void)backend.unet(sample, two, Tensor({2, 77, 9})), std::invalid_argument);
  CHECK_THROWS_AS((void)backend.unet(Tensor({2, 3, 8, 8}), two, context), std::invalid_argument);
  const std::vector<std::vector<std::int32_t>> bad_id{{998, 1000, 999}}, ragged{{998, 999}, {998}};
  CHECK_THROWS_AS((void)backend.encode_text(bad_id), std::invalid_argument);
  CHECK_THROWS_AS((void)backend.encode_text(ragged), std::invalid_argument);
  CHECK_THROWS_AS((void)backend.encode_text(std::vector<std::vector<std::int32_t>>{std::vector<std::int32_t>(78, 1)}),
                  std::invalid_argument);
}

// Not a property of carousel: records whether this OpenBLAS computes a row of C identically for different M. It
// does not (M = 1 takes a GEMV-like path, larger M other kernels), which is why every op runs one GEMM per batch
// item rather than one GEMM over the whole batch.
TEST_CASE("Cpu.Blas.RowsDependOnM") {
  const int n = 64, k = 96;
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> a(32 * k), b(n * k);
  for (auto& v : a)
    v = dist(gen);
  for (auto& v : b)
    v = dist(gen);
  std::vector<float> one(n), many(32 * n);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, n, k, 1, a.data(), k, b.data(), k, 0, one.data(), n);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 32, n, k, 1, a.data(), k, b.data(), k, 0, many.data(), n);
  MESSAGE("OpenBLAS row 0 of an M=1 and an M=32 sgemm are bitwise "
          << (bitwise_equal(one.data(), many.data(), n) ? "equal" : "different"));
}
