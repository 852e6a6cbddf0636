#include "carousel/diffusion/sampler.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "carousel/diffusion/guidance.hpp"
#include "carousel/diffusion/rng.hpp"
#include "carousel/diffusion/schedule.hpp"
#include "carousel/diffusion/update.hpp"
#include "fixtures.hpp"

namespace cd = carousel::diffusion;
namespace ct = carousel::diffusion::test;

namespace {

// One request of tools/make_sampler_fixtures.py's trajectory protocol: latents from generator g (seed s), a
// synthetic model drawing from generator m (seed s + 1000), the sampler's noise from g.
struct Request {
  const nlohmann::json* fixture = nullptr;
  cd::Sampler sampler;
  cd::TorchGenerator g;
  cd::TorchGenerator m;
  std::vector<float> x;
  std::size_t channels = 0;  // C of shape (1, C, ...); the model output doubles it for learned variance
  std::string variance_mode;
  std::vector<std::pair<std::size_t, std::vector<float>>> checkpoints;  // (step index, sample after that step)

  std::size_t numel() const { return x.size(); }

  // The synthetic model output for the current step (draws from m), computed from the scaled model input.
  std::vector<float> model_output() {
    const std::size_t n = numel();
    const bool doubled = variance_mode != "none";
    const std::vector<float> r = m.randn(doubled ? 2 * n : n);
    std::vector<float> input(n);
    cd::scale_model_input(x, sampler.model_input_divisor(), input);
    std::vector<float> out(r.size());
    for (std::size_t k = 0; k < n; ++k)
      out[k] = input[k] * 0.5f + r[k] * 0.5f;
    for (std::size_t k = n; k < r.size(); ++k)
      out[k] = variance_mode == "square" ? r[k] * r[k] : std::min(std::max(r[k], -1.0f), 1.0f);
    return out;
  }
};

// A string field of a fixture config, or `fallback` when absent or null.
std::string string_or(const nlohmann::json& config, const char* key, const char* fallback) {
  const auto it = config.find(key);
  return it == config.end() || it->is_null() ? fallback : it->get<std::string>();
}

cd::SamplerKind kind_of(const nlohmann::json& c) {
  const auto name = c.at("sampler").get<std::string>();
  if (name == "ddim") return cd::SamplerKind::ddim;
  if (name == "euler") return cd::SamplerKind::euler;
  if (name == "dpm") return cd::SamplerKind::dpm_solver;
  return cd::SamplerKind::ddpm;
}

Request make_request(const nlohmann::json& c) {
  auto schedule = std::make_shared<const cd::NoiseSchedule>(cd::SchedulerConfig::from_json(c.at("config")));
  const cd::DdimOptions options{c.at("eta").get<float>(), c.at("use_clipped_model_output").get<bool>()};
  const auto seed = c.at("seed").get<std::uint64_t>();
  Request r{.fixture = &c,
            .sampler = cd::Sampler{kind_of(c), schedule, options},
            .g = cd::TorchGenerator{seed},
            .m = cd::TorchGenerator{seed + 1000},
            .x = {},
            .channels = 0,
            .variance_mode = {},
            .checkpoints = {}};
  if (c.at("custom_timesteps").is_null()) {
    r.sampler.set_timesteps(c.at("num_inference_steps").get<std::int64_t>());
  } else {
    r.sampler.set_timesteps(c.at("custom_timesteps").get<std::vector<std::int64_t>>());
  }
  const auto shape = c.at("shape").get<std::vector<std::size_t>>();
  std::size_t n = 1;
  for (std::size_t d : shape)
    n *= d;
  r.channels = shape.at(1);
  r.variance_mode = c.at("variance_mode").get<std::string>();
  r.x = r.g.randn(n);
  for (float& v : r.x)
    v = v * r.sampler.init_noise_sigma();
  for (const auto& p : c.at("checkpoints"))
    r.checkpoints.emplace_back(p.at("step").get<std::size_t>(), ct::from_hex(p.at("sample").get<std::string>()));
  return r;
}

// Compares the request's sample with the fixture after `step` steps when the fixture recorded that step, then
// continues from the fixture's sample (teacher forcing), so that each comparison measures the steps since the
// previous checkpoint rather than the whole history. `single` collects comparisons over exactly one step,
// `multi` those over several.
struct Tally {
  std::size_t compared = 0;
  std::size_t values = 0;
  std::size_t bit_exact = 0;
  double worst = 0.0;
};

bool compare_checkpoint(Request& r, std::size_t step, Tally& tally, double tolerance) {
  for (const auto& [index, expected] : r.checkpoints) {
    if (index != step) continue;
    REQUIRE(expected.size() == r.x.size());
    const double err = ct::max_relative_error(r.x, expected, 1e-3);
    CAPTURE(step);
    CHECK(err <= tolerance);
    ++tally.compared;
    tally.values += expected.size();
    tally.bit_exact += expected.size() - ct::count_bit_mismatches(r.x, expected);
    tally.worst = std::max(tally.worst, err);
    r.x = expected;
    return true;
  }
  return false;
}

}  // namespace

