#include <carousel/step_model.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <span>
#include <string>
#include <type_traits>

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
struct BadHooks {  // hooks with the wrong shapes: not hooks, and a StepBatcher over this model does not compile
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void admit(int) {}
  void retire(std::span<int* const>) {}
  std::string total_steps(const Job&) const { return {}; }
  struct NotComparable {};
  NotComparable batch_key(const Job&) const { return {}; }
};

struct WrongRetireSpan {  // retire takes the states by value
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void retire(std::span<Job>) {}
};
struct NonConstCounting {  // total_steps and cost must be callable on a const model
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  std::size_t total_steps(const Job&) { return 1; }
  std::size_t cost(const Job&) { return 1; }
};
struct HookNamedData {  // data members with a hook's name are not hooks and not mistakes
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  int cost = 0;
  bool admit = false;
};
struct OverloadedAdmit {  // overloads cannot be inspected: taken at their word (the right one is found)
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void admit(std::span<Job* const>) {}
  void admit(int) {}
};
struct ValidatesConst {  // validate may take the state as const: it then only checks
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void validate(const Job&) const {}
};
struct NonConstValidate {  // validate runs concurrently on submitting threads: it must be const
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void validate(Job&) {}
};
struct ValidateWrongArg {
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  void validate(int) const {}
};
template <class K>
struct ConstrainedKey {  // a hook switched off by a constraint is absent, not misdeclared
  void step(std::span<Job* const>) {}
  bool finished(const Job&) const { return true; }
  K batch_key(const Job&) const requires std::is_integral_v<K> { return K{}; }
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
    static_assert(carousel::ValidatingModel<carousel::test::ValidatingToyModel, Job>);
    static_assert(carousel::ValidatingModel<ValidatesConst, Job>);
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
    static_assert(!carousel::ValidatingModel<ToyModel, Job>);
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

TEST_CASE("StepModel.Hooks.Misdeclared") {
  using namespace carousel::detail;
  using carousel::test::KeyedToyModel;
  using carousel::test::MinimalModel;
  using carousel::test::ToyModel;
  SUBCASE("a member function with a hook's name is a declared hook") {
    static_assert(DeclaresAdmit<ToyModel> && DeclaresRetire<ToyModel> && DeclaresTotalSteps<ToyModel> &&
                  DeclaresCost<ToyModel> && DeclaresBatchKey<KeyedToyModel>);
    static_assert(DeclaresAdmit<BadHooks> && DeclaresRetire<BadHooks> && DeclaresTotalSteps<BadHooks> &&
                  DeclaresBatchKey<BadHooks>);
    static_assert(!DeclaresAdmit<MinimalModel> && !DeclaresRetire<MinimalModel> && !DeclaresBatchKey<ToyModel>);
    static_assert(!DeclaresCost<HookNamedData> && !DeclaresAdmit<HookNamedData>);
    static_assert(!DeclaresAdmit<OverloadedAdmit>);
    static_assert(DeclaresBatchKey<ConstrainedKey<int>> && !DeclaresBatchKey<ConstrainedKey<double>>);
  }
  SUBCASE("right shapes are not misdeclared") {
    static_assert(!MisdeclaredAdmit<ToyModel, Job> && !MisdeclaredRetire<ToyModel, Job>);
    static_assert(!MisdeclaredTotalSteps<ToyModel, Job> && !MisdeclaredCost<ToyModel, Job>);
    static_assert(!MisdeclaredBatchKey<KeyedToyModel, Job> && !MisdeclaredBatchKey<ToyModel, Job>);
    static_assert(!MisdeclaredAdmit<MinimalModel, Job> && !MisdeclaredCost<HookNamedData, Job>);
    static_assert(!MisdeclaredAdmit<OverloadedAdmit, Job> && carousel::AdmittingModel<OverloadedAdmit, Job>);
    static_assert(!MisdeclaredBatchKey<ConstrainedKey<int>, Job> && !MisdeclaredBatchKey<ConstrainedKey<double>, Job>);
  }
  SUBCASE("wrong shapes are misdeclared: StepBatcher's static_assert names the hook") {
    static_assert(MisdeclaredAdmit<BadHooks, Job>);       // admit(int)
    static_assert(MisdeclaredRetire<BadHooks, Job>);      // retire(std::span<int* const>)
    static_assert(MisdeclaredTotalSteps<BadHooks, Job>);  // returns a string
    static_assert(MisdeclaredBatchKey<BadHooks, Job>);    // key not comparable
    static_assert(MisdeclaredRetire<WrongRetireSpan, Job>);
    static_assert(MisdeclaredTotalSteps<NonConstCounting, Job> && MisdeclaredCost<NonConstCounting, Job>);
    static_assert(MisdeclaredValidate<NonConstValidate, Job> && MisdeclaredValidate<ValidateWrongArg, Job>);
    static_assert(!MisdeclaredValidate<ValidatesConst, Job>);
    static_assert(!MisdeclaredValidate<carousel::test::ValidatingToyModel, Job> && !DeclaresValidate<ToyModel>);
  }
  CHECK(MisdeclaredAdmit<BadHooks, Job>);
}
