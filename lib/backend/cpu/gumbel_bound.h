// A bound on the Gumbel draws of a run of tokens without their logarithms, for gumbel_sample_rows
// (detail.h): the largest high word of their Philox uniforms. A token's uniform is u = (bits + 0.5) 2^-52
// with bits = (hi 2^32 + lo) >> 12 (PhiloxStream::uniform_open), so u < (hi + 1) 2^-32.
#pragma once

#include <cstdint>

#include "lib/core/philox.h"

namespace electra::cpu::detail {

// The largest high word among the uniforms of tokens n0 .. n0 + count - 1 of `stream` (count >= 1) and of
// the block-mates that share their Philox blocks (one more token at either end at most, which can only
// raise it). AVX-512 where the CPU has it (16 blocks per vector, 32-bit multiplies), else
// max_uniform_high_word_portable; both give the same word.
uint32_t max_uniform_high_word(const PhiloxStream& stream, uint64_t n0, int count);
uint32_t max_uniform_high_word_portable(const PhiloxStream& stream, uint64_t n0, int count);
bool max_uniform_high_word_uses_avx512();

}  // namespace electra::cpu::detail
