#pragma once
/// \file
/// The Unicode properties the CLIP tokenizer needs: \p{L}, \p{N}, White_Space, per-character lowercase, NFC.
/// Tables: unicode_data.hpp (generated; see its header for the Unicode version).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>

#include "carousel/checkpoint/detail/unicode_data.hpp"

namespace carousel::checkpoint::detail::unicode {

template <std::size_t N, std::size_t W>
bool in_ranges(const std::uint32_t (&table)[N][W], char32_t cp) {
  const auto* end = std::end(table);
  const auto* it = std::upper_bound(std::begin(table), end, static_cast<std::uint32_t>(cp),
                                    [](std::uint32_t value, const auto& row) { return value < row[0]; });
  return it != std::begin(table) && cp <= (it - 1)[0][1];
}

/// General category L (letter).
inline bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(letter_ranges, cp);
}

/// General category N (number).
inline bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(number_ranges, cp);
}

/// The White_Space property (what the tokenizers library's \s matches).
inline bool is_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/// Appends the lowercase of `cp` (one character, or two for U+0130) to `out`.
inline void append_lower(char32_t cp, std::u32string& out) {
  if (cp < 0x80) {
    out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  if (cp == 0x130) {
    out += U"i\u0307";
    return;
  }
  const auto* it = std::upper_bound(std::begin(lowercase_runs), std::end(lowercase_runs), static_cast<std::int32_t>(cp),
                                    [](std::int32_t value, const auto& row) { return value < row[0]; });
  if (it != std::begin(lowercase_runs)) {
    const auto& run = *(it - 1);
    const auto offset = static_cast<std::int32_t>(cp) - run[0];
    if (offset % run[2] == 0 && offset / run[2] < run[1]) {
      out.push_back(static_cast<char32_t>(static_cast<std::int32_t>(cp) + run[3]));
      return;
    }
  }
  out.push_back(cp);
}

/// Canonical combining class (0 for starters).
inline std::uint32_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* it = std::upper_bound(std::begin(combining_class_ranges), std::end(combining_class_ranges),
                                    static_cast<std::uint32_t>(cp),
                                    [](std::uint32_t value, const auto& row) { return value < row[0]; });
  if (it == std::begin(combining_class_ranges) || cp > (it - 1)[0][1]) return 0;
  return (it - 1)[0][2];
}

namespace hangul {
inline constexpr char32_t s_base = 0xAC00, l_base = 0x1100, v_base = 0x1161, t_base = 0x11A7;
inline constexpr char32_t l_count = 19, v_count = 21, t_count = 28, n_count = v_count * t_count,
                          s_count = l_count * n_count;
}  // namespace hangul

inline void append_decomposed(char32_t cp, std::u32string& out) {
  using namespace hangul;
  if (cp >= s_base && cp < s_base + s_count) {
    const char32_t s = cp - s_base;
    out.push_back(l_base + s / n_count);
    out.push_back(v_base + (s % n_count) / t_count);
    if (s % t_count != 0) out.push_back(t_base + s % t_count);
    return;
  }
  const auto* it =
      std::lower_bound(std::begin(decompositions), std::end(decompositions), static_cast<std::uint32_t>(cp),
                       [](const auto& row, std::uint32_t value) { return row[0] < value; });
  if (it == std::end(decompositions) || (*it)[0] != cp) {
    out.push_back(cp);
    return;
  }
  for (int k = 1; k < 5 && (*it)[k] != 0; ++k)
    out.push_back((*it)[k]);
}

/// The primary composite of (a, b), or 0.
inline char32_t compose_pair(char32_t a, char32_t b) {
  using namespace hangul;
  if (a >= l_base && a < l_base + l_count && b >= v_base && b < v_base + v_count)
    return s_base + ((a - l_base) * v_count + (b - v_base)) * t_count;
  if (a >= s_base && a < s_base + s_count && (a - s_base) % t_count == 0 && b > t_base && b < t_base + t_count)
    return a + (b - t_base);
  const auto* it = std::lower_bound(std::begin(compositions), std::end(compositions), std::pair{a, b},
                                    [](const auto& row, const std::pair<char32_t, char32_t>& key) {
                                      return row[0] != key.first ? row[0] < key.first : row[1] < key.second;
                                    });
  return it != std::end(compositions) && (*it)[0] == a && (*it)[1] == b ? (*it)[2] : 0;
}

/// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical composition).
inline std::u32string nfc(const std::u32string& text) {
  // Below U+0300 there are no combining marks, and every character is already NFC-stable.
  if (std::all_of(text.begin(), text.end(), [](char32_t cp) { return cp < 0x300; })) return text;
  std::u32string d;
  for (char32_t cp : text)
    append_decomposed(cp, d);
  for (std::size_t i = 1; i < d.size(); ++i) {  // stable insertion sort of each run of non-starters by class
    const auto cc = combining_class(d[i]);
    if (cc == 0) continue;
    for (std::size_t j = i; j > 0; --j) {
      const auto prev = combining_class(d[j - 1]);
      if (prev == 0 || prev <= cc) break;
      std::swap(d[j - 1], d[j]);
    }
  }
  if (d.empty()) return d;
  std::size_t starter = 0, out = 1;
  std::uint32_t last_class = combining_class(d[0]) == 0 ? 0 : 256;
  for (std::size_t i = 1; i < d.size(); ++i) {
    const char32_t cp = d[i];
    const auto cc = combining_class(cp);
    const char32_t composite = compose_pair(d[starter], cp);
    if (composite != 0 && (last_class < cc || last_class == 0) && last_class != 256) {
      d[starter] = composite;
      continue;
    }
    if (cc == 0) starter = out;
    last_class = cc;
    d[out++] = cp;
  }
  d.resize(out);
  return d;
}

}  // namespace carousel::checkpoint::detail::unicode
