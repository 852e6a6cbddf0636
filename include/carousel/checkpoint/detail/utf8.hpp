#pragma once
/// \file
/// Strict UTF-8 decoding and encoding for the tokenizer.

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace carousel::checkpoint::detail {

/// Decodes `text` as UTF-8. \throws std::invalid_argument naming `what`, the problem and the byte offset for
/// truncated sequences, stray continuation bytes, overlong forms, surrogates and code points above U+10FFFF.
inline std::u32string utf8_decode(std::string_view text, std::string_view what) {
  std::u32string out;
  out.reserve(text.size());
  const auto fail = [&](std::size_t at, const char* problem) {
    throw std::invalid_argument(std::string(what) + " is not valid UTF-8: " + problem + " at byte " +
                                std::to_string(at));
  };
  for (std::size_t i = 0; i < text.size();) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    std::size_t length = 0;
    char32_t cp = 0;
    char32_t minimum = 0;
    if ((b0 & 0xE0) == 0xC0) {
      length = 2, cp = b0 & 0x1Fu, minimum = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      length = 3, cp = b0 & 0x0Fu, minimum = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      length = 4, cp = b0 & 0x07u, minimum = 0x10000;
    } else {
      fail(i, (b0 & 0xC0) == 0x80 ? "unexpected continuation byte" : "invalid lead byte");
    }
    if (i + length > text.size()) fail(i, "truncated sequence");
    for (std::size_t k = 1; k < length; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      if ((b & 0xC0) != 0x80) fail(i, "missing continuation byte in the sequence starting");
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < minimum) fail(i, "overlong encoding");
    if (cp >= 0xD800 && cp <= 0xDFFF) fail(i, "encoded surrogate");
    if (cp > 0x10FFFF) fail(i, "code point above U+10FFFF");
    out.push_back(cp);
    i += length;
  }
  return out;
}

/// Appends the UTF-8 encoding of `cp` (a valid scalar value) to `out`.
inline void utf8_append(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

/// The UTF-8 encoding of `text`.
inline std::string utf8_encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text)
    utf8_append(cp, out);
  return out;
}

}  // namespace carousel::checkpoint::detail
