// WordPiece vocabulary training from raw text.
//
// Algorithm: the BPE-style training of Hugging Face tokenizers' WordPieceTrainer (a BpeTrainer with the
// "##" continuing-subword prefix), not Google's likelihood-scored WordPiece: words come from the same
// basic tokenizer as BertTokenizer, each word starts as its first character followed by "##"-prefixed
// characters, and the most frequent adjacent pair (counted over word frequencies) is merged repeatedly
// ("un" + "##aff" -> "unaff"; "##a" + "##b" -> "##ab"). Ties go to the pair of smaller ids (earlier tokens).
//
// Vocabulary order: [PAD] [UNK] [CLS] [SEP] [MASK]; the alphabet (every character kept, by code point);
// "##c" for each kept character that occurs inside a word (CJK ideographs and punctuation are always
// words of their own, so they get no "##" variant); then merged tokens in merge order, until vocab_size
// tokens or no pair occurs at least min_frequency times. With every character and its "##" form present,
// any word of kept characters tokenizes without [UNK].
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data_pipeline/tokenizer/basic_tokenizer.h"
#include "data_pipeline/tokenizer/vocab.h"

namespace electra::text {

struct VocabTrainerOptions {
  size_t vocab_size = 30522;
  TokenizerOptions tokenizer;  // pre-tokenization (lower_case etc.), as the vocab will be used
  uint64_t min_frequency = 2;  // pairs seen fewer times are never merged
  size_t limit_alphabet = 0;   // keep only this many most frequent characters; 0 keeps all
};

// Word frequencies of a corpus after basic tokenization. Memory grows with the number of distinct words,
// not with the corpus. Words longer than max_input_chars_per_word are not counted (they become [UNK]).
class WordCounter {
 public:
  explicit WordCounter(TokenizerOptions options);

  void add_text(std::string_view text);
  // Reads `path` line by line; logs progress (words, MB/s) every `log_every_bytes`.
  void add_file(const std::string& path, uint64_t log_every_bytes = 64ull << 20);
  // Adds an already basic-tokenized word.
  void add_word(std::string_view word, uint32_t chars, uint64_t count = 1);

  struct Entry {
    uint64_t count = 0;
    uint32_t chars = 0;
  };
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return static_cast<size_t>(fnv1a64(s)); }
  };
  using Table = std::unordered_map<std::string, Entry, Hash, std::equal_to<>>;

  const Table& table() const { return table_; }
  uint64_t total_words() const { return total_words_; }
  uint64_t skipped_long_words() const { return skipped_long_; }
  uint64_t bytes() const { return bytes_; }
  const TokenizeStats& stats() const { return stats_; }
  const TokenizerOptions& options() const { return basic_.options(); }

 private:
  BasicTokenizer basic_;
  Table table_;
  uint64_t total_words_ = 0;
  uint64_t skipped_long_ = 0;
  uint64_t bytes_ = 0;
  TokenizeStats stats_;
};

struct VocabTrainerReport {
  size_t alphabet = 0;                    // characters kept
  size_t dropped_chars = 0;               // characters left out by limit_alphabet or the size budget
  size_t merges = 0;                      // merges performed (some may re-create an existing token)
  uint64_t words_with_unknown_chars = 0;  // occurrences of words that use a dropped character
};

// Trains a vocabulary of exactly options.vocab_size tokens when the corpus allows (fewer, with a warning,
// when merges run out). Deterministic for a given word table. `origin` names the result in errors.
Vocab train_wordpiece_vocab(const WordCounter& words, const VocabTrainerOptions& options,
                            VocabTrainerReport* report = nullptr, std::string origin = "<trained vocab>");

}  // namespace electra::text
