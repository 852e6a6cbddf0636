// diffusion::AnyBackend: a Pipeline over AnyBackend(cpu::Backend) makes the images of a Pipeline over cpu::Backend
// bit for bit (and diffusers' within the parity tolerance), the wrapped backend's exceptions propagate unchanged, and
// the erasure works for any backend satisfying DiffusionBackend (a fake with its own tensor and tokenizer types).
#include <carousel/diffusion/any_backend.hpp>

#include <doctest/doctest.h>

#include <carousel/cpu/backend.hpp>
#include <carousel/errors.hpp>
#include <carousel/step_batcher.hpp>
#include <nlohmann/json.hpp>

#include "pipeline_cases.hpp"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using carousel::diffusion::AnyBackend;
using carousel::diffusion::Job;
using carousel::diffusion::SamplerKind;

namespace {

const fs::path data_dir = CAROUSEL_TEST_DATA_DIR;
const fs::path tiny = data_dir / "models" / "sd-tiny";

// ---- a fake backend with its own tensor and tokenizer types, throwing on request ------------------------------------

struct FakeTensor {
  std::vector<std::int64_t> extents;
  std::vector<float> data;
  FakeTensor(std::vector<std::int64_t> s, std::vector<float> d) : extents(std::move(s)), data(std::move(d)) {}
  const std::vector<std::int64_t>& shape() const { return extents; }
  std::int64_t dim(std::ptrdiff_t i) const {
    return extents.at(static_cast<std::size_t>(i < 0 ? i + static_cast<std::ptrdiff_t>(extents.size()) : i));
  }
  std::span<const float> values() const { return data; }
};

// An exception type of the fake's own: it must arrive as itself, not as a copy into another type.
struct FakeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct FakeTokenizer {
  std::vector<std::int32_t> encode(std::string_view text) const {
    if (text == "untokenizable") throw FakeError("fake tokenizer: cannot encode");
    return std::vector<std::int32_t>(4, static_cast<std::int32_t>(text.size()));
  }
};

// Which call throws (and, for the pipeline test, after how many UNet calls).
struct FakeFaults {
  bool encode_text = false;
  bool decode = false;
  int unet_after = -1;  // the UNet throws from this call on (-1: never)
};

// Latents of 2 channels, scale factor 4, context [B, 4, 3]; the UNet predicts eps = 0.1 * sample + timestep / 1000.
// Not movable (it holds a mutex), so it is wrapped with AnyBackend::make.
class FakeBackend {
 public:
  FakeBackend(FakeFaults faults, std::atomic<int>* unet_calls) : faults_(faults), unet_calls_(unet_calls) {}
  FakeBackend(const FakeBackend&) = delete;
  FakeBackend& operator=(const FakeBackend&) = delete;

  const FakeTokenizer& tokenizer() const noexcept { return tokenizer_; }
  FakeTensor encode_text(std::span<const std::vector<std::int32_t>> ids) const {
    if (faults_.encode_text) throw FakeError("fake encode_text: out of cheese");
    std::vector<float> out;
    for (const auto& row : ids) {
      for (std::size_t t = 0; t < 4; ++t) {
        for (int d = 0; d < 3; ++d)
          out.push_back(static_cast<float>(row.at(t)) * 0.01f + static_cast<float>(d));
      }
    }
    return FakeTensor({static_cast<std::int64_t>(ids.size()), 4, 3}, std::move(out));
  }
  FakeTensor unet(const FakeTensor& sample, std::span<const float> timesteps, const FakeTensor& context) const {
    std::lock_guard lock(mutex_);
    const int call = unet_calls_->fetch_add(1);
    if (faults_.unet_after >= 0 && call >= faults_.unet_after)
      throw FakeError("fake unet: call " + std::to_string(call));
    if (context.dim(0) != sample.dim(0)) throw std::invalid_argument("fake unet: batch mismatch");
    std::vector<float> out(sample.data.size());
    const std::size_t per = out.size() / timesteps.size();
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = 0.1f * sample.data[i] + timesteps[i / per] / 1000.0f;
    return FakeTensor(sample.extents, std::move(out));
  }
  FakeTensor decode(const FakeTensor& latents) const {
    if (faults_.decode) throw FakeError("fake decode: no VAE today");
    const std::int64_t b = latents.dim(0), h = latents.dim(2) * 4, w = latents.dim(3) * 4;
    std::vector<float> out(static_cast<std::size_t>(b * 3 * h * w));
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = latents.data[i % latents.data.size()] * 0.5f;
    return FakeTensor({b, 3, h, w}, std::move(out));
  }
  std::int64_t latent_channels() const noexcept { return 2; }
  std::int64_t vae_scale_factor() const noexcept { return 4; }

