// Tests of carousel::checkpoint::ClipTokenizer against transformers' CLIPTokenizer: the ids of every prompt in
// tests/data/tokenizer/ids.json (written by tools/make_tokenizer_fixtures.py) for the full CLIP vocabulary and the
// tiny models' 1000-entry one, special tokens, padding configuration, and invalid UTF-8.

#include <carousel/checkpoint/clip_tokenizer.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_files.hpp"

namespace fs = std::filesystem;
using carousel::checkpoint::ClipTokenizer;
using carousel::checkpoint::FormatError;
namespace t = carousel::checkpoint::test;

namespace {

const fs::path data_dir = CAROUSEL_TEST_DATA_DIR;

const nlohmann::json& fixture() {
  static const nlohmann::json json = [] {
    std::ifstream in(data_dir / "tokenizer/ids.json");
    return nlohmann::json::parse(in);
  }();
  return json;
}

void check_all_prompts(const ClipTokenizer& tok, const char* key) {
  const auto& prompts = fixture()["prompts"];
  const auto& expected = fixture()[key];
  REQUIRE(prompts.size() == expected.size());
  REQUIRE(prompts.size() >= 50);
  int mismatches = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto prompt = prompts[i].get<std::string>();
    CAPTURE(i);
    CAPTURE(prompt);
    const auto ids = tok.encode(prompt);
    const auto want = expected[i].get<std::vector<std::int32_t>>();
    CHECK(ids == want);
    if (ids != want) ++mismatches;
  }
  CHECK(mismatches == 0);
}

}  // namespace

TEST_CASE("ClipTokenizer.Full.MatchesTransformers") {
  const auto tok = ClipTokenizer::load(data_dir / "tokenizer/clip");
  CHECK(tok.vocab_size() == 49408);
  CHECK(tok.bos_id() == 49406);
  CHECK(tok.eos_id() == 49407);
  CHECK(tok.pad_id() == 49407);
  CHECK(tok.max_length() == 77);
  check_all_prompts(tok, "clip");
  SUBCASE("cached words give the same ids the second time") {
    check_all_prompts(tok, "clip");
  }
}

TEST_CASE("ClipTokenizer.Tiny.MatchesTransformers") {
  const auto tok = ClipTokenizer::load(data_dir / "models/sd-tiny/tokenizer");
  CHECK(tok.vocab_size() == 1000);
  CHECK(tok.bos_id() == 998);
  CHECK(tok.eos_id() == 999);
  CHECK(tok.pad_id() == 999);
  check_all_prompts(tok, "tiny");
}

namespace {

// The fixture's random_word(n): n letters from an LCG (tools/make_tokenizer_fixtures.py).
std::string random_word(std::size_t n) {
  std::uint64_t x = 1;
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    x = (1103515245 * x + 12345) % (1ull << 31);
    out.push_back(static_cast<char>('a' + (x >> 16) % 26));
  }
  return out;
}

}  // namespace

// Prompts up to 1 MiB (one word of 1 MiB, 65,536 words): encoded in near-linear time (BPE of one word is
// O(n log n); words after the cut are not tokenized), so this test takes about a second; with BPE rounds that
// rescan the word, the 1 MiB random word alone takes hours.
TEST_CASE("ClipTokenizer.LongPrompts.MatchTransformers") {
  const auto full = ClipTokenizer::load(data_dir / "tokenizer/clip");
  const auto tiny = ClipTokenizer::load(data_dir / "models/sd-tiny/tokenizer");
  const auto& cases = fixture()["long"];
  REQUIRE(cases.size() >= 6);
  for (const auto& c : cases) {
    std::string prompt;
    if (c.contains("random_letters")) prompt = random_word(c["random_letters"].get<std::size_t>());
    for (int i = 0; i < c.value("times", 0); ++i)
      prompt += c["unit"].get<std::string>();
    CAPTURE(prompt.substr(0, 40));
    CAPTURE(prompt.size());
    CHECK(full.encode(prompt) == c["clip"].get<std::vector<std::int32_t>>());
    CHECK(tiny.encode(prompt) == c["tiny"].get<std::vector<std::int32_t>>());
  }
}

