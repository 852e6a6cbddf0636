#include <carousel/step_model.hpp>

#include <doctest/doctest.h>

#include <span>
#include <string>

#include "toy_models.hpp"

namespace {

using carousel::test::Job;

struct NoStep {
  bool finished(const Job&) const { return true; }
};
struct NoFinished {
  void step(std::span<Job* const>) {}
};
struct WrongStepArg {  // takes states by value: cannot be called with the batcher's span of pointers
  void step(std::span<Job>) {}
  bool finished(const Job&) const { return true; }
};
struct NonConstFinished {  // finished must be callable on a const model
  void step(std::span<Job* const>) {}
  bool finished(const Job&) { return true; }
};
struct FinishedNotBool {
  void step(std::span<Job* const>) {}
  std::string finished(const Job&) const { return {}; }
};
struct Immovable {
  Immovable(Immovable&&) = delete;
};
struct ImmovableModel {
  void step(std::span<Immovable* const>) {}
  bool finished(const Immovable&) const { return true; }
};
struct BadHooks {  // hooks with the wrong shapes are not detected as hooks
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void admit(int) {}
  void retire(std::span<int* const>) {}
  std::string total_steps(const Job&) const { return {}; }
  struct NotComparable {};
  NotComparable batch_key(const Job&) const { return {}; }
};

}  // namespace

TEST_CASE("StepModel.Concept.Good") {
  static_assert(carousel::StepModel<carousel::test::MinimalModel, Job>);
  static_assert(carousel::StepModel<carousel::test::ToyModel, Job>);
  static_assert(carousel::StepModel<carousel::test::KeyedToyModel, Job>);
  CHECK(carousel::StepModel<carousel::test::MinimalModel, Job>);
}

TEST_CASE("StepModel.Concept.Bad") {
  static_assert(!carousel::StepModel<NoStep, Job>);
  static_assert(!carousel::SteppableModel<NoStep, Job>);
  static_assert(!carousel::StepModel<NoFinished, Job>);
  static_assert(!carousel::FinishingModel<NoFinished, Job>);
  static_assert(!carousel::StepModel<WrongStepArg, Job>);
  static_assert(!carousel::StepModel<NonConstFinished, Job>);
  static_assert(!carousel::StepModel<FinishedNotBool, Job>);
  static_assert(!carousel::StepModel<ImmovableModel, Immovable>);
  CHECK_FALSE(carousel::StepModel<NoStep, Job>);
}

TEST_CASE("StepModel.Hooks.Detection") {
  using carousel::test::KeyedToyModel;
  using carousel::test::MinimalModel;
  using carousel::test::ToyModel;
  SUBCASE("present") {
    static_assert(carousel::AdmittingModel<ToyModel, Job>);
    static_assert(carousel::RetiringModel<ToyModel, Job>);
    static_assert(carousel::CountingModel<ToyModel, Job>);
    static_assert(carousel::CostedModel<ToyModel, Job>);
    static_assert(carousel::KeyedModel<KeyedToyModel, Job>);
  }
  SUBCASE("absent") {
    static_assert(!carousel::AdmittingModel<MinimalModel, Job>);
    static_assert(!carousel::RetiringModel<MinimalModel, Job>);
    static_assert(!carousel::CountingModel<MinimalModel, Job>);
    static_assert(!carousel::CostedModel<MinimalModel, Job>);
    static_assert(!carousel::KeyedModel<ToyModel, Job>);
  }
  SUBCASE("wrong shapes are not hooks") {
    static_assert(carousel::StepModel<BadHooks, Job>);
    static_assert(!carousel::AdmittingModel<BadHooks, Job>);
    static_assert(!carousel::RetiringModel<BadHooks, Job>);
    static_assert(!carousel::CountingModel<BadHooks, Job>);
    static_assert(!carousel::KeyedModel<BadHooks, Job>);
  }
  CHECK(carousel::AdmittingModel<ToyModel, Job>);
}
