#pragma once
/// \file
/// carousel::checkpoint::ClipTokenizer — CLIP's byte-level BPE tokenizer, giving the ids of transformers'
/// `CLIPTokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids`.
///
/// The pipeline, as transformers (>= 5, the `tokenizers`-backed CLIPTokenizer) runs it:
///  1. special tokens (bos, eos, unk, pad strings) are cut out of the raw prompt where they occur verbatim and
///     become their ids;
///  2. each remaining piece is normalized: NFC, runs of White_Space -> one space, per-character lowercase;
///  3. pre-tokenized with `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`
///     (spaces dropped); a piece that is a special-token string is then split again into `<|`, the word, `|>`
///     by the byte-level step's GPT-2 pattern;
///  4. each piece's UTF-8 bytes are mapped to printable characters (bytes_to_unicode), `</w>` is appended to the
///     last one, and BPE merges the lowest-ranked adjacent pair until none is in merges.txt;
///  5. ids from vocab.json; `[bos] + ids[:max_length - 2] + [eos]`, padded to max_length with the pad id.
///
/// Limits: no ftfy clean-up (neither does transformers unless ftfy is installed, and the fast tokenizer never);
/// Unicode tables are those of the generator's Python (see detail/unicode_data.hpp), so characters assigned in later
/// Unicode versions count as punctuation. Differences from transformers 4's pure-Python CLIPTokenizer (without
/// ftfy) are listed in docs/model-format.md.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/detail/unicode.hpp"
#include "carousel/checkpoint/detail/utf8.hpp"
#include "carousel/checkpoint/format_error.hpp"

