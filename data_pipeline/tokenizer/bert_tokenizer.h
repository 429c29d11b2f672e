// BERT's tokenizer: basic tokenization (cleanup, CJK splitting, NFC, lowercasing, accent stripping,
// punctuation splitting; see basic_tokenizer.h) followed by greedy longest-match-first WordPiece with "##"
// continuations. Produces the same pieces as Hugging Face's slow BertTokenizer (transformers 4.46,
// tokenize_chinese_chars=True, split_special_tokens=True) with max_input_chars_per_word set to ours.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data_pipeline/tokenizer/basic_tokenizer.h"
#include "data_pipeline/tokenizer/tokenizer_options.h"
#include "data_pipeline/tokenizer/vocab.h"

namespace electra::text {

class BertTokenizer {
 public:
  // Keeps a pointer to `vocab`, which must outlive the tokenizer and is never modified by it. The vocab
  // must contain [UNK] (error naming the vocab file otherwise). The lookup tables are built here once.
  BertTokenizer(const Vocab& vocab, TokenizerOptions options);
  BertTokenizer(Vocab&&, TokenizerOptions) = delete;  // would dangle

  // Ids of the word pieces of `text` (no [CLS]/[SEP]). Any bytes are accepted: invalid UTF-8 is
  // replaced by U+FFFD per maximal subpart (and then dropped, as BERT drops U+FFFD) and counted in
  // stats->invalid_utf8. Thread-safe (const; scratch buffers are per thread).
  std::vector<int32_t> encode(std::string_view text, TokenizeStats* stats = nullptr) const;
  // Same, appending to `out` (no allocation once `out` has capacity).
  void encode_append(std::string_view text, std::vector<int32_t>& out, TokenizeStats* stats = nullptr) const;
  // The word pieces as strings ("[UNK]" for unknown words).
  std::vector<std::string> tokenize(std::string_view text, TokenizeStats* stats = nullptr) const;
  // Joins the pieces with spaces, gluing "##" continuations to the previous piece and skipping [PAD]
  // (as HF's convert_tokens_to_string). Ids outside the vocab are an error.
  std::string decode(const std::vector<int32_t>& ids) const;

  // WordPiece of one basic-tokenized word of `chars` code points (valid UTF-8, no whitespace), appending
  // ids to `out`; returns false (and appends [UNK]) when the word has no full match or is too long.
  bool wordpiece(std::string_view word, uint32_t chars, std::vector<int32_t>& out) const;

  const Vocab& vocab() const { return *vocab_; }
  const TokenizerOptions& options() const { return basic_.options(); }
  const BasicTokenizer& basic() const { return basic_; }

 private:
  // Open-addressing table from token bytes to id; keys live in an arena owned by the table.
  class PieceTable {
   public:
    void build(const std::vector<std::pair<std::string_view, int32_t>>& entries);
    // Id of the key, -1 when absent.
    int32_t find(const char* key, size_t len) const;
    size_t max_key_bytes() const { return max_key_bytes_; }

   private:
    // Keys of up to 16 bytes (nearly all) live in the slot itself, so a hit touches one cache line;
    // longer keys live in the arena at `offset`.
    static constexpr size_t kInline = 16;
    struct Slot {
      uint64_t hash = 0;
      int32_t id = -1;
      uint32_t len = 0;
      char inline_key[kInline] = {};
      uint32_t offset = 0;
    };
    std::vector<Slot> slots_;
    std::string arena_;
    uint64_t mask_ = 0;
    size_t max_key_bytes_ = 0;
  };

  const Vocab* vocab_;
  BasicTokenizer basic_;
  int32_t unk_id_;
  int32_t pad_id_;           // -1 when the vocab has no [PAD]
  PieceTable initial_;       // every token, matched at the start of a word
  PieceTable continuation_;  // "##x" tokens keyed by "x", matched inside a word
};

}  // namespace electra::text
