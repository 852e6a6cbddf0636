#pragma once
/// \file sd_server/server.hpp
/// carousel-sd-server as a class: a Stable Diffusion model on any backend (a `diffusion::AnyBackend`: the CPU or the
/// CUDA backend, chosen at run time) behind a carousel StepBatcher, served over HTTP with cpp-httplib. `main.cpp` is a
/// thin command-line wrapper; the integration tests run it in-process.
///
/// Every generation request (whatever its API shape) becomes a `Generation` (generation.hpp): n jobs submitted to the
/// batcher, a per-generation event log (Server-Sent Events frames, events.hpp) appended to from the scheduler thread,
/// and a finalizer thread (finalizer.hpp) that waits for the n tickets, encodes the PNGs and writes the final result.
/// HTTP handlers only read generations: a blocking POST waits for the result, a streaming POST and
/// `GET .../{id}/events` replay and follow the event log, `GET .../{id}` answers a snapshot. Each API shape's parsing
/// and bodies live in openai.hpp and a1111.hpp; this file holds the HTTP setup, the routes and the glue. See
/// docs/server.md.

#include <httplib.h>
#include <carousel/checkpoint/diffusers_folder.hpp>
#include <carousel/diffusion/any_backend.hpp>
#include <carousel/diffusion/pipeline.hpp>
#include <carousel/load_signal.hpp>
#include <carousel/step_batcher.hpp>
#include <carousel/version.hpp>
#include <common/png.hpp>
#include <nlohmann/json.hpp>
#include <sd_server/a1111.hpp>
#include <sd_server/agent.hpp>
#include <sd_server/connection.hpp>
#include <sd_server/events.hpp>
#include <sd_server/finalizer.hpp>
#include <sd_server/generation.hpp>
#include <sd_server/metrics.hpp>
#include <sd_server/openai.hpp>
#include <sd_server/request.hpp>
#include <sd_server/thread_pool.hpp>
#include <sd_server/web_page.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <ctime>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace carousel::examples::sd_server {

/// The model the server runs: any DiffusionBackend, erased (its `device()` is reported by /health).
using Backend = diffusion::AnyBackend;
using Pipeline = diffusion::Pipeline<Backend>;
using Batcher = StepBatcher<Pipeline, diffusion::Job>;

/// Server configuration (the command-line flags of carousel-sd-server).
struct ServerOptions {
  std::filesystem::path model_dir;  ///< diffusers folder, or single-file SD 1.x/2.x checkpoint (.safetensors), to serve
  /// How a single-file checkpoint is opened: its tokenizer folder, a diffusers folder for its configs, EMA weights.
  checkpoint::SingleFileOptions single_file{};
  bool bundled_model = false;      ///< whether model_dir is the model bundled with carousel (reported by /health)
  std::string host = "127.0.0.1";  ///< address to listen on
  int port = 8080;                 ///< port; 0 picks a free one (see `Server::bind`)
  std::size_t max_batch = 8;       ///< `Options::max_batch_size`
  std::size_t max_queue = 64;      ///< `Options::max_queue_size` (images waiting); 0 = unbounded
  Admission admission = Admission::continuous;   ///< batcher admission policy
  std::chrono::milliseconds batch_timeout{100};  ///< static batching: longest wait for a full batch
  bool concurrent_decode =
      false;  ///< `Options::concurrent_retire`: VAE decode in the retire stage, beside the next step
  std::size_t max_body_bytes = std::size_t{1} << 20;  ///< larger request bodies are answered 413
  int default_steps = 20;                             ///< steps when a request gives none
  double default_guidance = 7.5;                      ///< guidance scale when a request gives none
  int max_images = 8;                                 ///< most images per request
  KeepLimits keep_finished;                           ///< how long finished generations are kept for GET .../{id}
  /// HAProxy agent-check port on `host` (`up NN%` from the drain estimate, `drain` while shutting down); 0 picks a
  /// free one (see `Server::agent_port`); none: no agent.
  std::optional<int> agent_port;
  double agent_target_seconds = 10.0;  ///< the drain time at which the agent reports 50% (`agent_weight_percent`)
  /// Largest width or height a request may ask for; 0: twice the model's native size (its default image size).
  int max_side = 0;
  /// Most work one request may ask for, in pixel-steps: width x height x steps x images x UNet rows (2 when guided);
  /// 0: 4000 x the native image's pixels (e.g. 2 guided native-size images of 1000 steps).
  double max_pixel_steps = 0;
  bool allow_priority = false;  ///< honour the client's `priority` field (else it is ignored)
  /// Base of the image URLs answered for `response_format: "url"`, e.g. "https://sd.example.com"; "": the bound
  /// address, "http://HOST:PORT". Never taken from the request's Host header.
  std::string public_url;
  std::size_t max_watchers_per_generation = 4;  ///< `GET .../{id}/events` streams per generation (503 beyond)
  std::size_t max_watchers = 32;                ///< `GET .../{id}/events` streams in all (503 beyond)
  std::size_t max_headers = 64;                 ///< requests with more header lines are answered 431
  /// Longest time a connection may take to deliver a request's head and body, counted from its first sight or the
  /// end of its previous response; slower connections are closed. Zero: no limit (cpp-httplib's 5 s per read only).
  std::chrono::milliseconds request_read_timeout{10000};
  /// Most connections served at once (one worker thread each, started as needed); more wait to be served.
  std::size_t max_connections = 512;
};

