#!/usr/bin/env python3
"""Tokenizer fixtures and Unicode tables for carousel::checkpoint::ClipTokenizer.

Run from the repository root after tools/make_tiny_models.py (it reads the tokenizers that script writes):

    python tools/make_tokenizer_fixtures.py

Writes
  tests/data/tokenizer/ids.json
      {"prompts": [...], "clip": [[77 ids], ...], "tiny": [[77 ids], ...], "sd2": [[77 ids], ...],
       "slow_differs": [indexes], "nfc": [[text, NFC(text)], ...],
       "long": [{"unit": text, "times": n, "clip": [77 ids], "tiny": [77 ids]}, ...,
                {"random_letters": n, "clip": [77 ids], "tiny": [77 ids]}, ...]}
      "clip": transformers' CLIPTokenizer (the tokenizers-backed one; transformers 5 has no other) on
      tests/data/tokenizer/clip with padding="max_length", max_length=77, truncation=True; "tiny": the same on
      tests/data/models/sd-tiny/tokenizer (vocab 1000); "sd2": the full one with pad_token="!" as SD-2.x
      tokenizers have (transformers then also matches a verbatim "!" as that special token). "nfc": random strings
      of letters, combining marks, Hangul jamo, singletons and exclusions with Python's NFC. "long": prompts of
      `unit` repeated `times` times (one word of 1 MiB, thousands of words), or one word of n pseudo-random
      letters (random_word(n) below; BPE needs thousands of merge rounds on it), which must be encoded in
      near-linear time. "slow_differs": prompts on which transformers 4's pure-Python
      CLIPTokenizer without ftfy (re-implemented below: BasicTokenizer clean-up, CJK characters split apart,
      whitespace_clean, lower) gives other ids than the fast tokenizer — carousel follows the fast one.
  tests/data/tokenizer/json-pairs/, tests/data/tokenizer/json-strings/
      The tiny tokenizer as transformers 5 saves it (tokenizer.json + tokenizer_config.json, no vocab.json or
      merges.txt), with merges as ["a", "b"] pairs (tokenizers >= 0.20) and as "a b" strings (older tokenizers);
      both are checked to give transformers the "tiny" ids on every prompt.
  include/carousel/checkpoint/detail/unicode_data.hpp
      Tables generated from Python's unicodedata (Unicode {unidata_version}): general categories L* and N*,
      per-character lowercase mapping, canonical combining classes, canonical decompositions and primary
      compositions (for NFC).
"""

import json
import sys
import unicodedata
from pathlib import Path

import regex

from clip_bpe import bytes_to_unicode

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT / "tests" / "data" / "tokenizer" / "clip"
TINY = ROOT / "tests" / "data" / "models" / "sd-tiny" / "tokenizer"
OUT_IDS = ROOT / "tests" / "data" / "tokenizer" / "ids.json"
OUT_TABLES = ROOT / "include" / "carousel" / "checkpoint" / "detail" / "unicode_data.hpp"

LONG = (
    "a highly detailed matte painting of a sprawling futuristic city at dusk, neon lights reflecting on wet "
    "streets, flying cars, towering skyscrapers with holographic billboards, crowds of people in raincoats, "
    "volumetric fog, cinematic lighting, ultra wide angle, 8k resolution, trending on artstation, by greg "
    "rutkowski and syd mead, octane render, unreal engine 5, sharp focus, intricate details, vivid colors"
)

PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on mars",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "multiple     spaces    between",
    "hello, world!",
    "what's up? it's fine; they're here, we've gone, i'm ok, you'll see, he'd go",
    "DON'T SHOUT'S",
    "rock'n'roll o'clock",
    "!!!???...",
    "a--b__c~~d",
    "(masterpiece:1.2), [best quality], {ultra detailed}",
    "email me at someone@example.com or visit https://example.com/path?q=1&r=2",
    "price: $19.99 (50% off) #sale @shop",
    "1234567890",
    "3.14159 and 2,718 and 1e-5",
    "version 2.0.1-beta+build.7",
    "café crème brûlée",
    "naïve façade résumé",
    "Ærøskøbing Ångström ß straße",
    "ÀÉÎÕÜ àéîõü",
    "Ελληνικά γράμματα ΣΑΣ",
    "Русский текст, ПРИВЕТ мир",
    "українська мова ґ є ї",
    "日本語のテキスト",
    "猫が好き",
    "中文提示词：一只可爱的猫",
    "한국어 문장",
    "مرحبا بالعالم",
    "١٢٣ ٤٥٦",
    "שלום עולם",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "emoji 🐱 cat 🎉 party 👍🏽",
    "🐱🐶🐭",
    "flags 🇺🇸🇯🇵",
    "x² y³ ½ ¼ Ⅻ",
    "math: ∑ ∫ √ ∞ ≠ ≤",
    "quotes “curly” ‘single’ «guillemets»",
    "dash — en – hyphen-minus",
    "non\u00a0breaking\u3000ideographic\u2003em space",
    "zero\u200bwidth\ufeffbom",
    "control\x01chars\x7f here",
    "İstanbul ǅ ﬁ",
    "e\u0301 decomposed a\u0308",
    "\u1100\u1161 jamo \u1100\u1161\u11a8 \uac00\u11a8",
    "order a\u0302\u0323 a\u0323\u0302 \u1ea1\u0302 q\u0307\u0323",
    "singletons \u212b \u2126 \u0958 \u0344 \u2000",
    "Tiếng Việt có dấu",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 𝐁𝐨𝐥𝐝",
    "Հայերեն ᲐᲑᲒ Ꭰ ı I",
    "<|startoftext|> inside",
    "a <|endoftext|> b",
    "x<|startoftext|>y",
    "<|endoftext|>!!",
    "A <|ENDOFTEXT|> b",
    "a,<|endoftext|>b",
    "\\backslash/ slash|pipe",
    "under_score snake_case CamelCase",
    "hashtag#tag @mention",
    "mixed123numbers456",
    "'quoted' \"double\"",
    "it''s ''s '",
    LONG,
    LONG + " " + LONG,
    " ".join(["word"] * 80),
    "🐱" * 40,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

# Long prompts as (unit, times): a 16 KiB and a 1 MiB one-word prompt, many short words, a long word of
# multi-byte letters, and a special token after the cut.
LONG_PROMPTS = [("a", 16384), ("ab", 1 << 19), ("cat ", 1 << 16), ("é", 1 << 15), ("dog <|endoftext|>", 1000)]
RANDOM_WORDS = [16384, 1 << 20]


def random_word(n):
    """n letters from the LCG x -> (1103515245 x + 12345) mod 2^31, x0 = 1, letter 'a' + (x >> 16) % 26."""
    x, out = 1, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % (1 << 31)
        out.append(chr(ord("a") + (x >> 16) % 26))
    return "".join(out)


class SlowClip:
    """transformers 4's CLIPTokenizer (pure Python) as it runs without ftfy installed."""

    def __init__(self, folder):
        self.encoder = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")[1:]
        self.ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    @staticmethod
    def basic_clean(text):
        # BasicTokenizer(strip_accents=False, do_split_on_punc=False): drop control chars, whitespace -> ' ',
        # spaces around CJK ideographs, NFC, split on whitespace, lowercase.
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            out.append(" " if ch in " \t\n\r" or unicodedata.category(ch) == "Zs" else ch)
        text = "".join(out)
        text = "".join(
            f" {ch} "
            if 0x4E00 <= ord(ch) <= 0x9FFF
            or 0x3400 <= ord(ch) <= 0x4DBF
            or 0x20000 <= ord(ch) <= 0x2A6DF
            or 0xF900 <= ord(ch) <= 0xFAFF
            else ch
            for ch in text
        )
        text = unicodedata.normalize("NFC", text)
        return " ".join(tok.lower() for tok in text.split()).lower()

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def __call__(self, text):
        bos, eos = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        ids = []
        for token in self.pat.findall(self.basic_clean(text)):
            if token in ("<|startoftext|>", "<|endoftext|>"):
                ids.append(self.encoder[token])
                continue
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        ids = [bos] + ids[:75] + [eos]
        return ids + [eos] * (77 - len(ids))


