// carousel-sd: text-to-image through one StepBatcher, on the CPU or the CUDA backend.
//
//   carousel-sd [--model DIR] [--device auto|cpu|cuda] --prompt TEXT [--negative-prompt TEXT] [--steps N]
//               [--guidance S] [--sampler ddim|ddpm|euler|dpm++2m] [--eta E] [--seed N] [--width W --height H]
//               [--out FILE.png] [--batch-file prompts.txt] [--max-batch N] [--cuda-graphs on|off]
//               [--cuda-conv-search heuristic|exhaustive] [--cuda-vae f16|f32]
//
// Without --model it uses the bundled model (and guidance 2, unless --guidance says otherwise). --device auto (the
// default) runs on the GPU when the build has the CUDA backend and the machine a CUDA device, else on the CPU;
// --device cuda where that is not so exits 2 with the reason; the --cuda-* flags (common/device.hpp) choose CUDA
// backend options and matter only on cuda. With --batch-file every non-empty line is a prompt; all
// of them run through one batcher (step-level batching) and each writes <out-stem>-<index>.png with seeds seed,
// seed+1, ...
#include <carousel/carousel.hpp>
#include <carousel/diffusion/any_backend.hpp>
#include <carousel/diffusion/pipeline.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/device.hpp"
#include "common/png.hpp"

namespace fs = std::filesystem;
using carousel::diffusion::Job;
using Pipeline = carousel::diffusion::Pipeline<carousel::diffusion::AnyBackend>;

namespace {

struct Args {
  fs::path model = CAROUSEL_DEFAULT_MODEL_DIR;
  bool model_given = false;
  std::string device = "auto";  // resolved by parse to "cpu" or "cuda"
  bool guidance_given = false;
  Job job;
  bool have_prompt = false;
  fs::path out = "out.png";
  fs::path batch_file;
  std::size_t max_batch = 8;
  carousel::examples::CudaBackendOptions cuda;
};

[[noreturn]] void usage(const std::string& error) {
  std::fprintf(stderr,
               "error: %s\n"
               "usage: carousel-sd [--model DIR] [--device auto|cpu|cuda] --prompt TEXT [--negative-prompt TEXT]\n"
               "                   [--steps N] [--guidance S] [--sampler ddim|ddpm|euler|dpm++2m] [--eta E]\n"
               "                   [--seed N] [--width W --height H] [--out FILE.png] [--batch-file prompts.txt]\n"
               "                   [--max-batch N] [--cuda-graphs on|off]\n"
               "                   [--cuda-conv-search heuristic|exhaustive] [--cuda-vae f16|f32]\n"
               "                   (the --cuda-* flags: cuda only)\n",
               error.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  a.job.steps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(flag + " needs a value");
      return argv[++i];
    };
    auto number = [&](auto parse_fn) {
      const std::string v = value();
      try {
        std::size_t used = 0;
        auto n = parse_fn(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return n;
      } catch (const std::exception&) {
        usage(flag + ": not a number: '" + v + "'");
      }
    };
    auto to_int = [](const std::string& s, std::size_t* u) { return std::stoi(s, u); };
    auto to_float = [](const std::string& s, std::size_t* u) { return std::stof(s, u); };
    auto to_u64 = [](const std::string& s, std::size_t* u) { return std::stoull(s, u); };
    if (flag == "--model")
      a.model = value(), a.model_given = true;
    else if (flag == "--device")
      a.device = value();
    else if (flag == "--prompt")
      a.job.prompt = value(), a.have_prompt = true;
    else if (flag == "--negative-prompt")
      a.job.negative_prompt = value();
    else if (flag == "--steps")
      a.job.steps = number(to_int);
    else if (flag == "--guidance")
      a.job.guidance_scale = number(to_float), a.guidance_given = true;
    else if (flag == "--eta")
      a.job.eta = number(to_float);
    else if (flag == "--seed")
      a.job.seed = number(to_u64);
    else if (flag == "--width")
      a.job.width = number(to_int);
    else if (flag == "--height")
      a.job.height = number(to_int);
    else if (flag == "--out")
      a.out = value();
    else if (flag == "--batch-file")
      a.batch_file = value();
    else if (flag == "--max-batch")
      a.max_batch = static_cast<std::size_t>(number(to_int));
    else if (flag == "--sampler") {
      const std::string s = value();
      if (s == "ddim")
        a.job.sampler = carousel::diffusion::SamplerKind::ddim;
      else if (s == "ddpm")
        a.job.sampler = carousel::diffusion::SamplerKind::ddpm;
      else if (s == "euler")
        a.job.sampler = carousel::diffusion::SamplerKind::euler;
      else if (s == "dpm++2m")
        a.job.sampler = carousel::diffusion::SamplerKind::dpm_solver;
      else
        usage("--sampler: unknown sampler '" + s + "' (ddim, ddpm, euler or dpm++2m)");
    } else if (flag == "--help" || flag == "-h")
      usage("help");
    else if (flag.starts_with("--cuda-")) {
      try {
        if (!carousel::examples::cuda_flag(flag, value(), a.cuda)) usage("unknown option " + flag);
      } catch (const std::invalid_argument& e) {
        usage(e.what());
      }
    } else
      usage("unknown option " + flag);
  }
  if (!a.have_prompt && a.batch_file.empty()) usage("--prompt or --batch-file is required");
  if (a.max_batch == 0) usage("--max-batch must be at least 1");
  try {
    a.device = carousel::examples::resolve_device(a.device);
  } catch (const carousel::examples::DeviceUnavailable& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::exit(2);
  } catch (const std::invalid_argument& e) {
    usage(e.what());
  }
  // The bundled model was tuned for guidance 2 (docs/bundled-model.md); other models get diffusers' 7.5.
  if (!a.model_given && !a.guidance_given) a.job.guidance_scale = 2.0f;
  return a;
}

// One line of progress bars, redrawn in place on a terminal.
class ProgressBars {
 public:
  explicit ProgressBars(std::size_t n) : done_(n, 0), total_(n, 1), tty_(isatty(STDERR_FILENO) != 0) {}
  void update(std::size_t i, std::size_t done, std::size_t total) {
    std::lock_guard lock(mutex_);
    done_[i] = done;
    total_[i] = total;
    if (!tty_) return;
    std::string line = "\r";
    std::size_t sum = 0, all = 0;
    for (std::size_t k = 0; k < done_.size(); ++k) {
      sum += done_[k];
      all += total_[k];
    }
    const std::size_t width = 40, filled = all ? width * sum / all : 0;
    line += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] " + std::to_string(sum) + "/" +
            std::to_string(all) + " steps";
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  }
  void finish() {
    if (tty_) std::fputs("\n", stderr);
  }

