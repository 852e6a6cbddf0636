#pragma once
/// \file
/// \brief `SchedulerConfig`: diffusers' `scheduler_config.json`, field by field, for the DDPM and DDIM schedulers.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/diffusers_folder.hpp"

namespace carousel::diffusion {

/// How betas are laid out over the training timesteps (`beta_schedule`).
enum class BetaSchedule { linear, scaled_linear, squaredcos_cap_v2, sigmoid, laplace };

/// DDPM's noise variance choice (`variance_type`). `fixed_large_log` is accepted by diffusers but produces NaN
/// there (it takes the square root of a log); `SchedulerConfig::validate` rejects it.
enum class VarianceType { fixed_small, fixed_small_log, fixed_large, fixed_large_log, learned, learned_range };

/// What the model predicts (`prediction_type`).
enum class PredictionType { epsilon, sample, v_prediction };

/// How inference timesteps are spread over the training range (`timestep_spacing`).
enum class TimestepSpacing { linspace, leading, trailing };

/// Euler's and DPM-Solver's last sigma (`final_sigmas_type`).
enum class FinalSigmas { zero, sigma_min };

/// DPM-Solver's second-order formula (`solver_type`).
enum class SolverType { midpoint, heun };

/// The scheduler configuration of a diffusers model folder (`scheduler/scheduler_config.json`). Field names and
/// defaults are diffusers' (DDPMScheduler / DDIMScheduler / EulerDiscreteScheduler / DPMSolverMultistepScheduler);
/// `set_alpha_to_one` is DDIM's, `variance_type` DDPM's, the sigma options Euler's and DPM-Solver's, the solver
/// options DPM-Solver's. Keys this struct does not model (e.g. `_diffusers_version`,
/// PNDM's `skip_prk_steps`) are ignored on load, as diffusers ignores unexpected keys; Euler / DPM-Solver options
/// this library does not implement are rejected when set to a non-default value. (A `lambda_min_clipped` of
/// -Infinity, as Python writes it, is not JSON: such files must spell it `null` or omit it.)
///
/// Thread-safety: a plain value type.
struct SchedulerConfig {
  std::string class_name;  ///< `_class_name`, e.g. "DDIMScheduler"; informational.
  /// The largest `num_train_timesteps` accepted (the schedule tables hold a few arrays of T doubles).
  static constexpr std::int64_t max_train_timesteps = 100'000;
  std::int64_t num_train_timesteps = 1000;  ///< T, the number of training timesteps (1..max_train_timesteps).
  double beta_start = 0.0001;               ///< First beta (linear / scaled_linear / sigmoid).
  double beta_end = 0.02;                   ///< Last beta.
  BetaSchedule beta_schedule = BetaSchedule::linear;
  std::optional<std::vector<double>> trained_betas;  ///< When set, used instead of `beta_schedule` (T values).
  VarianceType variance_type = VarianceType::fixed_small;
  bool clip_sample = true;  ///< Clamp the predicted x0 to +-`clip_sample_range`.
  PredictionType prediction_type = PredictionType::epsilon;
  bool thresholding = false;                  ///< Dynamic thresholding of x0 (takes precedence over clipping).
  double dynamic_thresholding_ratio = 0.995;  ///< Quantile of |x0| used as the threshold.
  double clip_sample_range = 1.0;
  double sample_max_value = 1.0;  ///< Upper bound of the dynamic threshold.
  /// Absent: the scheduler's own default: "leading" for DDPM/DDIM, "linspace" for Euler and DPM-Solver++.
  std::optional<TimestepSpacing> timestep_spacing;
  std::int64_t steps_offset = 0;                      ///< Added to "leading" timesteps.
  bool rescale_betas_zero_snr = false;                ///< Rescale betas to zero terminal SNR.
  bool set_alpha_to_one = true;                       ///< DDIM: alpha_cumprod before step 0 is 1 (else abar[0]).
  bool use_karras_sigmas = false;                     ///< Euler: Karras et al. (rho = 7) sigma spacing.
  FinalSigmas final_sigmas_type = FinalSigmas::zero;  ///< Euler: the sigma after the last step.
  std::optional<double> sigma_min;                    ///< Euler + Karras: overrides the smallest sigma.
  std::optional<double> sigma_max;                    ///< Euler + Karras: overrides the largest sigma.
  std::int64_t solver_order = 2;                      ///< DPM-Solver++: 1 or 2 (2M).
  SolverType solver_type = SolverType::midpoint;      ///< DPM-Solver++: second-order formula.
  bool lower_order_final = true;                      ///< DPM-Solver++: first order at the end of short runs.
  bool euler_at_final = false;                        ///< DPM-Solver++: first order at the last step.

  /// `timestep_spacing`, or `fallback` (the scheduler's default) when absent.
  [[nodiscard]] TimestepSpacing spacing_or(TimestepSpacing fallback) const noexcept {
    return timestep_spacing.value_or(fallback);
  }

