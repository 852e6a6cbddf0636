#pragma once
/// \file carousel/request_status.hpp
/// Where a request is in its life.

#include <string_view>

namespace carousel {

/// The life of a request: queued -> running (<-> suspended) -> completed | failed.
enum class RequestStatus {
  queued,     ///< waiting for admission
  running,    ///< admitted: stepped every iteration
  suspended,  ///< preempted: keeps its state, waits to resume
  completed,  ///< done; `Ticket::get()` returns the state
  failed,     ///< done; `Ticket::get()` throws `carousel::Error` (cancelled, expired, refused or model error)
};

/// The name of a status, e.g. `"running"`.
constexpr std::string_view to_string(RequestStatus s) noexcept {
  switch (s) {
    case RequestStatus::queued:
      return "queued";
    case RequestStatus::running:
      return "running";
    case RequestStatus::suspended:
      return "suspended";
    case RequestStatus::completed:
      return "completed";
    case RequestStatus::failed:
      return "failed";
  }
  return "unknown";
}

}  // namespace carousel