/// The name of an admission policy as the command line spells it: "continuous", "static", "cost-aware".
inline const char* admission_name(Admission a) {
  switch (a) {
    case Admission::continuous:
      return "continuous";
    case Admission::static_batch:
      return "static";
    case Admission::cost_aware:
      return "cost-aware";
  }
  return "unknown";
}

/// carousel-sd-server: loads the model, starts the batcher, serves the HTTP API.
///
/// \code
///   ServerOptions options;
///   options.model_dir = "models/shapes-32";
///   options.port = 0;
///   const auto folder = checkpoint::DiffusersFolder::open(options.model_dir, options.single_file);
///   Server server(options, diffusion::AnyBackend("cpu", cpu::Backend(folder)));
///   int port = server.bind();
///   std::thread t([&] { server.run(); });
///   ...
///   server.shutdown();   // 503 for new requests, drain the admitted ones, stop listening
///   t.join();
/// \endcode
/// Thread-safety: `shutdown` may be called from any thread (e.g. a signal-handling thread) while `run` runs.
class Server {
 public:
  /// Serves `backend`, the model of `options.model_dir` loaded on the device of the caller's choice (its scheduler
  /// configuration and default image size are read from that folder), and starts the batcher. Throws
  /// `checkpoint::FormatError` for a broken model folder and `std::invalid_argument` for an empty backend or
  /// inconsistent options. The backend's calls must be safe to make from two threads (the batcher's and an HTTP
  /// handler's tokenizer use in validation), as cpu::Backend's and cuda::Backend's are.
  Server(ServerOptions options, Backend backend)
      : options_(std::move(options)),
        folder_(checkpoint::DiffusersFolder::open(options_.model_dir, options_.single_file)),
        backend_(checked(std::move(backend))),
        pipeline_(backend_, diffusion::pipeline_scheduler_config(folder_),
                  pipeline_options(options_, folder_, backend_.vae_scale_factor())),
        batcher_(pipeline_, Options{.max_batch_size = options_.max_batch,
                                    .max_queue_size = options_.max_queue,
                                    .admission = options_.admission,
                                    .batch_timeout = options_.batch_timeout,
                                    .order = Order::priority,
                                    .concurrent_retire = options_.concurrent_decode}) {
    limits_.default_steps = options_.default_steps;
    limits_.default_guidance = options_.default_guidance;
    limits_.max_images = options_.max_images;
    limits_.default_width = pipeline_.options().default_width;
    limits_.default_height = pipeline_.options().default_height;
    limits_.max_steps = pipeline_.options().max_steps;
    limits_.allow_priority = options_.allow_priority;
    max_pixel_steps_ = options_.max_pixel_steps > 0
                           ? options_.max_pixel_steps
                           : 4000.0 * limits_.default_width * static_cast<double>(limits_.default_height);
    std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server
    batcher_.set_observer([this](const Batcher::iteration_type& it) { last_batch_size_ = it.batch.size(); });
    batcher_.start();
    routes();
  }

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Shuts down (draining) if `shutdown` was not called.
  ~Server() {
    shutdown();
    registry_.join_all();
  }

