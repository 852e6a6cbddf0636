#pragma once
/// \file carousel/errors.hpp
/// The error type every failed ticket carries, and its codes.

#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

namespace carousel {

/// Why a request did not complete with its state.
enum class Errc {
  queue_full,            ///< refused at submit: `Options::max_queue_size` requests were already waiting
  cancelled,             ///< `Ticket::cancel()` was called, or the batcher was stopped with `StopMode::cancel`
  deadline_exceeded,     ///< the deadline passed while the request was queued or running
  deadline_unreachable,  ///< refused at admission: remaining steps x measured step time cannot meet the deadline
  shut_down,             ///< submitted after `stop()` began
  model_error,           ///< the model threw while handling this request; the original exception is nested
  invalid_request,       ///< refused at submit: `Model::validate` threw; the model's exception is nested
};

/// The name of an error code, e.g. `"queue_full"`.
constexpr std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::queue_full:
      return "queue_full";
    case Errc::cancelled:
      return "cancelled";
    case Errc::deadline_exceeded:
      return "deadline_exceeded";
    case Errc::deadline_unreachable:
      return "deadline_unreachable";
    case Errc::shut_down:
      return "shut_down";
    case Errc::model_error:
      return "model_error";
    case Errc::invalid_request:
      return "invalid_request";
  }
  return "unknown";
}

/// The exception a ticket rethrows from `get()` when its request failed.
///
/// For `Errc::model_error` and `Errc::invalid_request` the model's own exception is nested: recover it with
/// `std::rethrow_if_nested(e)`.
class Error : public std::runtime_error {
 public:
  /// An error with a code and a human-readable message; the message is prefixed with the code's name.
  Error(Errc code, const std::string& what)
      : std::runtime_error("carousel: " + std::string(to_string(code)) + ": " + what), code_(code) {}

  /// The reason the request failed.
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

namespace detail {

/// An `Error` as an exception_ptr; a `cause` (the model's exception) is nested inside it.
inline std::exception_ptr make_error(Errc code, const std::string& what, std::exception_ptr cause = nullptr) {
  if (!cause) return std::make_exception_ptr(Error(code, what));
  try {
    std::rethrow_exception(cause);
  } catch (const std::exception& e) {
    try {
      std::throw_with_nested(Error(code, what + ": " + e.what()));
    } catch (...) {
      return std::current_exception();
    }
  } catch (...) {
    try {
      std::throw_with_nested(Error(code, what + ": non-standard exception"));
    } catch (...) {
      return std::current_exception();
    }
  }
}

}  // namespace detail
}  // namespace carousel
