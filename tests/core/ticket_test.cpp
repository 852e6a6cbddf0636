#include <carousel/ticket.hpp>

#include <doctest/doctest.h>

#include <carousel/step_batcher.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "toy_models.hpp"

using namespace std::chrono_literals;
using carousel::test::Job;
using carousel::test::ToyModel;

TEST_CASE("Ticket.Lifecycle") {
  ToyModel model;
  carousel::StepBatcher<ToyModel, Job> batcher{model, {.max_batch_size = 1}};
  auto t = batcher.submit(Job{.total = 2});
  auto u = batcher.submit(Job{.total = 1});
  CHECK(t.valid());
  CHECK(t.id() == 1);
  CHECK(u.id() == 2);
  CHECK(t.status() == carousel::RequestStatus::queued);
  CHECK(t.wait_for(1ms) == std::future_status::timeout);
  CHECK_FALSE(t.ready());
  CHECK_FALSE(t.error_code().has_value());
  batcher.step_once();
  CHECK(t.status() == carousel::RequestStatus::running);
  CHECK(u.status() == carousel::RequestStatus::queued);
  batcher.step_once();
  CHECK(t.status() == carousel::RequestStatus::completed);
  CHECK(t.wait_for(0ms) == std::future_status::ready);
  CHECK(t.wait_until(std::chrono::steady_clock::now()) == std::future_status::ready);
  CHECK(t.get().done == 2);
  SUBCASE("get() takes the result once") {
    CHECK_FALSE(t.valid());
    CHECK_THROWS_AS(t.get(), std::future_error);
  }
  SUBCASE("moving hands the request over") {
    carousel::Ticket<Job> moved = std::move(u);
    CHECK(moved.valid());
    batcher.step_once();
    CHECK(moved.get().done == 1);
  }
}

TEST_CASE("Ticket.GetBlocksUntilAnotherThreadCompletesIt") {
  ToyModel model;
  carousel::StepBatcher<ToyModel, Job> batcher{model};
  auto t = batcher.submit(Job{.total = 3});
  std::thread driver([&] {
    std::this_thread::sleep_for(20ms);
    while (batcher.step_once()) {
    }
  });
  CHECK(t.get().done == 3);
  driver.join();
}

TEST_CASE("Ticket.ErrorCarriesCode") {
  ToyModel model;
  carousel::StepBatcher<ToyModel, Job> batcher{model};
  auto t = batcher.submit(Job{.total = 3});
  t.cancel();
  CHECK(t.status() == carousel::RequestStatus::failed);
  CHECK(t.error_code() == carousel::Errc::cancelled);
  try {
    t.get();
    FAIL("expected an error");
  } catch (const carousel::Error& e) {
    CHECK(e.code() == carousel::Errc::cancelled);
    CHECK(std::string(e.what()).find("cancelled") != std::string::npos);
  }
}

TEST_CASE("Errors.Names") {
  CHECK(carousel::to_string(carousel::Errc::queue_full) == "queue_full");
  CHECK(carousel::to_string(carousel::Errc::deadline_unreachable) == "deadline_unreachable");
  CHECK(carousel::to_string(carousel::Errc::invalid_request) == "invalid_request");
  CHECK(carousel::to_string(carousel::RequestStatus::suspended) == "suspended");
  const carousel::Error e(carousel::Errc::shut_down, "bye");
  CHECK(std::string(e.what()) == "carousel: shut_down: bye");
}