namespace carousel::checkpoint {

/// A CLIP BPE tokenizer loaded from a tokenizer folder (vocab.json and merges.txt, or tokenizer.json; optionally
/// tokenizer_config.json / special_tokens_map.json for the special tokens and model_max_length).
///
/// Move-only. encode() and tokenize() are const and thread-safe (the BPE word cache is guarded by a mutex).
///
/// \code
///   auto tok = carousel::checkpoint::ClipTokenizer::load(folder.tokenizer);
///   std::vector<std::int32_t> ids = tok.encode("a photo of a cat");   // 77 ids: 49406, 320, 1125, ...
/// \endcode
class ClipTokenizer {
 public:
  /// Loads `dir`/vocab.json and `dir`/merges.txt or, when both are absent, the `model` section of
  /// `dir`/tokenizer.json (what transformers >= 5 saves: a `tokenizers` BPE model with `vocab` and `merges`, the
  /// merges as "a b" strings or ["a", "b"] pairs). Special tokens from tokenizer_config.json, then
  /// special_tokens_map.json (later wins), defaulting to CLIPTokenizer's (`<|startoftext|>`, `<|endoftext|>` for
  /// eos, unk and pad); max length from tokenizer_config.json's model_max_length (default 77).
  /// \throws FormatError naming the file (and field) when a file is missing or malformed, a tokenizer.json holds
  ///         another kind of tokenizer than CLIP's byte-level BPE, or a special token is not in the vocab.
  /// A non-empty `pad_token` replaces the configured one (e.g. "!" for SD 2.x models, whose tokenizers pad with it).
  static ClipTokenizer load(const std::filesystem::path& dir, std::string_view pad_token = {}) {
    ClipTokenizer tok;
    namespace fs = std::filesystem;
    if (!fs::exists(dir / "vocab.json") && !fs::exists(dir / "merges.txt") && !fs::exists(dir / "tokenizer.json"))
      throw FormatError("tokenizer '" + dir.string() + "': neither vocab.json + merges.txt nor tokenizer.json found");
    if (!fs::exists(dir / "vocab.json") && !fs::exists(dir / "merges.txt") && fs::exists(dir / "tokenizer.json")) {
      tok.read_tokenizer_json(dir / "tokenizer.json");
    } else {
      tok.read_vocab(read_json(dir / "vocab.json"), dir / "vocab.json");
      tok.read_merges(dir / "merges.txt");
    }
    std::string bos = "<|startoftext|>", eos = "<|endoftext|>", unk = "<|endoftext|>", pad = "<|endoftext|>";
    for (const char* file : {"tokenizer_config.json", "special_tokens_map.json"}) {
      const auto path = dir / file;
      if (!std::filesystem::exists(path)) continue;
      const auto json = read_json(path);
      read_special(json, "bos_token", bos);
      read_special(json, "eos_token", eos);
      read_special(json, "unk_token", unk);
      read_special(json, "pad_token", pad);
      if (const auto it = json.find("model_max_length");
          it != json.end() && it->is_number_unsigned() && it->get<std::uint64_t>() <= 100'000)
        tok.max_length_ = static_cast<std::size_t>(it->get<std::uint64_t>());
    }
    if (!pad_token.empty()) pad = pad_token;
    if (tok.max_length_ < 2) throw FormatError("tokenizer '" + dir.string() + "': model_max_length below 2");
    tok.bos_ = tok.special_id(dir, "bos_token", bos);
    tok.eos_ = tok.special_id(dir, "eos_token", eos);
    tok.unk_ = tok.special_id(dir, "unk_token", unk);
    tok.pad_ = tok.special_id(dir, "pad_token", pad);
    for (const auto& s : {bos, eos, unk, pad}) {
      auto text = detail::utf8_decode(s, "special token");
      const auto same = [&](const auto& entry) { return entry.first == text; };
      if (!text.empty() && std::none_of(tok.specials_.begin(), tok.specials_.end(), same))
        tok.specials_.emplace_back(std::move(text), tok.vocab_.at(s));
    }
    return tok;
  }

  ClipTokenizer(ClipTokenizer&&) noexcept = default;
  ClipTokenizer& operator=(ClipTokenizer&&) noexcept = default;
  ClipTokenizer(const ClipTokenizer&) = delete;
  ClipTokenizer& operator=(const ClipTokenizer&) = delete;

  /// Exactly max_length() ids: bos, the prompt's first max_length() - 2 token ids, eos, then pad ids.
  /// Words after the cut are not tokenized, so the cost is linear in the prompt's length (BPE of one word is
  /// O(n log n) in its length).
  /// \throws std::invalid_argument when `prompt` is not valid UTF-8 (the message gives the byte offset).
  std::vector<std::int32_t> encode(std::string_view prompt) const {
    auto ids = tokenize_up_to(prompt, max_length_ - 2);
    if (ids.size() > max_length_ - 2) ids.resize(max_length_ - 2);
    std::vector<std::int32_t> out;
    out.reserve(max_length_);
    out.push_back(bos_);
    out.insert(out.end(), ids.begin(), ids.end());
    out.push_back(eos_);
    out.resize(max_length_, pad_);
    return out;
  }

  /// The prompt's token ids alone: no bos/eos, no truncation, no padding.
  /// \throws std::invalid_argument when `prompt` is not valid UTF-8.
  std::vector<std::int32_t> tokenize(std::string_view prompt) const {
    return tokenize_up_to(prompt, std::numeric_limits<std::size_t>::max());
  }

  std::int32_t bos_id() const noexcept { return bos_; }  ///< id of the beginning-of-text token
  std::int32_t eos_id() const noexcept { return eos_; }  ///< id of the end-of-text token
  std::int32_t pad_id() const noexcept { return pad_; }  ///< id used for padding (SD-1.x: eos; SD-2.x: "!" = 0)
  std::size_t max_length() const noexcept { return max_length_; }    ///< ids per encode() (77 for CLIP)
  std::size_t vocab_size() const noexcept { return vocab_.size(); }  ///< entries in vocab.json

 private:
  ClipTokenizer() : cache_(std::make_unique<Cache>()) {}

  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int32_t>> words;
  };
  static constexpr std::size_t max_cached_words = 1 << 16;
  // Longer words are not cached, which bounds the cache at about max_cached_words * max_cached_word_bytes.
  static constexpr std::size_t max_cached_word_bytes = 256;

