#include "lib/core/batch.h"

#include <algorithm>
#include <cstddef>

#include "lib/core/error.h"

namespace electra {

namespace {

// The rows are inside the batch and the tensors this file reads have their sizes (the model checks the rest).
void check_rows(const Batch& batch, int begin, int end, const char* op) {
  if (begin < 0 || end > batch.rows || begin > end) {
    fail(op, ": rows [", begin, ", ", end, ") outside a batch of ", batch.rows);
  }
  const size_t rows = batch.rows > 0 ? static_cast<size_t>(batch.rows) : 0;
  const size_t N = rows * static_cast<size_t>(std::max(batch.seq_length, 0));
  const size_t M = rows * static_cast<size_t>(std::max(batch.num_predictions, 0));
  if (batch.input_word_ids.size() != N || batch.input_mask.size() != N || batch.input_type_ids.size() != N ||
      batch.masked_lm_positions.size() != M || batch.masked_lm_ids.size() != M || batch.masked_lm_weights.size() != M) {
    fail(op, ": the batch's tensors do not have its ", batch.rows, " x ", batch.seq_length, " slots and ", batch.rows,
         " x ", batch.num_predictions, " predictions");
  }
  if (!batch.position_ids.empty() && batch.position_ids.size() != N) {
    fail(op, ": position_ids has ", batch.position_ids.size(), " entries, not the batch's ", batch.rows, " x ",
         batch.seq_length, " slots (or none: unpacked rows)");
  }
}

}  // namespace

int needed_seq_length(const Batch& batch, int begin, int end) {
  check_rows(batch, begin, end, "needed_seq_length");
  const size_t S = static_cast<size_t>(batch.seq_length), P = static_cast<size_t>(batch.num_predictions);
  size_t needed = 1;  // [CLS]: the sentence head reads position 0
  for (size_t r = static_cast<size_t>(begin); r < static_cast<size_t>(end); ++r) {
    const int32_t* mask = batch.input_mask.data() + r * S;
    // From the end: a row's padding is usually its tail, so the scan stops at its last real token.
    for (size_t s = S; s > needed; --s) {
      if (mask[s - 1] != 0) {
        needed = s;
        break;
      }
    }
    for (size_t p = 0; p < P; ++p) {
      needed = std::max(needed, static_cast<size_t>(std::max(batch.masked_lm_positions[r * P + p], 0)) + 1);
    }
  }
  const size_t rounded = (needed + kTrimMultiple - 1) / kTrimMultiple * kTrimMultiple;
  return static_cast<int>(std::min(rounded, S));
}

void copy_rows(const Batch& batch, int begin, int end, int seq_length, Batch& out) {
  check_rows(batch, begin, end, "copy_rows");
  if (seq_length < 1 || seq_length > batch.seq_length) {
    fail("copy_rows: seq_length ", seq_length, " outside [1, ", batch.seq_length, "]");
  }
  const size_t S = static_cast<size_t>(batch.seq_length), P = static_cast<size_t>(batch.num_predictions);
  const size_t kept = static_cast<size_t>(seq_length), rows = static_cast<size_t>(end - begin);
  const size_t b = static_cast<size_t>(begin);
  out.rows = end - begin;
  out.seq_length = seq_length;
  out.num_predictions = batch.num_predictions;
  out.slot_seq_length = batch.slot_length();
  // resize keeps the capacity, so a reused `out` allocates nothing once it has held the largest slice.
  out.input_word_ids.resize(rows * kept);
  out.input_mask.resize(rows * kept);
  out.input_type_ids.resize(rows * kept);
  const bool packed = !batch.position_ids.empty();
  if (packed) {
    out.position_ids.resize(rows * kept);
  } else {
    out.position_ids.clear();
  }
  for (size_t r = 0; r < rows; ++r) {
    const size_t from = (b + r) * S, to = r * kept;
    const int32_t* mask = batch.input_mask.data() + from;
    if (std::any_of(mask + kept, mask + S, [](int32_t m) { return m != 0; })) {
      fail("copy_rows: row ", b + r, " has real tokens beyond slot ", kept);
    }
    std::copy_n(batch.input_word_ids.data() + from, kept, out.input_word_ids.data() + to);
    std::copy_n(mask, kept, out.input_mask.data() + to);
    std::copy_n(batch.input_type_ids.data() + from, kept, out.input_type_ids.data() + to);
    if (packed) std::copy_n(batch.position_ids.data() + from, kept, out.position_ids.data() + to);
  }
  const auto cut = [&](auto& dst, const auto& src, size_t width) {
    dst.resize(rows * width);
    std::copy_n(src.data() + b * width, rows * width, dst.data());
  };
  cut(out.masked_lm_positions, batch.masked_lm_positions, P);
  for (int32_t position : out.masked_lm_positions) {
    if (position >= seq_length) fail("copy_rows: masked position ", position, " is beyond slot ", kept);
  }
  cut(out.masked_lm_ids, batch.masked_lm_ids, P);
  cut(out.masked_lm_weights, batch.masked_lm_weights, P);
  if (batch.next_sentence_labels.empty()) {
    out.next_sentence_labels.clear();
  } else {
    cut(out.next_sentence_labels, batch.next_sentence_labels, 1);
  }
  if (batch.example_index.empty()) {
    out.example_index.clear();
  } else {
    cut(out.example_index, batch.example_index, 1);
  }
  out.global_row_offset = batch.global_row_offset + b;
  out.global_batch_rows = batch.global_batch_rows;
}

}  // namespace electra