def ranges(predicate):
    out, start = [], None
    for cp in range(0x110000):
        if predicate(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def lowercase_runs():
    """(first, count, stride, delta): cp = first + k*stride maps to cp + delta, for k < count."""
    single = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        low = chr(cp).lower()
        if low == chr(cp):
            continue
        if len(low) != 1:
            assert cp == 0x130, hex(cp)  # İ -> i + U+0307, handled in C++
            continue
        single.append((cp, ord(low) - cp))
    runs = []
    for cp, delta in single:
        if runs:
            first, count, stride, d = runs[-1]
            last = first + (count - 1) * stride
            if d == delta and count == 1 and cp - first in (1, 2):
                runs[-1] = (first, 2, cp - first, d)
                continue
            if d == delta and count > 1 and cp - last == stride:
                runs[-1] = (first, count + 1, stride, d)
                continue
        runs.append((cp, 1, 1, delta))
    return runs


def normalization_tables():
    ccc = []
    for cp in range(0x110000):
        c = unicodedata.combining(chr(cp)) if not 0xD800 <= cp <= 0xDFFF else 0
        if c:
            if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == c:
                ccc[-1] = (ccc[-1][0], cp, c)
            else:
                ccc.append((cp, cp, c))
    decomp, compose = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or 0xAC00 <= cp <= 0xD7A3:  # Hangul syllables: algorithmic
            continue
        nfd = unicodedata.normalize("NFD", chr(cp))
        if nfd != chr(cp):
            assert len(nfd) <= 4
            decomp.append((cp, [ord(c) for c in nfd]))
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = [int(x, 16) for x in d.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp):
                compose.append((parts[0], parts[1], cp))
    compose.sort()
    return ccc, decomp, compose


def write_tables():
    letters = ranges(lambda cp: unicodedata.category(chr(cp))[0] == "L")
    numbers = ranges(lambda cp: unicodedata.category(chr(cp))[0] == "N")
    lower = lowercase_runs()
    ccc, decomp, compose = normalization_tables()

    def rows(items, per_line):
        lines = []
        for i in range(0, len(items), per_line):
            lines.append("    " + " ".join(items[i : i + per_line]))
        return "\n".join(lines)

    text = f"""#pragma once
/// \\file
/// Unicode tables for the CLIP tokenizer, generated by tools/make_tokenizer_fixtures.py from Python's unicodedata
/// (Unicode {unicodedata.unidata_version}). Do not edit by hand.

#include <cstdint>

// clang-format off
namespace carousel::checkpoint::detail::unicode {{

/// Inclusive code point ranges of general category L (Lu, Ll, Lt, Lm, Lo), sorted.
inline constexpr std::uint32_t letter_ranges[][2] = {{
{rows([f"{{0x{a:X}, 0x{b:X}}}," for a, b in letters], 6)}
}};

/// Inclusive code point ranges of general category N (Nd, Nl, No), sorted.
inline constexpr std::uint32_t number_ranges[][2] = {{
{rows([f"{{0x{a:X}, 0x{b:X}}}," for a, b in numbers], 6)}
}};

/// Per-character lowercase (Rust's char::to_lowercase, Python's str.lower of one character), as runs
/// {{first, count, stride, delta}}: first + k * stride (k < count) maps to itself + delta. Sorted by first.
/// U+0130 (lowercase "i" + U+0307) is the one two-character mapping and is not in the table.
inline constexpr std::int32_t lowercase_runs[][4] = {{
{rows([f"{{0x{a:X}, {n}, {s}, {d}}}," for a, n, s, d in lower], 5)}
}};

/// Inclusive ranges {{first, last, class}} of non-zero canonical combining classes, sorted.
inline constexpr std::uint32_t combining_class_ranges[][3] = {{
{rows([f"{{0x{a:X}, 0x{b:X}, {c}}}," for a, b, c in ccc], 5)}
}};

/// Full canonical decompositions (NFD of one code point, up to 4 code points, 0-padded), sorted; Hangul syllables
/// are decomposed algorithmically and not listed.
inline constexpr std::uint32_t decompositions[][5] = {{
{rows([f"{{0x{cp:X}, {', '.join(f'0x{x:X}' for x in (parts + [0] * (4 - len(parts))))}}}," for cp, parts in decomp], 3)}
}};

/// Primary composites {{first, second, composite}} (canonical pairs that NFC composes), sorted by (first, second).
inline constexpr std::uint32_t compositions[][3] = {{
{rows([f"{{0x{a:X}, 0x{b:X}, 0x{c:X}}}," for a, b, c in compose], 4)}
}};

}}  // namespace carousel::checkpoint::detail::unicode
// clang-format on
"""
    OUT_TABLES.write_text(text)
    print(
        f"{OUT_TABLES.relative_to(ROOT)}: {len(letters)} letter ranges, {len(numbers)} number ranges, "
        f"{len(lower)} lowercase runs, {len(ccc)} ccc ranges, {len(decomp)} decompositions, {len(compose)} compositions"
    )


def nfc_cases(count=400):
    """Random short strings mixing letters, combining marks of several classes, Hangul jamo and syllables,
    singletons and composition exclusions, with their NFC from Python's unicodedata."""
    import random

    rng = random.Random(7)
    pool = (
        [ord(c) for c in "aAeEoOuUiInNcCsSzZ"]
        + [0x300, 0x301, 0x302, 0x303, 0x308, 0x30A, 0x323, 0x327, 0x328, 0x31B, 0x345, 0x344, 0x340, 0x5B0, 0x5BC]
        + [0x1100, 0x1112, 0x1161, 0x1175, 0x11A8, 0x11C2, 0xAC00, 0xAC01, 0xD7A3]
        + [0x212B, 0x2126, 0x0958, 0x0915, 0x093C, 0x1E9B, 0x0391, 0x03B9, 0x0B47, 0x0B3E, 0x0FB2, 0x0F80, 0x00C5]
    )
    cases = []
    for _ in range(count):
        text = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 6)))
        cases.append([text, unicodedata.normalize("NFC", text)])
    return cases