  /// Binds the listening socket; returns the port (the free one picked when `port` is 0). Throws std::runtime_error
  /// when the address cannot be bound.
  int bind() {
    if (options_.port == 0) {
      port_ = http_.bind_to_any_port(options_.host);
    } else {
      port_ = http_.bind_to_port(options_.host, options_.port) ? options_.port : -1;
    }
    if (port_ <= 0) {
      throw std::runtime_error("cannot listen on " + options_.host + ":" + std::to_string(options_.port));
    }
    if (options_.request_read_timeout.count() > 0) read_deadline_.start(port_);
    if (options_.agent_port && !agent_) {
      agent_ = std::make_unique<AgentResponder>(options_.host, *options_.agent_port, [this] { return agent_line(); });
    }
    return port_;
  }

  /// The HAProxy agent's port (after `bind`, when `ServerOptions::agent_port` asked for one), else 0.
  int agent_port() const noexcept { return agent_ ? agent_->port() : 0; }

  /// What the agent answers: `drain` once `stop_ready` or `shutdown` was called, else `up NN%` with NN =
  /// `agent_weight_percent(Stats::drain_seconds, ServerOptions::agent_target_seconds)`.
  std::string agent_line() const {
    if (is_unready()) return "drain";
    return "up " + std::to_string(agent_weight_percent(batcher_.stats().drain_seconds, options_.agent_target_seconds)) +
           "%";
  }

  /// Turns `/health/ready` to 503 `draining` and the agent to `drain` while requests are still accepted: the
  /// announcement before `shutdown`, so that a load balancer stops sending here before requests are refused
  /// (carousel-sd-server's `--drain-grace`). Thread-safe, idempotent.
  void stop_ready() noexcept { unready_ = true; }

  /// Serves requests until `shutdown()`; call `bind()` first. Returns false if listening failed; returns at once
  /// when `shutdown()` came first.
  bool run() {
    running_ = true;
    const bool ok = is_draining() || http_.listen_after_bind();
    running_ = false;
    return ok;
  }

  /// Stops accepting generation requests (they get 503), finishes every admitted and queued one
  /// (`StopMode::drain`), lets their responses and event streams complete, then stops the listener so `run()`
  /// returns. Idempotent; blocks until the batcher is idle.
  void shutdown() {
    if (!registry_.begin_draining()) return;
    batcher_.stop(StopMode::drain);
    registry_.join_all();
    // httplib's stop() does nothing before the listener runs: wait for it when run() is on its way.
    while (running_ && !http_.is_running())
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http_.stop();
    read_deadline_.stop();
    if (agent_) agent_->stop();
  }

  /// The bound port (after `bind`).
  int port() const noexcept { return port_; }
  /// The batcher's statistics.
  Stats stats() const { return batcher_.stats(); }
  /// The options in force.
  const ServerOptions& options() const noexcept { return options_; }
  /// The device the model runs on (the backend's name: "cpu", "cuda").
  const std::string& device() const noexcept { return backend_.device(); }

 private:
  using Clock = std::chrono::steady_clock;

  // The folder's pipeline options with the server's largest side (default: twice the native size).
  static diffusion::PipelineOptions pipeline_options(const ServerOptions& o, const checkpoint::DiffusersFolder& folder,
                                                     std::int64_t vae_scale_factor) {
    diffusion::PipelineOptions p = diffusion::pipeline_options(folder, vae_scale_factor);
    p.max_side = o.max_side > 0 ? o.max_side : 2 * std::max(p.default_width, p.default_height);
    return p;
  }

  static Backend checked(Backend backend) {
    if (!backend) throw std::invalid_argument("backend: the server needs a loaded model (the AnyBackend is empty)");
    return backend;
  }

  // ---- routes ------------------------------------------------------------------------------------------------------

