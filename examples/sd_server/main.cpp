// carousel-sd-server: an HTTP Stable Diffusion server on carousel's step-level batcher (docs/server.md).
//
//   carousel-sd-server [--model DIR|FILE.safetensors] [--tokenizer DIR] [--config DIR] [--use-ema on|off] [--device
//   auto|cpu|cuda] [--host 127.0.0.1] [--port 8080] [--max-batch N]
//                      [--max-queue N] [--admission continuous|static|cost-aware] [--batch-timeout-ms N]
//                      [--default-steps N] [--default-guidance G (2 for the bundled model, else 7.5)]
//                      [--concurrent-decode auto|on|off] [--cuda-graphs on|off]
//                      [--cuda-conv-search heuristic|exhaustive] [--cuda-vae f16|f32]
//                      [--agent-port N] [--agent-target-seconds S] [--drain-timeout S] [--drain-grace S]
//                      [--max-side PX] [--max-pixel-steps N] [--allow-priority on|off] [--public-url URL]
//                      [--max-watchers N] [--max-watchers-per-generation N] [--max-headers N] [--max-body-bytes N]
//                      [--keep-finished N] [--keep-finished-mib N] [--keep-finished-seconds S]
//                      [--request-read-timeout S] [--max-connections N]
//
// Without --model it serves the bundled model (models/shapes-32). --model also takes a single-file SD 1.x/2.x
// checkpoint (docs/model-format.md): --tokenizer names its tokenizer folder (default: the CLIP vocabulary bundled with
// carousel),
// --config a diffusers folder whose configs replace the family's, --use-ema on reads the EMA weights. --device auto
// (the default) runs on the GPU when the build has the CUDA backend and the machine a CUDA device, else on the CPU;
// --device cuda where that is not so exits 2 with the reason. --concurrent-decode on runs the VAE decode in the
// batcher's retire stage, beside the next UNet step (Options::concurrent_retire); auto (the default) turns it on for
// cuda (the decode has its own stream) and off for cpu (where both would share the same cores). --cuda-graphs and
// --cuda-conv-search choose CUDA backend options (common/device.hpp) and matter only on cuda. --port 0 picks a free
// port. It prints "listening on http://HOST:PORT" once ready. --agent-port N answers HAProxy's agent-check on HOST:N
// (`up NN%` falling as the estimated drain time grows past --agent-target-seconds, default 10; `drain` while shutting
// down; docs/deploy.md). SIGINT/SIGTERM: /health/ready turns 503 and the agent says drain at once; after --drain-grace
// seconds (default 0) in which requests are still accepted, so that a load balancer stops sending first, new requests
// get 503 and admitted ones finish, exit 0; if they have not finished after --drain-timeout seconds (default 120), or
// at a second signal, exit 3 at once. The limits a
// server run for others needs (--max-side, --max-pixel-steps, --allow-priority, --public-url, the watcher, header and
// body caps, the request read deadline and the connection cap) are described in docs/server.md, "Running it for
// others".
#include <common/device.hpp>
#include <sd_server/server.hpp>

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

using carousel::examples::sd_server::Server;
using carousel::examples::sd_server::ServerOptions;

constexpr const char* usage =
    "usage: carousel-sd-server [--model DIR|FILE.safetensors] [--device auto|cpu|cuda] [--host ADDR] [--port N]\n"
    "                          [--tokenizer DIR] [--config DIR] [--use-ema on|off] (single-file checkpoints)\n"
    "                          [--max-batch N] [--max-queue N (0 = unbounded)]\n"
    "                          [--admission continuous|static|cost-aware] [--batch-timeout-ms N]\n"
    "                          [--default-steps N] [--default-guidance G (2 for the bundled model, else 7.5)]\n"
    "                          [--concurrent-decode auto|on|off (auto: on for cuda, off for cpu)]\n"
    "                          [--cuda-graphs on|off] [--cuda-conv-search heuristic|exhaustive]\n"
    "                          [--cuda-vae f16|f32] (cuda only)\n"
    "                          [--agent-port N (HAProxy agent-check)] [--agent-target-seconds S (default 10)]\n"
    "                          [--drain-timeout S (default 120)] [--drain-grace S (default 0)]\n"
    "                          [--max-side PX (default 2 x the model's size)]\n"
    "                          [--max-pixel-steps N (0 = 4000 x the model's pixels)] [--allow-priority on|off]\n"
    "                          [--public-url URL (base of image URLs)] [--max-watchers N (default 32)]\n"
    "                          [--max-watchers-per-generation N (default 4)] [--max-headers N (default 64)]\n"
    "                          [--max-body-bytes N (default 1048576)]\n"
    "                          [--keep-finished N (default 256)] [--keep-finished-mib N (default 256)]\n"
    "                          [--keep-finished-seconds S (default 3600)]\n"
    "                          [--request-read-timeout S (default 10; 0 = none)] [--max-connections N (default 512)]\n";

int signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const auto byte = static_cast<unsigned char>(sig);
  static_cast<void>(write(signal_pipe[1], &byte, 1));
}

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "carousel-sd-server: " << message << "\n" << usage;
  std::exit(2);
}

long number(const std::string& flag, const std::string& value, long lo, long hi) {
  try {
    std::size_t used = 0;
    const long v = std::stol(value, &used);
    if (used == value.size() && v >= lo && v <= hi) return v;
  } catch (const std::exception&) {
  }
  fail(flag + ": expected an integer between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got '" + value +
       "'");
}

double real(const std::string& flag, const std::string& value, double lo, double hi) {
  try {
    std::size_t used = 0;
    const double v = std::stod(value, &used);
    if (used == value.size() && v >= lo && v <= hi) return v;
  } catch (const std::exception&) {
  }
  fail(flag + ": expected a number between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got '" + value +
       "'");
}

// The command line: the server's options and the device to run on ("cpu" or "cuda", resolved from --device).
struct CommandLine {
  ServerOptions options;
  double drain_timeout = 120;  // seconds a SIGTERM drain may take before the process exits anyway
  double drain_grace = 0;      // seconds between SIGTERM's "not ready" and the start of the drain
  std::string device;
  carousel::examples::CudaBackendOptions cuda;
};

