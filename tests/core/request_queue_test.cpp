// The request queue on its own: admission order for each Options::order, the deadline bound and expiry.
#include <carousel/detail/request_queue.hpp>

#include <doctest/doctest.h>

#include <carousel/manual_clock.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

using namespace std::chrono_literals;
using carousel::Order;

namespace {

using TimePoint = carousel::ManualClock::time_point;

// What the queue reads of a request; `name` identifies it in the tables.
struct Item {
  using time_point = TimePoint;
  char name = '?';
  int prio = 0;
  std::optional<TimePoint> due{};
  std::size_t left = 0;
  std::uint64_t order = 0;  // submission order
  TimePoint submitted{};

  int priority() const { return prio; }
  const std::optional<TimePoint>& deadline() const { return due; }
  std::size_t remaining_steps() const { return left; }
  std::uint64_t seq() const { return order; }
  TimePoint submitted_at() const { return submitted; }
};

TimePoint at(std::chrono::milliseconds ms) {
  return TimePoint(ms);
}

// Pushes `items` (in the given order) and pops the queue empty; returns the names in pop order.
std::string admission_order(Order order, std::vector<Item>& items) {
  carousel::detail::RequestQueue<Item> q(order);
  for (Item& i : items)
    q.push(&i);
  CHECK(q.size() == items.size());
  std::string names;
  while (!q.empty()) {
    Item* front = q.front();
    names += front->name;
    q.erase(front);
  }
  return names;
}

}  // namespace

TEST_CASE("RequestQueue.Order") {
  // Four requests, submitted a, b, c, d; the columns are the facts each order reads.
  //   name prio deadline left seq
  //   a    1    30 ms    5    0
  //   b    5    none     2    1
  //   c    1    10 ms    9    2
  //   d    9    20 ms    2    3
  auto items = [] {
    return std::vector<Item>{{.name = 'a', .prio = 1, .due = at(30ms), .left = 5, .order = 0},
                             {.name = 'b', .prio = 5, .due = std::nullopt, .left = 2, .order = 1},
                             {.name = 'c', .prio = 1, .due = at(10ms), .left = 9, .order = 2},
                             {.name = 'd', .prio = 9, .due = at(20ms), .left = 2, .order = 3}};
  };
  struct Row {
    Order order;
    const char* expected;
  };
  const Row table[] = {
      {Order::fifo, "abcd"},               // submission order
      {Order::priority, "dbac"},           // 9, 5, then the two 1s in submission order
      {Order::earliest_deadline, "cdab"},  // 10, 20, 30 ms, no deadline last
      {Order::fewest_remaining, "bdac"},   // 2, 2 (b before d: submitted first), 5, 9
  };
  for (const Row& row : table) {
    CAPTURE(static_cast<int>(row.order));
    std::vector<Item> v = items();
    CHECK(admission_order(row.order, v) == row.expected);
    std::reverse(v.begin(), v.end());  // the push order does not matter
    CHECK(admission_order(row.order, v) == row.expected);
  }
}

TEST_CASE("RequestQueue.Expiry") {
  std::vector<Item> v{{.name = 'a', .due = at(30ms), .order = 0},
                      {.name = 'b', .order = 1},
                      {.name = 'c', .due = at(10ms), .order = 2},
                      {.name = 'd', .due = at(20ms), .order = 3}};
  carousel::detail::RequestQueue<Item> q(Order::fifo);
  CHECK_FALSE(q.earliest_deadline());
  for (Item& i : v)
    q.push(&i);
  REQUIRE(q.earliest_deadline());
  CHECK(*q.earliest_deadline() == at(10ms));

  // (now, names expired by that time in queue order, bound afterwards, queue size afterwards)
  struct Row {
    std::chrono::milliseconds now;
    const char* expired;
    std::optional<std::chrono::milliseconds> bound;
    std::size_t left;
  };
  const Row table[] = {
      {9ms, "", 10ms, 4},                                           // nothing due: the walk is skipped
      {10ms, "c", 20ms, 3},                                         // a deadline at `now` has passed
      {25ms, "d", 30ms, 2},         {100ms, "a", std::nullopt, 1},  // only b (no deadline) is left: no bound
      {200ms, "", std::nullopt, 1},
  };
  for (const Row& row : table) {
    CAPTURE(row.now.count());
    std::string expired;
    q.expire(at(row.now), [&](Item* i) { expired += i->name; });
    CHECK(expired == row.expired);
    CHECK(q.size() == row.left);
    CHECK(q.earliest_deadline() == (row.bound ? std::optional<TimePoint>(at(*row.bound)) : std::nullopt));
  }
  CHECK(q.front()->name == 'b');
}

TEST_CASE("RequestQueue.BoundIsALowerBound") {
  // Removing the item with the earliest deadline keeps the bound; the next expiry walk tightens it.
  std::vector<Item> v{{.name = 'a', .due = at(10ms), .order = 0}, {.name = 'b', .due = at(50ms), .order = 1}};
  carousel::detail::RequestQueue<Item> q(Order::fifo);
  q.push(&v[0]);
  q.push(&v[1]);
  q.erase(&v[0]);
  CHECK(*q.earliest_deadline() == at(10ms));
  std::string expired;
  q.expire(at(20ms), [&](Item* i) { expired += i->name; });
  CHECK(expired.empty());
  CHECK(*q.earliest_deadline() == at(50ms));
  SUBCASE("a later push with an earlier deadline lowers it") {
    Item c{.name = 'c', .due = at(30ms), .order = 2};
    q.push(&c);
    CHECK(*q.earliest_deadline() == at(30ms));
  }
}

TEST_CASE("RequestQueue.OldestSubmit") {
  carousel::detail::RequestQueue<Item> q(Order::priority);
  CHECK(q.oldest_submit() == TimePoint::max());
  std::vector<Item> v{{.name = 'a', .prio = 0, .order = 0, .submitted = at(5ms)},
                      {.name = 'b', .prio = 3, .order = 1, .submitted = at(7ms)},
                      {.name = 'c', .prio = 1, .order = 2, .submitted = at(2ms)}};
  for (Item& i : v)
    q.push(&i);
  CHECK(q.oldest_submit() == at(2ms));  // not the front (b): the oldest of all
  q.erase(&v[2]);
  CHECK(q.oldest_submit() == at(5ms));
}
