// libFuzzer target: any byte string given to ClipTokenizer::encode must give max_length ids inside the vocabulary,
// or throw std::invalid_argument for invalid UTF-8 — never crash (built with ASan + UBSan). How to build and run:
// see tests/checkpoint/CMakeLists.txt and docs/model-format.md.

#include <carousel/checkpoint/clip_tokenizer.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto tok = carousel::checkpoint::ClipTokenizer::load(CAROUSEL_TEST_DATA_DIR "/tokenizer/clip");
  try {
    const auto ids = tok.encode(std::string_view(reinterpret_cast<const char*>(data), size));
    if (ids.size() != tok.max_length()) std::abort();
    for (auto id : ids)
      if (id < 0 || static_cast<std::size_t>(id) >= tok.vocab_size()) std::abort();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