CommandLine parse(int argc, char** argv) {
  ServerOptions o;
  std::string device = "auto";
  std::optional<std::filesystem::path> model;
  std::optional<double> guidance;
  std::string concurrent_decode = "auto";
  double drain_timeout = 120;
  double drain_grace = 0;
  carousel::examples::CudaBackendOptions cuda;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::cout << usage;
      std::exit(0);
    }
    if (i + 1 >= argc) fail(flag + ": missing value (or unknown flag)");
    const std::string value = argv[++i];
    if (flag == "--model") {
      model = value;
    } else if (flag == "--tokenizer") {
      o.single_file.tokenizer = value;
    } else if (flag == "--config") {
      o.single_file.config = value;
    } else if (flag == "--use-ema") {
      if (value != "on" && value != "off") fail("--use-ema: expected on or off, got '" + value + "'");
      o.single_file.use_ema = value == "on";
    } else if (flag == "--device") {
      device = value;
    } else if (flag == "--host") {
      o.host = value;
    } else if (flag == "--port") {
      o.port = static_cast<int>(number(flag, value, 0, 65535));
    } else if (flag == "--max-batch") {
      o.max_batch = static_cast<std::size_t>(number(flag, value, 1, 4096));
    } else if (flag == "--max-queue") {
      o.max_queue = static_cast<std::size_t>(number(flag, value, 0, 1'000'000));
    } else if (flag == "--batch-timeout-ms") {
      o.batch_timeout = std::chrono::milliseconds(number(flag, value, 0, 3'600'000));
    } else if (flag == "--default-steps") {
      o.default_steps = static_cast<int>(number(flag, value, 1, 1000));
    } else if (flag == "--concurrent-decode") {
      if (value != "auto" && value != "on" && value != "off")
        fail("--concurrent-decode: expected auto, on or off, got '" + value + "'");
      concurrent_decode = value;
    } else if (flag == "--agent-port") {
      o.agent_port = static_cast<int>(number(flag, value, 1, 65535));
    } else if (flag == "--agent-target-seconds") {
      o.agent_target_seconds = real(flag, value, 0.001, 86400);
    } else if (flag == "--max-side") {
      o.max_side = static_cast<int>(number(flag, value, 8, 16384));
    } else if (flag == "--max-pixel-steps") {
      o.max_pixel_steps = real(flag, value, 0, 1e18);
    } else if (flag == "--allow-priority") {
      if (value != "on" && value != "off") fail("--allow-priority: expected on or off, got '" + value + "'");
      o.allow_priority = value == "on";
    } else if (flag == "--public-url") {
      if (!value.starts_with("http://") && !value.starts_with("https://"))
        fail("--public-url: expected http://... or https://..., got '" + value + "'");
      o.public_url = value.ends_with("/") ? value.substr(0, value.size() - 1) : value;
    } else if (flag == "--max-watchers") {
      o.max_watchers = static_cast<std::size_t>(number(flag, value, 0, 100000));
    } else if (flag == "--max-watchers-per-generation") {
      o.max_watchers_per_generation = static_cast<std::size_t>(number(flag, value, 0, 100000));
    } else if (flag == "--max-headers") {
      o.max_headers = static_cast<std::size_t>(number(flag, value, 8, 10000));
    } else if (flag == "--request-read-timeout") {
      o.request_read_timeout = std::chrono::milliseconds(std::llround(1000 * real(flag, value, 0, 3600)));
    } else if (flag == "--max-connections") {
      o.max_connections = static_cast<std::size_t>(number(flag, value, 16, 100000));
    } else if (flag == "--max-body-bytes") {
      o.max_body_bytes = static_cast<std::size_t>(number(flag, value, 1024, 1L << 30));
    } else if (flag == "--keep-finished") {
      o.keep_finished.count = static_cast<std::size_t>(number(flag, value, 0, 1'000'000));
    } else if (flag == "--keep-finished-mib") {
      o.keep_finished.bytes = static_cast<std::size_t>(number(flag, value, 0, 1'000'000)) << 20;
    } else if (flag == "--keep-finished-seconds") {
      o.keep_finished.age = std::chrono::seconds(number(flag, value, 0, 30L * 86400));
    } else if (flag == "--drain-timeout") {
      drain_timeout = real(flag, value, 0, 86400);
    } else if (flag == "--drain-grace") {
      drain_grace = real(flag, value, 0, 3600);
    } else if (flag == "--default-guidance") {
      guidance = real(flag, value, 0, 100);
    } else if (flag == "--admission") {
      if (value == "continuous") {
        o.admission = carousel::Admission::continuous;
      } else if (value == "static") {
        o.admission = carousel::Admission::static_batch;
      } else if (value == "cost-aware") {
        o.admission = carousel::Admission::cost_aware;
      } else {
        fail("--admission: expected continuous, static or cost-aware, got '" + value + "'");
      }
    } else {
      bool known = false;
      try {
        known = carousel::examples::cuda_flag(flag, value, cuda);
      } catch (const std::invalid_argument& e) {
        fail(e.what());
      }
      if (!known) fail("unknown flag " + flag);
    }
  }
  try {
    device = carousel::examples::resolve_device(device);
  } catch (const carousel::examples::DeviceUnavailable& e) {
    std::cerr << "carousel-sd-server: " << e.what() << '\n';
    std::exit(2);
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
  o.concurrent_decode = concurrent_decode == "on" || (concurrent_decode == "auto" && device == "cuda");
  const std::filesystem::path bundled = CAROUSEL_DEFAULT_MODEL_DIR;
  o.model_dir = model.value_or(bundled);
  // A single file holds no tokenizer: the real CLIP vocabulary bundled with carousel, unless --tokenizer or --config.
  if (o.single_file.tokenizer.empty() && o.single_file.config.empty()) o.single_file.tokenizer = bundled / "tokenizer";
  std::error_code ec;
  o.bundled_model = std::filesystem::equivalent(o.model_dir, bundled, ec);
  // The bundled model was tuned for guidance 2 (docs/bundled-model.md); other models get diffusers' 7.5.
  o.default_guidance = guidance.value_or(o.bundled_model ? 2.0 : 7.5);
  return {o, drain_timeout, drain_grace, device, cuda};
}

}  // namespace

