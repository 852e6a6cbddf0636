#pragma once
/// \file carousel/detail/batch_groups.hpp
/// Batch-key groups: the registry that numbers a model's batch keys, and the walk that calls the model once per
/// group.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "carousel/step_model.hpp"

namespace carousel::detail {

/// The key of a model without `batch_key`: every request is in one group.
struct NoKey {
  bool operator==(const NoKey&) const = default;
};

/// The batch-key type of `Model` (`NoKey` without `batch_key`).
template <class Model, class State>
struct BatchKeyOf {
  using type = NoKey;
};

template <class Model, class State>
requires KeyedModel<Model, State>
struct BatchKeyOf<Model, State> {
  using type = std::remove_cvref_t<decltype(std::declval<const Model&>().batch_key(std::declval<const State&>()))>;
};

/// Numbers batch keys in order of first appearance, so a request carries a small index instead of its key. Keys only
/// need `==`; a lookup is linear in the number of distinct keys seen (a handful: resolutions). Not thread-safe.
template <class Key>
class KeyRegistry {
 public:
  /// The index of `key`, registering it on first sight.
  std::size_t index_of(const Key& key) {
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i] == key) return i;
    }
    keys_.push_back(key);
    return keys_.size() - 1;
  }

  /// How many distinct keys were seen.
  std::size_t size() const noexcept { return keys_.size(); }

 private:
  std::vector<Key> keys_;
};

/// Calls `fn(group)` once per group of `items` (`group_of(item)` is an item's group index), groups in order of
/// first appearance, each holding its items in the order of `items`. One group is passed as `items` itself.
template <class Item, class GroupOf, class Fn>
void for_each_group(const std::vector<Item*>& items, GroupOf&& group_of, Fn&& fn) {
  std::vector<std::size_t> seen;
  for (const Item* item : items) {
    const std::size_t g = group_of(*item);
    if (std::find(seen.begin(), seen.end(), g) == seen.end()) seen.push_back(g);
  }
  if (seen.size() <= 1) {
    if (!items.empty()) fn(items);
    return;
  }
  std::vector<Item*> group;
  for (std::size_t g : seen) {
    group.clear();
    for (Item* item : items) {
      if (group_of(*item) == g) group.push_back(item);
    }
    fn(group);
  }
}

/// `for_each_group` over requests by their `group_` index; without batch keys (`Keyed` false) every request is in
/// one group and `fn(items)` is called once, even for no items.
template <bool Keyed, class Item, class Fn>
void for_each_request_group(const std::vector<Item*>& items, Fn&& fn) {
  if constexpr (Keyed) {
    for_each_group(
        items, [](const Item& item) { return item.group_; }, fn);
  } else {
    fn(items);
  }
}

}  // namespace carousel::detail
