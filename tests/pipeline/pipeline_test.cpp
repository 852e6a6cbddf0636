// The diffusion Pipeline on the CPU backend, driven by StepBatcher: parity with diffusers' StableDiffusionPipeline
// (tests/data/pipeline/cases.json, made by tools/make_pipeline_fixtures.py), batch invariance, and request validation.
#include <carousel/diffusion/pipeline.hpp>

#include <doctest/doctest.h>

#include <carousel/cpu/backend.hpp>
#include <carousel/step_batcher.hpp>

#include "pipeline_cases.hpp"

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using carousel::diffusion::Job;
using carousel::diffusion::SamplerKind;
using Pipeline = carousel::diffusion::Pipeline<carousel::cpu::Backend>;
using Batcher = carousel::StepBatcher<Pipeline, Job>;

namespace {

const fs::path data_dir = CAROUSEL_TEST_DATA_DIR;

struct Model {
  carousel::cpu::Backend backend;
  Pipeline pipeline;
  explicit Model(const std::string& name)
      : backend(data_dir / "models" / name),
        pipeline(
            backend,
            carousel::diffusion::pipeline_scheduler_config(
                carousel::checkpoint::DiffusersFolder::open(data_dir / "models" / name)),
            carousel::diffusion::pipeline_options(
                carousel::checkpoint::DiffusersFolder::open(data_dir / "models" / name), backend.vae_scale_factor())) {}
};

std::vector<Job> run_all(Pipeline& pipeline, std::vector<Job> jobs, std::size_t max_batch = 8) {
  Batcher batcher{pipeline, {.max_batch_size = max_batch}};
  std::vector<carousel::Ticket<Job>> tickets;
  for (Job& j : jobs) {
    pipeline.validate(j);
    tickets.push_back(batcher.submit(std::move(j)));
  }
  while (batcher.step_once()) {
  }
  std::vector<Job> out;
  for (auto& t : tickets)
    out.push_back(t.get());
  return out;
}

}  // namespace

TEST_CASE("Pipeline.Parity.Diffusers") {
  for (const auto& [name, model_cases] : carousel::test::pipeline_cases(data_dir)) {
    CAPTURE(name);
    Model m(name);
    std::vector<Job> jobs;
    for (const auto& c : model_cases)
      jobs.push_back(carousel::test::job_of_case(c));
    // All cases of one model run together: different prompts, sizes, steps, samplers, eta, guidance and seeds.
    const std::vector<Job> done = run_all(m.pipeline, std::move(jobs));
    for (std::size_t i = 0; i < done.size(); ++i) {
      CAPTURE(model_cases[i]["prompt"].get<std::string>());
      CHECK(carousel::test::fraction_off(done[i].image.rgb, carousel::test::rgb_of_case(model_cases[i])) <=
            carousel::test::parity_fraction);
    }
  }
}

TEST_CASE("Pipeline.BatchInvariance") {
  Model m("sd-tiny");
  // The backend mode in which a request's image does not depend on its batch neighbours.
  m.backend.set_batch_mode(carousel::cpu::BatchMode::batch_invariant);
  Job probe;
  probe.prompt = "a red circle at the top left";
  probe.width = probe.height = 32;
  probe.steps = 6;
  probe.sampler = SamplerKind::ddpm;
  probe.seed = 2024;
  const Job alone = run_all(m.pipeline, {probe}).front();
  std::vector<Job> crowd{probe};
  const char* prompts[] = {"two blue squares",
                           "",
                           "a green triangle on a white background",
                           "YELLOW!!",
                           "three purple circles",
                           "a cat",
                           "zz top"};
  for (int i = 0; i < 7; ++i) {
    Job other;
    other.prompt = prompts[i];
    other.width = other.height = 32;
    other.steps = 3 + i;
    const SamplerKind kinds[] = {SamplerKind::ddim, SamplerKind::ddpm, SamplerKind::euler, SamplerKind::dpm_solver};
    other.sampler = kinds[i % 4];
    other.eta = i % 3 ? 0.0f : 0.7f;
    other.guidance_scale = 1.0f + static_cast<float>(i);
    other.seed = 100 + static_cast<std::uint64_t>(i);
    crowd.push_back(other);
  }
  // The probe joins after the others have started (max batch 8, it is submitted first but the crowd varies).
  const std::vector<Job> together = run_all(m.pipeline, crowd);
  CHECK(together.front().image.rgb == alone.image.rgb);
  SUBCASE("and when it joins a batch that is already running") {
    Batcher batcher{m.pipeline, {.max_batch_size = 8}};
    std::vector<carousel::Ticket<Job>> others;
    for (std::size_t i = 1; i < crowd.size(); ++i) {
      Job j = crowd[i];
      m.pipeline.validate(j);
      others.push_back(batcher.submit(std::move(j)));
    }
    batcher.step_once();
    batcher.step_once();
    Job p = probe;
    m.pipeline.validate(p);
    auto t = batcher.submit(std::move(p));
    while (batcher.step_once()) {
    }
    CHECK(t.get().image.rgb == alone.image.rgb);
  }
  SUBCASE("and with the VAE decode in the retire stage, concurrent with the UNet steps of the others") {
    Batcher batcher{m.pipeline, {.max_batch_size = 4, .concurrent_retire = true}};
    batcher.start();
    std::vector<carousel::Ticket<Job>> tickets;
    for (const Job& c : crowd) {
      Job j = c;
      m.pipeline.validate(j);
      tickets.push_back(batcher.submit(std::move(j)));
    }
    for (std::size_t i = 0; i < crowd.size(); ++i) {
      CAPTURE(i);
      CHECK(tickets[i].get().image.rgb == together[i].image.rgb);
    }
    batcher.stop();
  }
}

