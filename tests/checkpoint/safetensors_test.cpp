// Tests of carousel::checkpoint::SafetensorsFile: the dtype fixture written by tools/make_tiny_models.py (values
// compared bit for bit with torch's float32 conversion), every tiny model file, and malformed images built here.

#include <carousel/checkpoint/safetensors.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_files.hpp"

namespace fs = std::filesystem;
using carousel::checkpoint::DType;
using carousel::checkpoint::FormatError;
using carousel::checkpoint::SafetensorsFile;
namespace t = carousel::checkpoint::test;

namespace {

const fs::path data_dir = CAROUSEL_TEST_DATA_DIR;

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::vector<std::byte> bytes_of(const std::string& text) {
  std::vector<std::byte> out;
  for (char c : text)
    out.push_back(static_cast<std::byte>(c));
  return out;
}

// The FormatError message of parsing `image`, or "" when it parsed.
std::string error_of(std::vector<std::byte> image) {
  try {
    SafetensorsFile::from_bytes(std::move(image), "bad.safetensors");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

std::string tensor_header(const std::string& entries) {
  return "{" + entries + "}";
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, std::size_t begin,
                  std::size_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

}  // namespace

TEST_CASE("Safetensors.Fixture.DtypesConvertExactly") {
  const auto file = SafetensorsFile::open(data_dir / "models/dtypes/dtypes.safetensors");
  const auto expected = read_json(data_dir / "models/dtypes/expected.json");
  REQUIRE(expected.size() == 5);
  for (const auto& item : expected.items()) {
    const std::string name = item.key();  // not a structured binding: CAPTURE's lambda captures it
    const auto& want = item.value();
    CAPTURE(name);
    const auto* info = file.find(name);
    REQUIRE(info != nullptr);
    CHECK(info->shape == want["shape"].get<std::vector<std::int64_t>>());
    const auto values = file.to_float(*info);
    const auto bits = want["bits"].get<std::vector<std::uint32_t>>();
    REQUIRE(values.size() == bits.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      CAPTURE(i);
      CHECK(std::bit_cast<std::uint32_t>(values[i]) == bits[i]);
    }
  }
  SUBCASE("dtypes and sizes") {
    CHECK(file.find("f16")->dtype == DType::f16);
    CHECK(file.find("bf16")->dtype == DType::bf16);
    CHECK(file.find("f64")->nbytes == 64 * 8);
    CHECK(file.find("scalar")->shape.empty());
    CHECK(file.find("scalar")->numel() == 1);
    CHECK(file.find("missing") == nullptr);
  }
  SUBCASE("integer tensors are not read as float") {
    const auto* i64 = file.find("i64");
    REQUIRE(i64 != nullptr);
    CHECK(i64->dtype == DType::i64);
    CHECK_THROWS_WITH_AS(file.to_float(*i64), doctest::Contains("'i64' has dtype I64"), FormatError);
    std::int64_t last = 0;
    std::memcpy(&last, file.bytes(*i64).data() + 5 * 8, 8);
    CHECK(last == 5);
  }
  SUBCASE("metadata") {
    CHECK(file.metadata().size() == 1);
    CHECK(file.metadata().at("format") == "pt");
  }
  SUBCASE("tensors tile the buffer in offset order") {
    std::size_t next = 0;
    for (const auto& info : file.tensors()) {
      CHECK(info.offset == next);
      next = info.offset + info.nbytes;
    }
  }
  SUBCASE("output size is checked") {
    std::vector<float> small(3);
    CHECK_THROWS_AS(file.to_float(*file.find("f32"), small), FormatError);
  }
}

TEST_CASE("Safetensors.Half.AllBitPatterns") {
  // Independent reference: the compiler's own binary16 -> binary32 conversion, for all 65536 patterns.
#if defined(__FLT16_MANT_DIG__)
  std::vector<std::byte> data(65536 * 2);
  for (std::uint32_t i = 0; i < 65536; ++i) {
    data[2 * i] = static_cast<std::byte>(i & 0xff);
    data[2 * i + 1] = static_cast<std::byte>(i >> 8);
  }
  const auto file =
      SafetensorsFile::from_bytes(t::safetensors_image(tensor_header(entry("h", "F16", "[65536]", 0, 131072)), data));
  const auto values = file.to_float(*file.find("h"));
  int mismatches = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = std::bit_cast<_Float16>(static_cast<std::uint16_t>(i));
    const float want = static_cast<float>(h);
    const bool same = std::bit_cast<std::uint32_t>(values[i]) == std::bit_cast<std::uint32_t>(want) ||
                      (want != want && values[i] != values[i]);
    if (!same) ++mismatches;
  }
  CHECK(mismatches == 0);
#else
  MESSAGE("compiler has no _Float16; covered by the torch fixture only");
#endif
}

TEST_CASE("Safetensors.Fixture.TinyModelFilesOpen") {
  int files = 0;
  for (const auto& item : fs::recursive_directory_iterator(data_dir / "models")) {
    if (item.path().extension() != ".safetensors") continue;
    CAPTURE(item.path().string());
    const auto file = SafetensorsFile::open(item.path());
    CHECK(!file.tensors().empty());
    for (const auto& info : file.tensors()) {
      if (info.dtype == DType::f32 || info.dtype == DType::f16) {
        const auto values = file.to_float(info);
        CHECK(values.size() == static_cast<std::size_t>(info.numel()));
      }
    }
    ++files;
  }
  CHECK(files == 15);  // 3 models x (unet, vae, text_encoder), vae-legacy-names, dtypes, 4 single-file checkpoints
}

TEST_CASE("Safetensors.Move.KeepsViewsValid") {
  auto file = SafetensorsFile::open(data_dir / "models/dtypes/dtypes.safetensors");
  const auto* info = file.find("f32");
  const auto before = file.to_float(*info);
  SafetensorsFile moved = std::move(file);
  CHECK(moved.find("f32") == info);
  const auto after = moved.to_float(*info);
  CHECK(std::memcmp(after.data(), before.data(), before.size() * sizeof(float)) == 0);  // bitwise: holds a NaN
}

TEST_CASE("Safetensors.Malformed.GivesFormatError") {
  const auto twelve = t::f32_bytes({1, 2, 3});
  const std::string good = tensor_header(entry("a", "F32", "[3]", 0, 12));
  REQUIRE(error_of(t::safetensors_image(good, twelve)).empty());

  SUBCASE("shorter than the length field") {
    CHECK(error_of(bytes_of("abc")).find("truncated") != std::string::npos);
    CHECK(error_of({}).find("truncated") != std::string::npos);
  }
  SUBCASE("header length beyond the limit") {
    CHECK(error_of(t::safetensors_image(good, twelve, 1ull << 40)).find("exceeds the limit") != std::string::npos);
    CHECK(error_of(t::safetensors_image(good, twelve, ~0ull)).find("exceeds the limit") != std::string::npos);
  }
  SUBCASE("header length beyond the file") {
    CHECK(error_of(t::safetensors_image(good, {}, good.size() + 100)).find("truncated: header length") !=
          std::string::npos);
  }
  SUBCASE("bad JSON") {
    CHECK(error_of(t::safetensors_image("{\"a\":", {})).find("not valid JSON") != std::string::npos);
    CHECK(error_of(t::safetensors_image("", {})).find("not valid JSON") != std::string::npos);
    CHECK(error_of(t::safetensors_image("{\"\xff\":1}", {})).find("not valid JSON") != std::string::npos);
  }
  SUBCASE("header not an object") {
    CHECK(error_of(t::safetensors_image("[1,2]", {})).find("not a JSON object") != std::string::npos);
    CHECK(error_of(t::safetensors_image("{\"a\":3}", {})).find("entry is not a JSON object") != std::string::npos);
  }
  SUBCASE("overlapping offsets") {
    const auto h = tensor_header(entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("'a' and 'b' overlap") != std::string::npos);
  }
  SUBCASE("gap between tensors") {
    const auto h = tensor_header(entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("gap in the data buffer: bytes [4, 8)") != std::string::npos);
  }
  SUBCASE("gap at the start") {
    const auto h = tensor_header(entry("a", "F32", "[2]", 4, 12));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("gap") != std::string::npos);
  }
  SUBCASE("wrong byte count") {
    const auto h = tensor_header(entry("a", "F32", "[3]", 0, 8));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("hold 8 bytes, but F32 [3] needs 12") != std::string::npos);
  }
  SUBCASE("end before begin") {
    const auto h = tensor_header(entry("a", "F32", "[0]", 12, 0));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("end before begin") != std::string::npos);
  }
  SUBCASE("data shorter than the tensors") {
    CHECK(error_of(t::safetensors_image(good, t::f32_bytes({1, 2})))
              .find("truncated: tensors need 12 data bytes, the file has 8") != std::string::npos);
  }
  SUBCASE("data longer than the tensors") {
    CHECK(error_of(t::safetensors_image(good, t::f32_bytes({1, 2, 3, 4}))).find("tensors cover only 12") !=
          std::string::npos);
  }
  SUBCASE("unknown dtype") {
    const auto h = tensor_header(entry("a", "F17", "[3]", 0, 12));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("unknown dtype 'F17'") != std::string::npos);
  }
  SUBCASE("duplicate keys") {
    const auto h = tensor_header(entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[2]", 4, 12));
    CHECK(error_of(t::safetensors_image(h, twelve)).find("duplicate key 'a'") != std::string::npos);
    const auto inner = "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
    CHECK(error_of(t::safetensors_image(inner, twelve)).find("duplicate key 'dtype'") != std::string::npos);
  }
  SUBCASE("bad shapes and offsets") {
    CHECK(
        error_of(t::safetensors_image(tensor_header(entry("a", "F32", "[-3]", 0, 12)), twelve)).find("non-negative") !=
        std::string::npos);
    CHECK(
        error_of(t::safetensors_image(tensor_header(entry("a", "F32", "[1.5]", 0, 12)), twelve)).find("non-negative") !=
        std::string::npos);
    CHECK(error_of(t::safetensors_image(tensor_header(entry("a", "F32", "[4294967296,4294967296]", 0, 12)), twelve))
              .find("overflows") != std::string::npos);
    CHECK(error_of(t::safetensors_image(tensor_header(entry("a", "F32", "[2305843009213693952]", 0, 12)), twelve))
              .find("overflows") != std::string::npos);
    CHECK(error_of(t::safetensors_image("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0]}}", twelve))
              .find("data_offsets") != std::string::npos);
    CHECK(error_of(t::safetensors_image("{\"a\":{\"shape\":[3],\"data_offsets\":[0,12]}}", twelve)).find("'dtype'") !=
          std::string::npos);
  }
  SUBCASE("metadata must map strings to strings") {
    const auto h = "{\"__metadata__\":{\"k\":1}," + entry("a", "F32", "[3]", 0, 12) + "}";
    CHECK(error_of(t::safetensors_image(h, twelve)).find("__metadata__ entry 'k'") != std::string::npos);
  }
  SUBCASE("deep nesting") {
    const std::string deep = "{\"a\":" + std::string(10000, '[') + std::string(10000, ']') + "}";
    CHECK(error_of(t::safetensors_image(deep, {})).find("nests deeper") != std::string::npos);
  }
  SUBCASE("missing file") {
    CHECK_THROWS_WITH_AS(SafetensorsFile::open(data_dir / "models/no-such.safetensors"),
                         doctest::Contains("no-such.safetensors': cannot open"), FormatError);
  }
  SUBCASE("messages name the file") {
    CHECK(error_of(bytes_of("abc")).find("'bad.safetensors'") != std::string::npos);
  }
}