  // The prompt's ids, stopping at the first word boundary at or after `limit` ids (later words cannot change
  // earlier ids, so encode() need not look at them).
  std::vector<std::int32_t> tokenize_up_to(std::string_view prompt, std::size_t limit) const {
    const std::u32string text = detail::utf8_decode(prompt, "prompt");
    std::vector<std::int32_t> ids;
    std::size_t start = 0;
    for (std::size_t i = 0; i < text.size() && ids.size() < limit;) {
      const auto* special = special_at(text, i);
      if (special == nullptr) {
        ++i;
        continue;
      }
      tokenize_plain(text.substr(start, i - start), ids, limit);
      if (ids.size() >= limit) return ids;
      ids.push_back(special->second);
      i += special->first.size();
      start = i;
    }
    if (ids.size() < limit) tokenize_plain(text.substr(start), ids, limit);
    return ids;
  }

  static nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError("tokenizer file '" + path.string() + "': cannot open");
    try {
      auto json = nlohmann::json::parse(in);
      if (!json.is_object()) throw FormatError("tokenizer file '" + path.string() + "': not a JSON object");
      return json;
    } catch (const nlohmann::json::exception& e) {
      throw FormatError("tokenizer file '" + path.string() + "': not valid JSON: " + e.what());
    }
  }

  // A special token is written as a string or as {"content": "...", ...} (transformers' AddedToken).
  static void read_special(const nlohmann::json& json, const char* field, std::string& value) {
    const auto it = json.find(field);
    if (it == json.end()) return;
    if (it->is_string()) value = it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      value = (*it)["content"].get<std::string>();
  }

  std::int32_t special_id(const std::filesystem::path& dir, const char* field, const std::string& token) const {
    const auto it = vocab_.find(token);
    if (it == vocab_.end())
      throw FormatError("tokenizer '" + dir.string() + "': " + field + " '" + token + "' is not in the vocabulary");
    return it->second;
  }

  void read_vocab(const nlohmann::json& json, const std::filesystem::path& path) {
    if (!json.is_object()) throw FormatError("tokenizer file '" + path.string() + "': the vocabulary is not an object");
    for (const auto& [token, id] : json.items()) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
          id.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max())
        throw FormatError("tokenizer file '" + path.string() + "': id of '" + token + "' is not a non-negative int");
      vocab_.emplace(token, static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
    if (vocab_.empty()) throw FormatError("tokenizer file '" + path.string() + "': empty vocabulary");
  }

