#pragma once
/// \file
/// carousel::cuda::CachingAllocator (device memory from cudaMalloc, kept for reuse) and DeviceBuffer (an owning
/// handle that hands its block back when destroyed). No managed memory anywhere.

#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

#include <cuda_runtime.h>

#include <carousel/cuda/check.cuh>

namespace carousel::cuda {

/// Device memory cache: `allocate` reuses a freed block of at least the requested size (at most twice it) or calls
/// cudaMalloc; `deallocate` keeps the block for reuse. When cudaMalloc runs out of memory the cache is emptied and
/// the allocation retried once — unless the allocator was made with OnOutOfMemory::fail, as the pool of a captured
/// CUDA graph is: its cached blocks' addresses are baked into the graph and must never be freed under it.
///
/// Stream order: a block handed back is reused by the next `allocate`, so the allocator must serve one stream (or
/// streams ordered with each other); each carousel::cuda::Engine owns one. Thread-safe (one mutex).
class CachingAllocator {
 public:
  /// What allocate() does when cudaMalloc runs out of memory.
  enum class OnOutOfMemory {
    release_cached_and_retry,  ///< cudaFree the cached blocks, try once more
    fail,                      ///< throw CudaError at once, keeping the cache as it is
  };

  explicit CachingAllocator(OnOutOfMemory on_out_of_memory = OnOutOfMemory::release_cached_and_retry) noexcept
      : on_out_of_memory_(on_out_of_memory) {}
  /// Changes what allocate() does on running out of memory from now on.
  void set_on_out_of_memory(OnOutOfMemory on_out_of_memory) noexcept {
    std::lock_guard lock(mutex_);
    on_out_of_memory_ = on_out_of_memory;
  }
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  /// Frees every cached block (blocks still in use are the owners' responsibility and must be gone by then).
  ~CachingAllocator() { release_cached(); }

  /// A device block of at least `bytes` (rounded up to 512); nullptr for 0 bytes.
  /// \throws CudaError when cudaMalloc fails (with the default policy: even after emptying the cache).
  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    bytes = (bytes + 511) / 512 * 512;
    std::lock_guard lock(mutex_);
    if (auto it = free_.lower_bound(bytes); it != free_.end() && it->first <= 2 * bytes) {
      void* p = it->second;
      cached_bytes_ -= it->first;
      free_.erase(it);
      return p;
    }
    void* p = nullptr;
    if (const cudaError_t error = cudaMalloc(&p, bytes); error != cudaSuccess) {
      static_cast<void>(cudaGetLastError());
      if (on_out_of_memory_ == OnOutOfMemory::fail) CAROUSEL_CUDA_CHECK(error);
      release_cached_locked();
      if (const cudaError_t retry = cudaMalloc(&p, bytes); retry != cudaSuccess) {
        static_cast<void>(cudaGetLastError());  // leave no error behind for the next check
        CAROUSEL_CUDA_CHECK(retry);
      }
    }
    sizes_[p] = bytes;
    allocated_bytes_ += bytes;
    return p;
  }

  /// Returns a block from `allocate` to the cache (nullptr is ignored).
  void deallocate(void* p) noexcept {
    if (!p) return;
    std::lock_guard lock(mutex_);
    const std::size_t bytes = sizes_.at(p);
    free_.emplace(bytes, p);
    cached_bytes_ += bytes;
  }

  /// cudaFree's every cached (unused) block.
  void release_cached() noexcept {
    std::lock_guard lock(mutex_);
    release_cached_locked();
  }

  /// Bytes obtained from cudaMalloc and not yet freed (in use + cached).
  std::size_t allocated_bytes() const {
    std::lock_guard lock(mutex_);
    return allocated_bytes_;
  }
  /// Bytes held in the cache, free for reuse.
  std::size_t cached_bytes() const {
    std::lock_guard lock(mutex_);
    return cached_bytes_;
  }

 private:
  void release_cached_locked() noexcept {
    for (auto& [bytes, p] : free_) {
      cudaFree(p);
      sizes_.erase(p);
      allocated_bytes_ -= bytes;
    }
    free_.clear();
    cached_bytes_ = 0;
  }

  OnOutOfMemory on_out_of_memory_;
  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;
  std::unordered_map<void*, std::size_t> sizes_;
  std::size_t allocated_bytes_ = 0, cached_bytes_ = 0;
};

/// An owning handle to device memory: from a CachingAllocator (handed back on destruction) or, without one, straight
/// from cudaMalloc (cudaFree'd on destruction; used for weights). Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// `bytes` from `allocator`, or from cudaMalloc when `allocator` is null. \throws CudaError on failure.
  DeviceBuffer(std::size_t bytes, CachingAllocator* allocator) : allocator_(allocator), bytes_(bytes) {
    if (allocator_) {
      ptr_ = allocator_->allocate(bytes);
    } else if (bytes) {
      CAROUSEL_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
    }
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : allocator_(o.allocator_), ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      allocator_ = o.allocator_;
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  /// The device address (nullptr when empty).
  void* get() const noexcept { return ptr_; }
  /// The size asked for.
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  void reset() noexcept {
    if (!ptr_) return;
    if (allocator_) {
      allocator_->deallocate(ptr_);
    } else {
      cudaFree(ptr_);
    }
    ptr_ = nullptr;
  }

  CachingAllocator* allocator_ = nullptr;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace carousel::cuda