int main(int argc, char** argv) {
  const auto [options, drain_timeout, drain_grace, device, cuda] = parse(argc, argv);

  // SIGINT/SIGTERM may land on any thread (OpenBLAS starts its own before main), so the handler only writes the
  // signal number to a pipe; a dedicated thread reads it and drains the server.
  if (pipe(signal_pipe) != 0) {
    std::perror("carousel-sd-server: pipe");
    return 1;
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  std::optional<Server> server;
  try {
    const auto folder = carousel::checkpoint::DiffusersFolder::open(options.model_dir, options.single_file);
    server.emplace(options, carousel::examples::load_backend(folder, device, cuda));
    server->bind();
  } catch (const std::exception& e) {
    std::cerr << "carousel-sd-server: " << e.what() << '\n';
    return 1;
  }
  std::cout << "carousel-sd-server " << carousel::version << ": model " << options.model_dir.string()
            << (options.bundled_model ? " (bundled)" : "") << ", device " << server->device() << ", admission "
            << carousel::examples::sd_server::admission_name(options.admission)
            << (options.concurrent_decode ? " with concurrent decode" : "") << ", max batch " << options.max_batch
            << "\nlistening on http://" << options.host << ':' << server->port() << std::endl;

  // The first signal turns the server unready (/health/ready 503, the agent says drain) and, after --drain-grace
  // seconds in which requests are still accepted, drains on a thread of its own, which writes a 0 byte to the pipe
  // when done. This thread waits for that, a second signal or the drain deadline, and exits at once (code 3) on the
  // latter two.
  std::thread signal_thread([&] {
    unsigned char sig = 0;
    while (read(signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) {  // listening failed
      server->shutdown();
      return;
    }
    // Waits up to `seconds` for a byte on the pipe: none (timeout), 0 (the drain finished) or a signal number.
    const auto next_byte = [](double seconds) -> std::optional<unsigned char> {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
      for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{signal_pipe[0], POLLIN, 0};
        const int ready = poll(&p, 1, static_cast<int>(std::clamp<long long>(left.count(), 0, 1'000'000'000)));
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) return std::nullopt;
        unsigned char byte = 0;
        if (read(signal_pipe[0], &byte, 1) == 1) return byte;
      }
    };
    const auto second_signal = [](unsigned char s) {
      std::cerr << "carousel-sd-server: second signal " << int{s} << ": exiting" << std::endl;
      std::_Exit(3);
    };
    server->stop_ready();
    if (drain_grace > 0) {
      std::cout << "carousel-sd-server: signal " << int{sig} << ": not ready; accepting requests for " << drain_grace
                << " s more, then draining" << std::endl;
      if (const auto byte = next_byte(drain_grace); byte && *byte != 0) second_signal(*byte);
    }
    std::cout << "carousel-sd-server: signal " << int{sig} << ": draining (new requests get 503; at most "
              << drain_timeout << " s, a second signal exits at once)" << std::endl;
    std::thread drainer([&] {
      server->shutdown();
      const unsigned char done = 0;
      static_cast<void>(write(signal_pipe[1], &done, 1));
    });
    const auto byte = next_byte(drain_timeout);
    if (!byte) {
      std::cerr << "carousel-sd-server: the drain did not finish within " << drain_timeout << " s: exiting"
                << std::endl;
      std::_Exit(3);
    }
    if (*byte != 0) second_signal(*byte);
    drainer.join();
  });
  const bool ok = server->run();
  if (!ok) {
    const unsigned char none = 0;  // listening failed: wake the signal thread
    static_cast<void>(write(signal_pipe[1], &none, 1));
  }
  signal_thread.join();
  server.reset();
  std::cout << "carousel-sd-server: stopped" << std::endl;
  return ok ? 0 : 1;
}