  // The `model` section of a `tokenizers` tokenizer.json, accepted only when it is CLIP's: byte-level BPE with
  // "</w>" word ends, no subword prefix, no dropout or byte fallback, merges applied to every word, and CLIP's
  // pre-tokenizer pattern (this class hard-codes CLIP's normalization and pre-tokenization).
  void read_tokenizer_json(const std::filesystem::path& path) {
    const auto json = read_json(path);
    const std::string where = "tokenizer file '" + path.string() + "'";
    const auto model = json.find("model");
    if (model == json.end() || !model->is_object()) throw FormatError(where + ": no 'model' object");
    const auto field = [&](const char* name) -> const nlohmann::json& {
      static const nlohmann::json null;
      const auto it = model->find(name);
      return it == model->end() ? null : *it;
    };
    const auto refuse = [&](const std::string& what) {
      throw FormatError(where + ": " + what + "; only CLIP's byte-level BPE tokenizer is supported");
    };
    if (field("type") != "BPE") refuse("model type " + field("type").dump() + " is not BPE");
    if (field("end_of_word_suffix") != "</w>")
      refuse("model.end_of_word_suffix " + field("end_of_word_suffix").dump() + " is not \"</w>\"");
    if (!field("continuing_subword_prefix").is_null() && field("continuing_subword_prefix") != "")
      refuse("model.continuing_subword_prefix " + field("continuing_subword_prefix").dump() + " is set");
    if (!field("dropout").is_null()) refuse("model.dropout " + field("dropout").dump() + " is set");
    if (field("byte_fallback") == true) refuse("model.byte_fallback is true");
    if (field("ignore_merges") == true) refuse("model.ignore_merges is true");
    const auto pre = json.find("pre_tokenizer");
    if (pre == json.end() ||
        pre->dump().find(R"('s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+)") == std::string::npos)
      refuse("its pre_tokenizer lacks CLIP's split pattern");
    read_vocab(field("vocab"), path);
    const auto& merges = field("merges");
    if (!merges.is_array()) throw FormatError(where + ": model.merges is not a list");
    int rank = 0;
    for (const auto& merge : merges) {
      std::string line;
      if (merge.is_string()) {
        line = merge.get<std::string>();
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        line = merge[0].get<std::string>() + ' ' + merge[1].get<std::string>();
      }
      const auto space = line.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
          line.find(' ', space + 1) != std::string::npos)
        throw FormatError(where + ": model.merges entry " + std::to_string(rank) +
                          " is neither \"left right\" nor [\"left\", \"right\"]");
      ranks_.emplace(std::move(line), rank++);
    }
  }

  void read_merges(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError("tokenizer file '" + path.string() + "': cannot open");
    std::string line;
    std::size_t line_number = 0;
    int rank = 0;
    while (std::getline(in, line)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (line_number == 1 && line.starts_with("#version"))) continue;
      const auto space = line.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
          line.find(' ', space + 1) != std::string::npos)
        throw FormatError("tokenizer file '" + path.string() + "': line " + std::to_string(line_number) +
                          " is not 'left right'");
      ranks_.emplace(line, rank++);
    }
  }

  // The special token whose text starts at text[i] (the longest when several do), or nullptr.
  const std::pair<std::u32string, std::int32_t>* special_at(const std::u32string& text, std::size_t i) const {
    const std::pair<std::u32string, std::int32_t>* best = nullptr;
    for (const auto& entry : specials_) {
      if (best && best->first.size() >= entry.first.size()) continue;
      if (std::u32string_view(text).substr(i).starts_with(entry.first)) best = &entry;
    }
    return best;
  }

  void tokenize_plain(const std::u32string& raw, std::vector<std::int32_t>& ids, std::size_t limit) const {
    if (raw.empty()) return;
    namespace uc = detail::unicode;
    std::u32string text;
    bool in_space = false;
    for (char32_t cp : uc::nfc(raw)) {
      if (uc::is_space(cp)) {
        if (!in_space) text.push_back(U' ');
        in_space = true;
        continue;
      }
      in_space = false;
      uc::append_lower(cp, text);
    }
    for (std::size_t i = 0; i < text.size() && ids.size() < limit;) {
      const char32_t cp = text[i];
      if (uc::is_space(cp)) {
        ++i;
        continue;
      }
      std::size_t end = i + 1;
      if (const auto n = special_word(text, i)) {
        // The byte-level step's GPT-2 pattern splits "<|endoftext|>" into "<|", "endoftext", "|>".
        add_word(text.substr(i, 2), ids);
        add_word(text.substr(i + 2, n - 4), ids);
        add_word(text.substr(i + n - 2, 2), ids);
        i += n;
        continue;
      } else if (const auto c = contraction(text, i)) {
        end = i + c;
      } else if (uc::is_letter(cp)) {
        while (end < text.size() && uc::is_letter(text[end]))
          ++end;
      } else if (!uc::is_number(cp)) {
        while (end < text.size() && !uc::is_space(text[end]) && !uc::is_letter(text[end]) && !uc::is_number(text[end]))
          ++end;
      }
      add_word(text.substr(i, end - i), ids);
      i = end;
    }
  }

  static std::size_t special_word(const std::u32string& text, std::size_t i) {
    for (std::u32string_view s : {std::u32string_view(U"<|startoftext|>"), std::u32string_view(U"<|endoftext|>")})
      if (std::u32string_view(text).substr(i).starts_with(s)) return s.size();
    return 0;
  }

  static std::size_t contraction(const std::u32string& text, std::size_t i) {
    if (text[i] != U'\'') return 0;
    for (std::u32string_view s : {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"})
      if (std::u32string_view(text).substr(i).starts_with(s)) return s.size();
    return 0;
  }

  static const std::string& byte_symbol(unsigned char byte) {
    static const auto table = [] {
      std::vector<std::string> symbols(256);
      int extra = 0;
      for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        detail::utf8_append(static_cast<char32_t>(printable ? b : 256 + extra++), symbols[static_cast<std::size_t>(b)]);
      }
      return symbols;
    }();
    return table[byte];
  }

  void add_word(const std::u32string& word, std::vector<std::int32_t>& ids) const {
    const std::string utf8 = detail::utf8_encode(word);
    {
      std::lock_guard lock(cache_->mutex);
      if (const auto it = cache_->words.find(utf8); it != cache_->words.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const auto symbols = merge_word(utf8);
    std::vector<std::int32_t> word_ids;
    for (const auto& s : symbols) {
      const auto it = vocab_.find(s);
      word_ids.push_back(it == vocab_.end() ? unk_ : it->second);
    }
    ids.insert(ids.end(), word_ids.begin(), word_ids.end());
    if (utf8.size() > max_cached_word_bytes) return;
    std::lock_guard lock(cache_->mutex);
    if (cache_->words.size() >= max_cached_words) cache_->words.clear();
    cache_->words.emplace(utf8, std::move(word_ids));
  }

  // BPE of one word: starting from its byte symbols (the last with "</w>"), merges the adjacent pair of lowest
  // rank, leftmost first, until no adjacent pair is in the merges. A heap of candidate pairs keeps this
  // O(n log n) (as the `tokenizers` library does); a popped candidate whose symbols changed since is skipped.
  std::vector<std::string> merge_word(const std::string& utf8) const {
    struct Symbol {
      std::string text;
      std::size_t prev, next;  // npos at the ends
      std::uint32_t version = 0;
    };
    struct Candidate {
      int rank;
      std::size_t left, right;
      std::uint32_t left_version, right_version;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    constexpr auto none = std::numeric_limits<std::size_t>::max();
    std::vector<Symbol> symbols;
    symbols.reserve(utf8.size());
    for (std::size_t k = 0; k < utf8.size(); ++k)
      symbols.push_back({byte_symbol(static_cast<unsigned char>(utf8[k])), k == 0 ? none : k - 1,
                         k + 1 == utf8.size() ? none : k + 1});
    symbols.back().text += "</w>";
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto consider = [&](std::size_t left) {
      if (left == none || symbols[left].next == none) return;
      const std::size_t right = symbols[left].next;
      const auto it = ranks_.find(symbols[left].text + ' ' + symbols[right].text);
      if (it != ranks_.end()) heap.push({it->second, left, right, symbols[left].version, symbols[right].version});
    };
    for (std::size_t k = 0; k + 1 < symbols.size(); ++k)
      consider(k);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      Symbol& left = symbols[c.left];
      if (left.next != c.right || left.version != c.left_version || symbols[c.right].version != c.right_version)
        continue;
      Symbol& right = symbols[c.right];
      left.text += right.text;
      ++left.version;
      ++right.version;  // invalidates candidates that start at the absorbed symbol
      left.next = right.next;
      if (right.next != none) symbols[right.next].prev = c.left;
      right.text.clear();
      consider(left.prev);
      consider(c.left);
    }
    std::vector<std::string> out;
    for (std::size_t k = 0; k != none; k = symbols[k].next)
      out.push_back(std::move(symbols[k].text));
    return out;
  }

  std::unordered_map<std::string, std::int32_t> vocab_;
  std::unordered_map<std::string, int> ranks_;                     // "left right" -> merge rank
  std::vector<std::pair<std::u32string, std::int32_t>> specials_;  // matched verbatim in the raw prompt
  std::int32_t bos_ = 0, eos_ = 0, unk_ = 0, pad_ = 0;
  std::size_t max_length_ = 77;
  std::unique_ptr<Cache> cache_;
};

}  // namespace carousel::checkpoint