// Which float32 operations of a fixture case torch performs with non-IEEE-exact library functions. The fixture
// generator makes torch's scalar `** 0.5` IEEE-exact; what remains is torch's vector exp/log/sqrt (MKL / SLEEF),
// used by the sigmoid and zero-SNR schedules, by the fixed_small_log / learned / learned_range variances, and
// torch.quantile's rank arithmetic in dynamic thresholding; numpy's float32 log in Euler's Karras timesteps;
// torch's scalar log/exp in DPM-Solver++'s lambdas.
enum class Exactness { bit_exact, library_ulps, rescaled_schedule };

bool karras_euler(const nlohmann::json& c) {
  return c.at("sampler").get<std::string>() == "euler" && c.at("config").value("use_karras_sigmas", false);
}

Exactness exactness_of(const nlohmann::json& c) {
  const auto& config = c.at("config");
  if (karras_euler(c) || c.at("sampler").get<std::string>() == "dpm") return Exactness::library_ulps;
  if (config.value("rescale_betas_zero_snr", false)) return Exactness::rescaled_schedule;
  const std::string variance = string_or(config, "variance_type", "fixed_small");
  const bool ddpm = c.at("sampler").get<std::string>() == "ddpm";
  if (string_or(config, "beta_schedule", "linear") == "sigmoid" || config.value("thresholding", false) ||
      (ddpm && variance != "fixed_small" && variance != "fixed_large"))
    return Exactness::library_ulps;
  return Exactness::bit_exact;
}

