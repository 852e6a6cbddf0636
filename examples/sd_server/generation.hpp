#pragma once
/// \file sd_server/generation.hpp
/// One generation request as the server keeps it (`Generation`: its tickets, progress, event log and result), and the
/// registry that names, stores and evicts them (`GenerationRegistry`).

#include <carousel/diffusion/job.hpp>
#include <carousel/ticket.hpp>
#include <nlohmann/json.hpp>
#include <sd_server/request.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace carousel::examples::sd_server {

/// One generation request in flight or recently finished, shared by the handlers that serve it. Fields above `mutex`
/// are written once before the generation is registered (or, `tickets`, only by its finalizer); the rest is guarded
/// by `mutex`.
struct Generation {
  using Clock = std::chrono::steady_clock;

  std::string id;                     ///< unguessable id, assigned at registration
  ApiShape shape = ApiShape::openai;  ///< the API shape it came in (and is answered in)
  std::string image_url_base;         ///< "http://HOST" (image paths follow) when the client asked for URLs, else ""
  nlohmann::json parameters;          ///< the request as understood (echoed back)
  std::vector<std::uint64_t> seeds;   ///< one per image
  std::int64_t created = 0;           ///< unix seconds
  Clock::time_point submitted;        ///< when it was launched
  std::vector<Ticket<diffusion::Job>> tickets;  ///< touched only by the finalizer once launched
  std::atomic<bool> cancel_requested{false};    ///< set by `request_cancel`
  std::thread finalizer;                        ///< waits for the tickets and writes the result

  /// Asks the finalizer to cancel the generation's tickets. The caller must not hold `mutex`.
  void request_cancel() {
    cancel_requested = true;
    std::lock_guard lock(mutex);
    changed.notify_all();
  }

  std::mutex mutex;                      ///< guards everything below
  std::condition_variable changed;       ///< events, progress, completions, cancellation, finish
  std::size_t completed = 0;             ///< tickets completed (counted by their on_complete)
  std::size_t watchers = 0;              ///< `GET .../events` streams following it
  std::vector<std::size_t> steps_done;   ///< per image
  std::vector<std::size_t> total_steps;  ///< per image
  std::vector<std::string> events;       ///< SSE frames, in order; an empty one is the last, rendered from `result`
  std::optional<Clock::time_point> first_step;  ///< when its first step ran
  std::string status = "queued";                ///< queued, running, completed, failed, cancelled
  bool finished = false;                        ///< the result is written
  Clock::time_point finished_at;                ///< when the result was written
  std::size_t bytes = 0;                        ///< memory held by the result and images once finished (estimate)
  int http_status = 0;                          ///< the status of the result
  nlohmann::json result;                        ///< the response body once finished (success or error)
  std::vector<std::vector<std::uint8_t>> pngs;  ///< the images once finished, when the client asked for URLs
};

