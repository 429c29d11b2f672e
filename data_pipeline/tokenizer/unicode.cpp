#include "data_pipeline/tokenizer/unicode.h"

#include <utf8proc.h>

namespace electra::text::unicode {

CharClass classify(char32_t cp, bool tokenize_chinese_chars) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return CharClass::kSpace;
  if (cp == 0 || cp == kReplacement) return CharClass::kDrop;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
      return CharClass::kDrop;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:  // U+2028 and U+2029: kept by _clean_text, split on by str.split()
    case UTF8PROC_CATEGORY_ZP:
      return CharClass::kSpace;
    default:
      break;
  }
  if (tokenize_chinese_chars && is_chinese_char(cp)) return CharClass::kChinese;
  return CharClass::kWord;
}

bool is_punctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) {
    return true;
  }
  if (cp < 128) return false;
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

bool is_nonspacing_mark(char32_t cp) {
  return cp >= 0x300 && utf8proc_category(static_cast<utf8proc_int32_t>(cp)) == UTF8PROC_CATEGORY_MN;
}

int lower_full(char32_t cp, char32_t* out) {
  if (cp < 128) {
    out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    return 1;
  }
  // The only unconditional multi-character lowercase mapping (SpecialCasing.txt); utf8proc has the simple one.
  if (cp == 0x130) {
    out[0] = 0x69;
    out[1] = 0x307;
    return 2;
  }
  out[0] = static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
  return 1;
}

namespace {

int combining_class(char32_t cp) {
  return cp < 0x300 ? 0 : utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class;
}

// Canonical decomposition of every code point into `out`, then canonical ordering (a stable sort of each
// run of non-starters by combining class), as utf8proc_decompose_custom does.
void decompose_into(const std::u32string& in, std::u32string& out) {
  out.clear();
  utf8proc_int32_t buf[32];  // longest canonical decomposition is 4 code points
  for (char32_t cp : in) {
    if (cp < 0xC0) {  // nothing below U+00C0 has a canonical decomposition
      out.push_back(cp);
      continue;
    }
    const utf8proc_ssize_t n =
        utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 32, UTF8PROC_DECOMPOSE, nullptr);
    if (n <= 0 || n > 32) {
      out.push_back(cp);  // cannot happen for valid scalar values; keep the character
      continue;
    }
    for (utf8proc_ssize_t i = 0; i < n; ++i) out.push_back(static_cast<char32_t>(buf[i]));
  }
  // Insertion sort inside runs of non-starters; runs are short (a few marks).
  for (size_t i = 1; i < out.size(); ++i) {
    const int cc = combining_class(out[i]);
    if (cc == 0) continue;
    size_t j = i;
    const char32_t cp = out[i];
    while (j > 0) {
      const int prev = combining_class(out[j - 1]);
      if (prev <= cc || prev == 0) break;
      out[j] = out[j - 1];
      --j;
    }
    out[j] = cp;
  }
}

}  // namespace

void nfd(std::u32string& cps, std::u32string& scratch) {
  decompose_into(cps, scratch);
  cps.swap(scratch);
}

void nfc(std::u32string& cps, std::u32string& scratch) {
  decompose_into(cps, scratch);
  static_assert(sizeof(utf8proc_int32_t) == sizeof(char32_t));
  // STABLE makes utf8proc honour the composition exclusions (without it U+2ADD U+0338 recomposes to U+2ADC).
  const utf8proc_ssize_t n = utf8proc_normalize_utf32(
      reinterpret_cast<utf8proc_int32_t*>(scratch.data()), static_cast<utf8proc_ssize_t>(scratch.size()),
      static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
  scratch.resize(static_cast<size_t>(n));
  cps.swap(scratch);
}

const char* unicode_version() { return utf8proc_unicode_version(); }

}  // namespace electra::text::unicode
