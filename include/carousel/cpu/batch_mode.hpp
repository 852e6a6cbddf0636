#pragma once
/// \file
/// carousel::cpu::BatchMode — how the CPU backend's UNet spreads a batch over its matrix products.

#include <algorithm>
#include <cstdint>

namespace carousel::cpu {

/// How a forward pass groups the items of a batch into GEMM calls.
///
/// - `batched` (the default): the rows of all items go into one GEMM (one convolution's im2col spans several
///   items, a linear layer runs over every item's tokens at once, the time embedding is one B-row product). Faster,
///   most on small feature maps and small models, but BLAS may round an item's values differently in the last bits
///   depending on how many rows share the call: an item's result can differ, by a few ulps, with its batch neighbours.
/// - `batch_invariant`: every GEMM runs on one item's rows, with an evaluation order that depends only on the item's
///   own shape, so an item's result is bitwise the same in any batch (alone, first, last, in any order). The
///   reproducible mode: a request's image then depends only on the request.
///
/// Attention (QK^T, softmax, PV) is per item and per head in both modes.
enum class BatchMode {
  batched,          ///< all items' rows in one GEMM per layer (default)
  batch_invariant,  ///< one GEMM per item: bitwise batch-invariant results
};

namespace detail {

// Items that share one GEMM call: 1 in batch_invariant mode; in batched mode as many as fit `max_floats` of scratch at
// `floats_per_item` each (at least 1, at most `batch`), so that memory stays bounded for large images.
inline std::int64_t items_per_call(BatchMode mode, std::int64_t batch, std::int64_t floats_per_item,
                                   std::int64_t max_floats) {
  if (mode == BatchMode::batch_invariant || batch <= 1) return 1;
  return std::clamp<std::int64_t>(max_floats / std::max<std::int64_t>(floats_per_item, 1), 1, batch);
}

}  // namespace detail

}  // namespace carousel::cpu