 private:
  FakeFaults faults_;
  std::atomic<int>* unet_calls_;
  FakeTokenizer tokenizer_;
  mutable std::mutex mutex_;
};

// A backend whose tensor type has no shape(): a DiffusionBackend that AnyBackend cannot copy to and from.
struct ShapelessTensor {
  ShapelessTensor(std::vector<std::int64_t>, std::vector<float>) {}
  std::int64_t dim(std::ptrdiff_t) const { return 0; }
  std::span<const float> values() const { return {}; }
};

static_assert(carousel::diffusion::DiffusionBackend<AnyBackend>);
static_assert(carousel::diffusion::DiffusionBackend<FakeBackend>);
static_assert(carousel::diffusion::ShapedHostTensor<AnyBackend::Tensor>);
static_assert(carousel::diffusion::ShapedHostTensor<carousel::cpu::Tensor>);
static_assert(carousel::diffusion::ShapedHostTensor<FakeTensor>);
static_assert(!carousel::diffusion::ShapedHostTensor<ShapelessTensor>);
static_assert(std::is_same_v<carousel::diffusion::backend_tensor_t<AnyBackend>, AnyBackend::Tensor>);
static_assert(std::is_copy_constructible_v<AnyBackend> && std::is_nothrow_move_constructible_v<AnyBackend>);
static_assert(!std::is_convertible_v<carousel::cpu::Backend, AnyBackend>);  // wrapping needs a device name

// ---- helpers
// ---------------------------------------------------------------------------------------------------------

// Runs the jobs through one StepBatcher over a Pipeline on `backend`; the tickets, in submission order. Half of the
// jobs join after two iterations, so batches change while others run.
template <class Backend>
std::vector<carousel::Ticket<Job>> run_all(const Backend& backend, const carousel::diffusion::SchedulerConfig& config,
                                           std::vector<Job> jobs, std::size_t max_batch = 4) {
  using Pipeline = carousel::diffusion::Pipeline<Backend>;
  Pipeline pipeline(backend, config);
  carousel::StepBatcher<Pipeline, Job> batcher{pipeline, {.max_batch_size = max_batch}};
  std::vector<carousel::Ticket<Job>> tickets;
  const std::size_t early = (jobs.size() + 1) / 2;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (i == early) {
      batcher.step_once();
      batcher.step_once();
    }
    pipeline.validate(jobs[i]);
    tickets.push_back(batcher.submit(std::move(jobs[i])));
  }
  while (batcher.step_once()) {
  }
  return tickets;
}

// The exception nested in a ticket's model_error, rethrown.
void rethrow_cause(carousel::Ticket<Job>& t) {
  try {
    t.get();
  } catch (const carousel::Error& e) {
    REQUIRE(e.code() == carousel::Errc::model_error);
    std::rethrow_if_nested(e);
    FAIL("model_error without a nested exception");
  }
  FAIL("the ticket did not fail");
}

}  // namespace

TEST_CASE("AnyBackend.Tensor") {
  const AnyBackend::Tensor t({2, 3, 4}, std::vector<float>(24, 1.0f));
  CHECK(t.rank() == 3);
  CHECK(t.numel() == 24);
  CHECK(t.dim(0) == 2);
  CHECK(t.dim(-1) == 4);
  CHECK(t.dim(-3) == 2);
  CHECK_THROWS_AS(static_cast<void>(t.dim(3)), std::out_of_range);
  CHECK_THROWS_AS(static_cast<void>(t.dim(-4)), std::out_of_range);
  CHECK_THROWS_AS(AnyBackend::Tensor({2, 3}, std::vector<float>(5)), std::invalid_argument);
  CHECK_THROWS_AS(AnyBackend::Tensor({-1, -2}, std::vector<float>(2)), std::invalid_argument);
  CHECK(AnyBackend::Tensor().numel() == 0);
}