TEST_CASE("ClipTokenizer.TokenizerJson.MatchesTransformers") {
  SUBCASE("tiny vocabulary, merges as pairs and as strings") {
    for (const char* style : {"json-pairs", "json-strings"}) {
      CAPTURE(style);
      REQUIRE(!fs::exists(data_dir / "tokenizer" / style / "vocab.json"));
      const auto tok = ClipTokenizer::load(data_dir / "tokenizer" / style);
      CHECK(tok.vocab_size() == 1000);
      CHECK(tok.bos_id() == 998);
      CHECK(tok.eos_id() == 999);
      check_all_prompts(tok, "tiny");
    }
  }
  SUBCASE("full vocabulary: tokenizer.json built from vocab.json and merges.txt gives the same ids") {
    // The model section of the transformers-written fixture, with the full vocabulary and merges put in.
    auto json = nlohmann::json::parse(std::ifstream(data_dir / "tokenizer/json-pairs/tokenizer.json"));
    json["model"]["vocab"] = nlohmann::json::parse(std::ifstream(data_dir / "tokenizer/clip/vocab.json"));
    auto& merges = json["model"]["merges"] = nlohmann::json::array();
    std::ifstream in(data_dir / "tokenizer/clip/merges.txt");
    for (std::string line; std::getline(in, line);)
      if (!line.empty() && !line.starts_with("#version")) merges.push_back(line);
    t::TempDir dir;
    t::write_text(dir.path() / "tokenizer.json", json.dump());
    fs::copy_file(data_dir / "tokenizer/json-pairs/tokenizer_config.json", dir.path() / "tokenizer_config.json");
    const auto tok = ClipTokenizer::load(dir.path());
    CHECK(tok.vocab_size() == 49408);
    check_all_prompts(tok, "clip");
  }
}

TEST_CASE("ClipTokenizer.TokenizerJson.OtherTokenizersRefused") {
  const auto fixture_json = nlohmann::json::parse(std::ifstream(data_dir / "tokenizer/json-pairs/tokenizer.json"));
  t::TempDir dir;
  const auto error_for = [&](const std::function<void(nlohmann::json&)>& edit) -> std::string {
    auto json = fixture_json;
    edit(json);
    t::write_text(dir.path() / "tokenizer.json", json.dump());
    try {
      static_cast<void>(ClipTokenizer::load(dir.path()));
    } catch (const FormatError& e) {
      return e.what();
    }
    return "loaded";
  };
  const auto path = (dir.path() / "tokenizer.json").string();
  CHECK(error_for([](auto&) {}) == "loaded");
  const auto wordpiece = error_for([](auto& j) { j["model"]["type"] = "WordPiece"; });
  CHECK(wordpiece.find("tokenizer file '" + path + "': model type \"WordPiece\" is not BPE") != std::string::npos);
  CHECK(wordpiece.find("only CLIP's byte-level BPE tokenizer is supported") != std::string::npos);
  CHECK(error_for([](auto& j) {
          j["model"]["end_of_word_suffix"] = nullptr;
        }).find("model.end_of_word_suffix null is not \"</w>\"") != std::string::npos);
  CHECK(error_for([](auto& j) {
          j["model"]["continuing_subword_prefix"] = "##";
        }).find("model.continuing_subword_prefix") != std::string::npos);
  CHECK(error_for([](auto& j) { j["model"]["dropout"] = 0.1; }).find("model.dropout") != std::string::npos);
  CHECK(error_for([](auto& j) { j["model"]["ignore_merges"] = true; }).find("model.ignore_merges") !=
        std::string::npos);
  CHECK(error_for([](auto& j) {
          j["pre_tokenizer"] = {{"type", "ByteLevel"}};
        }).find("pre_tokenizer lacks CLIP's split pattern") != std::string::npos);
  CHECK(error_for([](auto& j) { j.erase("model"); }).find("no 'model' object") != std::string::npos);
  CHECK(error_for([](auto& j) {
          j["model"]["merges"][3] = {"a", "b", "c"};
        }).find("model.merges entry 3 is neither") != std::string::npos);
  CHECK(error_for([](auto& j) { j["model"]["merges"][0] = "ab"; }).find("model.merges entry 0") != std::string::npos);
  CHECK(error_for([](auto& j) {
          j["model"]["vocab"] = nlohmann::json::array();
        }).find("the vocabulary is not an object") != std::string::npos);
  CHECK(error_for([](auto& j) { j["model"]["vocab"]["x"] = -1; }).find("id of 'x' is not a non-negative int") !=
        std::string::npos);
  fs::remove(dir.path() / "tokenizer.json");
  CHECK_THROWS_WITH_AS(ClipTokenizer::load(dir.path()),
                       doctest::Contains("neither vocab.json + merges.txt nor tokenizer.json found"), FormatError);
}