def write_tokenizer_json():
    """The tiny tokenizer saved by transformers (tokenizer.json), in both merge spellings, each checked."""
    from transformers import CLIPTokenizer

    tiny = CLIPTokenizer.from_pretrained(TINY)
    for style in ("pairs", "strings"):
        out = ROOT / "tests" / "data" / "tokenizer" / f"json-{style}"
        tiny.save_pretrained(out)
        assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"], list(out.iterdir())
        data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        merges = data["model"]["merges"]
        if style == "strings":
            data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
        else:
            data["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in merges]
        (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        reloaded = CLIPTokenizer.from_pretrained(out)
        for prompt in PROMPTS:
            want = tiny(prompt, padding="max_length", max_length=77, truncation=True).input_ids
            assert reloaded(prompt, padding="max_length", max_length=77, truncation=True).input_ids == want, prompt
        print(f"{out.relative_to(ROOT)}: merges as {style}, same ids as {TINY.relative_to(ROOT)}")


def write_ids():
    from transformers import CLIPTokenizer

    full = CLIPTokenizer.from_pretrained(FULL)
    tiny = CLIPTokenizer.from_pretrained(TINY)
    slow = SlowClip(FULL)

    def encode(tok, prompt):
        return tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids

    sd2 = CLIPTokenizer.from_pretrained(FULL, pad_token="!")
    clip_ids = [encode(full, p) for p in PROMPTS]
    sd2_ids = [encode(sd2, p) for p in PROMPTS]
    tiny_ids = [encode(tiny, p) for p in PROMPTS]
    differs = [i for i, p in enumerate(PROMPTS) if slow(p) != clip_ids[i]]
    for ids in clip_ids + tiny_ids:
        assert len(ids) == 77
    long_cases = [{"unit": unit, "times": times, "clip": encode(full, unit * times), "tiny": encode(tiny, unit * times)}
                  for unit, times in LONG_PROMPTS]
    long_cases += [{"random_letters": n, "clip": encode(full, random_word(n)), "tiny": encode(tiny, random_word(n))}
                   for n in RANDOM_WORDS]
    OUT_IDS.write_text(
        json.dumps({"prompts": PROMPTS, "clip": clip_ids, "tiny": tiny_ids, "sd2": sd2_ids, "slow_differs": differs,
                    "nfc": nfc_cases(), "long": long_cases}) + "\n",
        encoding="utf-8",
    )
    print(f"{OUT_IDS.relative_to(ROOT)}: {len(PROMPTS)} prompts; slow (no ftfy) differs from fast on:")
    for i in differs:
        print(f"  {i}: {PROMPTS[i]!r}")


if __name__ == "__main__":
    __doc__ = __doc__.replace("{unidata_version}", unicodedata.unidata_version)
    if len(sys.argv) > 1:
        raise SystemExit(__doc__)
    write_tables()
    write_ids()
    write_tokenizer_json()