TEST_CASE("AnyBackend.Cpu.ByteIdentical") {
  const auto folder = carousel::checkpoint::DiffusersFolder::open(tiny);
  const carousel::cpu::Backend direct(folder);
  const AnyBackend any("cpu", carousel::cpu::Backend(folder));
  CHECK(any.device() == "cpu");
  CHECK(any.latent_channels() == direct.latent_channels());
  CHECK(any.vae_scale_factor() == direct.vae_scale_factor());
  CHECK(any.tokenizer().encode("a red circle") == direct.tokenizer().encode("a red circle"));

  // The sd-tiny cases of the diffusers fixture, plus jobs covering every sampler, no guidance and eta.
  std::vector<Job> jobs;
  std::vector<std::vector<std::uint8_t>> diffusers;
  const auto cases = carousel::test::pipeline_cases(data_dir);
  for (const auto& c : cases.at("sd-tiny")) {
    jobs.push_back(carousel::test::job_of_case(c));
    diffusers.push_back(carousel::test::rgb_of_case(c));
  }
  REQUIRE(jobs.size() >= 3);
  const SamplerKind kinds[] = {SamplerKind::ddim, SamplerKind::ddpm, SamplerKind::euler, SamplerKind::dpm_solver};
  for (int i = 0; i < 4; ++i) {
    Job j;
    j.prompt = "shape " + std::to_string(i);
    j.negative_prompt = i % 2 ? "blue" : "";
    j.width = 32;
    j.height = i == 3 ? 16 : 32;
    j.steps = 3 + i;
    j.sampler = kinds[i];
    j.guidance_scale = i == 2 ? 1.0f : 2.0f + static_cast<float>(i);
    j.eta = i == 0 ? 0.6f : 0.0f;
    j.seed = 500 + static_cast<std::uint64_t>(i);
    jobs.push_back(j);
  }

  const auto config = carousel::diffusion::pipeline_scheduler_config(folder);
  auto expected = run_all(direct, config, jobs);
  auto erased = run_all(any, config, jobs);
  REQUIRE(erased.size() == jobs.size());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    CAPTURE(i);
    const Job want = expected[i].get();
    const Job got = erased[i].get();
    CHECK(got.width == want.width);
    CHECK(got.height == want.height);
    CHECK(got.image.rgb == want.image.rgb);  // bitwise
    if (i < diffusers.size()) {
      // The independent reference: diffusers' image, within the Pipeline parity tolerance (1/255 for 99%).
      CHECK(carousel::test::fraction_off(got.image.rgb, diffusers[i]) <= carousel::test::parity_fraction);
    }
  }
}

TEST_CASE("AnyBackend.Cpu.ConcurrentCalls") {
  // cpu::Backend's calls are const and thread-safe; so are AnyBackend's over it (run under TSan in CI).
  const AnyBackend any("cpu", carousel::cpu::Backend(tiny));
  const std::vector<std::vector<std::int32_t>> ids{any.tokenizer().encode("a red circle"), any.tokenizer().encode("")};
  const auto reference = any.encode_text(ids);
  for (const int threads : {2, 4}) {
    CAPTURE(threads);
    std::vector<std::vector<float>> results(static_cast<std::size_t>(threads));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const auto embeddings = any.encode_text(ids);
        results[static_cast<std::size_t>(t)].assign(embeddings.values().begin(), embeddings.values().end());
      });
    }
    for (auto& th : pool)
      th.join();
    for (const auto& r : results)
      CHECK(r == std::vector<float>(reference.values().begin(), reference.values().end()));
  }
}

TEST_CASE("AnyBackend.Fake.Calls") {
  std::atomic<int> calls{0};
  const auto any = AnyBackend::make<FakeBackend>("fake", FakeFaults{}, &calls);
  const FakeBackend direct(FakeFaults{}, &calls);
  CHECK(any.device() == "fake");
  CHECK(static_cast<bool>(any));
  CHECK(any.latent_channels() == 2);
  CHECK(any.vae_scale_factor() == 4);
  CHECK(any.tokenizer().encode("abc") == std::vector<std::int32_t>(4, 3));

  const std::vector<std::vector<std::int32_t>> ids{{1, 2, 3, 4}, {5, 6, 7, 8}};
  const auto context = any.encode_text(ids);
  CHECK(context.shape() == std::vector<std::int64_t>{2, 4, 3});
  CHECK(std::vector<float>(context.values().begin(), context.values().end()) == direct.encode_text(ids).data);

  std::vector<float> sample(2 * 2 * 3 * 5);
  for (std::size_t i = 0; i < sample.size(); ++i)
    sample[i] = static_cast<float>(i) * 0.25f;
  const std::vector<float> timesteps{999.0f, 1.0f};
  const auto out = any.unet(AnyBackend::Tensor({2, 2, 3, 5}, sample), timesteps, context);
  const auto want = direct.unet(FakeTensor({2, 2, 3, 5}, sample), timesteps, direct.encode_text(ids));
  CHECK(out.shape() == want.extents);
  CHECK(std::vector<float>(out.values().begin(), out.values().end()) == want.data);
  CHECK(calls == 2);

  const auto images = any.decode(out);
  CHECK(images.shape() == std::vector<std::int64_t>{2, 3, 12, 20});

  SUBCASE("copies share the one backend") {
    const AnyBackend copy = any;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the subject
    static_cast<void>(copy.unet(AnyBackend::Tensor({2, 2, 3, 5}, sample), timesteps, context));
    CHECK(calls == 3);
    CHECK(copy.device() == "fake");
  }
  SUBCASE("an empty AnyBackend refuses calls") {
    AnyBackend moved = any;
    const AnyBackend from = std::move(moved);
    CHECK(static_cast<bool>(from));
    const AnyBackend none;
    CHECK_FALSE(static_cast<bool>(none));
    CHECK(none.device().empty());
    CHECK_THROWS_AS(static_cast<void>(none.latent_channels()), std::logic_error);
    CHECK_THROWS_AS(static_cast<void>(none.tokenizer()), std::logic_error);
  }
}

