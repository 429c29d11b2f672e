// Options and counters shared by the basic tokenizer, the BERT tokenizer and the vocabulary trainer.
#pragma once

#include <cstdint>
#include <optional>

namespace electra::text {

struct TokenizerOptions {
  bool lower_case = true;
  // Unset: follows lower_case, as in BERT (uncased models strip accents, cased models keep them).
  std::optional<bool> strip_accents;
  // Put spaces around CJK ideographs (BERT's _is_chinese_char ranges) so each is its own word.
  bool tokenize_chinese_chars = true;
  // Words with more code points than this become [UNK]. google-research/bert uses 200; Hugging Face's
  // BertTokenizer and tokenizers' WordPiece default to 100.
  uint32_t max_input_chars_per_word = 200;

  bool strips_accents() const { return strip_accents.value_or(lower_case); }
};

struct TokenizeStats {
  uint64_t invalid_utf8 = 0;    // U+FFFD substitutions for invalid UTF-8 (one per maximal subpart)
  uint64_t unknown_tokens = 0;  // words that became [UNK]
  uint64_t words = 0;           // words after basic tokenization (each gives >= 1 piece)

  TokenizeStats& operator+=(const TokenizeStats& other) {
    invalid_utf8 += other.invalid_utf8;
    unknown_tokens += other.unknown_tokens;
    words += other.words;
    return *this;
  }
};

}  // namespace electra::text
