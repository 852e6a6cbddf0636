#pragma once
/// \file carousel/detail/request_queue.hpp
/// The waiting requests: ordered by `Options::order`, with a lower bound on the earliest deadline so that expiry
/// costs nothing until a deadline is due.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>

#include "carousel/options.hpp"

namespace carousel::detail {

/// What the queue reads of an item: its priority, deadline, remaining steps, submission order and time. The values
/// must not change while the item is queued.
template <class Item>
concept Queueable = requires(const Item& i) {
  typename Item::time_point;
  { i.priority() } -> std::convertible_to<int>;
  { i.deadline() } -> std::convertible_to<std::optional<typename Item::time_point>>;
  { i.remaining_steps() } -> std::convertible_to<std::size_t>;
  { i.seq() } -> std::convertible_to<std::uint64_t>;
  { i.submitted_at() } -> std::convertible_to<typename Item::time_point>;
};

/// Whether `a` is admitted before `b` under `order`; ties (and `Order::fifo`) go by submission order.
template <Queueable Item>
bool admitted_before(Order order, const Item& a, const Item& b) {
  switch (order) {
    case Order::fifo:
      break;
    case Order::priority:
      if (a.priority() != b.priority()) return a.priority() > b.priority();
      break;
    case Order::earliest_deadline:
      if (a.deadline() != b.deadline()) {
        if (!a.deadline()) return false;
        if (!b.deadline()) return true;
        return *a.deadline() < *b.deadline();
      }
      break;
    case Order::fewest_remaining:
      if (a.remaining_steps() != b.remaining_steps()) return a.remaining_steps() < b.remaining_steps();
      break;
  }
  return a.seq() < b.seq();
}

/// Waiting requests (new or suspended) in admission order. Holds pointers; does not own the items. Not thread-safe
/// (the batcher guards it with its mutex). Insertion and removal O(log n); `front` and `pop_front` O(1).
template <Queueable Item>
class RequestQueue {
  struct Less {
    Order order;
    bool operator()(const Item* a, const Item* b) const { return admitted_before(order, *a, *b); }
  };
  using Set = std::set<Item*, Less>;

 public:
  using time_point = typename Item::time_point;
  using const_iterator = typename Set::const_iterator;

  explicit RequestQueue(Order order) : items_(Less{order}) {}

  bool empty() const noexcept { return items_.empty(); }
  std::size_t size() const noexcept { return items_.size(); }
  const_iterator begin() const noexcept { return items_.begin(); }
  const_iterator end() const noexcept { return items_.end(); }

  /// The item admitted next. Precondition: `!empty()`.
  Item* front() const { return *items_.begin(); }

  /// Queues `item` (not already queued).
  void push(Item* item) {
    if (item->deadline() && (!earliest_deadline_ || *item->deadline() < *earliest_deadline_)) {
      earliest_deadline_ = item->deadline();
    }
    items_.insert(item);
  }

  /// Removes and returns the item admitted next (O(1) amortized). Precondition: `!empty()`.
  Item* pop_front() {
    Item* item = *items_.begin();
    items_.erase(items_.begin());
    return item;
  }

  /// Removes a queued `item` (O(log n)). The deadline bound stays (it is a lower bound).
  void erase(Item* item) {
    const auto it = items_.find(item);
    if (it != items_.end()) items_.erase(it);
  }

  /// A lower bound on the earliest deadline of the queued items; empty when none has one.
  const std::optional<time_point>& earliest_deadline() const noexcept { return earliest_deadline_; }

  /// Removes every item whose deadline is at or before `now`, calling `on_expired(item)` for each in queue order, and
  /// tightens the deadline bound. Costs nothing unless the bound is due.
  template <class OnExpired>
  void expire(time_point now, OnExpired&& on_expired) {
    if (!earliest_deadline_ || now < *earliest_deadline_) return;
    earliest_deadline_.reset();
    for (auto it = items_.begin(); it != items_.end();) {
      Item* item = *it;
      if (!item->deadline()) {
        ++it;
      } else if (*item->deadline() <= now) {
        it = items_.erase(it);
        on_expired(item);
      } else {
        if (!earliest_deadline_ || *item->deadline() < *earliest_deadline_) earliest_deadline_ = item->deadline();
        ++it;
      }
    }
  }

  /// The earliest submission time of the queued items (O(n)); `time_point::max()` when empty.
  time_point oldest_submit() const {
    time_point oldest = time_point::max();
    for (const Item* item : items_)
      oldest = std::min(oldest, item->submitted_at());
    return oldest;
  }

 private:
  Set items_;
  std::optional<time_point> earliest_deadline_;  // a lower bound
};

}  // namespace carousel::detail
