#pragma once
/// \file carousel/diffusion/invalid_job.hpp
/// `InvalidJob`: the typed error `Pipeline::validate` throws, naming the `Job` field at fault.

#include <stdexcept>
#include <string>
#include <utility>

namespace carousel::diffusion {

/// A `Job` that a Pipeline refuses: `field()` is the name of the `Job` member at fault ("width", "steps",
/// "guidance_scale", "prompt", ...), `message()` says what is wrong with it. `what()` is "field: message".
/// A server maps `field()` to its own API's field name without parsing the text. Derives from
/// `std::invalid_argument`, so callers that catch that keep working.
class InvalidJob : public std::invalid_argument {
 public:
  /// The error for `field` with `message` (without the field's name).
  InvalidJob(std::string field, std::string message)
      : std::invalid_argument(field + ": " + message), field_(std::move(field)), message_(std::move(message)) {}

  /// The `Job` member at fault.
  const std::string& field() const noexcept { return field_; }
  /// What is wrong with it, without the field's name.
  const std::string& message() const noexcept { return message_; }

 private:
  std::string field_;
  std::string message_;
};

}  // namespace carousel::diffusion
