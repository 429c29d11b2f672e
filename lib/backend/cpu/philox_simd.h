// Philox4x32-10 blocks on AVX-512 (8 blocks per vector, vpmuludq on the low halves of 64-bit lanes) where
// the CPU has it, for the CPU kernels' random numbers: dropout keep bits (elementwise.cpp's keep_run) and
// the bound that lets Gumbel sampling skip tokens (detail.h's gumbel_sample_rows). Each function has a
// portable twin that gives the same words, used on other CPUs and by the tests.
#pragma once

#include <cstdint>

#include "lib/core/philox.h"

namespace electra::cpu::detail {

// words[i] = stream.at(4 first_block + i) for i < 4 count: blocks first_block .. first_block + count - 1 in
// stream order (the block index wraps at 2^32 as PhiloxStream::at's does).
void philox_words_simd(uint32_t* words, const PhiloxStream& stream, uint64_t first_block, int count);
void philox_words_portable(uint32_t* words, const PhiloxStream& stream, uint64_t first_block, int count);

// A bound on the Gumbel draws of a run of tokens without their logarithms: the largest high word among the
// uniforms of tokens n0 .. n0 + count - 1 (count >= 1) and of the block-mates that share their Philox blocks
// (one more token at either end at most, which can only raise it). A token's uniform is
// u = (bits + 0.5) 2^-52 with bits = (hi 2^32 + lo) >> 12 (PhiloxStream::uniform_open), so u < (hi + 1) 2^-32.
uint32_t max_uniform_high_word(const PhiloxStream& stream, uint64_t n0, int count);
uint32_t max_uniform_high_word_portable(const PhiloxStream& stream, uint64_t n0, int count);

// Whether the functions above run on AVX-512 here (else they are their portable twins).
bool philox_uses_avx512();

}  // namespace electra::cpu::detail