TEST_CASE("ClipTokenizer.Tokenize.NoSpecialsNoTruncation") {
  const auto tok = ClipTokenizer::load(data_dir / "tokenizer/clip");
  CHECK(tok.tokenize("a photo of a cat") == std::vector<std::int32_t>{320, 1125, 539, 320, 2368});
  CHECK(tok.tokenize("").empty());
  std::string many;
  for (int i = 0; i < 100; ++i)
    many += "a ";
  CHECK(tok.tokenize(many).size() == 100);
  CHECK(tok.encode(many).size() == 77);
}

TEST_CASE("ClipTokenizer.InvalidUtf8.Throws") {
  const auto tok = ClipTokenizer::load(data_dir / "tokenizer/clip");
  for (const std::string& bad :
       {std::string("caf\xe9"), std::string("\xc3"), std::string("a\x80"), std::string("\xc0\xaf"),
        std::string("\xed\xa0\x80"), std::string("\xf4\x90\x80\x80"), std::string("ok \xe2\x82")}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH_AS(tok.encode(bad), doctest::Contains("prompt is not valid UTF-8"), std::invalid_argument);
  }
  CHECK_THROWS_WITH_AS(tok.encode("caf\xe9 au lait"), doctest::Contains("at byte 3"), std::invalid_argument);
}

TEST_CASE("ClipTokenizer.Load.Errors") {
  CHECK_THROWS_WITH_AS(ClipTokenizer::load(data_dir / "no-such-tokenizer"), doctest::Contains("vocab.json"),
                       FormatError);
  t::TempDir dir;
  fs::copy_file(data_dir / "models/sd-tiny/tokenizer/vocab.json", dir.path() / "vocab.json");
  t::write_text(dir.path() / "merges.txt", "#version: 0.2\nt h\nbad line with spaces\n");
  CHECK_THROWS_WITH_AS(ClipTokenizer::load(dir.path()), doctest::Contains("line 3"), FormatError);
  t::write_text(dir.path() / "merges.txt", "#version: 0.2\nt h\n");
  t::write_text(dir.path() / "special_tokens_map.json", R"({"pad_token": "<pad>"})");
  CHECK_THROWS_WITH_AS(ClipTokenizer::load(dir.path()), doctest::Contains("pad_token '<pad>' is not in the vocabulary"),
                       FormatError);
}

TEST_CASE("ClipTokenizer.Sd2Padding.BangIsSpecial") {
  // SD-2.x tokenizers pad with "!" (id 0); transformers then also treats a verbatim "!" in the prompt as that
  // special token. Reference ids: tools/make_tokenizer_fixtures.py ("sd2" = pad_token "!").
  t::TempDir dir;
  fs::copy_file(data_dir / "tokenizer/clip/vocab.json", dir.path() / "vocab.json");
  fs::copy_file(data_dir / "tokenizer/clip/merges.txt", dir.path() / "merges.txt");
  t::write_text(dir.path() / "special_tokens_map.json",
                R"({"pad_token": {"content": "!", "lstrip": false}, "bos_token": "<|startoftext|>"})");
  const auto tok = ClipTokenizer::load(dir.path());
  CHECK(tok.pad_id() == 0);
  const auto& prompts = fixture()["prompts"];
  const auto& expected = fixture()["sd2"];
  REQUIRE(expected.size() == prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(prompts[i].get<std::string>());
    CHECK(tok.encode(prompts[i].get<std::string>()) == expected[i].get<std::vector<std::int32_t>>());
  }
}

TEST_CASE("ClipTokenizer.Threads.ConcurrentEncode") {
  const auto tok = ClipTokenizer::load(data_dir / "tokenizer/clip");
  const auto& prompts = fixture()["prompts"];
  const auto& expected = fixture()["clip"];
  std::vector<int> wrong(4, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (int round = 0; round < 3; ++round)
        for (std::size_t i = 0; i < prompts.size(); ++i)
          if (tok.encode(prompts[i].get<std::string>()) != expected[i].get<std::vector<std::int32_t>>()) ++wrong[w];
    });
  for (auto& thread : threads)
    thread.join();
  CHECK(wrong == std::vector<int>(4, 0));
}

TEST_CASE("ClipTokenizer.Unicode.NfcMatchesPython") {
  namespace d = carousel::checkpoint::detail;
  int mismatches = 0;
  for (const auto& pair : fixture()["nfc"]) {
    const auto input = pair[0].get<std::string>();
    const auto want = pair[1].get<std::string>();
    const auto got = d::utf8_encode(d::unicode::nfc(d::utf8_decode(input, "input")));
    CAPTURE(input);
    CHECK(got == want);
    if (got != want) ++mismatches;
  }
  CHECK(mismatches == 0);
}
