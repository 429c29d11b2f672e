// Packs tokenized sentences into pre-training examples exactly as google-research/electra's
// build_pretraining_dataset.py ExampleBuilder does, with Philox randomness instead of Python's random:
//   - sentences accumulate until their token count reaches target_length, or a blank line ends the
//     document (a blank line with nothing accumulated is an empty sentence, as in the reference);
//   - an example is split into a first and second segment: with probability 0.1 the first segment
//     target is unbounded (single segment), else (target_length - 3) / 2; a sentence joins the first
//     segment if it is empty, stays under the target, or (second empty, first under target) with
//     probability 0.5; everything after goes to the second segment;
//   - first = first[:max_len - 2], second = second[:max(0, max_len - len(first) - 3)];
//   - the next target_length is randint(5, max_len) with probability 0.05, else max_len;
//   - [CLS] first [SEP] (second [SEP]), segment ids 0 then 1, padded with [PAD] to max_len.
#pragma once

#include <cstdint>
#include <vector>

#include "lib/core/philox.h"

namespace electra::data {

struct Example {
  std::vector<int32_t> input_ids;    // max_seq_length entries, [PAD] after `length`
  std::vector<uint8_t> segment_ids;  // max_seq_length entries, 0 after `length`
  int length = 0;                    // real tokens including [CLS]/[SEP]
};

struct SpecialTokenIds {
  int32_t pad = 0, cls = 0, sep = 0;
};

class ExampleBuilder {
 public:
  // `rng` is owned: one builder (and one stream) per input file keeps the output independent of how
  // files are spread over ranks.
  ExampleBuilder(int max_seq_length, SpecialTokenIds special, PhiloxSequence rng);

  // A non-blank line's tokens. Returns true and fills `out` when an example is complete.
  bool add_sentence(const std::vector<int32_t>& tokens, Example& out);
  // A blank (after stripping) line: ends the document when tokens are pending.
  bool add_blank_line(Example& out);
  // End of input file: emits the pending example, if any (the reference's final add_line("")).
  bool flush(Example& out) { return add_blank_line(out); }

  int target_length() const { return target_length_; }
  // Word pieces cut off so far: segments longer than the example (google-research/electra's builder keeps
  // a sentence's start only; a 10 MB line without breaks is one example).
  uint64_t truncated_tokens() const { return truncated_tokens_; }

 private:
  void create_example(Example& out);

  int max_length_;
  SpecialTokenIds special_;
  PhiloxSequence rng_;
  int target_length_;
  std::vector<int32_t> tokens_;        // pending sentences, concatenated
  std::vector<size_t> sentence_ends_;  // end offset of each pending sentence in tokens_
  std::vector<int32_t> first_, second_;
  uint64_t truncated_tokens_ = 0;
};

}  // namespace electra::data
