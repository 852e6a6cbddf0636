#pragma once
/// \file sd_server/finalizer.hpp
/// The finalizer of a generation: a thread that sleeps until every ticket of the generation completed (or a
/// cancellation is asked for), then encodes the images and writes the result and the last event.

#include <carousel/diffusion/job.hpp>
#include <carousel/errors.hpp>
#include <common/png.hpp>
#include <nlohmann/json.hpp>
#include <sd_server/events.hpp>
#include <sd_server/generation.hpp>
#include <sd_server/request.hpp>

#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace carousel::examples::sd_server {

/// Builds a success body from the finished jobs and their base64 PNGs (empty when the client asked for URLs).
using SuccessBody =
    std::function<nlohmann::json(Generation&, const std::vector<diffusion::Job>&, const std::vector<std::string>&)>;

/// The finalizer's work for `g`: waits (no polling) until every ticket completed, cancelling them all once if a
/// cancellation is asked for meanwhile; then writes the result (`body` of the jobs, or the first error), the images
/// kept for URLs, the status and the last SSE frame, and marks the generation finished.
inline void finalize(Generation& g, const SuccessBody& body) {
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
      if (!error) error = error_of(e, g.shape);
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
      result = body(g, jobs, images);
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
  // The last event is rendered from the result when sent (events.hpp): the images are held once.
  g.events.emplace_back();
  g.finished = true;
  g.finished_at = Generation::Clock::now();
  g.bytes = g.result.dump().size();
  for (const auto& png : g.pngs)
    g.bytes += png.size();
  for (const auto& e : g.events)
    g.bytes += e.size();
  g.changed.notify_all();
}

}  // namespace carousel::examples::sd_server
