#pragma once
/// \file carousel/progress.hpp
/// Per-step progress of one request, as passed to `SubmitOptions::on_progress`.

#include <cstddef>
#include <cstdint>

namespace carousel {

/// A request's identifier, unique within one batcher, assigned at submit (starting at 1).
using RequestId = std::uint64_t;

/// The progress of one request after one of its steps.
struct Progress {
  RequestId id = 0;             ///< the request
  std::size_t steps_done = 0;   ///< steps completed so far
  std::size_t total_steps = 0;  ///< `Model::total_steps` of the request, or 0 when the model does not say
};

}  // namespace carousel
