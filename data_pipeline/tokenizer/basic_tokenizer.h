// BERT's basic tokenizer, as Hugging Face's slow BertTokenizer.tokenize runs it (transformers 4.46,
// which follows google-research/bert tokenization.py and adds NFC):
//   1. decode UTF-8 (invalid sequences -> U+FFFD per maximal subpart, counted);
//   2. drop U+0000, U+FFFD and "other" characters (Unicode C*: Cc Cf Cs Co Cn) except \t \n \r;
//      \t \n \r, Zs, U+2028 and U+2029 separate words (Python's str.split also splits on Zl/Zp);
//   3. every CJK ideograph (the code point ranges of BERT's _is_chinese_char) is a word of its own;
//   4. per whitespace-separated chunk: NFC; when lower_case, lowercase each character (Python's
//      per-character str.lower(): full mapping, so U+0130 -> "i\u0307", and no final-sigma rule, as
//      PreTrainedTokenizer.tokenize lowercases character by character); when stripping accents, NFD and
//      drop Mn (NFC is skipped then: NFD(NFC(x)) == NFD(x));
//   5. split on punctuation: ASCII 33-47, 58-64, 91-96, 123-126 and Unicode P*; each is a word.
// Unicode data comes from utf8proc (Unicode 15 in utf8proc 2.8; CPython 3.11 has 14.0, so the code
// points first assigned in 15.0 are dropped as Cn by Python and kept here).
// ASCII chunks take a fast path without decoding or normalization; no per-character allocation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "data_pipeline/tokenizer/tokenizer_options.h"

namespace electra::text {

class BasicTokenizer {
 public:
  explicit BasicTokenizer(TokenizerOptions options) : options_(options) {}

  // Receives each word: valid UTF-8 bytes (only valid until the callback returns), its code point count.
  using WordCallback = void (*)(void* context, std::string_view word, uint32_t chars);

  // Calls `callback(context, word, chars)` for every word of `text`, in order. Adds invalid UTF-8
  // substitutions and words to *stats when given. Thread-safe.
  void split(std::string_view text, WordCallback callback, void* context, TokenizeStats* stats = nullptr) const;

  // Convenience form: on_word(std::string_view word, uint32_t chars).
  template <typename OnWord>
  void for_each_word(std::string_view text, OnWord&& on_word, TokenizeStats* stats = nullptr) const {
    using F = std::remove_reference_t<OnWord>;
    split(
        text, [](void* ctx, std::string_view word, uint32_t chars) { (*static_cast<F*>(ctx))(word, chars); },
        const_cast<void*>(static_cast<const void*>(&on_word)), stats);
  }

  // The words as strings (for tests and tools).
  std::vector<std::string> words(std::string_view text, TokenizeStats* stats = nullptr) const;

  const TokenizerOptions& options() const { return options_; }

 private:
  TokenizerOptions options_;
};

}  // namespace electra::text
