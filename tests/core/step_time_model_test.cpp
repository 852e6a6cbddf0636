// The measured cost curve on its own: running means, the line for unmeasured sizes, a contradicted first
// measurement, a shift of the whole curve, and the cautious extrapolation.
#include <carousel/detail/step_time_model.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

using carousel::detail::StepTimeModel;

namespace {

StepTimeModel recorded(const std::vector<std::pair<std::size_t, double>>& calls) {
  StepTimeModel m;
  for (const auto& [b, seconds] : calls)
    m.record(b, seconds);
  return m;
}

}  // namespace

TEST_CASE("StepTimeModel.MeansAndLine") {
  CHECK_FALSE(StepTimeModel{}.predict(1));
  struct Row {
    std::vector<std::pair<std::size_t, double>> calls;
    std::size_t size;
    double predicted;
  };
  const Row table[] = {
      {{{2, 4.0}}, 2, 4.0},            // measured
      {{{2, 4.0}}, 7, 4.0},            // one size: flat
      {{{1, 3.0}, {3, 7.0}}, 2, 5.0},  // the line through 1 and 3: 1 + 2b
      {{{1, 3.0}, {3, 7.0}}, 6, 13.0},
      {{{1, 3.0}, {1, 4.0}}, 1, 3.1},            // running mean: 3 + 0.1 x (4 - 3)
      {{{1, 4.0}, {2, 4.0}, {3, 1.0}}, 9, 3.0},  // a line that falls below 0 gives way to the average
  };
  for (const Row& r : table) {
    CAPTURE(r.size);
    const StepTimeModel m = recorded(r.calls);
    REQUIRE(m.predict(r.size));
    CHECK(*m.predict(r.size) == doctest::Approx(r.predicted));
  }
}

TEST_CASE("StepTimeModel.ContradictedFirstMeasurement") {
  // A size's first call took 10 times as long (setup); the second contradicts it by more than a factor 2 and replaces
  // it. A second measurement within a factor 2 is averaged in as usual.
  CHECK(*recorded({{4, 10.0}, {4, 1.0}}).predict(4) == doctest::Approx(1.0));
  CHECK(*recorded({{4, 1.5}, {4, 1.0}}).predict(4) == doctest::Approx(1.45));
  // From the second measurement on, a single far measurement is averaged in (noise, not a shift).
  CHECK(*recorded({{4, 1.0}, {4, 1.0}, {4, 3.0}}).predict(4) == doctest::Approx(1.2));
}

TEST_CASE("StepTimeModel.ShiftOfTheCurve") {
  // Sizes 1 and 8 measured at 1 and 2; then size 1 is measured 5 times in a row at 5 (more than twice its mean):
  // the curve has shifted, size 8's old mean is forgotten and the curve starts over from size 1.
  std::vector<std::pair<std::size_t, double>> calls{{1, 1.0}, {1, 1.0}, {8, 2.0}, {8, 2.0}};
  for (int i = 0; i < 4; ++i)
    calls.emplace_back(1, 5.0);
  const StepTimeModel four = recorded(calls);
  CHECK(*four.predict(8) == doctest::Approx(2.0));  // 4 in a row: not yet
  calls.emplace_back(1, 5.0);
  const StepTimeModel five = recorded(calls);
  CHECK(*five.predict(1) == doctest::Approx(5.0));  // started over from this measurement
  CHECK(*five.predict(8) == doctest::Approx(5.0));  // one size known again: flat
  SUBCASE("an interruption resets the count") {
    std::vector<std::pair<std::size_t, double>> mixed{{1, 1.0}, {1, 1.0}, {8, 2.0}, {8, 2.0}};
    for (int i = 0; i < 4; ++i)
      mixed.emplace_back(1, 5.0);
    mixed.emplace_back(1, 3.0);  // within a factor 2 of the mean, which has risen to about 2.4
    mixed.emplace_back(1, 5.0);
    CHECK(*recorded(mixed).predict(8) == doctest::Approx(2.0));
  }
}

TEST_CASE("StepTimeModel.Cautious") {
  // Beyond the largest measured size the cautious prediction grows in proportion: t(b) = t(L) b / L.
  const StepTimeModel one = recorded({{2, 4.0}});
  CHECK(*one.predict(6) == doctest::Approx(4.0));
  CHECK(*one.predict_cautious(6) == doctest::Approx(12.0));
  CHECK(*one.predict_cautious(2) == doctest::Approx(4.0));
  CHECK(*one.predict_cautious(1) == doctest::Approx(4.0));  // below: as predict (flat)
  const StepTimeModel two = recorded({{1, 3.0}, {3, 7.0}});
  CHECK(*two.predict_cautious(2) == doctest::Approx(5.0));  // within the measured range: the line
  CHECK(*two.predict_cautious(6) == doctest::Approx(14.0));
  CHECK_FALSE(StepTimeModel{}.predict_cautious(3));
}
