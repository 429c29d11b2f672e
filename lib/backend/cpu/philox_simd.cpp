#include "lib/backend/cpu/philox_simd.h"

#include <algorithm>

#include "lib/backend/cpu/detail.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ELECTRA_PHILOX_AVX512 1
#endif

namespace electra::cpu::detail {

namespace {

// Blocks first .. first + blocks - 1 hold the run's tokens (token 2b is words 0-1 of block b, 2b + 1 words 2-3).
struct BlockRange {
  uint32_t first;  // PhiloxStream::at truncates the block index the same way
  int blocks;
};
BlockRange block_range(uint64_t n0, int count) {
  return {static_cast<uint32_t>(n0 >> 1), static_cast<int>(((n0 + count - 1) >> 1) - (n0 >> 1) + 1)};
}

// The portable loops: ISA clones, so the compiler vectorises them for AVX2 too.
ELECTRA_CPU_CLONES uint32_t max_high_word_of_blocks(const PhiloxStream& s, uint32_t first, int blocks) {
  uint32_t max_hi = 0;
  for (int j = 0; j < blocks; ++j) {
    const Philox4x32 r = philox4x32_10(first + static_cast<uint32_t>(j), s.lane, s.example, s.step, s.key0, s.key1);
    max_hi = std::max(max_hi, std::max(r.v[0], r.v[2]));
  }
  return max_hi;
}

ELECTRA_CPU_CLONES void words_of_blocks(uint32_t* words, const PhiloxStream& s, uint32_t first, int blocks) {
  philox_words(words, s, first, blocks);  // detail.h's loop, vectorised in this leaf's ISA clones
}

#if defined(ELECTRA_PHILOX_AVX512)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined (set1, reduce_max).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// Philox4x32-10 on 8 blocks per vector, one per 64-bit lane whose low half holds the 32-bit word: vpmuludq
// multiplies exactly those halves into the 64-bit product, whose high word is a shift away and whose low
// word is the product itself (its high half is never read: the next vpmuludq looks at low halves only).
struct Philox8 {
  __m512i c0, c1, c2, c3;
};
// Sixteen blocks from `first` on: two vectors of 8, interleaved for the multiplier's latency. On return
// the low halves of a.c0..c3 (blocks first .. first + 7) and b.c0..c3 (the next 8) hold the words.
__attribute__((target("avx512f"))) inline void philox16(Philox8& a, Philox8& b, const PhiloxStream& s, uint32_t first) {
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i base = _mm512_set1_epi64(first);
  a = Philox8{_mm512_and_si512(_mm512_add_epi64(base, lanes), _mm512_set1_epi64(0xFFFFFFFF)), _mm512_set1_epi64(s.lane),
              _mm512_set1_epi64(s.example), _mm512_set1_epi64(s.step)};
  b = a;
  b.c0 = _mm512_and_si512(_mm512_add_epi64(base, _mm512_add_epi64(lanes, _mm512_set1_epi64(8))),
                          _mm512_set1_epi64(0xFFFFFFFF));
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53), m1 = _mm512_set1_epi64(0xCD9E8D57);
  uint32_t k0 = s.key0, k1 = s.key1;
  for (int round = 0; round < 10; ++round) {
    const __m512i pa0 = _mm512_mul_epu32(a.c0, m0), pa1 = _mm512_mul_epu32(a.c2, m1);
    const __m512i pb0 = _mm512_mul_epu32(b.c0, m0), pb1 = _mm512_mul_epu32(b.c2, m1);
    const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
    // 0x96: a ^ b ^ c.
    a.c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa1, 32), a.c1, key0, 0x96);
    a.c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa0, 32), a.c3, key1, 0x96);
    b.c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb1, 32), b.c1, key0, 0x96);
    b.c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb0, 32), b.c3, key1, 0x96);
    a.c1 = pa1;
    a.c3 = pa0;
    b.c1 = pb1;
    b.c3 = pb0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The 8 blocks of x as 32 words in stream order: [w0 w1] and [w2 w3] of each block as 64-bit lanes, then
