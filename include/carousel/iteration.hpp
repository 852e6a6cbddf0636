#pragma once
/// \file carousel/iteration.hpp
/// What an observer sees of one iteration.

#include <chrono>
#include <cstdint>
#include <span>

#include "carousel/request_slot.hpp"

namespace carousel {

/// One iteration of the batcher, as passed to the observer just before the model steps it.
///
/// `batch` lists every running request in admission order (oldest first), across all batch-key groups; the pointers
/// are valid during the callback only.
template <class State, class Clock = std::chrono::steady_clock>
struct Iteration {
  std::uint64_t index = 0;                                  ///< 0 for the first iteration that stepped anything
  typename Clock::time_point time{};                        ///< when the iteration began
  std::span<const RequestSlot<State, Clock>* const> batch;  ///< the requests about to be stepped
  std::size_t joined = 0;                                   ///< how many of them were admitted this iteration
};

}  // namespace carousel
