#pragma once
// The diffusers StableDiffusionPipeline cases of tests/data/pipeline/cases.json (tools/make_pipeline_fixtures.py) and
// the parity tolerance every Pipeline test judges them by (CPU, AnyBackend, CUDA).

#include <doctest/doctest.h>

#include <carousel/diffusion/job.hpp>
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace carousel::test {

/// Parity with diffusers: at least 99% of the RGB values within 1/255.
inline constexpr int parity_levels = 1;
inline constexpr double parity_fraction = 0.01;

/// The cases of `data_dir`/pipeline/cases.json by model name, each model's in file order.
inline std::map<std::string, std::vector<nlohmann::json>> pipeline_cases(const std::filesystem::path& data_dir) {
  std::ifstream in(data_dir / "pipeline" / "cases.json");
  if (!in) throw std::runtime_error("cannot read " + (data_dir / "pipeline" / "cases.json").string());
  std::map<std::string, std::vector<nlohmann::json>> by_model;
  for (const auto& c : nlohmann::json::parse(in))
    by_model[c["model"]].push_back(c);
  return by_model;
}

/// The request of a case.
inline diffusion::Job job_of_case(const nlohmann::json& c) {
  using diffusion::SamplerKind;
  diffusion::Job j;
  j.prompt = c["prompt"];
  j.negative_prompt = c["negative_prompt"];
  j.width = c["width"];
  j.height = c["height"];
  j.steps = c["steps"];
  j.guidance_scale = c["guidance"];
  const std::string sampler = c["sampler"];
  j.sampler = sampler == "ddim"    ? SamplerKind::ddim
              : sampler == "ddpm"  ? SamplerKind::ddpm
              : sampler == "euler" ? SamplerKind::euler
                                   : SamplerKind::dpm_solver;
  j.eta = c["eta"];
  j.seed = c["seed"];
  return j;
}

/// diffusers' image of a case (RGB8, row-major).
inline std::vector<std::uint8_t> rgb_of_case(const nlohmann::json& c) {
  const std::string hex = c["rgb_hex"];
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<std::uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

/// Fraction of the values of `a` and `b` (same size) that differ by more than `levels`.
inline double fraction_off(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b,
                           int levels = parity_levels) {
  REQUIRE(a.size() == b.size());
  std::size_t off = 0;
  for (std::size_t k = 0; k < a.size(); ++k)
    off += std::abs(int(a[k]) - int(b[k])) > levels ? 1 : 0;
  return static_cast<double>(off) / static_cast<double>(a.size());
}

}  // namespace carousel::test