// interleaved block by block.
__attribute__((target("avx512f"))) inline void store_words(uint32_t* words, const Philox8& x) {
  const __m512i low = _mm512_set1_epi64(0xFFFFFFFF);
  const __m512i w01 = _mm512_or_si512(_mm512_and_si512(x.c0, low), _mm512_slli_epi64(x.c1, 32));
  const __m512i w23 = _mm512_or_si512(_mm512_and_si512(x.c2, low), _mm512_slli_epi64(x.c3, 32));
  const __m512i first4 = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11),
                last4 = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  _mm512_storeu_si512(words, _mm512_permutex2var_epi64(w01, first4, w23));
  _mm512_storeu_si512(words + 16, _mm512_permutex2var_epi64(w01, last4, w23));
}

__attribute__((target("avx512f"))) void words_avx512(uint32_t* words, const PhiloxStream& s, uint32_t first,
                                                     int blocks) {
  int j = 0;
  for (; j + 16 <= blocks; j += 16) {
    Philox8 a, b;
    philox16(a, b, s, first + static_cast<uint32_t>(j));
    store_words(words + 4 * j, a);
    store_words(words + 4 * j + 32, b);
  }
  words_of_blocks(words + 4 * j, s, first + static_cast<uint32_t>(j), blocks - j);
}

__attribute__((target("avx512f"))) uint32_t max_high_word_avx512(const PhiloxStream& s, uint32_t first, int blocks) {
  const __m512i low = _mm512_set1_epi64(0xFFFFFFFF);
  __m512i max_hi = _mm512_setzero_si512();
  int j = 0;
  for (; j + 16 <= blocks; j += 16) {
    Philox8 a, b;
    philox16(a, b, s, first + static_cast<uint32_t>(j));
    // Words 0 and 2 are the high words of the block's two uniforms (their lanes' low halves).
    const __m512i hi = _mm512_max_epu64(_mm512_max_epu64(_mm512_and_si512(a.c0, low), _mm512_and_si512(a.c2, low)),
                                        _mm512_max_epu64(_mm512_and_si512(b.c0, low), _mm512_and_si512(b.c2, low)));
    max_hi = _mm512_max_epu64(max_hi, hi);
  }
  const uint32_t vector_max = static_cast<uint32_t>(_mm512_reduce_max_epu64(max_hi));
  if (j == blocks) return vector_max;
  return std::max(vector_max, max_high_word_of_blocks(s, first + static_cast<uint32_t>(j), blocks - j));
}

#pragma GCC diagnostic pop

bool cpu_has_avx512f() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

}  // namespace

void philox_words_portable(uint32_t* words, const PhiloxStream& stream, uint64_t first_block, int count) {
  words_of_blocks(words, stream, static_cast<uint32_t>(first_block), count);
}

void philox_words_simd(uint32_t* words, const PhiloxStream& stream, uint64_t first_block, int count) {
#if defined(ELECTRA_PHILOX_AVX512)
  if (cpu_has_avx512f()) return words_avx512(words, stream, static_cast<uint32_t>(first_block), count);
#endif
  words_of_blocks(words, stream, static_cast<uint32_t>(first_block), count);
}

uint32_t max_uniform_high_word_portable(const PhiloxStream& stream, uint64_t n0, int count) {
  const BlockRange range = block_range(n0, count);
  return max_high_word_of_blocks(stream, range.first, range.blocks);
}

bool philox_uses_avx512() {
#if defined(ELECTRA_PHILOX_AVX512)
  return cpu_has_avx512f();
#else
  return false;
#endif
}

uint32_t max_uniform_high_word(const PhiloxStream& stream, uint64_t n0, int count) {
  const BlockRange range = block_range(n0, count);
#if defined(ELECTRA_PHILOX_AVX512)
  if (cpu_has_avx512f()) return max_high_word_avx512(stream, range.first, range.blocks);
#endif
  return max_high_word_of_blocks(stream, range.first, range.blocks);
}

}  // namespace electra::cpu::detail
