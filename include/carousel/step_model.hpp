#pragma once
/// \file carousel/step_model.hpp
/// The StepModel concept and the detection of its optional hooks.

#include <concepts>
#include <cstddef>
#include <span>
#include <type_traits>

namespace carousel {

/// Has `step(std::span<State* const>)`: advances every state in the batch by one step.
template <class Model, class State>
concept SteppableModel = requires(Model& m, std::span<State* const> batch) {
  m.step(batch);
};

/// Has `finished(const State&) const -> bool`: true once the request is complete.
template <class Model, class State>
concept FinishingModel = requires(const Model& m, const State& s) {
  { m.finished(s) } -> std::convertible_to<bool>;
};

/// A model the batcher can drive: movable states, `step` and `finished`.
///
/// \code
///   struct Job { int total; int done = 0; };
///   struct Model {
///     void step(std::span<Job* const> batch) { for (Job* j : batch) ++j->done; }
///     bool finished(const Job& j) const { return j.done >= j.total; }
///   };
///   static_assert(carousel::StepModel<Model, Job>);
/// \endcode
/// Optional hooks, detected when present (see the concepts below): `admit`, `retire`, `batch_key`, `total_steps`,
/// `cost`, `validate`. A member function with a hook's name but not its signature is a compile error in `StepBatcher`
/// that names the hook (a plain, non-overloaded, non-template member function is checked; others are taken at their
/// word). `validate`, `batch_key`, `total_steps` and `cost` are called once per request, at submit, on the submitting
/// thread
/// (`validate` first); the last three must be pure functions of the state. All other hooks are called on the thread
/// that drives the batcher.
template <class Model, class State>
concept StepModel = std::movable<State> && SteppableModel<Model, State> && FinishingModel<Model, State>;

/// Optional: `admit(std::span<State* const> joining)`, a batched prologue for requests joining this iteration
/// (e.g. text encoding, initial noise). Called once per batch-key group, before the group's first step.
template <class Model, class State>
concept AdmittingModel = requires(Model& m, std::span<State* const> joining) {
  m.admit(joining);
};

/// Optional: `retire(std::span<State* const> leaving)`, a batched epilogue for requests that finished this iteration
/// (e.g. VAE decode). Called once per batch-key group; not called for cancelled, expired or failed requests.
template <class Model, class State>
concept RetiringModel = requires(Model& m, std::span<State* const> leaving) {
  m.retire(leaving);
};

/// Optional: `batch_key(const State&) const`; only requests with equal keys share a `step()` call.
template <class Model, class State>
concept KeyedModel = requires(const Model& m, const State& s) {
  { m.batch_key(s) } -> std::equality_comparable;
  requires std::copyable<decltype(m.batch_key(s))>;
};

/// Optional: `total_steps(const State&) const`; enables progress totals, `Order::fewest_remaining` and
/// `deadline_unreachable` prediction.
template <class Model, class State>
concept CountingModel = requires(const Model& m, const State& s) {
  { m.total_steps(s) } -> std::convertible_to<std::size_t>;
};

/// Optional: `validate(State&) const`; checks (and may normalise, e.g. fill defaults) a request on the submitting
/// thread before it is queued. If it throws, the request is refused at once with `Errc::invalid_request` (the
/// exception nested), so `admit` and `step` never see it. Called concurrently from every submitting thread.
template <class Model, class State>
concept ValidatingModel = requires(const Model& m, State& s) {
  m.validate(s);
};

/// Optional: `cost(const State&) const`; budget units for `Options::max_batch_cost`.
template <class Model, class State>
concept CostedModel = requires(const Model& m, const State& s) {
  { m.cost(s) } -> std::convertible_to<std::size_t>;
};

namespace detail {

// A model "declares" a hook when it has a single, non-template member function of the hook's name (its address can be
// taken; where it cannot, the substitution fails and the concept is false). Such a member that does not have the hook's
// shape is a mistake the batcher refuses to compile, rather than ignore. Overloaded or template members cannot be
// inspected this way and are taken at their word.
template <class Model>
concept DeclaresAdmit = std::is_member_function_pointer_v<decltype(&Model::admit)>;
template <class Model>
concept DeclaresRetire = std::is_member_function_pointer_v<decltype(&Model::retire)>;
template <class Model>
concept DeclaresBatchKey = std::is_member_function_pointer_v<decltype(&Model::batch_key)>;
template <class Model>
concept DeclaresTotalSteps = std::is_member_function_pointer_v<decltype(&Model::total_steps)>;
template <class Model>
concept DeclaresCost = std::is_member_function_pointer_v<decltype(&Model::cost)>;
template <class Model>
concept DeclaresValidate = std::is_member_function_pointer_v<decltype(&Model::validate)>;

// A declared hook whose signature is not the hook's.
template <class Model, class State>
concept MisdeclaredAdmit = DeclaresAdmit<Model> && !AdmittingModel<Model, State>;
template <class Model, class State>
concept MisdeclaredRetire = DeclaresRetire<Model> && !RetiringModel<Model, State>;
template <class Model, class State>
concept MisdeclaredBatchKey = DeclaresBatchKey<Model> && !KeyedModel<Model, State>;
template <class Model, class State>
concept MisdeclaredTotalSteps = DeclaresTotalSteps<Model> && !CountingModel<Model, State>;
template <class Model, class State>
concept MisdeclaredCost = DeclaresCost<Model> && !CostedModel<Model, State>;
template <class Model, class State>
concept MisdeclaredValidate = DeclaresValidate<Model> && !ValidatingModel<Model, State>;

}  // namespace detail

}  // namespace carousel
