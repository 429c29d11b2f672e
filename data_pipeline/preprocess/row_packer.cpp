#include "data_pipeline/preprocess/row_packer.h"

#include <algorithm>

#include "lib/core/error.h"

namespace electra::data {

RowPacker::RowPacker(int max_seq_length, int32_t pad_id, Emit emit, int look_back)
    : max_length_(max_seq_length), pad_(pad_id), emit_(std::move(emit)), look_back_(static_cast<size_t>(look_back)) {
  ELECTRA_CHECK(max_seq_length >= 1, "RowPacker: max_seq_length must be positive, got ", max_seq_length);
  ELECTRA_CHECK(look_back >= 1, "RowPacker: look_back must be positive, got ", look_back);
}

PackedRow RowPacker::take_free_row() {
  PackedRow row;
  if (!free_.empty()) {
    row = std::move(free_.back());
    free_.pop_back();
  }
  const size_t L = static_cast<size_t>(max_length_);
  row.input_ids.assign(L, pad_);
  row.segment_ids.assign(L, 0);
  row.example_ids.assign(L, 0);
  row.length = 0;
  row.examples = 0;
  return row;
}

void RowPacker::close(size_t open_index) {
  const auto it = open_.begin() + static_cast<std::ptrdiff_t>(open_index);
  emit_(*it);
  free_.push_back(std::move(*it));
  open_.erase(it);
}

void RowPacker::add(const Example& example) {
  const int n = example.length;
  ELECTRA_CHECK(n >= 1 && n <= max_length_, "RowPacker: example length ", n, " outside [1, ", max_length_, "]");
  size_t target = open_.size();
  for (size_t i = 0; i < open_.size(); ++i) {
    if (open_[i].length + n <= max_length_ && open_[i].examples < kMaxExamplesPerRow) {
      target = i;
      break;
    }
  }
  if (target == open_.size()) open_.push_back(take_free_row());
  PackedRow& row = open_[target];
  const size_t at = static_cast<size_t>(row.length);
  const uint8_t id = static_cast<uint8_t>(++row.examples);
  std::copy_n(example.input_ids.begin(), n, row.input_ids.begin() + static_cast<std::ptrdiff_t>(at));
  std::copy_n(example.segment_ids.begin(), n, row.segment_ids.begin() + static_cast<std::ptrdiff_t>(at));
  std::fill_n(row.example_ids.begin() + static_cast<std::ptrdiff_t>(at), n, id);
  row.length += n;
  if (max_length_ - row.length < kMinExampleLength || row.examples == kMaxExamplesPerRow) {
    close(target);
  } else if (open_.size() > look_back_) {
    close(0);  // the oldest row leaves the search window
  }
}

void RowPacker::flush() {
  while (!open_.empty()) close(0);
}

}  // namespace electra::data