TEST_CASE("Pipeline.Validate") {
  Model m("sd-tiny");
  auto error_of = [&](Job j) -> std::string {
    try {
      m.pipeline.validate(j);
    } catch (const carousel::diffusion::InvalidJob& e) {
      CHECK(std::string(e.what()) == e.field() + ": " + e.message());
      return e.field() + ": " + e.message();
    }
    return "no error";
  };
  Job ok;
  ok.prompt = "a red circle";
  Job filled = ok;
  m.pipeline.validate(filled);
  CHECK(filled.width == 32);  // sample_size 16 x VAE factor 2
  CHECK(filled.height == 32);
  auto with = [&](auto f) {
    Job j = ok;
    f(j);
    return error_of(j);
  };
  CHECK(with([](Job& j) { j.width = 33; }).starts_with("width:"));
  CHECK(with([](Job& j) { j.height = 1 << 20; }).starts_with("height:"));
  CHECK(with([](Job& j) { j.steps = 0; }).starts_with("steps:"));
  CHECK(with([](Job& j) { j.steps = 5000; }).starts_with("steps:"));
  // Leading spacing with steps_offset 1 and N = T would step timestep T, outside the schedule (as in diffusers).
  CHECK(with([](Job& j) { j.steps = 1000; }).starts_with("steps:"));
  CHECK(error_of([&] {
          Job j = ok;
          j.steps = 999;
          return j;
        }()) == "no error");
  CHECK(with([](Job& j) { j.eta = -1; }).starts_with("eta:"));
  CHECK(with([](Job& j) { j.guidance_scale = -2; }).starts_with("guidance_scale:"));
  CHECK(with([](Job& j) { j.guidance_rescale = 2; }).starts_with("guidance_rescale:"));
  CHECK(with([](Job& j) { j.prompt = std::string("\xff\xfe bad utf-8"); }).starts_with("prompt:"));
  CHECK(with([](Job& j) { j.negative_prompt = std::string(100000, 'a'); }).starts_with("negative_prompt:"));
  CHECK(error_of(ok) == "no error");
  SUBCASE("the batcher refuses an invalid job at submit, with the InvalidJob nested, and never admits it") {
    Batcher batcher{m.pipeline, {.max_batch_size = 2}};
    Job bad = ok;
    bad.steps = 0;
    auto t = batcher.submit(std::move(bad));
    REQUIRE(t.ready());
    CHECK(t.error_code() == carousel::Errc::invalid_request);
    std::string field;
    try {
      static_cast<void>(t.get());
    } catch (const carousel::Error& e) {
      try {
        std::rethrow_if_nested(e);
      } catch (const carousel::diffusion::InvalidJob& invalid) {
        field = invalid.field();
      }
    }
    CHECK(field == "steps");
    CHECK_FALSE(batcher.step_once());
    CHECK(batcher.stats().admitted == 0);
  }
}

TEST_CASE("Pipeline.Image.NonFinite") {
  // A NaN or infinity has no byte: the conversion fails instead of answering an undefined (often black) image.
  std::vector<float> chw(3 * 2 * 2, 0.5f);
  CHECK(carousel::diffusion::to_rgb8(chw, 2, 2).rgb.size() == 12);
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    CAPTURE(bad);
    std::vector<float> broken = chw;
    broken[7] = bad;
    CHECK_THROWS_AS(carousel::diffusion::to_rgb8(broken, 2, 2), std::domain_error);
  }
}
