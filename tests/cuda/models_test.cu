// The CUDA backend's models and its Pipeline against the CPU backend (the oracle) on the tiny fixture models
// tests/data/models/{sd-tiny, sd-tiny-linear, sd-tiny-legacy}: text encoder, UNet and VAE decoder outputs within 1e-4
// (fp32) / 1e-2 (fp16) relative; whole Pipeline runs against diffusers' images (tests/data/pipeline/cases.json, the
// CPU pipeline test's reference and tolerance) in fp32 and against the CPU pipeline's images in fp16.

#include "../pipeline/pipeline_cases.hpp"
#include "compare.cuh"
#include "gpu_guard.cuh"

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <carousel/cpu/backend.hpp>
#include <carousel/cuda/backend.cuh>
#include <carousel/cuda/graph.cuh>
#include <carousel/diffusion/pipeline.hpp>
#include <carousel/step_batcher.hpp>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
namespace cu = carousel::cuda;
namespace dm = carousel::diffusion;
using carousel::cuda::test::check_close;

namespace {

const fs::path data_dir = CAROUSEL_TEST_DATA_DIR;
const char* const models[] = {"sd-tiny", "sd-tiny-linear", "sd-tiny-legacy"};

static_assert(dm::DiffusionBackend<cu::Backend>);

template <class Backend>
std::vector<dm::Job> run_pipeline(const Backend& backend, const fs::path& dir, std::vector<dm::Job> jobs) {
  const auto folder = carousel::checkpoint::DiffusersFolder::open(dir);
  dm::Pipeline<Backend> pipeline(backend, dm::pipeline_scheduler_config(folder),
                                 dm::pipeline_options(folder, backend.vae_scale_factor()));
  carousel::StepBatcher<dm::Pipeline<Backend>, dm::Job> batcher{pipeline, {.max_batch_size = 8}};
  std::vector<carousel::Ticket<dm::Job>> tickets;
  for (auto& j : jobs) {
    pipeline.validate(j);
    tickets.push_back(batcher.submit(std::move(j)));
  }
  while (batcher.step_once()) {
  }
  std::vector<dm::Job> out;
  for (auto& t : tickets)
    out.push_back(t.get());
  return out;
}

}  // namespace

TEST_CASE("Cuda.Models.MatchCpu") {
  for (const char* name : models) {
    CAPTURE(name);
    const fs::path dir = data_dir / "models" / name;
    const carousel::cpu::Backend cpu(dir);
    const std::vector<std::vector<std::int32_t>> ids = {cpu.tokenizer().encode("a red circle at the top left"),
                                                        cpu.tokenizer().encode(""),
                                                        cpu.tokenizer().encode("two blue squares, one green line")};
    const auto ref_text = cpu.encode_text(ids);
    const std::int64_t c = cpu.latent_channels();
    const auto latents = carousel::cuda::test::random_tensor({3, c, 6, 5}, 31);
    const std::vector<float> timesteps = {981.0f, 500.0f, 1.0f};
    const auto ref_unet = cpu.unet(latents, timesteps, ref_text);
    const auto ref_image = cpu.decode(latents);
    for (auto dt : {cu::DType::f32, cu::DType::f16}) {
      CAPTURE(dt == cu::DType::f32 ? "fp32" : "fp16");
      const double tol = carousel::cuda::test::tolerance(dt);
      const cu::Backend gpu(dir, cu::BackendOptions{.dtype = dt, .vae_dtype = dt});
      CHECK(gpu.latent_channels() == cpu.latent_channels());
      CHECK(gpu.vae_scale_factor() == cpu.vae_scale_factor());
      const auto text = gpu.encode_text(ids);
      REQUIRE(text.shape() == ref_text.shape());
      check_close(text.values(), ref_text.values(), tol);
      // The UNet gets the CPU's text embeddings so that each model is compared on the same input.
      const auto out =
          gpu.unet(cu::HostTensor(latents.shape(), {latents.values().begin(), latents.values().end()}), timesteps,
                   cu::HostTensor(ref_text.shape(), {ref_text.values().begin(), ref_text.values().end()}));
      REQUIRE(out.shape() == ref_unet.shape());
      check_close(out.values(), ref_unet.values(), tol);
      const auto image =
          gpu.decode(cu::HostTensor(latents.shape(), {latents.values().begin(), latents.values().end()}));
      REQUIRE(image.shape() == ref_image.shape());
      check_close(image.values(), ref_image.values(), tol);
    }
  }
}

