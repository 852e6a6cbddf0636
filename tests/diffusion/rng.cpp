#include "carousel/diffusion/rng.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fixtures.hpp"

namespace cd = carousel::diffusion;
namespace ct = carousel::diffusion::test;

namespace {

void check_kernel(const char* key, cd::RandnKernel kernel) {
  const auto fixture = ct::load_fixture("randn.json");
  for (const auto& c : fixture.at(key)) {
    const auto seed = c.at("seed").get<std::uint64_t>();
    cd::TorchGenerator g{seed, kernel};
    const auto sizes = c.at("sizes").get<std::vector<std::size_t>>();
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      CAPTURE(seed);
      CAPTURE(sizes[k]);
      CAPTURE(k);
      const std::vector<float> expected = ct::from_hex(c.at("values").at(k).get<std::string>());
      const std::vector<float> got = g.randn(sizes[k]);
      REQUIRE(got.size() == expected.size());
      CHECK(ct::count_bit_mismatches(got, expected) == 0);
    }
  }
}

}  // namespace

TEST_CASE("Rng.Randn.Avx2Kernel") {
  check_kernel("avx2", cd::RandnKernel::avx2);
}

TEST_CASE("Rng.Randn.ScalarKernel") {
  check_kernel("scalar", cd::RandnKernel::scalar);
}

TEST_CASE("Rng.Generator.ValueSemantics") {
  cd::TorchGenerator a{7};
  a.randn(5);  // leaves a cached normal in the generator
  cd::TorchGenerator b = a;
  CHECK(a == b);
  const auto from_a = a.randn(40);
  const auto from_b = b.randn(40);
  CHECK(ct::count_bit_mismatches(from_a, from_b) == 0);
  SUBCASE("manual_seed restarts the stream and drops the cached value") {
    cd::TorchGenerator fresh{7};
    a.manual_seed(7);
    CHECK(a == fresh);
    CHECK(a.initial_seed() == 7);
  }
  SUBCASE("seeds keep only their low 32 bits, like torch's mt19937") {
    cd::TorchGenerator low{5};
    cd::TorchGenerator high{(std::uint64_t{1} << 32) + 5};
    CHECK(ct::count_bit_mismatches(low.randn(20), high.randn(20)) == 0);
  }
}
