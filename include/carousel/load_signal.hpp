#pragma once
/// \file carousel/load_signal.hpp
/// The load a replica reports to a load balancer: the weight that an HAProxy agent check answers with, computed from
/// the replica's estimated drain time (`Stats::drain_seconds`).

#include <algorithm>
#include <cmath>

namespace carousel {

/// The weight in percent (1..100) that a load balancer should give a replica whose queued and running work is
/// estimated to take `drain_seconds` to finish: `100 * target / (target + drain)`, so an idle replica gets 100, one
/// with `target_seconds` of work 50, and the weight keeps falling (never to 0, which would take the replica out) as
/// work piles up. Weighted least-connections then sends a new request where `(connections + 1) / weight` is lowest.
/// A negative or NaN drain counts as idle; `target_seconds <= 0` is treated as 1 second.
inline int agent_weight_percent(double drain_seconds, double target_seconds) noexcept {
  const double target = target_seconds > 0 ? target_seconds : 1.0;
  const double drain = drain_seconds > 0 ? drain_seconds : 0.0;  // also maps NaN to 0
  const double w = std::round(100.0 * target / (target + drain));
  return static_cast<int>(std::clamp(w, 1.0, 100.0));
}

}  // namespace carousel
