// One rank's slice of a global training batch, as the loader hands it to the model. Host memory;
// row-major [rows, seq_length] / [rows, num_predictions]. The BERT input set of TF Model Garden's
// ElectraPretrainer plus what keys the randomness.
#pragma once

#include <cstdint>
#include <vector>

namespace electra {

struct Batch {
  int rows = 0;             // examples in this slice (B)
  int seq_length = 0;       // S
  int num_predictions = 0;  // P: masked positions per example (padded with weight 0)

  std::vector<int32_t> input_word_ids;       // [B,S] as the generator sees them: [MASK] (85%) or kept tokens
  std::vector<int32_t> input_mask;           // [B,S] 1 = real token, 0 = padding
  std::vector<int32_t> input_type_ids;       // [B,S] segment ids
  std::vector<int32_t> masked_lm_positions;  // [B,P] positions in [0,S); padding rows are 0
  std::vector<int32_t> masked_lm_ids;        // [B,P] original tokens at those positions; padding 0
  std::vector<float> masked_lm_weights;      // [B,P] 1 for a real prediction, 0 for padding
  std::vector<int32_t> next_sentence_labels;  // [B] when the data has them, else empty

  // Randomness keys. Dropout and generator sampling of row i use example key global_row_offset + i
  // (the row's position in the global batch of this step), so splitting a global batch over ranks or
  // micro-batches does not change any random number.
  uint64_t global_row_offset = 0;
  int global_batch_rows = 0;
  std::vector<uint64_t> example_index;  // [B] index of each row's example in the dataset (for diagnostics)
};

}  // namespace electra
