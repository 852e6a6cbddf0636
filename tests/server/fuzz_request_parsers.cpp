// libFuzzer target: any byte string given as a request body to either API's parser (parse_openai, parse_a1111) must
// give a request within the limits, or throw ApiError 400 naming a field — never crash, never another exception
// (built with ASan + UBSan). How to build and run: see tests/server/CMakeLists.txt and docs/server.md.

#include <sd_server/a1111.hpp>
#include <sd_server/openai.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace {

void check(const carousel::examples::sd_server::GenerationRequest& r,
           const carousel::examples::sd_server::ApiLimits& limits) {
  if (r.jobs.empty() || r.jobs.size() > static_cast<std::size_t>(limits.max_images)) std::abort();
  for (const auto& job : r.jobs) {
    if (job.steps < 1 || job.steps > limits.max_steps || job.width < 1 || job.height < 1) std::abort();
  }
  if (!limits.allow_priority && r.priority != 0) std::abort();
  static_cast<void>(r.parameters.dump());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace srv = carousel::examples::sd_server;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const srv::ApiLimits limits;
  for (const auto parse : {&srv::parse_openai, &srv::parse_a1111}) {
    try {
      check(parse(body, limits), limits);
    } catch (const srv::ApiError& e) {
      if (e.status() != 400 || e.field().empty()) std::abort();
    }
  }
  return 0;
}