 private:
  std::mutex mutex_;
  std::vector<std::size_t> done_, total_;
  bool tty_;
};

fs::path numbered(const fs::path& out, std::size_t i) {
  return out.parent_path() / (out.stem().string() + "-" + std::to_string(i) + out.extension().string());
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  try {
    const auto folder = carousel::checkpoint::DiffusersFolder::open(
        args.model, {.tokenizer = fs::path(CAROUSEL_DEFAULT_MODEL_DIR) / "tokenizer"});
    const carousel::diffusion::AnyBackend backend = carousel::examples::load_backend(folder, args.device, args.cuda);
    Pipeline pipeline(backend, carousel::diffusion::pipeline_scheduler_config(folder),
                      carousel::diffusion::pipeline_options(folder, backend.vae_scale_factor()));

    std::vector<Job> jobs;
    if (!args.batch_file.empty()) {
      std::ifstream in(args.batch_file);
      if (!in) throw std::runtime_error("cannot read '" + args.batch_file.string() + "'");
      for (std::string line; std::getline(in, line);) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        Job j = args.job;
        j.prompt = line;
        j.seed = args.job.seed + jobs.size();
        jobs.push_back(std::move(j));
      }
    } else {
      jobs.push_back(args.job);
    }
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      try {
        pipeline.validate(jobs[i]);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument("request " + std::to_string(i + 1) + ": " + e.what());
      }
    }

    carousel::StepBatcher<Pipeline, Job> batcher{pipeline, {.max_batch_size = args.max_batch}};
    ProgressBars bars(jobs.size());
    const auto t0 = std::chrono::steady_clock::now();
    batcher.start();
    std::vector<carousel::Ticket<Job>> tickets;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      tickets.push_back(batcher.submit(std::move(jobs[i]), {.on_progress = [&bars, i](const carousel::Progress& p) {
                                         bars.update(i, p.steps_done, p.total_steps);
                                       }}));
    }
    int failures = 0;
    for (std::size_t i = 0; i < tickets.size(); ++i) {
      const fs::path path = tickets.size() == 1 ? args.out : numbered(args.out, i + 1);
      try {
        const Job j = tickets[i].get();
        carousel::examples::write_png(path, j.image);
        if (tickets.size() > 1) bars.update(i, j.steps, j.steps);
        std::fprintf(stdout, "%s%s (%dx%d, seed %llu): %s\n", tickets.size() == 1 ? "" : "\n", path.c_str(), j.width,
                     j.height, static_cast<unsigned long long>(j.seed), j.prompt.c_str());
      } catch (const std::exception& e) {
        ++failures;
        std::fprintf(stderr, "\nrequest %zu failed: %s\n", i + 1, e.what());
      }
    }
    batcher.stop();
    bars.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const carousel::Stats s = batcher.stats();
    std::fprintf(stdout, "%zu image(s) in %.2f s on %s: %llu iterations, mean batch %.2f, mean step %.1f ms\n",
                 tickets.size() - static_cast<std::size_t>(failures), seconds, backend.device().c_str(),
                 static_cast<unsigned long long>(s.iterations), s.mean_batch_size, s.step_time.mean() * 1e3);
    return failures ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
