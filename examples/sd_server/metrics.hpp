#pragma once
/// \file sd_server/metrics.hpp
/// Prometheus text exposition (format 0.0.4) of a batcher's `carousel::Stats` and the server's HTTP counters.

#include <httplib.h>
#include <carousel/stats.hpp>

#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>

namespace carousel::examples::sd_server {

/// Counts HTTP responses by method, endpoint (the route pattern, not the raw path) and status. Thread-safe.
class HttpCounters {
 public:
  /// Counts one response.
  void count(const std::string& method, const std::string& endpoint, int status) {
    std::lock_guard lock(mutex_);
    ++counts_[{method, endpoint, status}];
  }

  /// Writes `carousel_http_requests_total{method, endpoint, status}`.
  void write(std::ostream& out) const {
    out << "# HELP carousel_http_requests_total HTTP responses by method, endpoint and status.\n"
           "# TYPE carousel_http_requests_total counter\n";
    std::lock_guard lock(mutex_);
    for (const auto& [key, n] : counts_) {
      out << "carousel_http_requests_total{method=\"" << std::get<0>(key) << "\",endpoint=\"" << std::get<1>(key)
          << "\",status=\"" << std::get<2>(key) << "\"} " << n << '\n';
    }
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::tuple<std::string, std::string, int>, std::uint64_t> counts_;
};

namespace detail {

inline void metric(std::ostream& out, const char* name, const char* type, const char* help, double value) {
  out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n' << name << ' ' << value << '\n';
}

// Cumulative buckets: carousel::Histogram keeps per-bucket counts, Prometheus wants counts of values <= le.
inline void histogram(std::ostream& out, const char* name, const char* help, const Histogram& h) {
  out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " histogram\n";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < Histogram::bucket_count; ++i) {
    cumulative += h.bucket(i);
    out << name << "_bucket{le=\"" << Histogram::upper_bound(i) << "\"} " << cumulative << '\n';
  }
  out << name << "_bucket{le=\"+Inf\"} " << h.count() << '\n';
  out << name << "_sum " << h.sum() << '\n' << name << "_count " << h.count() << '\n';
}

}  // namespace detail

/// Writes the batcher's counters, gauges and histograms as Prometheus metrics named `carousel_*`.
inline void write_stats(std::ostream& out, const Stats& s) {
  using detail::metric;
  out.precision(9);
  metric(out, "carousel_queue_depth", "gauge", "Requests waiting for admission.", static_cast<double>(s.queue_depth));
  metric(out, "carousel_active_requests", "gauge", "Requests running now.", static_cast<double>(s.active));
  metric(out, "carousel_retiring_requests", "gauge", "Finished requests waiting for or in the decode stage.",
         static_cast<double>(s.retiring));
  metric(out, "carousel_remaining_request_steps", "gauge",
         "UNet steps left in running and queued requests (each request's total_steps less those done).",
         static_cast<double>(s.remaining_steps));
  metric(out, "carousel_drain_seconds", "gauge",
         "Estimated seconds to finish every running and queued request at the measured step times (0 when idle).",
         s.drain_seconds);
  metric(out, "carousel_batch_occupancy", "gauge", "Mean batch size / max batch size over all iterations.",
         s.mean_occupancy);
  metric(out, "carousel_mean_batch_size", "gauge", "Mean requests per iteration.", s.mean_batch_size);
  metric(out, "carousel_iterations_total", "counter", "Iterations that stepped at least one request.",
         static_cast<double>(s.iterations));
  metric(out, "carousel_request_steps_total", "counter", "Request-steps done (sum of batch sizes).",
         static_cast<double>(s.request_steps));
  metric(out, "carousel_requests_submitted_total", "counter", "Requests (images) submitted to the batcher.",
         static_cast<double>(s.submitted));
  metric(out, "carousel_requests_admitted_total", "counter", "Requests admitted to the batch.",
         static_cast<double>(s.admitted));
  metric(out, "carousel_requests_completed_total", "counter", "Requests completed with an image.",
         static_cast<double>(s.completed));
  metric(out, "carousel_requests_failed_total", "counter", "Requests failed by a model error.",
         static_cast<double>(s.failed));
  metric(out, "carousel_requests_cancelled_total", "counter", "Requests cancelled (client gone, DELETE, shutdown).",
         static_cast<double>(s.cancelled));
  metric(out, "carousel_requests_expired_total", "counter", "Requests whose deadline (timeout_ms) passed.",
         static_cast<double>(s.expired));
  metric(out, "carousel_requests_rejected_total", "counter",
         "Requests refused: queue full, shutting down or deadline unreachable.", static_cast<double>(s.rejected));
  metric(out, "carousel_requests_preempted_total", "counter", "Suspensions by preemption.",
         static_cast<double>(s.preempted));
  detail::histogram(out, "carousel_request_latency_seconds", "Submit to completion of successful requests.", s.latency);
  detail::histogram(out, "carousel_queue_wait_seconds", "Submit to first admission.", s.queue_wait);
  detail::histogram(out, "carousel_step_time_seconds", "Model time of one iteration.", s.step_time);
}

/// The route pattern of a request, as the `endpoint` label of carousel_http_requests_total (the raw path would make
/// one label value per generation id).
inline std::string endpoint_of(const httplib::Request& req) {
  const std::string& p = req.path;
  static const std::string gen = "/v1/images/generations";
  if (p == gen) return gen;
  if (p.starts_with(gen + "/")) {
    if (p.ends_with("/events")) return gen + "/{id}/events";
    return p.find("/images/", gen.size()) != std::string::npos ? gen + "/{id}/images/{index}.png" : gen + "/{id}";
  }
  for (const char* known : {"/", "/health", "/health/live", "/health/ready", "/metrics", "/sdapi/v1/txt2img",
                            "/sdapi/v1/progress", "/sdapi/v1/samplers", "/sdapi/v1/sd-models"}) {
    if (p == known) return p;
  }
  return "other";
}

}  // namespace carousel::examples::sd_server
