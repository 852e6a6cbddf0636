// libFuzzer target: any byte string given to SafetensorsFile::from_bytes must either parse into a consistent file
// or throw FormatError — never crash, leak or read out of bounds (built with ASan + UBSan). How to build and run:
// see tests/checkpoint/CMakeLists.txt and docs/model-format.md.

#include <carousel/checkpoint/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i)
    bytes[i] = static_cast<std::byte>(data[i]);
  try {
    const auto file = carousel::checkpoint::SafetensorsFile::from_bytes(std::move(bytes), "fuzz");
    std::size_t covered = 0;
    for (const auto& info : file.tensors()) {
      if (info.offset != covered) std::abort();
      covered += info.nbytes;
      const auto view = file.bytes(info);
      if (view.size() != info.nbytes) std::abort();
      if (info.dtype == carousel::checkpoint::DType::f16 || info.dtype == carousel::checkpoint::DType::f32)
        (void)file.to_float(info);
    }
  } catch (const carousel::checkpoint::FormatError&) {
  }
  return 0;
}
