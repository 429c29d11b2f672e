// UTF-8 decoding with U+FFFD substitution of maximal subparts (Unicode 15, section 3.9, as Python's
// bytes.decode(errors="replace")), and the character classes BERT's basic tokenizer uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace electra::text::unicode {

inline constexpr char32_t kReplacement = 0xFFFD;

struct Decoded {
  char32_t cp;   // kReplacement for an invalid sequence
  uint32_t len;  // bytes consumed, >= 1
  bool invalid;  // true when the bytes were not well-formed UTF-8
};

// Decodes the code point at p (p < end). An invalid sequence consumes only its maximal subpart (the
// longest prefix of a well-formed sequence, or 1 byte), so the text after it is never swallowed.
// Surrogates (ED A0..BF), overlongs (C0, C1, E0 80..9F, F0 80..8F) and values above U+10FFFF are invalid.
inline Decoded decode_utf8(const unsigned char* p, const unsigned char* end) {
  const unsigned b0 = p[0];
  if (b0 < 0x80) return {b0, 1, false};
  auto cont = [&](size_t i, unsigned lo, unsigned hi) { return p + i < end && p[i] >= lo && p[i] <= hi; };
  if (b0 < 0xC2) return {kReplacement, 1, true};
  if (b0 < 0xE0) {
    if (!cont(1, 0x80, 0xBF)) return {kReplacement, 1, true};
    return {static_cast<char32_t>(((b0 & 0x1F) << 6) | (p[1] & 0x3F)), 2, false};
  }
  if (b0 < 0xF0) {
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    if (!cont(1, lo, hi)) return {kReplacement, 1, true};
    if (!cont(2, 0x80, 0xBF)) return {kReplacement, 2, true};
    return {static_cast<char32_t>(((b0 & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F)), 3, false};
  }
  if (b0 < 0xF5) {
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (!cont(1, lo, hi)) return {kReplacement, 1, true};
    if (!cont(2, 0x80, 0xBF)) return {kReplacement, 2, true};
    if (!cont(3, 0x80, 0xBF)) return {kReplacement, 3, true};
    return {static_cast<char32_t>(((b0 & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F)),
            4, false};
  }
  return {kReplacement, 1, true};
}

// Appends the UTF-8 encoding of a valid code point to `out` (up to 4 bytes); returns the byte count.
inline size_t encode_utf8(char32_t cp, char* out) {
  if (cp < 0x80) {
    out[0] = static_cast<char>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<char>(0xC0 | (cp >> 6));
    out[1] = static_cast<char>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<char>(0xE0 | (cp >> 12));
    out[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<char>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<char>(0xF0 | (cp >> 18));
  out[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<char>(0x80 | (cp & 0x3F));
  return 4;
}
inline void append_utf8(char32_t cp, std::string& out) {
  char buf[4];
  out.append(buf, encode_utf8(cp, buf));
}

// What the cleanup step does with a character.
enum class CharClass : uint8_t {
  kWord = 0,     // part of a word
  kSpace = 1,    // separates words
  kDrop = 2,     // removed (NUL, U+FFFD, C* except \t \n \r)
  kChinese = 3,  // a word of its own (when tokenize_chinese_chars)
};

// BERT's _is_chinese_char ranges (CJK Unified Ideographs and extensions A-E, compatibility ideographs).
inline bool is_chinese_char(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// Cleanup class of any code point (ASCII included).
CharClass classify(char32_t cp, bool tokenize_chinese_chars);
// ASCII 33-47, 58-64, 91-96, 123-126, or Unicode category P*.
bool is_punctuation(char32_t cp);
// Unicode category Mn (what accent stripping removes after NFD).
bool is_nonspacing_mark(char32_t cp);
// Python's str.lower() of one character: writes 1 or 2 code points (U+0130 -> U+0069 U+0307), returns count.
int lower_full(char32_t cp, char32_t* out);

// In-place normalization of a code point buffer (utf8proc data); `scratch` is reused between calls.
// NFD: canonical decomposition + canonical ordering. NFC: NFD + canonical composition.
void nfd(std::u32string& cps, std::u32string& scratch);
void nfc(std::u32string& cps, std::u32string& scratch);

// The Unicode version of the character data (utf8proc's).
const char* unicode_version();

}  // namespace electra::text::unicode