  /// The rewrite `StableDiffusionPipeline.__init__` applies to a loaded scheduler: `steps_offset` 1 and
  /// `clip_sample` false. Returns the rewritten copy; this object is unchanged.
  [[nodiscard]] SchedulerConfig with_pipeline_defaults() const {
    SchedulerConfig out = *this;
    out.steps_offset = 1;
    out.clip_sample = false;
    return out;
  }

  /// Throws `std::invalid_argument` naming the offending field when the configuration cannot be sampled.
  void validate() const {
    auto fail = [](std::string_view field, const std::string& why) {
      throw std::invalid_argument("scheduler config: `" + std::string(field) + "` " + why);
    };
    if (num_train_timesteps < 1 || num_train_timesteps > max_train_timesteps)
      fail("num_train_timesteps",
           "must lie in 1.." + std::to_string(max_train_timesteps) + ", got " + std::to_string(num_train_timesteps));
    if (trained_betas) {
      if (static_cast<std::int64_t>(trained_betas->size()) != num_train_timesteps)
        fail("trained_betas", "has " + std::to_string(trained_betas->size()) + " values, num_train_timesteps is " +
                                  std::to_string(num_train_timesteps));
      for (double b : *trained_betas)
        if (!(b >= 0.0 && b < 1.0)) fail("trained_betas", "values must lie in [0, 1)");
    } else {
      if (!(beta_start >= 0.0 && beta_start < 1.0)) fail("beta_start", "must lie in [0, 1)");
      if (!(beta_end >= 0.0 && beta_end < 1.0)) fail("beta_end", "must lie in [0, 1)");
    }
    if (variance_type == VarianceType::fixed_large_log)
      fail("variance_type", "\"fixed_large_log\" is not supported (diffusers produces NaN with it)");
    if (!(dynamic_thresholding_ratio > 0.0 && dynamic_thresholding_ratio <= 1.0))
      fail("dynamic_thresholding_ratio", "must lie in (0, 1]");
    if (!(clip_sample_range > 0.0)) fail("clip_sample_range", "must be positive");
    if (!(sample_max_value >= 1.0)) fail("sample_max_value", "must be at least 1");
    if (steps_offset < 0) fail("steps_offset", "must not be negative");
    if (sigma_min && !(*sigma_min > 0.0)) fail("sigma_min", "must be positive");
    if (solver_order != 1 && solver_order != 2) fail("solver_order", "must be 1 or 2");
    if (sigma_max && !(*sigma_max > 0.0)) fail("sigma_max", "must be positive");
  }

  /// Reads a parsed `scheduler_config.json`. Missing keys keep their defaults; a `null` `trained_betas` means none.
  /// Throws `std::invalid_argument` naming the field for an unknown enumeration value or a value of the wrong type,
  /// and for an invalid configuration (see `validate`).
  [[nodiscard]] static SchedulerConfig from_json(const nlohmann::json& j) {
    if (!j.is_object()) throw std::invalid_argument("scheduler config: expected a JSON object");
    SchedulerConfig c;
    auto get = [&j](const char* key, auto& value) {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return;
      try {
        it->get_to(value);
      } catch (const nlohmann::json::exception& e) {
        throw std::invalid_argument(std::string("scheduler config: `") + key + "` has the wrong type: " + e.what());
      }
    };
    auto get_enum = [&get](const char* key, auto& value, auto parse) {
      std::string text;
      get(key, text);
      if (!text.empty()) value = parse(key, text);
    };
    get("_class_name", c.class_name);
    get("num_train_timesteps", c.num_train_timesteps);
    get("beta_start", c.beta_start);
    get("beta_end", c.beta_end);
    get_enum("beta_schedule", c.beta_schedule, parse_beta_schedule);
    if (const auto it = j.find("trained_betas"); it != j.end() && !it->is_null()) {
      std::vector<double> betas;
      get("trained_betas", betas);
      c.trained_betas = std::move(betas);
    }
    get_enum("variance_type", c.variance_type, parse_variance_type);
    get("clip_sample", c.clip_sample);
    get_enum("prediction_type", c.prediction_type, parse_prediction_type);
    get("thresholding", c.thresholding);
    get("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
    get("clip_sample_range", c.clip_sample_range);
    get("sample_max_value", c.sample_max_value);
    if (const auto it = j.find("timestep_spacing"); it != j.end() && !it->is_null()) {
      TimestepSpacing spacing = TimestepSpacing::leading;
      get_enum("timestep_spacing", spacing, parse_timestep_spacing);
      c.timestep_spacing = spacing;
    }
    get("steps_offset", c.steps_offset);
    get("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
    get("set_alpha_to_one", c.set_alpha_to_one);
    get("use_karras_sigmas", c.use_karras_sigmas);
    get_enum("final_sigmas_type", c.final_sigmas_type, parse_final_sigmas);
    for (auto [key, sigma] : {std::pair{"sigma_min", &c.sigma_min}, std::pair{"sigma_max", &c.sigma_max}}) {
      if (const auto it = j.find(key); it == j.end() || it->is_null()) continue;
      double value = 0.0;
      get(key, value);
      *sigma = value;
    }
    // Euler options with a single supported value: anything else is refused rather than silently ignored.
    auto require = [&get](const char* key, const auto& supported) {
      std::decay_t<decltype(supported)> value = supported;
      get(key, value);
      if (value != supported)
        throw std::invalid_argument(std::string("scheduler config: `") + key + "` is not supported with value " +
                                    nlohmann::json(value).dump());
    };
    require("interpolation_type", std::string("linear"));
    require("timestep_type", std::string("discrete"));
    require("use_exponential_sigmas", false);
    require("use_beta_sigmas", false);
    get("solver_order", c.solver_order);
    get_enum("solver_type", c.solver_type, parse_solver_type);
    get("lower_order_final", c.lower_order_final);
    get("euler_at_final", c.euler_at_final);
    require("algorithm_type", std::string("dpmsolver++"));
    require("use_lu_lambdas", false);
    require("use_flow_sigmas", false);
    require("use_dynamic_shifting", false);
    double lambda_min_clipped = -std::numeric_limits<double>::infinity();
    get("lambda_min_clipped", lambda_min_clipped);
    if (std::isfinite(lambda_min_clipped))
      throw std::invalid_argument("scheduler config: `lambda_min_clipped` is not supported with a finite value");
    c.validate();
    return c;
  }

  /// The scheduler configuration of a model opened as `folder`: its scheduler/scheduler_config.json, or for a
  /// single-file checkpoint the family's defaults (or its config folder's file). Errors as load().
  [[nodiscard]] static SchedulerConfig load(const checkpoint::DiffusersFolder& folder) {
    if (!folder.single_file) return load(folder.scheduler / "scheduler_config.json");
    const auto [json, source] = folder.scheduler_config_json();
    try {
      return from_json(json);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(e.what()) + " (in " + source + ")");
    }
  }

  /// Loads `scheduler_config.json` from `path`. Throws `std::runtime_error` naming the file when it cannot be read
  /// or parsed, and `std::invalid_argument` (with the file name) for an invalid configuration.
  [[nodiscard]] static SchedulerConfig load(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("scheduler config: cannot open " + path.string());
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error("scheduler config: cannot parse " + path.string() + ": " + e.what());
    }
    try {
      return from_json(j);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(e.what()) + " (in " + path.string() + ")");
    }
  }

