#pragma once
/// \file sd_server/thread_pool.hpp
/// The HTTP server's worker threads: one per open connection, started when needed up to a cap, ended when idle.

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <iterator>
#include <list>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace carousel::examples::sd_server {

/// A task queue for cpp-httplib that grows with the connections it serves. cpp-httplib runs each accepted connection
/// as one task for as long as the connection is open (a waiting generation request, an event stream, an idle
/// keep-alive connection, a client still sending its head), so a fixed pool sized for the generation traffic leaves
/// `/health` and `/metrics` waiting behind slow clients. This pool starts a thread whenever a task finds none idle,
/// up to `max_threads` (beyond it, tasks wait in order), and lets threads above `keep_threads` end once they have
/// run no task for `idle_for`. Blocked threads cost little (a reserved stack), which is why a cap in the hundreds is
/// reasonable. Thread-safety: `enqueue` and `shutdown` may be called from any thread; `shutdown` once.
class ElasticThreadPool final : public httplib::TaskQueue {
 public:
  /// At most `max_threads` threads (>= 1), `keep_threads` of them started at once and kept while idle.
  explicit ElasticThreadPool(std::size_t max_threads, std::size_t keep_threads = 8,
                             std::chrono::milliseconds idle_for = std::chrono::seconds(10))
      : max_(std::max<std::size_t>(max_threads, 1)), keep_(std::min(keep_threads, max_)), idle_for_(idle_for) {
    std::lock_guard lock(mutex_);
    while (threads_.size() < keep_)
      if (!spawn()) break;
  }

  ElasticThreadPool(const ElasticThreadPool&) = delete;
  ElasticThreadPool& operator=(const ElasticThreadPool&) = delete;
  ~ElasticThreadPool() override { shutdown(); }

  /// Queues `fn`; starts a thread for it when none is idle and the cap allows.
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mutex_);
      reap();
      jobs_.push_back(std::move(fn));
      if (idle_ < jobs_.size() && threads_.size() < max_) spawn();
    }
    wake_.notify_one();
  }

  /// Runs the tasks already queued, then ends every thread (joins them).
  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      stopping_ = true;
    }
    wake_.notify_all();
    std::list<std::thread> threads;
    {
      std::lock_guard lock(mutex_);
      threads.swap(threads_);
      ended_.clear();
    }
    for (auto& t : threads)
      t.join();
  }

  /// Threads running now (idle or busy).
  std::size_t threads() const {
    std::lock_guard lock(mutex_);
    return threads_.size() - ended_.size();
  }

 private:
  using Thread = std::list<std::thread>::iterator;

  // Starts one thread; false when the system refuses (the task waits for a running thread). Holds mutex_.
  bool spawn() {
    try {
      threads_.emplace_back();
      const Thread self = std::prev(threads_.end());
      *self = std::thread([this, self] { work(self); });
      return true;
    } catch (const std::system_error&) {
      threads_.pop_back();
      return false;
    }
  }

  // Joins the threads that ended for idleness. Holds mutex_; an ended thread needs no lock to finish.
  void reap() {
    for (const Thread t : ended_) {
      t->join();
      threads_.erase(t);
    }
    ended_.clear();
  }

  // Runs jobs; ends when it has run none for idle_for_ and more than keep_ threads are running.
  void work(Thread self) {
    std::unique_lock lock(mutex_);
    auto last_job = std::chrono::steady_clock::now();
    for (;;) {
      ++idle_;
      const bool woken = wake_.wait_until(lock, last_job + idle_for_, [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) {
        if (stopping_) return;
        if (!woken && threads_.size() - ended_.size() > keep_) {
          ended_.push_back(self);
          return;
        }
        if (!woken) last_job = std::chrono::steady_clock::now();  // one of the kept threads: wait another period
        continue;
      }
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      job = nullptr;
      lock.lock();
      last_job = std::chrono::steady_clock::now();
    }
  }

  const std::size_t max_;
  const std::size_t keep_;
  const std::chrono::milliseconds idle_for_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  std::list<std::thread> threads_;  // every thread started and not yet joined
  std::vector<Thread> ended_;       // threads that returned for idleness, to join
  std::size_t idle_ = 0;            // threads waiting for a job
  bool stopping_ = false;
};

}  // namespace carousel::examples::sd_server
