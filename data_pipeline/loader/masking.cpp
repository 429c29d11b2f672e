#include "data_pipeline/loader/masking.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "lib/core/philox.h"

namespace electra::data {

int masked_count(int candidates, float mask_prob, int max_predictions) {
  if (candidates <= 0 || max_predictions <= 0) return 0;
  const int rounded = static_cast<int>(std::nearbyint(static_cast<float>(candidates) * mask_prob));
  return std::min(candidates, std::max(1, std::min(max_predictions, rounded)));
}

int mask_example(const int32_t* original, int length, int seq_length, const MaskingOptions& options, uint64_t epoch,
                 uint64_t example_index, int32_t* input_word_ids, int32_t* positions, int32_t* ids, float* weights) {
  const int N = options.max_predictions;
  std::copy(original, original + seq_length, input_word_ids);
  std::fill(positions, positions + N, 0);
  std::fill(ids, ids + N, 0);
  std::fill(weights, weights + N, 0.0f);

  thread_local std::vector<int32_t> candidates;
  candidates.clear();
  for (int p = 0; p < length; ++p) {
    const int32_t t = original[p];
    if (t != options.cls_id && t != options.sep_id && t != options.mask_id && t != options.pad_id)
      candidates.push_back(p);
  }
  const int n_tokens = static_cast<int>(candidates.size());
  const int n = masked_count(n_tokens, options.mask_prob, N);
  if (n == 0) return 0;

  PhiloxSequence rng(options.seed, RandomPurpose::kMasking, epoch, example_index,
                     static_cast<uint32_t>(example_index >> 32));
  for (int k = 0; k < n; ++k) {  // partial Fisher-Yates: candidates[0, n) become the chosen ones
    const int j = k + static_cast<int>(rng.next_below(static_cast<uint32_t>(n_tokens - k)));
    std::swap(candidates[static_cast<size_t>(k)], candidates[static_cast<size_t>(j)]);
  }
  std::sort(candidates.begin(), candidates.begin() + n);
  for (int k = 0; k < n; ++k) {
    const int32_t p = candidates[static_cast<size_t>(k)];
    positions[k] = p;
    ids[k] = original[p];
    weights[k] = 1.0f;
    if (rng.next_uniform() < options.mask_token_prob) input_word_ids[p] = options.mask_id;
  }
  return n;
}

}  // namespace electra::data