  void routes() {
    http_.new_task_queue = [n = options_.max_connections] { return new ElasticThreadPool(n); };
    http_.set_payload_max_length(options_.max_body_bytes);
    // Header lines arrive before any handler: refuse a request that carries more than max_headers of them. A request
    // without a body has been read whole here; one with a body once read_body is done.
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      const std::string length = req.get_header_value("Content-Length");
      if (!req.has_header("Transfer-Encoding") && (length.empty() || length == "0"))
        read_deadline_.request_read(detail::peer_key(req.remote_addr, req.remote_port));
      if (req.headers.size() <= options_.max_headers) return httplib::Server::HandlerResponse::Unhandled;
      res.status = 431;
      res.set_header("Connection", "close");
      res.set_content(ApiError(431, "headers: more than " + std::to_string(options_.max_headers) + " header lines",
                               "headers", "invalid_request_error")
                          .body()
                          .dump(),
                      "application/json");
      return httplib::Server::HandlerResponse::Handled;
    });
    http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      read_deadline_.response_written(detail::peer_key(req.remote_addr, req.remote_port));
      http_counters_.count(req.method, endpoint_of(req), res.status);
    });
    http_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request&,
                                                                        httplib::Response& res) {
      if (!res.body.empty() || res.is_chunked_content_provider_) return httplib::Server::HandlerResponse::Unhandled;
      std::string message = "not found";
      std::string field;
      if (res.status == 413) {
        message = "body: larger than " + std::to_string(options_.max_body_bytes) + " bytes";
        field = "body";
      } else if (res.status != 404) {
        message = "HTTP status " + std::to_string(res.status);
      }
      res.set_content(
          ApiError(res.status, message, field, res.status == 404 ? "not_found" : "invalid_request_error").body().dump(),
          "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string message = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        message = e.what();
      } catch (...) {
      }
      res.status = 500;
      res.set_content(ApiError(500, message, "", "server_error").body().dump(), "application/json");
    });

    http_.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(web_page, "text/html"); });
    http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) { health(res); });
    http_.Get("/health/live", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"live"})", "application/json");
    });
    http_.Get("/health/ready", [this](const httplib::Request&, httplib::Response& res) { ready(res); });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { metrics(res); });
    http_.Post("/v1/images/generations",
               [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
                 guarded(res, [&] { post_openai(req, read_body(req, reader, res), res); });
               });
    http_.Get(R"(/v1/images/generations/([A-Za-z0-9_-]+))",
              [this](const httplib::Request& req, httplib::Response& res) {
                guarded(res, [&] { get_generation(req, res); });
              });
    http_.Delete(R"(/v1/images/generations/([A-Za-z0-9_-]+))",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   guarded(res, [&] { delete_generation(req, res); });
                 });
    http_.Get(
        R"(/v1/images/generations/([A-Za-z0-9_-]+)/images/([0-9]+)\.png)",
        [this](const httplib::Request& req, httplib::Response& res) { guarded(res, [&] { get_image(req, res); }); });
    http_.Get(R"(/v1/images/generations/([A-Za-z0-9_-]+)/events)",
              [this](const httplib::Request& req, httplib::Response& res) {
                guarded(res, [&] { watch_events(registry_.find(req.matches[1]), req, res); });
              });
    http_.Post("/sdapi/v1/txt2img",
               [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
                 guarded(res, [&] { post_a1111(req, read_body(req, reader, res), res); });
               });
    http_.Get("/sdapi/v1/progress", [this](const httplib::Request&, httplib::Response& res) { a1111_progress(res); });
    http_.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(a1111_samplers_body().dump(), "application/json");
    });
    http_.Get("/sdapi/v1/sd-models", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(a1111_models_body(options_.model_dir.filename().string(), options_.model_dir.string()).dump(),
                      "application/json");
    });
  }

  // Runs a handler body; an ApiError becomes its JSON error response (429 and 503 with Retry-After).
  template <class F>
  void guarded(httplib::Response& res, F&& body) {
    try {
      body();
    } catch (const ApiError& e) {
      res.status = e.status();
      if (e.status() == 429 || e.status() == 503) res.set_header("Retry-After", std::to_string(retry_after_seconds()));
      res.set_content(e.body().dump(), "application/json");
    }
  }

  // ---- endpoints ---------------------------------------------------------------------------------------------------

  void a1111_progress(httplib::Response& res) const {
    const auto [current, unfinished] = registry_.oldest_unfinished();
    const auto step = batcher_.predicted_step_time(std::max<std::size_t>(1, last_batch_size_.load()));
    const double step_seconds = step ? std::chrono::duration<double>(*step).count() : 0.0;
    res.set_content(a1111_progress_body(current, unfinished, step_seconds).dump(), "application/json");
  }

  void health(httplib::Response& res) const {
    const bool draining = is_draining();
    const nlohmann::json body = {
        {"status", draining ? "draining" : "ok"},
        {"model", options_.model_dir.string()},
        {"bundled_model", options_.bundled_model},
        {"device", backend_.device()},
        {"admission", admission_name(options_.admission)},
        {"concurrent_decode", options_.concurrent_decode},
        {"max_batch_size", options_.max_batch},
        {"max_queue_size", options_.max_queue},
        {"default_size", std::to_string(limits_.default_width) + "x" + std::to_string(limits_.default_height)},
        {"size_multiple", backend_.vae_scale_factor()},
        {"default_steps", options_.default_steps},
        {"default_guidance", options_.default_guidance},
        {"max_images", options_.max_images},
        {"samplers", detail::sampler_list()},
        {"version", carousel::version}};
    res.status = draining ? 503 : 200;
    res.set_content(body.dump(), "application/json");
  }

  // Readiness for a load balancer or Kubernetes: 503 while draining, and while the queue is at its bound (a new
  // request would get 429 here, another replica may have room).
  void ready(httplib::Response& res) const {
    std::string status = "ready";
    if (is_unready()) {
      status = "draining";
    } else if (options_.max_queue > 0 && batcher_.stats().queue_depth >= options_.max_queue) {
      status = "queue_full";
    }
    res.status = status == "ready" ? 200 : 503;
    res.set_content(nlohmann::json{{"status", status}}.dump(), "application/json");
  }

  void metrics(httplib::Response& res) const {
    std::ostringstream out;
    write_stats(out, batcher_.stats());
    detail::metric(out, "carousel_max_batch_size", "gauge", "Configured max batch size.",
                   static_cast<double>(options_.max_batch));
    const auto step = batcher_.predicted_step_time(options_.max_batch);
    detail::metric(out, "carousel_predicted_step_seconds", "gauge",
                   "Predicted iteration time at max batch size (0 before measurements).",
                   step ? std::chrono::duration<double>(*step).count() : 0.0);
    const std::size_t in_flight = registry_.oldest_unfinished().second;
    detail::metric(out, "carousel_http_generations_in_flight", "gauge", "Generation requests not yet finished.",
                   static_cast<double>(in_flight));
    detail::metric(out, "carousel_http_draining", "gauge", "1 while shutting down.", is_draining() ? 1.0 : 0.0);
    detail::metric(out, "carousel_http_slow_requests_closed_total", "counter",
                   "Connections closed for not delivering a request within the request read timeout.",
                   static_cast<double>(read_deadline_.closed()));
    http_counters_.write(out);
    res.set_content(out.str(), "text/plain; version=0.0.4");
  }

  // The body of a POST, read whatever its transfer encoding (Content-Length or chunked), refused with 413 as soon as
  // it passes max_body_bytes; and 415 unless it is declared JSON, which is also the CORS policy: a cross-origin page
  // cannot send `application/json` without a preflight, which this server never answers (docs/server.md).
  std::string read_body(const httplib::Request& req, const httplib::ContentReader& reader, httplib::Response& res) {
    const std::string type = detail::lower(req.get_header_value("Content-Type"));
    if (!type.starts_with("application/json")) {
      res.set_header("Connection", "close");
      throw ApiError(415, "Content-Type: must be application/json", "Content-Type", "unsupported_media_type");
    }
    std::string body;
    bool too_large = false;
    const bool read = reader([&](const char* data, std::size_t size) {
      if (body.size() + size > options_.max_body_bytes) {
        too_large = true;
        return false;
      }
      body.append(data, size);
      return true;
    });
    if (too_large || res.status == 413) {  // httplib sets 413 itself for a Content-Length over the limit
      res.set_header("Connection", "close");
      throw ApiError(413, "body: larger than " + std::to_string(options_.max_body_bytes) + " bytes", "body");
    }
    if (!read) throw ApiError(400, "body: could not be read", "body");
    read_deadline_.request_read(detail::peer_key(req.remote_addr, req.remote_port));
    return body;
  }

  // Follows a generation's events for a client other than its owner, within the watcher caps (503 beyond).
  void watch_events(const std::shared_ptr<Generation>& g, const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard lock(g->mutex);
      if (g->watchers >= options_.max_watchers_per_generation) {
        throw ApiError(503, "events: this generation already has " + std::to_string(g->watchers) + " watchers", "",
                       "too_many_watchers");
      }
      if (watchers_.fetch_add(1) >= options_.max_watchers) {
        watchers_.fetch_sub(1);
        throw ApiError(503,
                       "events: the server already streams " + std::to_string(options_.max_watchers) + " event streams",
                       "", "too_many_watchers");
      }
      ++g->watchers;
    }
    serve_events(g, req, res, false, [this, g] {
      std::lock_guard lock(g->mutex);
      --g->watchers;
      watchers_.fetch_sub(1);
    });
  }

  // Refuses, before any work, a request beyond the work budget (pixel-steps of all its images and UNet rows).
  void check_budget(const GenerationRequest& r) const {
    double work = 0;
    for (const auto& job : r.jobs) {
      // A side beyond the limit is refused by validation, naming the size field.
      if (std::max(job.width, job.height) > pipeline_.options().max_side) return;
      work += static_cast<double>(job.width) * job.height * job.steps * (job.guided() ? 2.0 : 1.0);
    }
    if (work > max_pixel_steps_) {
      throw ApiError(400,
                     "steps: the request asks for " + std::to_string(static_cast<long long>(work)) +
                         " pixel-steps (width x height x steps x images x 2 when guided), more than this server's " +
                         std::to_string(static_cast<long long>(max_pixel_steps_)),
                     "steps", "too_expensive");
    }
  }

  void post_openai(const httplib::Request& req, const std::string& body, httplib::Response& res) {
    GenerationRequest r = parse_openai(body, limits_);
    const bool stream = r.stream, async = r.async;
    auto g = launch(std::move(r));
    if (async) {
      res.status = 202;
      res.set_content(openai_accepted_body(*g).dump(), "application/json");
    } else if (stream) {
      serve_events(g, req, res, true);
    } else {
      respond_when_finished(g, req, res);
    }
  }

  void post_a1111(const httplib::Request& req, const std::string& body, httplib::Response& res) {
    respond_when_finished(launch(parse_a1111(body, limits_)), req, res);
  }

  void get_generation(const httplib::Request& req, httplib::Response& res) {
    auto g = registry_.find(req.matches[1]);
    std::lock_guard lock(g->mutex);
    res.set_content(openai_status_body(*g).dump(), "application/json");
  }

  // GET /v1/images/generations/{id}/images/{index}.png: one image of a finished generation that answered with URLs,
  // while it is kept. `pngs` is written under the mutex together with `finished`.
  void get_image(const httplib::Request& req, httplib::Response& res) {
    auto g = registry_.find(req.matches[1]);
    const std::string index_text = req.matches[2];  // digits (the route's pattern)
    std::lock_guard lock(g->mutex);
    const std::size_t index = index_text.size() > 6 ? g->pngs.size() : std::stoul(index_text);
    if (!g->finished || index >= g->pngs.size()) {
      throw ApiError(404,
                     "index: generation '" + g->id + "' has no image " + index_text +
                         (g->finished ? "" : " yet (status " + g->status + ")"),
                     "index", "not_found");
    }
    const auto& png = g->pngs[index];
    res.set_content(reinterpret_cast<const char*>(png.data()), png.size(), "image/png");
  }

  void delete_generation(const httplib::Request& req, httplib::Response& res) {
    auto g = registry_.find(req.matches[1]);
    g->request_cancel();
    std::lock_guard lock(g->mutex);
    res.status = g->finished ? 200 : 202;
    res.set_content(openai_cancel_body(*g).dump(), "application/json");
  }

  // ---- generations -------------------------------------------------------------------------------------------------

  bool is_draining() const { return registry_.draining(); }
  bool is_unready() const { return unready_ || is_draining(); }

  // Validates the jobs, submits them and registers the generation; throws ApiError 400 (invalid field), 429 (queue
  // full) or 503 (shutting down).
  std::shared_ptr<Generation> launch(GenerationRequest r) {
    check_budget(r);
    auto g = std::make_shared<Generation>();
    g->shape = r.shape;
    g->parameters = std::move(r.parameters);
    if (r.url_response) {
      g->image_url_base =
          options_.public_url.empty() ? "http://" + options_.host + ":" + std::to_string(port_) : options_.public_url;
    }
    g->created = static_cast<std::int64_t>(std::time(nullptr));
    g->submitted = Clock::now();
    for (const auto& job : r.jobs)
      g->seeds.push_back(job.seed);
    g->steps_done.assign(r.jobs.size(), 0);
    for (const auto& job : r.jobs)
      g->total_steps.push_back(planned_steps(job));
    std::optional<Clock::time_point> deadline;
    if (r.timeout_ms) deadline = g->submitted + std::chrono::milliseconds(*r.timeout_ms);
    registry_.add(
        g, [&](const std::shared_ptr<Generation>& gen) { submit(gen, r, deadline); },
        [this](const std::shared_ptr<Generation>& gen) {
          try {
            gen->finalizer = std::thread([this, gen] { finalize(*gen, success_body()); });
          } catch (const std::system_error& e) {
            fail_unstarted(*gen, e);
          }
        });
    return g;
  }

  // Submits the request's jobs for `g` (registered under the registry's lock); throws ApiError 429 or 503, with every
  // submitted ticket cancelled, when the batcher refuses one.
  void submit(const std::shared_ptr<Generation>& g, GenerationRequest& r, std::optional<Clock::time_point> deadline) {
    g->events.push_back(
        sse_frame("queued", {{"id", g->id}, {"n", r.jobs.size()}, {"seeds", g->seeds}, {"total", g->total_steps}}));
    for (std::size_t i = 0; i < r.jobs.size(); ++i) {
      std::weak_ptr<Generation> weak = g;
      auto ticket = batcher_.submit(std::move(r.jobs[i]),
                                    {.priority = r.priority,
                                     .deadline = deadline,
                                     .on_progress = [this, weak, i](const Progress& p) { on_progress(weak, i, p); },
                                     .on_complete =
                                         [weak](RequestId, std::optional<Errc>) {
                                           if (auto gen = weak.lock()) {
                                             std::lock_guard glock(gen->mutex);
                                             ++gen->completed;
                                             gen->changed.notify_all();
                                           }
                                         }});
      std::optional<ApiError> refused;
      if (ticket.ready() && ticket.error_code()) {
        const Errc code = *ticket.error_code();
        if (code == Errc::shut_down) {
          refused = ApiError(503, "the server is shutting down", "", "shutting_down");
        } else if (code == Errc::queue_full) {
          refused = ApiError(429, "the queue is full (" + std::to_string(options_.max_queue) + " images waiting)", "",
                             "queue_full");
        } else if (code == Errc::invalid_request) {
          try {
            static_cast<void>(ticket.get());
          } catch (const Error& e) {
            refused = error_of(e, r.shape);
          }
        }
      }
      if (refused) {
        for (auto& t : g->tickets)
          t.cancel();
        throw *refused;
      }
      g->tickets.push_back(std::move(ticket));
    }
  }

  // No finalizer thread could be started for `g`: cancel its jobs and finish it with 503 at once, so that no client
  // waits for a result nobody will write.
  static void fail_unstarted(Generation& g, const std::system_error& e) {
    for (auto& t : g.tickets)
      t.cancel();
    const ApiError error(503, std::string("the server cannot start a thread: ") + e.what(), "", "server_busy");
    std::lock_guard lock(g.mutex);
    g.result = error.body();
    g.http_status = 503;
    g.status = "failed";
    g.events.push_back(sse_frame("error", g.result));
    g.finished = true;
    g.changed.notify_all();
  }

  // The step count of a job for progress reports, before the batcher validated it (0 for a job it will refuse).
  std::size_t planned_steps(const diffusion::Job& job) const {
    try {
      return pipeline_.total_steps(job);
    } catch (const std::exception&) {
      return 0;
    }
  }

  // The success body of the generation's API shape.
  SuccessBody success_body() const {
    return [this](Generation& g, const std::vector<diffusion::Job>& jobs, const std::vector<std::string>& images) {
      return g.shape == ApiShape::openai ? openai_success_body(g, jobs, images)
                                         : a1111_success_body(g, jobs, images, options_.model_dir.filename().string());
    };
  }

  // Scheduler thread, after each step of image `index`: record progress, append an SSE progress frame.
  void on_progress(const std::weak_ptr<Generation>& weak, std::size_t index, const Progress& p) {
    auto g = weak.lock();
    if (!g) return;
    const std::size_t remaining = p.total_steps > p.steps_done ? p.total_steps - p.steps_done : 0;
    const auto step = batcher_.predicted_step_time(std::max<std::size_t>(1, last_batch_size_.load()));
    const auto eta_ms =
        step ? std::chrono::duration<double, std::milli>(*step).count() * static_cast<double>(remaining) : 0.0;
    std::lock_guard lock(g->mutex);
    if (!g->first_step) g->first_step = Clock::now();
    g->status = "running";
    g->steps_done[index] = p.steps_done;
    g->events.push_back(sse_frame("progress", {{"id", g->id},
                                               {"index", index},
                                               {"step", p.steps_done},
                                               {"total", p.total_steps},
                                               {"eta_ms", static_cast<std::int64_t>(std::llround(eta_ms))}}));
    g->changed.notify_all();
  }

  // ---- responding --------------------------------------------------------------------------------------------------

  // Blocking POST: waits for the generation in short slices; a client that hung up cancels it. A client that only
  // half-closed (FIN) is told apart from one that closed by one interim `100 Continue`, which a closed socket answers
  // with a reset; the half-closed one is answered here, since cpp-httplib 0.11 writes nothing to a socket that has
  // seen a FIN. (HTTP/1.0 has no interim responses: there a FIN counts as gone.)
  void respond_when_finished(const std::shared_ptr<Generation>& g, const httplib::Request& req,
                             httplib::Response& res) {
    const ConnectionProbe probe(req.local_port, req.remote_addr, req.remote_port);
    bool half_closed = false;
    auto client_gone = [&] {
      switch (probe.state()) {
        case ConnectionProbe::Peer::connected:
          return false;
        case ConnectionProbe::Peer::gone:
          return true;
        case ConnectionProbe::Peer::half_closed:
          if (half_closed) return false;
          half_closed = true;
          return req.version != "HTTP/1.1" || !probe.send_interim_response();
      }
      return false;
    };
    std::unique_lock lock(g->mutex);
    while (!g->finished) {
      if (g->changed.wait_for(lock, std::chrono::milliseconds(50), [&] { return g->finished; })) break;
      lock.unlock();
      const bool gone = client_gone();
      lock.lock();
      if (gone && !g->finished) {
        g->cancel_requested = true;
        g->changed.notify_all();
        res.status = 499;  // nobody reads it
        return;
      }
    }
    res.status = g->http_status;
    std::string extra;
    if (res.status == 429 || res.status == 503) {
      const std::string retry = std::to_string(retry_after_seconds());
      res.set_header("Retry-After", retry);
      extra = "Retry-After: " + retry + "\r\n";
    }
    res.set_content(g->result.dump(), "application/json");
    if (half_closed || (probe.state() == ConnectionProbe::Peer::half_closed && req.version == "HTTP/1.1")) {
      probe.send_all("HTTP/1.1 " + std::to_string(res.status) + " " + detail::reason_phrase(res.status) +
                         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(res.body.size()) +
                         "\r\nConnection: close\r\n" + extra + "\r\n" + res.body,
                     std::chrono::seconds(5));
    }
  }

  // Seconds until a refused client should retry: the waiting and running images, max_batch at a time, each taking
  // default_steps iterations at the measured step time.
  int retry_after_seconds() const {
    const Stats s = batcher_.stats();
    const auto step = batcher_.predicted_step_time(options_.max_batch);
    const double step_s = step ? std::chrono::duration<double>(*step).count() : 0.1;
    const double waves =
        std::ceil(static_cast<double>(s.queue_depth + s.active) / static_cast<double>(options_.max_batch));
    const double seconds = std::max(1.0, waves) * options_.default_steps * step_s;
    return static_cast<int>(std::max(1.0, std::ceil(seconds)));
  }

  ServerOptions options_;
  checkpoint::DiffusersFolder folder_;
  Backend backend_;
  Pipeline pipeline_;
  ApiLimits limits_;
  std::atomic<std::size_t> last_batch_size_{1};
  double max_pixel_steps_ = 0;            // the work budget in force (ServerOptions::max_pixel_steps or its default)
  std::atomic<std::size_t> watchers_{0};  // GET .../events streams open
  HttpCounters http_counters_;

  GenerationRegistry registry_{options_.keep_finished};

  RequestReadDeadline read_deadline_{options_.request_read_timeout};  // closes connections slow to send requests
  httplib::Server http_;
  int port_ = -1;
  std::atomic<bool> running_{false};       // run() has begun and not returned
  std::atomic<bool> unready_{false};       // stop_ready() was called
  Batcher batcher_;                        // destroyed (stopped) before everything above, which it calls back into
  std::unique_ptr<AgentResponder> agent_;  // reads batcher_: destroyed (stopped) first
};

}  // namespace carousel::examples::sd_server
