#include "carousel/diffusion/schedule.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "carousel/diffusion/scheduler_config.hpp"
#include "carousel/diffusion/timesteps.hpp"
#include "fixtures.hpp"

namespace cd = carousel::diffusion;
namespace ct = carousel::diffusion::test;

namespace {

std::string data_path(const char* name) {
  return std::string(CAROUSEL_TEST_DATA_DIR) + "/diffusion/" + name;
}

// Checks that `mutate` applied to an otherwise valid JSON config makes from_json throw naming `field`.
void check_rejected(const char* field, const nlohmann::json& patch) {
  nlohmann::json j = {{"beta_schedule", "linear"}};
  j.update(patch);
  CAPTURE(j.dump());
  try {
    static_cast<void>(cd::SchedulerConfig::from_json(j));
    FAIL("accepted an invalid config");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(std::string("`") + field + "`") != std::string::npos);
  }
}

}  // namespace

// Schedules built from torch.linspace, float32 products and cumprod, or double-precision formulas are bit-exact.
// torch's float32 sqrt and exp on x86-64 come from MKL / SLEEF and are not correctly rounded (about 20% of sqrt
// results differ by one ulp from IEEE sqrt), so schedules that use them (zero-SNR rescaling, sigmoid) cannot be
// bit-exact. (With torch's sqrt values substituted the same float32 operations reproduce diffusers bit for bit.)
// Their betas are checked to 8e-6 absolute (beta = 1 - abar_i / abar_{i-1} turns a tiny relative error of a
// near-zero abar into an absolute error of beta) and alphas_cumprod to 5e-5 relative: the rescale subtracts s_T from
// sqrt(abar), which amplifies the one-ulp sqrt differences where s approaches s_T.
TEST_CASE("Schedule.AlphasCumprod.MatchTorch") {
  const auto fixture = ct::load_fixture("schedules.json");
  std::size_t exact_cases = 0;
  for (const auto& c : fixture.at("cases")) {
    const cd::SchedulerConfig config = cd::SchedulerConfig::from_json(c.at("config"));
    const cd::NoiseSchedule schedule{config};
    CAPTURE(c.at("config").dump());
    const std::vector<float> betas = ct::from_hex(c.at("betas").get<std::string>());
    const std::vector<float> abar = ct::from_hex(c.at("alphas_cumprod").get<std::string>());
    REQUIRE(schedule.alphas_cumprod().size() == abar.size());
    const bool uses_torch_sqrt_or_exp =
        config.rescale_betas_zero_snr || (!config.trained_betas && config.beta_schedule == cd::BetaSchedule::sigmoid);
    if (uses_torch_sqrt_or_exp) {
      CHECK(ct::max_abs_error(schedule.betas(), betas) <= 8e-6);
      CHECK(ct::max_relative_error(schedule.alphas_cumprod(), abar, 1e-6) <= 5e-5);
    } else {
      ++exact_cases;
      CHECK(ct::count_bit_mismatches(schedule.betas(), betas) == 0);
      CHECK(ct::count_bit_mismatches(schedule.alphas_cumprod(), abar) == 0);
    }
  }
  CHECK(exact_cases == 9);
}

TEST_CASE("Schedule.AlphaCumprod.PythonIndexing") {
  const cd::NoiseSchedule schedule{cd::SchedulerConfig{}};
  CHECK(schedule.alpha_cumprod(-1) == schedule.alphas_cumprod().back());
  CHECK(schedule.alpha_cumprod(-1000) == schedule.alphas_cumprod().front());
  CHECK_THROWS_AS(static_cast<void>(schedule.alpha_cumprod(1000)), std::out_of_range);
  CHECK_THROWS_AS(static_cast<void>(schedule.alpha_cumprod(-1001)), std::out_of_range);
  CHECK(schedule.final_alpha_cumprod() == 1.0f);
}

TEST_CASE("Schedule.Timesteps.MatchDiffusers") {
  const auto fixture = ct::load_fixture("timesteps.json");
  for (const auto& c : fixture.at("cases")) {
    cd::SchedulerConfig config;
    config.num_train_timesteps = c.at("num_train_timesteps").get<std::int64_t>();
    const auto spacing = c.at("timestep_spacing").get<std::string>();
    config.timestep_spacing = spacing == "linspace"  ? cd::TimestepSpacing::linspace
                              : spacing == "leading" ? cd::TimestepSpacing::leading
                                                     : cd::TimestepSpacing::trailing;
    config.steps_offset = c.at("steps_offset").get<std::int64_t>();
    CAPTURE(spacing);
    CAPTURE(config.num_train_timesteps);
    CAPTURE(config.steps_offset);
    const auto& sums = c.at("checksums");
    for (std::int64_t n = 1; n <= config.num_train_timesteps; ++n) {
      CAPTURE(n);
      const std::vector<std::int64_t> ts = cd::make_timesteps(config, n);
      std::int64_t sum = 0;
      std::int64_t weighted = 0;
      for (std::size_t i = 0; i < ts.size(); ++i) {
        sum += ts[i];
        weighted += static_cast<std::int64_t>(i) * ts[i];
      }
      const std::vector<std::int64_t> got{static_cast<std::int64_t>(ts.size()), sum, weighted, ts.front(), ts.back()};
      REQUIRE(got == sums.at(static_cast<std::size_t>(n - 1)).get<std::vector<std::int64_t>>());
      if (const auto it = c.at("full").find(std::to_string(n)); it != c.at("full").end())
        REQUIRE(ts == it->get<std::vector<std::int64_t>>());
    }
  }
}