 private:
  [[noreturn]] static void unknown(const char* key, const std::string& text, const char* allowed) {
    throw std::invalid_argument(std::string("scheduler config: `") + key + "` has unknown value \"" + text +
                                "\" (expected one of " + allowed + ")");
  }
  static BetaSchedule parse_beta_schedule(const char* key, const std::string& s) {
    if (s == "linear") return BetaSchedule::linear;
    if (s == "scaled_linear") return BetaSchedule::scaled_linear;
    if (s == "squaredcos_cap_v2") return BetaSchedule::squaredcos_cap_v2;
    if (s == "sigmoid") return BetaSchedule::sigmoid;
    if (s == "laplace") return BetaSchedule::laplace;
    unknown(key, s, "linear, scaled_linear, squaredcos_cap_v2, sigmoid, laplace");
  }
  static VarianceType parse_variance_type(const char* key, const std::string& s) {
    if (s == "fixed_small") return VarianceType::fixed_small;
    if (s == "fixed_small_log") return VarianceType::fixed_small_log;
    if (s == "fixed_large") return VarianceType::fixed_large;
    if (s == "fixed_large_log") return VarianceType::fixed_large_log;
    if (s == "learned") return VarianceType::learned;
    if (s == "learned_range") return VarianceType::learned_range;
    unknown(key, s, "fixed_small, fixed_small_log, fixed_large, fixed_large_log, learned, learned_range");
  }
  static PredictionType parse_prediction_type(const char* key, const std::string& s) {
    if (s == "epsilon") return PredictionType::epsilon;
    if (s == "sample") return PredictionType::sample;
    if (s == "v_prediction") return PredictionType::v_prediction;
    unknown(key, s, "epsilon, sample, v_prediction");
  }
  static SolverType parse_solver_type(const char* key, const std::string& s) {
    if (s == "midpoint") return SolverType::midpoint;
    if (s == "heun") return SolverType::heun;
    unknown(key, s, "midpoint, heun");
  }
  static FinalSigmas parse_final_sigmas(const char* key, const std::string& s) {
    if (s == "zero") return FinalSigmas::zero;
    if (s == "sigma_min") return FinalSigmas::sigma_min;
    unknown(key, s, "zero, sigma_min");
  }
  static TimestepSpacing parse_timestep_spacing(const char* key, const std::string& s) {
    if (s == "linspace") return TimestepSpacing::linspace;
    if (s == "leading") return TimestepSpacing::leading;
    if (s == "trailing") return TimestepSpacing::trailing;
    unknown(key, s, "linspace, leading, trailing");
  }
};

}  // namespace carousel::diffusion
