#include "data_pipeline/loader/permutation.h"

#include "lib/core/error.h"
#include "lib/core/philox.h"

namespace electra::data {

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t seed, uint64_t epoch)
    : n_(n), seed_(seed), epoch_(epoch), half_bits_(1) {
  ELECTRA_CHECK(n > 0, "permutation of an empty range");
  while (half_bits_ < 32 && (uint64_t{1} << (2 * half_bits_)) < n) ++half_bits_;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
}

uint64_t FeistelPermutation::encrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (int round = 0; round < kRounds; ++round) {
    // F(right) = Philox(seed, kShuffle; step = epoch, example = right, lane = round).
    const PhiloxStream f(seed_, RandomPurpose::kShuffle, epoch_, right, static_cast<uint32_t>(round));
    const uint64_t mixed = (left ^ f.at(0)) & half_mask_;
    left = right;
    right = mixed;
  }
  return (left << half_bits_) | right;
}

uint64_t FeistelPermutation::operator()(uint64_t i) const {
  ELECTRA_CHECK(i < n_, "permutation index ", i, " out of range ", n_);
  // Cycle walking: the domain is at most 4n, so this takes fewer than 4 steps on average.
  uint64_t x = encrypt(i);
  while (x >= n_) x = encrypt(x);
  return x;
}

}  // namespace electra::data