TEST_CASE("Cuda.Models.BadInputs") {
  const cu::Backend gpu(data_dir / "models" / "sd-tiny", cu::BackendOptions{.dtype = cu::DType::f32});
  const std::vector<std::vector<std::int32_t>> ragged = {{1, 2, 3}, {1, 2}};
  CHECK_THROWS_AS(gpu.encode_text(ragged), std::invalid_argument);
  const cu::HostTensor sample({1, 4, 4, 4}, std::vector<float>(64));
  const cu::HostTensor ctx({1, 77, gpu.context_dim()},
                           std::vector<float>(static_cast<std::size_t>(77 * gpu.context_dim())));
  const std::vector<float> two = {1.0f, 2.0f};
  CHECK_THROWS_AS(gpu.unet(sample, two, ctx), std::invalid_argument);
  CHECK_THROWS_AS(cu::Backend(data_dir / "models" / "no-such-model"), std::exception);
}

TEST_CASE("Cuda.Models.EmptyBatch") {
  // An empty batch gives empty results of the CPU backend's shapes, without a launch (zero-size grids are launch
  // errors), with and without graphs.
  const fs::path dir = data_dir / "models" / "sd-tiny";
  const carousel::cpu::Backend cpu(dir);
  const std::vector<std::vector<std::int32_t>> none;
  const cu::HostTensor sample({0, cpu.latent_channels(), 8, 8}, {});
  const cu::HostTensor context({0, 77, cpu.context_dim()}, {});
  const auto ref_text = cpu.encode_text(none);
  const auto ref_unet = cpu.unet(sample, {}, context);
  const auto ref_image = cpu.decode(sample);
  for (bool graphs : {false, true}) {
    CAPTURE(graphs);
    const cu::Backend gpu(dir, cu::BackendOptions{.dtype = cu::DType::f16, .cuda_graphs = graphs});
    CHECK(gpu.encode_text(none).shape() == ref_text.shape());
    CHECK(gpu.unet(sample, {}, context).shape() == ref_unet.shape());
    CHECK(gpu.decode(sample).shape() == ref_image.shape());
    // Wrong channels are refused as on the CPU, empty or not.
    const cu::HostTensor wrong({0, cpu.latent_channels() + 3, 8, 8}, {});
    CHECK_THROWS_AS(cpu.unet(wrong, {}, context), std::invalid_argument);
    CHECK_THROWS_AS(gpu.unet(wrong, {}, context), std::invalid_argument);
    CHECK_THROWS_AS(cpu.decode(wrong), std::invalid_argument);
    CHECK_THROWS_AS(gpu.decode(wrong), std::invalid_argument);
  }
}

TEST_CASE("Cuda.Pipeline.Fp32MatchesDiffusers") {
  for (const auto& [name, model_cases] : carousel::test::pipeline_cases(data_dir)) {
    CAPTURE(name);
    const fs::path dir = data_dir / "models" / name;
    const cu::Backend gpu(dir, cu::BackendOptions{.dtype = cu::DType::f32, .vae_dtype = cu::DType::f32});
    std::vector<dm::Job> jobs;
    for (const auto& c : model_cases)
      jobs.push_back(carousel::test::job_of_case(c));
    const auto done = run_pipeline(gpu, dir, std::move(jobs));
    for (std::size_t i = 0; i < done.size(); ++i) {
      CAPTURE(model_cases[i]["prompt"].get<std::string>());
      // The CPU pipeline test's tolerance: within 1/255 for at least 99% of the values.
      CHECK(carousel::test::fraction_off(done[i].image.rgb, carousel::test::rgb_of_case(model_cases[i])) <=
            carousel::test::parity_fraction);
    }
  }
}

