#pragma once
/// \file sd_server/events.hpp
/// Server-Sent Events of a generation: the frames its event log holds (queued, progress, done | error) and the
/// streaming response that replays and follows them.

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <sd_server/connection.hpp>
#include <sd_server/generation.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace carousel::examples::sd_server {

/// One SSE frame: `event: NAME`, `data: JSON`, blank line.
inline std::string sse_frame(const char* event, const nlohmann::json& data) {
  return std::string("event: ") + event + "\ndata: " + data.dump() + "\n\n";
}

/// The last SSE frame of a finished generation: `done` with the result, or `error`. The caller holds `g.mutex`.
inline std::string last_event(const Generation& g) {
  return sse_frame(g.http_status == 200 ? "done" : "error", g.result);
}

/// Answers `res` with the generation's event stream: replays its frames from the first, then follows until done or
/// error. With `owner` (the client that made the request), a client that hangs up cancels the generation.
/// `released` (if any) runs once the stream ended, however it ended.
inline void serve_events(const std::shared_ptr<Generation>& g, const httplib::Request& req, httplib::Response& res,
                         bool owner, std::function<void()> released = nullptr) {
  auto probe = std::make_shared<ConnectionProbe>(req.local_port, req.remote_addr, req.remote_port);
  auto cursor = std::make_shared<std::size_t>(0);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [g, probe, cursor, owner](std::size_t, httplib::DataSink& sink) {
        std::vector<std::string> frames;
        bool finished = false;
        {
          std::unique_lock lock(g->mutex);
          g->changed.wait_for(lock, std::chrono::milliseconds(100),
                              [&] { return g->events.size() > *cursor || g->finished; });
          for (std::size_t i = *cursor; i < g->events.size(); ++i) {
            // An empty entry is the last event, rendered from the result (which alone holds the images).
            frames.push_back(g->events[i].empty() ? last_event(*g) : g->events[i]);
          }
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
        // A FIN ends the stream, half-close or not: cpp-httplib 0.11 writes nothing more to such a socket.
        if (probe->state() != ConnectionProbe::Peer::connected) {
          if (owner) g->request_cancel();
          return false;
        }
        return true;
      },
      [released = std::move(released)](bool) {
        if (released) released();
      });
}

}  // namespace carousel::examples::sd_server