TEST_CASE("AnyBackend.Errors.Propagate") {
  std::atomic<int> calls{0};
  const std::vector<std::vector<std::int32_t>> ids{{1, 2, 3, 4}};
  const AnyBackend::Tensor latents({1, 2, 2, 2}, std::vector<float>(8, 0.5f));

  SUBCASE("from each call, as the backend's own exception type and message") {
    const auto tok = AnyBackend::make<FakeBackend>("fake", FakeFaults{}, &calls);
    CHECK_THROWS_WITH_AS(static_cast<void>(tok.tokenizer().encode("untokenizable")), "fake tokenizer: cannot encode",
                         FakeError);
    const auto enc = AnyBackend::make<FakeBackend>("fake", FakeFaults{.encode_text = true}, &calls);
    CHECK_THROWS_WITH_AS(static_cast<void>(enc.encode_text(ids)), "fake encode_text: out of cheese", FakeError);
    const auto dec = AnyBackend::make<FakeBackend>("fake", FakeFaults{.decode = true}, &calls);
    CHECK_THROWS_WITH_AS(static_cast<void>(dec.decode(latents)), "fake decode: no VAE today", FakeError);
    const auto unet = AnyBackend::make<FakeBackend>("fake", FakeFaults{.unet_after = 0}, &calls);
    CHECK_THROWS_WITH_AS(static_cast<void>(unet.unet(latents, std::vector<float>{1.0f}, unet.encode_text(ids))),
                         "fake unet: call 0", FakeError);
  }

  SUBCASE("from the backend's constructor") {
    struct Unloadable : FakeBackend {
      explicit Unloadable(std::atomic<int>* c) : FakeBackend(FakeFaults{}, c) {
        throw FakeError("unloadable: missing unet/config.json");
      }
    };
    CHECK_THROWS_WITH_AS(static_cast<void>(AnyBackend::make<Unloadable>("fake", &calls)),
                         "unloadable: missing unet/config.json", FakeError);
  }

  SUBCASE("through a Pipeline and a StepBatcher: the same failures as the backend itself gives") {
    // The UNet fails from its 3rd call on: the first jobs' early steps succeed, then every request fails with
    // model_error wrapping the fake's exception, exactly as with Pipeline<FakeBackend>.
    std::vector<Job> jobs;
    for (int i = 0; i < 3; ++i) {
      Job j;
      j.prompt = "job " + std::to_string(i);
      j.width = j.height = 8;
      j.steps = 4;
      j.guidance_scale = i == 0 ? 1.0f : 3.0f;
      j.seed = static_cast<std::uint64_t>(i);
      jobs.push_back(j);
    }
    const carousel::diffusion::SchedulerConfig config;
    std::atomic<int> direct_calls{0};
    const FakeBackend direct(FakeFaults{.unet_after = 2}, &direct_calls);
    auto want = run_all(direct, config, jobs, 2);
    const auto any = AnyBackend::make<FakeBackend>("fake", FakeFaults{.unet_after = 2}, &calls);
    auto got = run_all(any, config, jobs, 2);
    CHECK(calls.load() == direct_calls.load());
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      CAPTURE(i);
      std::string want_what, got_what;
      try {
        rethrow_cause(want[i]);
      } catch (const FakeError& e) {
        want_what = e.what();
      }
      try {
        rethrow_cause(got[i]);
      } catch (const FakeError& e) {
        got_what = e.what();
      }
      CHECK(got_what.starts_with("fake unet: call "));
      CHECK(got_what == want_what);
    }
  }

  SUBCASE("a working fake gives the same images through AnyBackend") {
    Job j;
    j.prompt = "fine";
    j.width = j.height = 8;
    j.steps = 3;
    j.guidance_scale = 2.0f;
    j.seed = 9;
    const carousel::diffusion::SchedulerConfig config;
    std::atomic<int> direct_calls{0};
    const FakeBackend direct(FakeFaults{}, &direct_calls);
    const auto any = AnyBackend::make<FakeBackend>("fake", FakeFaults{}, &calls);
    auto want = run_all(direct, config, {j, j});
    auto got = run_all(any, config, {j, j});
    CHECK(got[0].get().image.rgb == want[0].get().image.rgb);
    CHECK(got[1].get().image.rgb == want[1].get().image.rgb);
  }
}
