#pragma once
// A small persistent thread pool for the element-wise and normalisation loops of the CPU backend (GEMMs use
// OpenBLAS's own threads). parallel_for splits [0, n) into contiguous chunks; the calling thread takes part.

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace carousel::cpu::detail {

class ThreadPool {
 public:
  explicit ThreadPool(unsigned workers) {
    for (unsigned i = 0; i < workers; ++i)
      threads_.emplace_back([this] { run(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_)
      t.join();
  }

  unsigned size() const noexcept { return static_cast<unsigned>(threads_.size()) + 1; }

  // Runs fn(chunk) for chunk in [0, chunks) on the workers and the caller; returns when all are done. One job at a
  // time: concurrent callers queue on job_mutex_.
  void run_chunks(std::int64_t chunks, const std::function<void(std::int64_t)>& fn) {
    std::lock_guard job_lock(job_mutex_);
    {
      std::lock_guard lock(mutex_);
      fn_ = &fn;
      next_ = 0;
      chunks_ = chunks;
      pending_ = chunks;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run() {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work();
    }
  }

  void work() {
    for (;;) {
      std::int64_t chunk;
      const std::function<void(std::int64_t)>* fn;
      {
        std::lock_guard lock(mutex_);
        if (fn_ == nullptr || next_ >= chunks_) return;
        chunk = next_++;
        fn = fn_;
      }
      try {
        (*fn)(chunk);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(std::int64_t)>* fn_ = nullptr;
  std::int64_t next_ = 0;
  std::int64_t chunks_ = 0;
  std::int64_t pending_ = 0;
  std::uint64_t generation_ = 0;
  std::exception_ptr error_;
  bool stopping_ = false;
};

inline ThreadPool& thread_pool() {
  static ThreadPool pool(std::max(1u, std::thread::hardware_concurrency()) - 1);
  return pool;
}

// The least number of items worth a chunk of their own when each item costs about `work_per_item` element
// operations: a pool hand-off costs microseconds, so a chunk should carry some 32 Ki operations.
inline std::int64_t grain_for(std::int64_t work_per_item) {
  return std::max<std::int64_t>(1, (std::int64_t{1} << 15) / std::max<std::int64_t>(work_per_item, 1));
}

// Calls fn(begin, end) over contiguous sub-ranges of [0, n). `grain` is the least work (in items) worth a chunk;
// small loops run inline on the caller. The split depends only on n, grain and the pool size, never on the data.
template <typename Fn>
void parallel_for(std::int64_t n, std::int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  auto& pool = thread_pool();
  const std::int64_t max_chunks = std::min<std::int64_t>(pool.size() * 4, n / std::max<std::int64_t>(grain, 1));
  if (pool.size() == 1 || max_chunks <= 1) {
    fn(std::int64_t{0}, n);
    return;
  }
  const std::int64_t step = (n + max_chunks - 1) / max_chunks;
  const std::int64_t chunks = (n + step - 1) / step;
  pool.run_chunks(chunks, [&](std::int64_t c) { fn(c * step, std::min(n, (c + 1) * step)); });
}

}  // namespace carousel::cpu::detail
