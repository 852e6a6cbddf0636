#pragma once
/// \file
/// carousel::cuda::UNetGraphs — CUDA graphs of a UNet forward, captured once per bucket (padded batch size, latent
/// height and width, context length) with slot padding: a call with batch b runs the graph of the smallest bucket
/// size >= b with the unused slots zero-filled, so requests joining and leaving the batch do not cause re-captures.

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include <carousel/cuda/allocator.cuh>
#include <carousel/cuda/check.cuh>
#include <carousel/cuda/engine.cuh>
#include <carousel/cuda/tensor.cuh>
#include <carousel/cuda/unet.cuh>

namespace carousel::cuda {

/// Captured UNet forwards, one CUDA graph per bucket (padded batch, h, w, context length).
///
/// Each bucket owns a private CachingAllocator: one eager warm-up forward fills it (and lets cuDNN, cuBLAS and the
/// engine's workspaces reach their sizes), the second forward is captured, and the pool's blocks then stay reserved
/// for that graph, whose addresses are fixed. Memory therefore grows with the number of buckets used (about one
/// forward's working set each); the engine's own cached blocks are handed back to the device before each capture, and
/// a capture that still runs out of memory throws CudaError and leaves no bucket behind. Not thread-safe; all calls
/// must use the same Engine (the graphs' stream work and the engine's workspaces are shared).
class UNetGraphs {
 public:
  /// Graphs of `unet` (which must outlive this object) for batch buckets `batch_sizes` (ascending; a batch larger
  /// than the last bucket is an error).
  explicit UNetGraphs(const UNet2DConditionModel& unet, std::vector<std::int64_t> batch_sizes = {1, 2, 4, 8, 16, 32})
      : unet_(unet), batch_sizes_(std::move(batch_sizes)) {
    if (batch_sizes_.empty() || !std::is_sorted(batch_sizes_.begin(), batch_sizes_.end()))
      throw std::invalid_argument("carousel::cuda::UNetGraphs: batch sizes must be a non-empty ascending list");
  }
  UNetGraphs(const UNetGraphs&) = delete;
  UNetGraphs& operator=(const UNetGraphs&) = delete;

  /// As UNet2DConditionModel::forward (NHWC sample, float timesteps, context), through the bucket's graph (captured
  /// on first use). The result has the caller's batch and lives in the engine's own allocator.
  /// \throws std::invalid_argument for a batch beyond the largest bucket, bad shapes, or a capture asked of an engine
  /// that is profiling (Engine::set_profiling); CudaError.
  DeviceTensor forward(Engine& e, const DeviceTensor& sample, const DeviceTensor& timesteps,
                       const DeviceTensor& context) {
    const std::int64_t batch = sample.dim(0);
    const auto it = std::lower_bound(batch_sizes_.begin(), batch_sizes_.end(), batch);
    if (it == batch_sizes_.end())
      throw std::invalid_argument("carousel::cuda::UNetGraphs: batch " + std::to_string(batch) +
                                  " exceeds the largest bucket " + std::to_string(batch_sizes_.back()));
    const Key key{*it, sample.dim(1), sample.dim(2), context.dim(1)};
    auto found = buckets_.find(key);
    if (found == buckets_.end()) found = buckets_.emplace(key, capture(e, key, sample, context)).first;
    Bucket& bucket = *found->second;
    // Fill the slots: the caller's rows, zeros after them.
    fill(e, bucket.sample, sample);
    fill(e, bucket.timesteps, timesteps);
    fill(e, bucket.context, context);
    CAROUSEL_CUDA_CHECK(cudaGraphLaunch(bucket.exec, e.stream()));
    Shape shape = bucket.output.shape();
    shape[0] = batch;
    DeviceTensor out = e.empty(shape, bucket.output.dtype());
    CAROUSEL_CUDA_CHECK(
        cudaMemcpyAsync(out.data(), bucket.output.data(), out.bytes(), cudaMemcpyDeviceToDevice, e.stream()));
    return out;
  }

  /// Number of graphs captured so far.
  std::size_t captured() const noexcept { return buckets_.size(); }

 private:
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>;  // batch, h, w, context length

  struct Bucket {
    // Declared first: the tensors below return their blocks to it. From the capture on it never frees a block on
    // running out of memory (the graph holds their addresses): a capture that runs out throws and discards the bucket.
    CachingAllocator pool;
    DeviceTensor sample, timesteps, context, output;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ~Bucket() {
      if (exec) cudaGraphExecDestroy(exec);
      if (graph) cudaGraphDestroy(graph);
    }
  };

  static void fill(Engine& e, const DeviceTensor& slot, const DeviceTensor& rows) {
    const std::size_t bytes = rows.bytes();
    CAROUSEL_CUDA_CHECK(cudaMemcpyAsync(slot.data(), rows.data(), bytes, cudaMemcpyDeviceToDevice, e.stream()));
    if (slot.bytes() > bytes)
      CAROUSEL_CUDA_CHECK(
          cudaMemsetAsync(static_cast<unsigned char*>(slot.data()) + bytes, 0, slot.bytes() - bytes, e.stream()));
  }

  std::unique_ptr<Bucket> capture(Engine& e, const Key& key, const DeviceTensor& sample, const DeviceTensor& context) {
    if (e.profiling())
      throw std::invalid_argument(
          "carousel::cuda::UNetGraphs: the engine is profiling; a graph cannot be captured with its timing events");
    // A bucket needs one forward's working set of its own: hand the engine's cached blocks back to the device first.
    e.allocator().release_cached();
    auto bucket = std::make_unique<Bucket>();
    const auto [batch, h, w, len] = key;
    bucket->sample = DeviceTensor({batch, h, w, sample.dim(3)}, sample.dtype(), &bucket->pool);
    bucket->timesteps = DeviceTensor({batch}, DType::f32, &bucket->pool);
    bucket->context = DeviceTensor({batch, len, context.dim(2)}, context.dtype(), &bucket->pool);
    for (const DeviceTensor* t : {&bucket->sample, &bucket->timesteps, &bucket->context})
      CAROUSEL_CUDA_CHECK(cudaMemsetAsync(t->data(), 0, t->bytes(), e.stream()));
    e.set_pool(&bucket->pool);
    try {
      static_cast<void>(unet_.forward(e, bucket->sample, bucket->timesteps, bucket->context));  // warm-up
      e.synchronize();
      bucket->pool.set_on_out_of_memory(CachingAllocator::OnOutOfMemory::fail);
      CAROUSEL_CUDA_CHECK(cudaStreamBeginCapture(e.stream(), cudaStreamCaptureModeRelaxed));
      try {
        bucket->output = unet_.forward(e, bucket->sample, bucket->timesteps, bucket->context);
      } catch (...) {
        cudaGraph_t broken = nullptr;
        cudaStreamEndCapture(e.stream(), &broken);
        if (broken) cudaGraphDestroy(broken);
        throw;
      }
      CAROUSEL_CUDA_CHECK(cudaStreamEndCapture(e.stream(), &bucket->graph));
      CAROUSEL_CUDA_CHECK(cudaGraphInstantiate(&bucket->exec, bucket->graph, 0));
    } catch (...) {
      e.set_pool(nullptr);
      throw;
    }
    e.set_pool(nullptr);
    return bucket;
  }

  const UNet2DConditionModel& unet_;
  std::vector<std::int64_t> batch_sizes_;
  std::map<Key, std::unique_ptr<Bucket>> buckets_;
};

}  // namespace carousel::cuda
