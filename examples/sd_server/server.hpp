#pragma once
/// \file sd_server/server.hpp
/// carousel-sd-server as a class: a Stable Diffusion model on any backend (a `diffusion::AnyBackend`: the CPU or the
/// CUDA backend, chosen at run time) behind a carousel StepBatcher, served over HTTP with cpp-httplib. `main.cpp` is a
/// thin command-line wrapper; the integration tests run it in-process.
///
/// Every generation request (whatever its API shape) becomes a `Generation`: n jobs submitted to the batcher, a
/// per-generation event log (Server-Sent Events frames: queued, progress, done | error) appended to from the
/// scheduler thread, and a finalizer thread that waits for the n tickets, encodes the PNGs and writes the final result.
/// HTTP handlers only read generations: a blocking POST waits for the result, a streaming POST and
/// `GET .../{id}/events` replay and follow the event log, `GET .../{id}` answers a snapshot. See docs/server.md.

#include <httplib.h>
#include <carousel/checkpoint/diffusers_folder.hpp>
#include <carousel/diffusion/any_backend.hpp>
#include <carousel/diffusion/pipeline.hpp>
#include <carousel/load_signal.hpp>
#include <carousel/step_batcher.hpp>
#include <carousel/version.hpp>
#include <common/png.hpp>
#include <nlohmann/json.hpp>
#include <sd_server/agent.hpp>
#include <sd_server/api.hpp>
#include <sd_server/connection.hpp>
#include <sd_server/metrics.hpp>
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
  std::filesystem::path model_dir;  ///< diffusers folder to serve
  bool bundled_model = false;       ///< whether model_dir is the model bundled with carousel (reported by /health)
  std::string host = "127.0.0.1";   ///< address to listen on
  int port = 8080;                  ///< port; 0 picks a free one (see `Server::bind`)
  std::size_t max_batch = 8;        ///< `Options::max_batch_size`
  std::size_t max_queue = 64;       ///< `Options::max_queue_size` (images waiting); 0 = unbounded
  Admission admission = Admission::continuous;   ///< batcher admission policy
  std::chrono::milliseconds batch_timeout{100};  ///< static batching: longest wait for a full batch
  bool concurrent_decode =
      false;  ///< `Options::concurrent_retire`: VAE decode in the retire stage, beside the next step
  std::size_t max_body_bytes = std::size_t{1} << 20;  ///< larger request bodies are answered 413
  int default_steps = 20;                             ///< steps when a request gives none
  double default_guidance = 7.5;                      ///< guidance scale when a request gives none
  int max_images = 8;                                 ///< most images per request
  std::size_t keep_finished = 256;                    ///< finished generations kept for GET .../{id}
  /// HAProxy agent-check port on `host` (`up NN%` from the drain estimate, `drain` while shutting down); 0 picks a
  /// free one (see `Server::agent_port`); none: no agent.
  std::optional<int> agent_port;
  double agent_target_seconds = 10.0;  ///< the drain time at which the agent reports 50% (`agent_weight_percent`)
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

namespace detail {

// One generation request in flight or recently finished, shared by the handlers that serve it.
struct Generation {
  std::string id;
  ApiShape shape = ApiShape::openai;
  std::string image_url_base;  // "http://HOST" (image_path() follows) when the client asked for URLs, else empty
  nlohmann::json parameters;
  std::vector<std::uint64_t> seeds;
  std::int64_t created = 0;  // unix seconds
  std::chrono::steady_clock::time_point submitted;
  std::vector<Ticket<diffusion::Job>> tickets;  // touched only by the finalizer once launched
  std::atomic<bool> cancel_requested{false};
  std::thread finalizer;

  // Asks the finalizer to cancel the generation's tickets. The caller must not hold `mutex`.
  void request_cancel() {
    cancel_requested = true;
    std::lock_guard lock(mutex);
    changed.notify_all();
  }

  std::mutex mutex;                 // guards everything below
  std::condition_variable changed;  // events, progress, completions, cancellation, finish
  std::size_t completed = 0;        // tickets completed (counted by their on_complete)
  std::vector<std::size_t> steps_done;
  std::vector<std::size_t> total_steps;
  std::vector<std::string> events;  // SSE frames, in order
  std::optional<std::chrono::steady_clock::time_point> first_step;
  std::string status = "queued";  // queued, running, completed, failed, cancelled
  bool finished = false;
  int http_status = 0;
  nlohmann::json result;                        // the response body once finished (success or error)
  std::vector<std::vector<std::uint8_t>> pngs;  // the images once finished, when the client asked for URLs
};

}  // namespace detail

