// Dynamic masked-LM masking as google-research/electra (pretrain_helpers.mask): per example,
//   candidates = real positions whose token is not [CLS], [SEP], [MASK] or [PAD];
//   n = max(1, min(N, round(len(candidates) * mask_prob)))   (round half to even, as tf.round),
//       and never more than there are candidates;
//   n distinct candidate positions chosen uniformly (partial Fisher-Yates), reported in ascending order;
//   85% of them become [MASK] in the input, 15% keep their token (ELECTRA uses no random replacement);
//   masked_lm_positions/ids/weights are padded to N with 0/0/0.
// Random numbers come from Philox(seed, kMasking, epoch, example index), so an example is masked the
// same way whatever the rank count, batch split or resume point. A packed row is masked as one example:
// candidates are chosen by token, so each of its examples' [CLS] and [SEP] is skipped, and n follows the
// row's real tokens (capped by N per row).
#pragma once

#include <cstdint>

namespace electra::data {

struct MaskingOptions {
  float mask_prob = 0.15f;
  int max_predictions = 20;  // N
  uint64_t seed = 1;
  int32_t mask_id = 0, cls_id = 0, sep_id = 0, pad_id = 0;
  float mask_token_prob = 0.85f;  // share of chosen positions replaced by [MASK]
};

// n above for `candidates` maskable tokens (0 when there are none, or N is 0).
int masked_count(int candidates, float mask_prob, int max_predictions);

// Masks one example. `original` has seq_length tokens of which the first `length` are real.
// Outputs: input_word_ids [seq_length]; positions, ids [max_predictions]; weights [max_predictions].
// Returns the number of predictions made.
int mask_example(const int32_t* original, int length, int seq_length, const MaskingOptions& options, uint64_t epoch,
                 uint64_t example_index, int32_t* input_word_ids, int32_t* positions, int32_t* ids, float* weights);

}  // namespace electra::data
