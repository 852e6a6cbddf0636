#pragma once
/// \file
/// carousel::cpu::BatchMode — how the CPU backend's UNet spreads a batch over its matrix products.

#include <algorithm>
#include <cstdint>

namespace carousel::cpu {

/// How a forward pass groups the items of a batch into GEMM calls.
///
/// - `batched` (the default): the rows of several items share a GEMM (a convolution's im2col spans several items, a
///   linear layer runs over several items' tokens, the time embedding is one B-row product), as many items as make
///   a narrow per-item GEMM about 1024 columns or rows wide. Faster where per-item GEMMs are narrow (small feature
///   maps of wide layers, e.g. SD-1.5's 8x8 and 4x4 levels), the same elsewhere; but BLAS may round an item's values
///   differently in the last bits depending on how many rows share the call: an item's result can differ, by a few
///   ulps, with its batch neighbours.
/// - `batch_invariant`: every GEMM runs on one item's rows, with an evaluation order that depends only on the item's
///   own shape, so an item's result is bitwise the same in any batch (alone, first, last, in any order). The
///   reproducible mode: a request's image then depends only on the request.
///
/// Attention (QK^T, softmax, PV) is per item and per head in both modes.
enum class BatchMode {
  batched,          ///< several items' rows per GEMM call (default)
  batch_invariant,  ///< one GEMM per item: bitwise batch-invariant results
};

namespace detail {

// Items that share one GEMM call. 1 in batch_invariant mode. In batched mode enough items for the call's batched
// extent (N columns of a convolution, M rows of a linear layer) to reach `target_extent` — a GEMM that wide already
// runs near its best rate, and larger calls only push the operands out of cache — as far as `max_floats` of scratch
// at `floats_per_item` each allows; at least 1, at most `batch`.
inline std::int64_t items_per_call(BatchMode mode, std::int64_t batch, std::int64_t extent_per_item,
                                   std::int64_t target_extent, std::int64_t floats_per_item, std::int64_t max_floats) {
  if (mode == BatchMode::batch_invariant || batch <= 1) return 1;
  const std::int64_t extent = std::max<std::int64_t>(extent_per_item, 1);
  const std::int64_t wanted = (target_extent + extent - 1) / extent;
  const std::int64_t fit = max_floats / std::max<std::int64_t>(floats_per_item, 1);
  return std::clamp<std::int64_t>(std::min(wanted, fit), 1, batch);
}

// The batched extent that items_per_call aims for: 1024 columns or rows (one 32x32 feature map).
inline constexpr std::int64_t batched_gemm_extent = 1024;

}  // namespace detail

}  // namespace carousel::cpu
