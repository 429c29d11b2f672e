// A seeded permutation of [0, n) computed one index at a time in O(1) memory: a balanced Feistel
// network on 2h bits (2^(2h) >= n) whose round function is Philox keyed by (seed, kShuffle, epoch),
// with cycle walking to stay inside [0, n). Corpora of 10^8+ examples never materialise an index list.
#pragma once

#include <cstdint>

namespace electra::data {

class FeistelPermutation {
 public:
  static constexpr int kRounds = 6;

  FeistelPermutation(uint64_t n, uint64_t seed, uint64_t epoch);

  // The index at position i of the permutation (i < size()).
  uint64_t operator()(uint64_t i) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t encrypt(uint64_t x) const;

  uint64_t n_;
  uint64_t seed_, epoch_;
  int half_bits_;
  uint64_t half_mask_;
};

}  // namespace electra::data