TEST_CASE("Cuda.Pipeline.Fp16MatchesCpu") {
  const fs::path dir = data_dir / "models" / "sd-tiny";
  const carousel::cpu::Backend cpu(dir);
  // The UNet's and the text tower's fp16 against the CPU; the fp16 VAE has its own check (Cuda.Models.*).
  const cu::Backend gpu(dir, cu::BackendOptions{.dtype = cu::DType::f16, .vae_dtype = cu::DType::f32});
  std::vector<dm::Job> jobs(3);
  jobs[0].prompt = "a red circle at the top left";
  jobs[1].prompt = "two blue squares";
  jobs[1].guidance_scale = 1.0f;
  jobs[2].prompt = "one green line";
  jobs[2].sampler = dm::SamplerKind::ddpm;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    jobs[i].width = jobs[i].height = 32;
    jobs[i].steps = 6;
    jobs[i].seed = 100 + i;
  }
  const auto expected = run_pipeline(cpu, dir, jobs);
  const auto actual = run_pipeline(gpu, dir, jobs);
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    CAPTURE(i);
    // 1e-2 relative of the [0, 255] range: within 3 levels for at least 99% of the values.
    CHECK(carousel::test::fraction_off(actual[i].image.rgb, expected[i].image.rgb, 3) <= 0.01);
  }
}

TEST_CASE("Cuda.Graphs.MatchEagerAcrossBuckets") {
  // Batches 1, 3 (bucket 4, one padded slot), 2, then 3 again (the bucket's graph is replayed, not re-captured).
  const fs::path dir = data_dir / "models" / "sd-tiny";
  const cu::Backend eager(dir, cu::BackendOptions{.dtype = cu::DType::f32});
  const cu::Backend graphed(dir, cu::BackendOptions{.dtype = cu::DType::f32, .cuda_graphs = true});
  const auto ids = eager.tokenizer().encode("a red circle");
  for (std::int64_t batch : {1, 3, 2, 3}) {
    CAPTURE(batch);
    const std::vector<std::vector<std::int32_t>> rows(static_cast<std::size_t>(batch), ids);
    const auto context = eager.encode_text(rows);
    const auto latents = carousel::cuda::test::random_tensor({batch, 4, 8, 8}, 40 + static_cast<std::uint32_t>(batch));
    const cu::HostTensor sample(latents.shape(), {latents.values().begin(), latents.values().end()});
    std::vector<float> timesteps;
    for (std::int64_t i = 0; i < batch; ++i)
      timesteps.push_back(900.0f - 100.0f * static_cast<float>(i));
    const auto expected = eager.unet(sample, timesteps, context);
    const auto actual = graphed.unet(sample, timesteps, context);
    REQUIRE(actual.shape() == expected.shape());
    // Another padded batch may select other cuDNN algorithms: equal up to float32 rounding.
    check_close(actual.values(), expected.values(), 1e-5);
  }
}

TEST_CASE("Cuda.Graphs.RefuseProfilingEngine") {
  // A graph cannot be captured with the profile's timing events in it: UNetGraphs says so instead of failing later.
  const cu::Backend backend(data_dir / "models" / "sd-tiny", cu::BackendOptions{.dtype = cu::DType::f32});
  cu::UNetGraphs graphs(backend.unet_model());
  cu::Engine e;
  const auto sample = cu::upload(e, std::vector<float>(4 * 8 * 8), {1, 8, 8, 4}, cu::DType::f32);
  const auto timesteps = cu::upload(e, std::vector<float>{500.0f}, {1}, cu::DType::f32);
  const auto context = cu::upload(e, std::vector<float>(static_cast<std::size_t>(77 * backend.context_dim())),
                                  {1, 77, backend.context_dim()}, cu::DType::f32);
  e.set_profiling(true);
  CHECK_THROWS_AS(static_cast<void>(graphs.forward(e, sample, timesteps, context)), std::invalid_argument);
  CHECK(graphs.captured() == 0);
  e.set_profiling(false);
  static_cast<void>(graphs.forward(e, sample, timesteps, context));
  CHECK(graphs.captured() == 1);
}