TEST_CASE("Safetensors.Malformed.EveryTruncationAndByteFlipIsCaught") {
  std::ifstream in(data_dir / "models/dtypes/dtypes.safetensors", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto whole = bytes_of(text);
  for (std::size_t n = 0; n < whole.size(); ++n) {
    CAPTURE(n);
    CHECK(!error_of(std::vector<std::byte>(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(n))).empty());
  }
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, whole.data(), 8);
  int accepted = 0;
  for (std::size_t i = 0; i < 8 + header_size; ++i) {
    for (unsigned value : {0x00u, 0x22u, 0x2cu, 0x30u, 0x5bu, 0x7du, 0xffu}) {
      auto changed = whole;
      changed[i] = static_cast<std::byte>(value);
      if (error_of(changed).empty()) ++accepted;  // must only never crash; some flips stay valid (digits, names)
    }
  }
  MESSAGE("byte flips that still parse: " << accepted);
}

TEST_CASE("Safetensors.Metadata.AllEntriesAndEmptyFile") {
  const auto h = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"}," + entry("a", "F32", "[3]", 0, 12) + "}";
  const auto file = SafetensorsFile::from_bytes(t::safetensors_image(h, t::f32_bytes({1, 2, 3})));
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}});
  CHECK(file.to_float(*file.find("a")) == std::vector<float>{1, 2, 3});
  const auto empty = SafetensorsFile::from_bytes(t::safetensors_image("{}", {}));
  CHECK(empty.tensors().empty());
  CHECK(empty.metadata().empty());
}