/// The `timings` object of a success body: total and first-step milliseconds since submission.
inline nlohmann::json timings_of(Generation& g) {
  const auto now = Generation::Clock::now();
  auto ms = [](Generation::Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  nlohmann::json timings = {{"total_ms", ms(now - g.submitted)}};
  std::lock_guard lock(g.mutex);
  if (g.first_step) timings["first_step_ms"] = ms(*g.first_step - g.submitted);
  return timings;
}

/// How long finished generations are kept for `GET .../{id}`: the oldest finished ones are evicted first, while more
/// than `count` are kept, while together they hold more than `bytes`, and once older than `age`.
struct KeepLimits {
  std::size_t count = 256;                     ///< finished generations kept at most
  std::size_t bytes = std::size_t{256} << 20;  ///< memory their results and images may hold together
  std::chrono::seconds age{3600};              ///< longest time a finished generation is kept
};

/// The generations the server knows: registered at launch, kept after they finish for `GET .../{id}` until evicted
/// (`KeepLimits`, checked whenever a generation registers). Also holds the draining flag, so that no generation
/// registers after `begin_draining`. Thread-safe.
class GenerationRegistry {
 public:
  /// A registry that keeps finished generations within `keep`.
  explicit GenerationRegistry(KeepLimits keep) : keep_(keep) {}

  /// Registers `g` under a new id: calls `submit(g)` (which submits its jobs and throws to refuse) and `start(g)`
  /// under the registry's lock, so draining cannot begin in between. Throws `ApiError` 503 when draining.
  void add(const std::shared_ptr<Generation>& g, const std::function<void(const std::shared_ptr<Generation>&)>& submit,
           const std::function<void(const std::shared_ptr<Generation>&)>& start) {
    std::lock_guard lock(mutex_);
    if (draining_) throw ApiError(503, "the server is shutting down", "", "shutting_down");
    g->id = random_id();
    submit(g);
    generations_[g->id] = g;
    order_.push_back(g->id);
    evict_finished();
    start(g);
  }

  /// The generation named `id`; throws `ApiError` 404 when there is none (never was, or evicted).
  std::shared_ptr<Generation> find(const std::string& id) const {
    std::lock_guard lock(mutex_);
    const auto it = generations_.find(id);
    if (it == generations_.end()) throw ApiError(404, "id: no generation '" + id + "'", "id", "not_found");
    return it->second;
  }

  /// The oldest unfinished generation (null when none) and how many are unfinished.
  std::pair<std::shared_ptr<Generation>, std::size_t> oldest_unfinished() const {
    std::shared_ptr<Generation> oldest;
    std::size_t unfinished = 0;
    std::lock_guard lock(mutex_);
    for (const std::string& id : order_) {
      const auto& g = generations_.at(id);
      std::lock_guard glock(g->mutex);
      if (g->finished) continue;
      ++unfinished;
      if (!oldest) oldest = g;
    }
    return {oldest, unfinished};
  }

  /// Marks the registry draining; returns false if it already was.
  bool begin_draining() {
    std::lock_guard lock(mutex_);
    if (draining_) return false;
    draining_ = true;
    return true;
  }

  /// Whether `begin_draining` was called.
  bool draining() const {
    std::lock_guard lock(mutex_);
    return draining_;
  }

  /// Joins every generation's finalizer (after the batcher stopped, they all end).
  void join_all() {
    std::lock_guard lock(mutex_);
    for (auto& [id, g] : generations_) {
      if (g->finalizer.joinable()) g->finalizer.join();
    }
  }

 private:
  // "gen-" and 128 random bits in hex, from the operating system's generator: ids are capabilities (whoever knows
  // one may read, follow and cancel that generation), so they must not be guessable.
  std::string random_id() {
    static constexpr char hex[] = "0123456789abcdef";
    std::string id = "gen-";
    for (int word = 0; word < 4; ++word) {
      std::uint32_t bits = random_();
      for (int nibble = 0; nibble < 8; ++nibble, bits >>= 4)
        id += hex[bits & 0xf];
    }
    return id;
  }

  // Drops the oldest finished generations while the kept ones exceed the count or byte limit, and those older than
  // the age limit (the caller holds mutex_). Unfinished generations are never dropped and do not count.
  void evict_finished() {
    struct Kept {
      std::deque<std::string>::iterator at;
      std::size_t bytes;
      Generation::Clock::time_point finished_at;
    };
    std::vector<Kept> kept;  // finished, oldest first
    std::size_t bytes = 0;
    for (auto it = order_.begin(); it != order_.end(); ++it) {
      const auto& g = generations_.at(*it);
      std::lock_guard glock(g->mutex);
      if (!g->finished) continue;
      kept.push_back({it, g->bytes, g->finished_at});
      bytes += g->bytes;
    }
    const auto now = Generation::Clock::now();
    std::size_t count = kept.size();
    std::vector<std::string> evicted;
    for (const Kept& k : kept) {
      if (count <= keep_.count && bytes <= keep_.bytes && now - k.finished_at <= keep_.age) continue;
      evicted.push_back(*k.at);
      --count;
      bytes -= k.bytes;
    }
    for (const std::string& id : evicted) {
      auto g = generations_.at(id);
      if (g->finalizer.joinable()) g->finalizer.join();
      generations_.erase(id);
      order_.erase(std::find(order_.begin(), order_.end(), id));
    }
  }

  const KeepLimits keep_;
  mutable std::mutex mutex_;  // guards the members below
  std::map<std::string, std::shared_ptr<Generation>> generations_;
  std::deque<std::string> order_;  // ids, oldest first
  std::random_device random_;      // guarded by mutex_
  bool draining_ = false;
};

}  // namespace carousel::examples::sd_server