// Every fixture trajectory (DDPM / DDIM over schedules, spacings, prediction and variance types, eta, clipping,
// thresholding, zero SNR, custom timesteps, 1..1000 steps) run one request at a time through Sampler::step, with
// timesteps compared exactly. Samples are compared per checkpoint after teacher forcing (see compare_checkpoint):
// where torch uses only IEEE operations the whole trajectory must be bit-exact (81,670 values). Otherwise torch's
// last-ulp library differences are amplified by the cancellation inside a step (x0 = (x - sqrt(b) out) / sqrt(a)
// at small a, then mixed back with x): one-step outputs must agree to 5e-5 relative (relative to
// max(|ref|, 1e-3)); zero-SNR schedules, whose alphas_cumprod differs from torch's by up to 5e-5 (schedule.cpp),
// to 5e-4; several steps between sparse checkpoints to 1e-3.
TEST_CASE("Samplers.Trajectories.MatchDiffusers") {
  const auto fixture = ct::load_fixture("trajectories.json");
  Tally exact;
  Tally single;
  Tally rescaled;
  for (const auto& c : fixture.at("cases")) {
    CAPTURE(c.at("sampler").get<std::string>());
    CAPTURE(c.at("config").dump());
    CAPTURE(c.at("num_inference_steps").dump());
    CAPTURE(c.at("eta").get<double>());
    Request r = make_request(c);
    const auto expected_ts = c.at("timesteps").get<std::vector<double>>();
    const std::vector<double> ts(r.sampler.timesteps().begin(), r.sampler.timesteps().end());
    REQUIRE(ts.size() == expected_ts.size());
    if (karras_euler(c)) {
      // Karras timesteps pass through numpy's float32 log (its own SIMD approximation, not glibc's logf).
      for (std::size_t i = 0; i < ts.size(); ++i)
        CHECK(ts[i] == doctest::Approx(expected_ts[i]).epsilon(1e-6));
    } else {
      CHECK(ts == expected_ts);
    }
    const Exactness kind = exactness_of(c);
    bool previous_compared = true;  // the initial latents are bit-exact (rng.cpp)
    for (std::size_t step = 0; !r.sampler.done(); ++step) {
      const std::vector<float> out = r.model_output();
      r.sampler.step(out, r.x, r.g);
      if (kind == Exactness::bit_exact) {
        static_cast<void>(compare_checkpoint(r, step, exact, 0.0));
      } else if (previous_compared) {
        previous_compared = compare_checkpoint(r, step, kind == Exactness::rescaled_schedule ? rescaled : single,
                                               kind == Exactness::rescaled_schedule ? 5e-4 : 5e-5);
      } else {
        previous_compared = compare_checkpoint(r, step, kind == Exactness::rescaled_schedule ? rescaled : single, 1e-3);
      }
    }
  }
  MESSAGE("bit-exact class: " << exact.compared << " checkpoints, " << exact.values << " values, " << exact.bit_exact
                              << " bit-exact");
  MESSAGE("library-ulp class: " << single.compared << " checkpoints, " << single.bit_exact << " of " << single.values
                                << " bit-exact, worst relative error " << single.worst);
  MESSAGE("zero-SNR class: " << rescaled.compared << " checkpoints, " << rescaled.bit_exact << " of " << rescaled.values
                             << " bit-exact, worst relative error " << rescaled.worst);
  CHECK(exact.compared > 1000);
  CHECK(exact.bit_exact == exact.values);
}

// Stock diffusers (torch's own MKL sqrt in the coefficients) over SD-1.5-style runs with every step recorded,
// free-running: torch's sqrt differs from IEEE sqrt by one ulp for about a fifth of the coefficients, and the
// trajectories agree to 1e-3 relative (relative to max(|ref|, 1e-3)) over up to 61 steps.
TEST_CASE("Samplers.Trajectories.MatchStockDiffusers") {
  const auto fixture = ct::load_fixture("trajectories_torch.json");
  double worst = 0.0;
  for (const auto& c : fixture.at("cases")) {
    CAPTURE(c.at("sampler").get<std::string>());
    CAPTURE(c.at("config").dump());
    Request r = make_request(c);
    for (std::size_t step = 0; !r.sampler.done(); ++step) {
      const std::vector<float> out = r.model_output();
      r.sampler.step(out, r.x, r.g);
      const auto& expected = r.checkpoints.at(step).second;
      const double err = ct::max_relative_error(r.x, expected, 1e-3);
      CAPTURE(step);
      CHECK(err <= 1e-3);
      worst = std::max(worst, err);
    }
  }
  MESSAGE("stock diffusers: worst relative error " << worst);
}