/// carousel-sd-server: loads the model, starts the batcher, serves the HTTP API.
///
/// \code
///   ServerOptions options;
///   options.model_dir = "models/shapes-32";
///   options.port = 0;
///   const auto folder = checkpoint::DiffusersFolder::open(options.model_dir);
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
        folder_(checkpoint::DiffusersFolder::open(options_.model_dir)),
        backend_(checked(std::move(backend))),
        pipeline_(backend_, diffusion::pipeline_scheduler_config(folder_),
                  diffusion::pipeline_options(folder_, backend_.vae_scale_factor())),
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
    std::lock_guard lock(registry_mutex_);
    for (auto& [id, g] : generations_) {
      if (g->finalizer.joinable()) g->finalizer.join();
    }
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
    if (options_.agent_port && !agent_) {
      agent_ = std::make_unique<AgentResponder>(options_.host, *options_.agent_port, [this] { return agent_line(); });
    }
    return port_;
  }

  /// The HAProxy agent's port (after `bind`, when `ServerOptions::agent_port` asked for one), else 0.
  int agent_port() const noexcept { return agent_ ? agent_->port() : 0; }

  /// What the agent answers: `drain` once shutting down, else `up NN%` with NN =
  /// `agent_weight_percent(Stats::drain_seconds, ServerOptions::agent_target_seconds)`.
  std::string agent_line() const {
    if (is_draining()) return "drain";
    return "up " + std::to_string(agent_weight_percent(batcher_.stats().drain_seconds, options_.agent_target_seconds)) +
           "%";
  }

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
    {
      std::lock_guard lock(registry_mutex_);
      if (draining_) return;
      draining_ = true;
    }
    batcher_.stop(StopMode::drain);
    {
      std::lock_guard lock(registry_mutex_);
      for (auto& [id, g] : generations_) {
        if (g->finalizer.joinable()) g->finalizer.join();
      }
    }
    // httplib's stop() does nothing before the listener runs: wait for it when run() is on its way.
    while (running_ && !http_.is_running())
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http_.stop();
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
  using Generation = detail::Generation;

  static Backend checked(Backend backend) {
    if (!backend) throw std::invalid_argument("backend: the server needs a loaded model (the AnyBackend is empty)");
    return backend;
  }

  // ---- routes ------------------------------------------------------------------------------------------------------

  void routes() {
    const std::size_t threads =
        options_.max_batch + (options_.max_queue == 0 ? 64 : options_.max_queue) + 16;  // one per waiting request
    http_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http_.set_payload_max_length(options_.max_body_bytes);
    http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
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
    http_.Post("/v1/images/generations", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] { post_openai(req, res); });
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
                guarded(res, [&] { serve_events(find_generation(req.matches[1]), req, res, false); });
              });
    http_.Post("/sdapi/v1/txt2img", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] { post_a1111(req, res); });
    });
    http_.Get("/sdapi/v1/progress", [this](const httplib::Request&, httplib::Response& res) { a1111_progress(res); });
    http_.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
      nlohmann::json samplers = nlohmann::json::array();
      for (const auto& s : detail::sampler_names) {
        samplers.push_back(
            nlohmann::json{{"name", s.a1111}, {"aliases", {s.api}}, {"options", nlohmann::json::object()}});
      }
      res.set_content(samplers.dump(), "application/json");
    });
    http_.Get("/sdapi/v1/sd-models", [this](const httplib::Request&, httplib::Response& res) {
      const std::string name = options_.model_dir.filename().string();
      const nlohmann::json models = nlohmann::json::array(
          {{{"title", name}, {"model_name", name}, {"filename", options_.model_dir.string()}, {"hash", nullptr}}});
      res.set_content(models.dump(), "application/json");
    });
  }

  // The route pattern of a request, as the `endpoint` label of carousel_http_requests_total.
  static std::string endpoint_of(const httplib::Request& req) {
    const std::string& p = req.path;
    static const std::string gen = "/v1/images/generations";
    if (p == gen) return gen;
    if (p.starts_with(gen + "/")) {
      if (p.ends_with("/events")) return gen + "/{id}/events";
      return p.find("/images/") != std::string::npos ? gen + "/{id}/images/{index}.png" : gen + "/{id}";
    }
    for (const char* known : {"/", "/health", "/health/live", "/health/ready", "/metrics", "/sdapi/v1/txt2img",
                              "/sdapi/v1/progress", "/sdapi/v1/samplers", "/sdapi/v1/sd-models"}) {
      if (p == known) return p;
    }
    return "other";
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

  // GET /sdapi/v1/progress, as AUTOMATIC1111 answers it for its one job at a time: here the oldest unfinished
  // generation is "the job" (its share of steps done over all its images, the ETA of its slowest image), and
  // job_count counts every unfinished generation. Idle: progress 0, job "".
  void a1111_progress(httplib::Response& res) const {
    std::shared_ptr<Generation> current;
    std::size_t unfinished = 0;
    {
      std::lock_guard lock(registry_mutex_);
      for (const std::string& id : order_) {
        const auto& g = generations_.at(id);
        std::lock_guard glock(g->mutex);
        if (g->finished) continue;
        ++unfinished;
        if (!current) current = g;
      }
    }
    double progress = 0, eta = 0;
    nlohmann::json state = {{"skipped", false},        {"interrupted", false}, {"job", ""},
                            {"job_count", unfinished}, {"job_timestamp", ""},  {"job_no", 0},
                            {"sampling_step", 0},      {"sampling_steps", 0}};
    if (current) {
      const auto step = batcher_.predicted_step_time(std::max<std::size_t>(1, last_batch_size_.load()));
      std::lock_guard lock(current->mutex);
      std::size_t done = 0, total = 0, slowest = 0;
      for (std::size_t i = 0; i < current->total_steps.size(); ++i) {
        done += current->steps_done[i];
        total += current->total_steps[i];
        slowest =
            std::max(slowest, current->total_steps[i] - std::min(current->steps_done[i], current->total_steps[i]));
      }
      progress = total ? static_cast<double>(done) / static_cast<double>(total) : 0.0;
      eta = step ? std::chrono::duration<double>(*step).count() * static_cast<double>(slowest) : 0.0;
      state["job"] = current->id;
      state["interrupted"] = current->cancel_requested.load();
      state["job_timestamp"] = std::to_string(current->created);
      if (!current->total_steps.empty()) {
        state["sampling_step"] = current->steps_done.front();
        state["sampling_steps"] = current->total_steps.front();
      }
    }
    const nlohmann::json body = {{"progress", progress},
                                 {"eta_relative", eta},
                                 {"state", state},
                                 {"current_image", nullptr},
                                 {"textinfo", nullptr}};
    res.set_content(body.dump(), "application/json");
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
    if (is_draining()) {
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
    std::size_t in_flight = 0;
    {
      std::lock_guard lock(registry_mutex_);
      for (const auto& [id, g] : generations_) {
        std::lock_guard glock(g->mutex);
        in_flight += g->finished ? 0 : 1;
      }
    }
    detail::metric(out, "carousel_http_generations_in_flight", "gauge", "Generation requests not yet finished.",
                   static_cast<double>(in_flight));
    detail::metric(out, "carousel_http_draining", "gauge", "1 while shutting down.", is_draining() ? 1.0 : 0.0);
    http_counters_.write(out);
    res.set_content(out.str(), "text/plain; version=0.0.4");
  }

  void post_openai(const httplib::Request& req, httplib::Response& res) {
    GenerationRequest r = parse_openai(req.body, limits_);
    const bool stream = r.stream, async = r.async;
    std::string url_host;
    if (r.url_response) {
      url_host = req.get_header_value("Host");
      if (url_host.empty()) url_host = options_.host + ":" + std::to_string(port_);
    }
    auto g = launch(std::move(r), url_host);
    if (async) {
      res.status = 202;
      res.set_content(nlohmann::json{{"id", g->id},
                                     {"status", "queued"},
                                     {"status_url", "/v1/images/generations/" + g->id},
                                     {"events_url", "/v1/images/generations/" + g->id + "/events"}}
                          .dump(),
                      "application/json");
    } else if (stream) {
      serve_events(g, req, res, true);
    } else {
      respond_when_finished(g, req, res);
    }
  }

  void post_a1111(const httplib::Request& req, httplib::Response& res) {
    respond_when_finished(launch(parse_a1111(req.body, limits_)), req, res);
  }

  void get_generation(const httplib::Request& req, httplib::Response& res) {
    auto g = find_generation(req.matches[1]);
    std::lock_guard lock(g->mutex);
    nlohmann::json progress = nlohmann::json::array();
    for (std::size_t i = 0; i < g->seeds.size(); ++i)
      progress.push_back({{"step", g->steps_done[i]}, {"total", g->total_steps[i]}});
    nlohmann::json body = {{"id", g->id}, {"status", g->status}, {"created", g->created}, {"progress", progress}};
    if (g->finished)
      body[g->http_status == 200 ? "result" : "error"] = g->http_status == 200 ? g->result : g->result["error"];
    res.set_content(body.dump(), "application/json");
  }

  // Where image `index` of generation `id` is served (response_format "url").
  static std::string image_path(const std::string& id, std::size_t index) {
    return "/v1/images/generations/" + id + "/images/" + std::to_string(index) + ".png";
  }

  // GET /v1/images/generations/{id}/images/{index}.png: one image of a finished generation that answered with URLs,
  // while it is kept. `pngs` is written under the mutex together with `finished`.
  void get_image(const httplib::Request& req, httplib::Response& res) {
    auto g = find_generation(req.matches[1]);
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
    auto g = find_generation(req.matches[1]);
    g->request_cancel();
    std::lock_guard lock(g->mutex);
    res.status = g->finished ? 200 : 202;
    res.set_content(nlohmann::json{{"id", g->id}, {"status", g->finished ? g->status : "cancelling"}}.dump(),
                    "application/json");
  }

  // ---- generations -------------------------------------------------------------------------------------------------

  std::shared_ptr<Generation> find_generation(const std::string& id) const {
    std::lock_guard lock(registry_mutex_);
    const auto it = generations_.find(id);
    if (it == generations_.end()) throw ApiError(404, "id: no generation '" + id + "'", "id", "not_found");
    return it->second;
  }

  bool is_draining() const {
    std::lock_guard lock(registry_mutex_);
    return draining_;
  }

  static std::string frame(const char* event, const nlohmann::json& data) {
    return std::string("event: ") + event + "\ndata: " + data.dump() + "\n\n";
  }

  // Validates the jobs, submits them and registers the generation; throws ApiError 400 (invalid field), 429 (queue
  // full) or 503 (shutting down).
  // `url_host`: the Host the client reached us by, when it asked for image URLs.
  std::shared_ptr<Generation> launch(GenerationRequest r, const std::string& url_host = "") {
    for (auto& job : r.jobs) {
      try {
        pipeline_.validate(job);
      } catch (const std::invalid_argument& e) {
        throw ApiError(400, e.what(), field_of_validation_message(e.what(), r.shape));
      }
    }
    auto g = std::make_shared<Generation>();
    g->shape = r.shape;
    g->parameters = std::move(r.parameters);
    if (r.url_response) g->image_url_base = "http://" + url_host;
    g->created = static_cast<std::int64_t>(std::time(nullptr));
    g->submitted = Clock::now();
    for (const auto& job : r.jobs)
      g->seeds.push_back(job.seed);
    g->steps_done.assign(r.jobs.size(), 0);
    for (const auto& job : r.jobs)
      g->total_steps.push_back(pipeline_.total_steps(job));
    std::optional<Clock::time_point> deadline;
    if (r.timeout_ms) deadline = g->submitted + std::chrono::milliseconds(*r.timeout_ms);

    std::lock_guard lock(registry_mutex_);  // shutdown() cannot slip between submit and registration
    if (draining_) throw ApiError(503, "the server is shutting down", "", "shutting_down");
    g->id = "gen-" + std::to_string(next_id_++);
    g->events.push_back(
        frame("queued", {{"id", g->id}, {"n", r.jobs.size()}, {"seeds", g->seeds}, {"total", g->total_steps}}));
    std::optional<Errc> refused;
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
      if (ticket.ready() && ticket.error_code() &&
          (*ticket.error_code() == Errc::queue_full || *ticket.error_code() == Errc::shut_down)) {
        refused = ticket.error_code();
      }
      g->tickets.push_back(std::move(ticket));
      if (refused) break;
    }
    if (refused) {
      for (auto& t : g->tickets)
        t.cancel();
      if (*refused == Errc::shut_down) throw ApiError(503, "the server is shutting down", "", "shutting_down");
      throw ApiError(429, "the queue is full (" + std::to_string(options_.max_queue) + " images waiting)", "",
                     "queue_full");
    }
    generations_[g->id] = g;
    order_.push_back(g->id);
    evict_finished();
    g->finalizer = std::thread([this, g] { finalize(*g); });
    return g;
  }

  // Drops the oldest finished generations beyond keep_finished (the caller holds registry_mutex_).
  void evict_finished() {
    std::size_t excess = order_.size() > options_.keep_finished ? order_.size() - options_.keep_finished : 0;
    for (auto it = order_.begin(); excess > 0 && it != order_.end();) {
      auto g = generations_.at(*it);
      bool done = false;
      {
        std::lock_guard glock(g->mutex);
        done = g->finished;
      }
      if (!done) {
        ++it;
        continue;
      }
      if (g->finalizer.joinable()) g->finalizer.join();
      generations_.erase(*it);
      it = order_.erase(it);
      --excess;
    }
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
    g->events.push_back(frame("progress", {{"id", g->id},
                                           {"index", index},
                                           {"step", p.steps_done},
                                           {"total", p.total_steps},
                                           {"eta_ms", static_cast<std::int64_t>(std::llround(eta_ms))}}));
    g->changed.notify_all();
  }

  // Finalizer thread of one generation: sleeps until every ticket completed (their on_complete counts them) or a
  // cancellation is asked for (then cancels them all, once), then builds the result. No polling.
  void finalize(Generation& g) {
    {
      std::unique_lock lock(g.mutex);
      bool cancel_sent = false;
      while (g.completed < g.tickets.size()) {
        if (g.cancel_requested && !cancel_sent) {
          cancel_sent = true;
          lock.unlock();
          for (auto& t : g.tickets)
            t.cancel();
          lock.lock();
          continue;
        }
        g.changed.wait(lock, [&] { return g.completed >= g.tickets.size() || (g.cancel_requested && !cancel_sent); });
      }
    }
    std::vector<diffusion::Job> jobs;
    std::optional<ApiError> error;
    for (auto& t : g.tickets) {
      try {
        jobs.push_back(t.get());
      } catch (const Error& e) {
        if (!error) error = error_of(e);
      } catch (const std::exception& e) {
        if (!error) error = ApiError(500, e.what(), "", "server_error");
      }
    }
    g.tickets.clear();
    nlohmann::json result;
    std::vector<std::vector<std::uint8_t>> pngs;  // kept for the image URLs, when the client asked for them
    std::string status = "completed";
    int http_status = 200;
    if (error) {
      result = error->body();
      http_status = error->status();
      status = error->type() == "cancelled" ? "cancelled" : "failed";
    } else {
      std::vector<std::string> images;  // base64 PNGs for the response body, unless it carries URLs
      try {
        for (const auto& job : jobs) {
          auto png = encode_png(job.image);
          if (g.image_url_base.empty()) {
            images.push_back(base64(png));
          } else {
            pngs.push_back(std::move(png));
          }
        }
        result = success_body(g, jobs, images);
      } catch (const std::exception& e) {
        result = ApiError(500, e.what(), "", "server_error").body();
        http_status = 500;
        status = "failed";
      }
    }
    std::lock_guard lock(g.mutex);
    g.result = std::move(result);
    g.pngs = std::move(pngs);
    g.http_status = http_status;
    g.status = status;
    g.events.push_back(http_status == 200 ? frame("done", g.result) : frame("error", g.result));
    g.finished = true;
    g.changed.notify_all();
  }

  static ApiError error_of(const Error& e) {
    switch (e.code()) {
      case Errc::queue_full:
        return ApiError(429, e.what(), "", "queue_full");
      case Errc::cancelled:
        return ApiError(499, e.what(), "", "cancelled");
      case Errc::deadline_exceeded:
      case Errc::deadline_unreachable:
        return ApiError(504, e.what(), "timeout_ms", "timeout");
      case Errc::shut_down:
        return ApiError(503, e.what(), "", "shutting_down");
      case Errc::invalid_request:
        return ApiError(400, e.what(), "", "invalid_request");
      case Errc::model_error:
        break;
    }
    return ApiError(500, e.what(), "", "model_error");
  }

  nlohmann::json success_body(const Generation& g, const std::vector<diffusion::Job>& jobs,
                              const std::vector<std::string>& images) const {
    const auto now = Clock::now();
    auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
    nlohmann::json timings = {{"total_ms", ms(now - g.submitted)}};
    {
      std::lock_guard lock(const_cast<Generation&>(g).mutex);
      if (g.first_step) timings["first_step_ms"] = ms(*g.first_step - g.submitted);
    }
    if (g.shape == ApiShape::openai) {
      nlohmann::json data = nlohmann::json::array();
      for (std::size_t i = 0; i < jobs.size(); ++i) {
        if (g.image_url_base.empty()) {
          data.push_back({{"b64_json", images[i]}, {"seed", jobs[i].seed}});
        } else {
          data.push_back({{"url", g.image_url_base + image_path(g.id, i)}, {"seed", jobs[i].seed}});
        }
      }
      return {{"created", g.created}, {"id", g.id}, {"data", data}, {"timings", timings}, {"parameters", g.parameters}};
    }
    const diffusion::Job& first = jobs.front();
    nlohmann::json info = {{"id", g.id},
                           {"prompt", first.prompt},
                           {"all_prompts", std::vector<std::string>(jobs.size(), first.prompt)},
                           {"negative_prompt", first.negative_prompt},
                           {"all_negative_prompts", std::vector<std::string>(jobs.size(), first.negative_prompt)},
                           {"seed", first.seed},
                           {"all_seeds", g.seeds},
                           {"subseed", -1},
                           {"all_subseeds", std::vector<int>(jobs.size(), -1)},
                           {"subseed_strength", 0},
                           {"width", first.width},
                           {"height", first.height},
                           {"sampler_name", detail::sampler_name(first.sampler).a1111},
                           {"cfg_scale", first.guidance_scale},
                           {"steps", first.steps},
                           {"batch_size", jobs.size()},
                           {"restore_faces", false},
                           {"sd_model_name", options_.model_dir.filename().string()},
                           {"index_of_first_image", 0},
                           {"infotexts", std::vector<std::string>(jobs.size(), first.prompt)},
                           {"timings", timings}};
    return {{"images", images}, {"parameters", g.parameters}, {"info", info.dump()}};
  }

  // ---- responding --------------------------------------------------------------------------------------------------

  // Blocking POST: waits for the generation in short slices; a client that hung up cancels it.
  void respond_when_finished(const std::shared_ptr<Generation>& g, const httplib::Request& req,
                             httplib::Response& res) {
    const ConnectionProbe probe(req.local_port, req.remote_port);
    std::unique_lock lock(g->mutex);
    while (!g->finished) {
      if (g->changed.wait_for(lock, std::chrono::milliseconds(50), [&] { return g->finished; })) break;
      lock.unlock();
      const bool gone = probe.client_gone();
      lock.lock();
      if (gone && !g->finished) {
        g->cancel_requested = true;
        g->changed.notify_all();
        res.status = 499;  // nobody reads it
        return;
      }
    }
    res.status = g->http_status;
    if (res.status == 429 || res.status == 503) res.set_header("Retry-After", std::to_string(retry_after_seconds()));
    res.set_content(g->result.dump(), "application/json");
  }

  // Server-Sent Events: replays the generation's frames from the first, then follows until done or error.
  // With `owner`, a client that hangs up cancels the generation.
  void serve_events(const std::shared_ptr<Generation>& g, const httplib::Request& req, httplib::Response& res,
                    bool owner) {
    auto probe = std::make_shared<ConnectionProbe>(req.local_port, req.remote_port);
    auto cursor = std::make_shared<std::size_t>(0);
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream", [g, probe, cursor, owner](std::size_t, httplib::DataSink& sink) {
          std::vector<std::string> frames;
          bool finished = false;
          {
            std::unique_lock lock(g->mutex);
            g->changed.wait_for(lock, std::chrono::milliseconds(100),
                                [&] { return g->events.size() > *cursor || g->finished; });
            frames.assign(g->events.begin() + static_cast<std::ptrdiff_t>(*cursor), g->events.end());
            *cursor = g->events.size();
            finished = g->finished;
          }
          for (const auto& f : frames) {
            if (!sink.write(f.data(), f.size())) {
              if (owner) g->request_cancel();
              return false;
            }
          }
          if (finished) {
            sink.done();
            return true;
          }
          if (probe->client_gone()) {
            if (owner) g->request_cancel();
            return false;
          }
          return true;
        });
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
  HttpCounters http_counters_;

  mutable std::mutex registry_mutex_;  // guards the four members below
  std::map<std::string, std::shared_ptr<Generation>> generations_;
  std::deque<std::string> order_;  // ids, oldest first
  std::uint64_t next_id_ = 1;
  bool draining_ = false;

  httplib::Server http_;
  int port_ = -1;
  std::atomic<bool> running_{false};       // run() has begun and not returned
  Batcher batcher_;                        // destroyed (stopped) before everything above, which it calls back into
  std::unique_ptr<AgentResponder> agent_;  // reads batcher_: destroyed (stopped) first
};

}  // namespace carousel::examples::sd_server
