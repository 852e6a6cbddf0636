// Batch-key groups on their own: the key registry and the per-group walk.
#include <carousel/detail/batch_groups.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Item {
  char name;
  std::size_t group_;
};

// Runs the walk over items named a, b, c, ... in the groups `groups`; returns each call's names, e.g. {"ac", "b"}.
std::vector<std::string> walk(const std::vector<std::size_t>& groups) {
  std::vector<Item> storage;
  for (std::size_t i = 0; i < groups.size(); ++i)
    storage.push_back(Item{static_cast<char>('a' + i), groups[i]});
  std::vector<Item*> items;
  for (Item& i : storage)
    items.push_back(&i);
  std::vector<std::string> calls;
  carousel::detail::for_each_group(
      items, [](const Item& i) { return i.group_; },
      [&](const std::vector<Item*>& group) {
        std::string names;
        for (const Item* i : group)
          names += i->name;
        calls.push_back(names);
      });
  return calls;
}

}  // namespace

TEST_CASE("BatchGroups.KeyRegistry") {
  carousel::detail::KeyRegistry<std::pair<int, int>> keys;
  // (key, expected index): indices in order of first appearance, stable afterwards.
  const std::pair<std::pair<int, int>, std::size_t> table[] = {
      {{512, 512}, 0}, {{768, 512}, 1}, {{512, 512}, 0}, {{512, 768}, 2}, {{768, 512}, 1}};
  for (const auto& [key, index] : table) {
    CAPTURE(key.first);
    CAPTURE(key.second);
    CHECK(keys.index_of(key) == index);
  }
  CHECK(keys.size() == 3);
}

TEST_CASE("BatchGroups.ForEachGroup") {
  struct Row {
    std::vector<std::size_t> groups;
    std::vector<std::string> calls;
  };
  const Row table[] = {
      {{}, {}},                              // nothing: no call
      {{0, 0, 0}, {"abc"}},                  // one group: one call
      {{4}, {"a"}},                          // the index itself does not matter
      {{1, 0, 1, 2, 0}, {"ac", "be", "d"}},  // groups in order of first appearance, items in input order
      {{2, 2, 1, 1, 0, 0}, {"ab", "cd", "ef"}},
  };
  for (const Row& row : table) {
    CAPTURE(row.groups.size());
    CHECK(walk(row.groups) == row.calls);
  }
}

TEST_CASE("BatchGroups.OneGroupIsTheInputItself") {
  Item a{'a', 3}, b{'b', 3};
  const std::vector<Item*> items{&a, &b};
  int calls = 0;
  carousel::detail::for_each_group(
      items, [](const Item& i) { return i.group_; },
      [&](const std::vector<Item*>& group) {
        ++calls;
        CHECK(&group == &items);  // no copy
      });
  CHECK(calls == 1);
  SUBCASE("without keys: one call with everything, even with nothing") {
    Item c{'c', 9};
    const std::vector<Item*> mixed{&a, &c};
    std::vector<std::size_t> sizes;
    carousel::detail::for_each_request_group<false>(mixed,
                                                    [&](const std::vector<Item*>& g) { sizes.push_back(g.size()); });
    carousel::detail::for_each_request_group<false>(std::vector<Item*>{},
                                                    [&](const std::vector<Item*>& g) { sizes.push_back(g.size()); });
    CHECK(sizes == std::vector<std::size_t>{2, 0});
    sizes.clear();
    carousel::detail::for_each_request_group<true>(mixed,
                                                   [&](const std::vector<Item*>& g) { sizes.push_back(g.size()); });
    CHECK(sizes == std::vector<std::size_t>{1, 1});
  }
}