// Requests with different samplers, configurations, step counts, eta, guidance and seeds are stepped together through
// the batched coefficient kernel, joining and leaving at different iterations; each must follow exactly (bit for bit)
// the trajectory it follows alone (every step compared), which Samplers.Trajectories matches against diffusers.
TEST_CASE("Samplers.Batch.HeterogeneousEqualsAlone") {
  const auto fixture = ct::load_fixture("trajectories.json");
  const auto& cases = fixture.at("cases");
  // Same-shape (1,4,4,4) cases, one per distinct (sampler, variance type, eta, clip, threshold, step count):
  // DDPM with every variance type, DDIM with eta 0 / 0.5 / 1, clipping, thresholding, zero SNR, custom timesteps,
  // 2 to 1000 steps.
  std::vector<std::size_t> picks;
  std::vector<std::string> seen;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    if (c.at("shape").get<std::vector<std::size_t>>() != std::vector<std::size_t>{1, 4, 4, 4}) continue;
    const auto& config = c.at("config");
    const std::string key = c.at("sampler").get<std::string>() + string_or(config, "variance_type", "") +
                            c.at("eta").dump() + (config.value("clip_sample", false) ? "clip" : "") +
                            (config.value("thresholding", false) ? "threshold" : "") +
                            c.at("num_inference_steps").dump();
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    seen.push_back(key);
    picks.push_back(i);
  }
  REQUIRE(picks.size() >= 20);

  // Per-request classifier-free guidance: the "UNet" gives cond = the synthetic model output and
  // uncond = 0.75 * cond; scales and rescales differ per request (scale 1 means no guidance).
  const std::size_t n = 64;
  auto guidance_of = [](std::size_t k) {
    return cd::GuidanceParams{1.0f + 1.5f * static_cast<float>(k % 5), k % 3 == 0 ? 0.7f : 0.0f};
  };
  auto uncond_of = [n](const std::vector<float>& cond) {
    std::vector<float> u(n);
    for (std::size_t j = 0; j < n; ++j)
      u[j] = 0.75f * cond[j];
    return u;
  };

  // Alone: every step's sample, concatenated.
  std::vector<std::vector<float>> alone;
  for (std::size_t k = 0; k < picks.size(); ++k) {
    Request r = make_request(cases[picks[k]]);
    std::vector<float> history;
    while (!r.sampler.done()) {
      std::vector<float> out = r.model_output();
      const std::vector<float> uncond = uncond_of(out);
      cd::combine_guidance(uncond, std::span<const float>(out).first(n), guidance_of(k), std::span(out).first(n));
      r.sampler.step(out, r.x, r.g);
      history.insert(history.end(), r.x.begin(), r.x.end());
    }
    alone.push_back(std::move(history));
  }

  // Together: at most 6 in flight; waiting requests join whenever a slot is free, so requests enter and leave at
  // different iterations and each batch mixes requests at different steps.
  std::deque<std::size_t> waiting(picks.size());
  for (std::size_t k = 0; k < picks.size(); ++k)
    waiting[k] = k;
  std::vector<std::pair<std::size_t, Request>> running;
  std::vector<std::vector<float>> together(picks.size());
  std::size_t max_batch = 0;
  while (!waiting.empty() || !running.empty()) {
    while (!waiting.empty() && running.size() < 6) {
      running.emplace_back(waiting.front(), make_request(cases[picks[waiting.front()]]));
      waiting.pop_front();
    }
    if (running.empty()) continue;
    max_batch = std::max(max_batch, running.size());
    // The "UNet" call: [uncond..., cond...] for guidance, plus the variance halves of learned-variance requests;
    // the update reads model outputs with stride 2n so that those requests can share the batch.
    const std::size_t count = running.size();
    std::vector<float> unet(2 * count * n);
    std::vector<float> out(count * 2 * n, 0.0f);
    std::vector<cd::GuidanceParams> params;
    std::vector<float> noise(count * n, 0.0f);
    std::vector<float> samples(count * n);
    std::vector<cd::StepCoefficients> coeffs;
    std::vector<float*> history(count, nullptr);
    for (std::size_t b = 0; b < count; ++b) {
      Request& r = running[b].second;
      const std::vector<float> o = r.model_output();
      const std::vector<float> uncond = uncond_of(o);
      std::copy(uncond.begin(), uncond.end(), unet.begin() + static_cast<std::ptrdiff_t>(b * n));
      std::copy_n(o.begin(), n, unet.begin() + static_cast<std::ptrdiff_t>((count + b) * n));
      std::copy(o.begin(), o.end(), out.begin() + static_cast<std::ptrdiff_t>(b * 2 * n));
      params.push_back(guidance_of(running[b].first));
      std::copy(r.x.begin(), r.x.end(), samples.begin() + static_cast<std::ptrdiff_t>(b * n));
      coeffs.push_back(r.sampler.coefficients());
      if (coeffs.back().uses_history()) history[b] = r.sampler.history(n).data();
      if (coeffs.back().draws_noise()) r.g.randn(std::span<float>(noise).subspan(b * n, n));
    }
    std::vector<float> guided(count * n);
    cd::combine_guidance_batch(unet, params, n, guided);
    for (std::size_t b = 0; b < count; ++b)
      std::copy_n(guided.begin() + static_cast<std::ptrdiff_t>(b * n), n,
                  out.begin() + static_cast<std::ptrdiff_t>(b * 2 * n));
    cd::apply_update(coeffs, cd::UpdateBatch{samples, out, noise, n, history});
    for (std::size_t b = 0; b < running.size(); ++b) {
      Request& r = running[b].second;
      std::copy_n(samples.begin() + static_cast<std::ptrdiff_t>(b * n), n, r.x.begin());
      r.sampler.advance();
      together[running[b].first].insert(together[running[b].first].end(), r.x.begin(), r.x.end());
    }
    for (auto it = running.begin(); it != running.end();) {
      if (it->second.sampler.done()) {
        it = running.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (std::size_t k = 0; k < picks.size(); ++k) {
    CAPTURE(k);
    REQUIRE(together[k].size() == alone[k].size());
    CHECK(ct::count_bit_mismatches(together[k], alone[k]) == 0);
  }
  CHECK(max_batch == 6);  // the batch really was full and heterogeneous
}

TEST_CASE("Samplers.Guidance.MatchDiffusers") {
  const auto fixture = ct::load_fixture("guidance.json");
  for (const auto& c : fixture.at("cases")) {
    const cd::GuidanceParams params{c.at("guidance_scale").get<float>(), c.at("guidance_rescale").get<float>()};
    CAPTURE(params.guidance_scale);
    CAPTURE(params.guidance_rescale);
    const std::vector<float> uncond = ct::from_hex(c.at("uncond").get<std::string>());
    const std::vector<float> cond = ct::from_hex(c.at("cond").get<std::string>());
    const std::vector<float> expected = ct::from_hex(c.at("out").get<std::string>());
    std::vector<float> out(expected.size());
    cd::combine_guidance(uncond, cond, params, out);
    CHECK(ct::max_relative_error(out, expected, 1e-3) <= 1e-6);
    if (params.guidance_rescale == 0.0f) CHECK(ct::count_bit_mismatches(out, expected) == 0);
  }
  SUBCASE("the batched form takes [uncond..., cond...] with per-sample parameters") {
    const auto& cases = fixture.at("cases");
    std::vector<float> batch;
    std::vector<cd::GuidanceParams> params;
    std::vector<float> expected;
    for (const char* key : {"uncond", "cond"})
      for (const auto& c : cases) {
        const auto v = ct::from_hex(c.at(key).get<std::string>());
        batch.insert(batch.end(), v.begin(), v.end());
      }
    for (const auto& c : cases) {
      params.push_back({c.at("guidance_scale").get<float>(), c.at("guidance_rescale").get<float>()});
      const auto v = ct::from_hex(c.at("out").get<std::string>());
      expected.insert(expected.end(), v.begin(), v.end());
    }
    std::vector<float> out(expected.size());
    cd::combine_guidance_batch(batch, params, 64, out);
    CHECK(ct::max_relative_error(out, expected, 1e-3) <= 1e-6);
  }
}

TEST_CASE("Samplers.Errors.NameTheField") {
  auto schedule = std::make_shared<const cd::NoiseSchedule>(cd::SchedulerConfig{});
  auto message_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  };
  CHECK(message_of([&] { cd::Sampler(cd::SamplerKind::ddim, schedule, {.eta = -0.5f}); }).find("`eta`") !=
        std::string::npos);
  CHECK(message_of([&] { cd::Sampler(cd::SamplerKind::ddim, nullptr); }).find("`schedule`") != std::string::npos);
  cd::Sampler ddim{cd::SamplerKind::ddim, schedule};
  CHECK(message_of([&] { ddim.set_timesteps(1001); }).find("`num_inference_steps`") != std::string::npos);
  CHECK_THROWS_AS(static_cast<void>(ddim.current_timestep()), std::logic_error);
  const std::vector<std::int64_t> custom{500, 100};
  CHECK(message_of([&] { ddim.set_timesteps(custom); }).find("`timesteps`") != std::string::npos);
  cd::SchedulerConfig offset;
  offset.steps_offset = 1;
  cd::Sampler leading{cd::SamplerKind::ddpm, std::make_shared<const cd::NoiseSchedule>(offset)};
  CHECK_THROWS_AS(leading.set_timesteps(1000), std::out_of_range);  // 999 * 1 + 1 = 1000 is past the schedule
  SUBCASE("apply_update checks its tensors") {
    std::vector<cd::StepCoefficients> coeffs(2);
    coeffs[1].noise = cd::NoiseScale::fixed;
    std::vector<float> samples(8), out(8), noise(3);
    CHECK(message_of([&] { cd::apply_update(coeffs, {samples, out, noise, 4}); }).find("`noise`") != std::string::npos);
    CHECK(message_of([&] {
            cd::apply_update(coeffs, {samples, std::span<const float>(out).first(6), {}, 4});
          }).find("`model_output`") != std::string::npos);
    std::vector<cd::StepCoefficients> dpm(1);
    dpm[0].form = cd::UpdateForm::dpm_solver;
    CHECK(message_of([&] {
            cd::apply_update(dpm, {std::span(samples).first(4), std::span(out).first(4), {}, 4});
          }).find("`history`") != std::string::npos);
    coeffs[0].noise = cd::NoiseScale::learned;
    noise.resize(8);
    CHECK(message_of([&] {
            cd::apply_update(coeffs, {samples, out, noise, 4});
          }).find("`model_output`") != std::string::npos);
  }
  SUBCASE("Euler and DPM-Solver++ state") {
    cd::Sampler euler{cd::SamplerKind::euler, schedule};
    CHECK(message_of([&] { euler.set_timesteps(custom); }).find("`timesteps`") != std::string::npos);
    euler.set_timesteps(10);
    CHECK(euler.init_noise_sigma() > 1.0f);  // the largest sigma (linspace spacing)
    CHECK(euler.model_input_divisor() > 1.0f);
    cd::Sampler dpm{cd::SamplerKind::dpm_solver, schedule};
    dpm.set_timesteps(10);
    CHECK(dpm.init_noise_sigma() == 1.0f);
    CHECK(dpm.model_input_divisor() == 1.0f);
    CHECK(dpm.history(16).size() == 16);
    CHECK(message_of([&] { static_cast<void>(dpm.history(32)); }).find("`history`") != std::string::npos);
  }
  SUBCASE("a finished sampler refuses another step") {
    cd::Sampler s{cd::SamplerKind::ddim, schedule};
    s.set_timesteps(1);
    std::vector<float> x(16, 0.5f), out(16, 0.1f);
    cd::TorchGenerator g{0};
    s.step(out, x, g);
    CHECK(s.done());
    CHECK_THROWS_AS(s.step(out, x, g), std::logic_error);
  }
}
