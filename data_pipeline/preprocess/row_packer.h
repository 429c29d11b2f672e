// Sequence packing: several short examples in one row of max_seq_length slots (as MosaicBERT and MLPerf
// BERT do), so that corpora of short documents do not train mostly on padding.
//
// Examples arrive in the order the builder makes them and are placed greedily, first fit: each goes into
// the oldest open row with room for it (row length + example length <= max_seq_length and fewer than
// kMaxExamplesPerRow examples), else into a new row. Only the last `look_back` open rows are searched: a
// row that falls out of that window is closed, so the cost per example is bounded and the whole pass is
// O(N). A row is also closed when no example can fit any more (fewer than kMinExampleLength free slots,
// or kMaxExamplesPerRow examples). Inside a row the examples lie one after another from slot 0, padding
// after: a row is a function of the example sequence alone (deterministic, no randomness).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "data_pipeline/preprocess/example_builder.h"
#include "data_pipeline/preprocess/shard_writer.h"

namespace electra::data {

struct PackedRow {
  std::vector<int32_t> input_ids;    // max_seq_length entries, [PAD] after `length`
  std::vector<uint8_t> segment_ids;  // per example as the builder made them; 0 after `length`
  std::vector<uint8_t> example_ids;  // 1-based example index within the row; 0 after `length`
  int length = 0;                    // real tokens of all its examples
  int examples = 0;
};

class RowPacker {
 public:
  static constexpr int kDefaultLookBack = 64;
  // The shortest example the builder makes: [CLS] token [SEP].
  static constexpr int kMinExampleLength = 3;

  using Emit = std::function<void(const PackedRow&)>;

  // `emit` receives every row when it closes (it may keep nothing: the row is reused afterwards).
  RowPacker(int max_seq_length, int32_t pad_id, Emit emit, int look_back = kDefaultLookBack);

  // Places one example (length in [1, max_seq_length]); may close rows.
  void add(const Example& example);
  // Closes every open row, oldest first (end of an input file).
  void flush();

 private:
  void close(size_t open_index);
  PackedRow take_free_row();

  int max_length_;
  int32_t pad_;
  Emit emit_;
  size_t look_back_;
  std::deque<PackedRow> open_;   // oldest first
  std::vector<PackedRow> free_;  // closed rows kept for their buffers
};

}  // namespace electra::data