TEST_CASE("Schedule.Timesteps.TrailingQuirkAndErrors") {
  cd::SchedulerConfig config;
  config.timestep_spacing = cd::TimestepSpacing::trailing;
  SUBCASE("N = 61 yields 62 timesteps ending in -1, as numpy's float arange does") {
    const auto ts = cd::make_timesteps(config, 61);
    CHECK(ts.size() == 62);
    CHECK(ts.back() == -1);
  }
  SUBCASE("steps > T and 0 steps name num_inference_steps") {
    for (std::int64_t n : {std::int64_t{0}, std::int64_t{1001}}) {
      try {
        static_cast<void>(cd::make_timesteps(config, n));
        FAIL("accepted");
      } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("`num_inference_steps`") != std::string::npos);
      }
    }
  }
  SUBCASE("custom timesteps must descend and start below T") {
    const std::vector<std::int64_t> rising{1, 5};
    const std::vector<std::int64_t> too_high{1000, 5};
    CHECK_THROWS_AS(cd::validate_custom_timesteps(config, rising), std::invalid_argument);
    CHECK_THROWS_AS(cd::validate_custom_timesteps(config, too_high), std::invalid_argument);
  }
}

TEST_CASE("SchedulerConfig.Load") {
  SUBCASE("Stable Diffusion 1.5's scheduler_config.json") {
    const auto c = cd::SchedulerConfig::load(data_path("sd15_scheduler_config.json"));
    CHECK(c.class_name == "PNDMScheduler");
    CHECK(c.beta_schedule == cd::BetaSchedule::scaled_linear);
    CHECK(c.beta_start == 0.00085);
    CHECK(c.beta_end == 0.012);
    CHECK(c.steps_offset == 1);
    CHECK_FALSE(c.set_alpha_to_one);
    CHECK_FALSE(c.clip_sample);
    CHECK_FALSE(c.trained_betas.has_value());
    CHECK_FALSE(c.timestep_spacing.has_value());  // each scheduler's own default applies
    const cd::NoiseSchedule s{c};
    CHECK(s.alphas_cumprod()[0] == doctest::Approx(0.99915).epsilon(1e-6));
  }
  SUBCASE("a config saved by diffusers' DDIMScheduler.save_config round-trips every field") {
    const auto c = cd::SchedulerConfig::load(data_path("ddim_scheduler_config.json"));
    CHECK(c.class_name == "DDIMScheduler");
    CHECK(c.prediction_type == cd::PredictionType::epsilon);
    CHECK(c.dynamic_thresholding_ratio == 0.995);
    CHECK(c.sample_max_value == 1.0);
    CHECK(c.clip_sample_range == 1.0);
    CHECK_FALSE(c.rescale_betas_zero_snr);
  }
  SUBCASE("with_pipeline_defaults applies StableDiffusionPipeline's rewrite") {
    const cd::SchedulerConfig c = cd::SchedulerConfig{}.with_pipeline_defaults();
    CHECK(c.steps_offset == 1);
    CHECK_FALSE(c.clip_sample);
  }
  SUBCASE("a missing file names the file") {
    try {
      static_cast<void>(cd::SchedulerConfig::load(data_path("no_such_config.json")));
      FAIL("loaded a missing file");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()).find("no_such_config.json") != std::string::npos);
    }
  }
}

TEST_CASE("SchedulerConfig.Validation.NamesTheField") {
  check_rejected("beta_schedule", {{"beta_schedule", "cubic"}});
  check_rejected("prediction_type", {{"prediction_type", "noise"}});
  check_rejected("timestep_spacing", {{"timestep_spacing", "uniform"}});
  check_rejected("variance_type", {{"variance_type", "fixed_large_log"}});
  check_rejected("variance_type", {{"variance_type", "huge"}});
  check_rejected("num_train_timesteps", {{"num_train_timesteps", 0}});
  check_rejected("num_train_timesteps", {{"num_train_timesteps", "many"}});
  check_rejected("trained_betas", {{"num_train_timesteps", 3}, {"trained_betas", {0.1, 0.2}}});
  check_rejected("beta_end", {{"beta_end", 1.5}});
  check_rejected("dynamic_thresholding_ratio", {{"dynamic_thresholding_ratio", 0.0}});
  check_rejected("clip_sample_range", {{"clip_sample_range", -1.0}});
  check_rejected("sample_max_value", {{"sample_max_value", 0.5}});
  check_rejected("steps_offset", {{"steps_offset", -1}});
  check_rejected("final_sigmas_type", {{"final_sigmas_type", "one"}});
  check_rejected("interpolation_type", {{"interpolation_type", "log_linear"}});
  check_rejected("timestep_type", {{"timestep_type", "continuous"}});
  check_rejected("use_beta_sigmas", {{"use_beta_sigmas", true}});
  check_rejected("sigma_min", {{"sigma_min", "abc"}});
  check_rejected("sigma_max", {{"sigma_max", {1.0}}});
  check_rejected("num_train_timesteps", {{"num_train_timesteps", 4e12}});
  check_rejected("num_train_timesteps", {{"num_train_timesteps", 100'001}});
}

TEST_CASE("SchedulerConfig.Load.ErrorsNameFileAndField") {
  const auto path = std::filesystem::temp_directory_path() / "carousel_schedule_bad_scheduler_config.json";
  for (const auto& [field, text] : {std::pair{"sigma_min", R"({"sigma_min": "abc"})"},
                                    std::pair{"num_train_timesteps", R"({"num_train_timesteps": 4e12})"}}) {
    CAPTURE(text);
    std::ofstream(path) << text;
    try {
      static_cast<void>(cd::SchedulerConfig::load(path));
      FAIL("accepted an invalid config");
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      CHECK(what.find(std::string("`") + field + "`") != std::string::npos);
      CHECK(what.find(path.string()) != std::string::npos);
    }
  }
  std::filesystem::remove(path);
}
