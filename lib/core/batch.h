// One rank's slice of a global training batch, as the loader hands it to the model. Host memory;
// row-major [rows, seq_length] / [rows, num_predictions]. The BERT input set of TF Model Garden's
// ElectraPretrainer plus what keys the randomness.
#pragma once

#include <cstdint>
#include <vector>

namespace electra {

// Batch::example_index of a row that holds no example.
inline constexpr uint64_t kNoExample = UINT64_MAX;

struct Batch {
  int rows = 0;             // examples in this slice (B)
  int seq_length = 0;       // S: the slots per row computed on
  int num_predictions = 0;  // P: masked positions per example (padded with weight 0)
  // The slots per row as the data has them, before copy_rows trimmed the padding off (0: seq_length).
  // Attention dropout is keyed by it (DropoutKey::key_seq_length) and the model plans its activations for
  // it, so a trimmed batch computes what the untrimmed one does (to rounding) without planning again.
  int slot_seq_length = 0;
  int slot_length() const { return slot_seq_length > 0 ? slot_seq_length : seq_length; }

  std::vector<int32_t> input_word_ids;  // [B,S] as the generator sees them: [MASK] (85%) or kept tokens
  // [B,S] 0 = padding, k > 0 = the token belongs to the row's k-th example (1-based). Unpacked rows hold
  // one example: 1 = real token. Attention stays within an example (block-diagonal when packed).
  std::vector<int32_t> input_mask;
  std::vector<int32_t> input_type_ids;  // [B,S] segment ids (per example when packed)
  // [B,S] when the rows are packed (several examples per row): each token's position within its own
  // example (0 at its [CLS]); 0 on padding. Empty when rows are not packed: position = s.
  std::vector<int32_t> position_ids;
  std::vector<int32_t> masked_lm_positions;   // [B,P] positions in [0,S); padding rows are 0
  std::vector<int32_t> masked_lm_ids;         // [B,P] original tokens at those positions; padding 0
  std::vector<float> masked_lm_weights;       // [B,P] 1 for a real prediction, 0 for padding
  std::vector<int32_t> next_sentence_labels;  // [B] when the data has them, else empty

  // Randomness keys. Dropout and generator sampling of row i use example key global_row_offset + i
  // (the row's position in the global batch of this step), so splitting a global batch over ranks or
  // micro-batches does not change any random number.
  uint64_t global_row_offset = 0;
  int global_batch_rows = 0;
  std::vector<uint64_t> example_index;  // [B] index of each row's example in the dataset (for diagnostics);
                                        // kNoExample on an empty row (LoaderOptions::pad_last_batch)
};

// Trimmed lengths are multiples of this: GEMM shapes that suit SIMD and tensor cores, and at most S / 8
// distinct shapes (each may cost a library its plan or descriptor once).
constexpr int kTrimMultiple = 8;

// The slots rows [begin, end) of `batch` need: one past the last real token (input_mask != 0) or masked
// position (weighted or not) of any of them, rounded up to a multiple of kTrimMultiple, at most
// batch.seq_length, at least 1. The slots beyond are padding: keys every query ignores, queries no loss
// reads, so dropping them changes no loss or gradient beyond float rounding.
int needed_seq_length(const Batch& batch, int begin, int end);

// Rows [begin, end) of `batch`, cut to their first `seq_length` slots, into `out` (a micro-batch, or a
// trimmed one with seq_length = needed_seq_length); position_ids are cut with the other [B,S] tensors when
// present and left empty when not. out's vectors are reused: no allocation once they have
// grown to the largest slice. out.slot_seq_length = batch.slot_length(); global_row_offset moves by begin.
// Fails when the rows are outside the batch, seq_length is outside [1, batch.seq_length], or a dropped
// slot holds a real token or a masked position.
void copy_rows(const Batch& batch, int begin, int end, int seq_length, Batch& out);

}  // namespace electra
