// carousel-sd end to end: the image it writes for a diffusers fixture case matches diffusers; bad input fails cleanly.
#include <doctest/doctest.h>
#include <png.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

const fs::path data_dir = CAROUSEL_TEST_DATA_DIR;

int run(const std::string& args, const fs::path& log) {
  const std::string cmd = std::string(CAROUSEL_SD_BINARY) + " " + args + " > " + log.string() + " 2>&1";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::uint8_t> read_png(const fs::path& p, int& w, int& h) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  REQUIRE(png_image_begin_read_from_file(&image, p.c_str()));
  image.format = PNG_FORMAT_RGB;
  std::vector<std::uint8_t> rgb(PNG_IMAGE_SIZE(image));
  REQUIRE(png_image_finish_read(&image, nullptr, rgb.data(), 0, nullptr));
  w = static_cast<int>(image.width);
  h = static_cast<int>(image.height);
  return rgb;
}

}  // namespace

TEST_CASE("Cli.MatchesDiffusers") {
  std::ifstream in(data_dir / "pipeline" / "cases.json");
  const auto c = nlohmann::json::parse(in).at(0);  // sd-tiny, DDIM, guidance 7.5
  const fs::path dir = fs::temp_directory_path() / "carousel-cli-test";
  fs::create_directories(dir);
  const std::string args = "--model " + (data_dir / "models" / c["model"].get<std::string>()).string() + " --prompt '" +
                           c["prompt"].get<std::string>() + "' --steps " + std::to_string(c["steps"].get<int>()) +
                           " --guidance " + std::to_string(c["guidance"].get<double>()) + " --sampler " +
                           c["sampler"].get<std::string>() + " --seed " + std::to_string(c["seed"].get<int>()) +
                           " --width " + std::to_string(c["width"].get<int>()) + " --height " +
                           std::to_string(c["height"].get<int>()) + " --out " + (dir / "one.png").string();
  REQUIRE(run(args, dir / "log.txt") == 0);
  int w = 0, h = 0;
  const auto rgb = read_png(dir / "one.png", w, h);
  CHECK(w == c["width"].get<int>());
  CHECK(h == c["height"].get<int>());
  const std::string hex = c["rgb_hex"];
  REQUIRE(rgb.size() * 2 == hex.size());
  std::size_t off = 0;
  for (std::size_t k = 0; k < rgb.size(); ++k) {
    const int want = std::stoi(hex.substr(2 * k, 2), nullptr, 16);
    off += std::abs(int(rgb[k]) - want) > 1 ? 1 : 0;
  }
  CHECK(static_cast<double>(off) <= 0.01 * static_cast<double>(rgb.size()));

  SUBCASE("a batch file writes one image per prompt") {
    std::ofstream(dir / "prompts.txt") << "a red circle\n\ntwo blue squares\na green triangle\n";
    REQUIRE(run("--model " + (data_dir / "models" / "sd-tiny").string() + " --steps 3 --batch-file " +
                    (dir / "prompts.txt").string() + " --out " + (dir / "batch.png").string(),
                dir / "log.txt") == 0);
    for (int i = 1; i <= 3; ++i)
      CHECK(fs::exists(dir / ("batch-" + std::to_string(i) + ".png")));
    CHECK_FALSE(fs::exists(dir / "batch-4.png"));
  }
}

TEST_CASE("Cli.Errors") {
  const fs::path dir = fs::temp_directory_path() / "carousel-cli-test";
  fs::create_directories(dir);
  const std::string model = "--model " + (data_dir / "models" / "sd-tiny").string();
  SUBCASE("missing model folder") {
    CHECK(run("--model /nonexistent --prompt x", dir / "log.txt") == 1);
    CHECK(slurp(dir / "log.txt").find("model_index.json") != std::string::npos);
  }
  SUBCASE("bad flag values") {
    CHECK(run(model + " --prompt x --steps many", dir / "log.txt") == 2);
    CHECK(slurp(dir / "log.txt").find("--steps") != std::string::npos);
    CHECK(run(model + " --prompt x --sampler euler_z", dir / "log.txt") == 2);
    CHECK(run("--prompt", dir / "log.txt") == 2);
  }
  SUBCASE("invalid request fields name the field") {
    CHECK(run(model + " --prompt x --width 33", dir / "log.txt") == 1);
    CHECK(slurp(dir / "log.txt").find("width") != std::string::npos);
  }
}
