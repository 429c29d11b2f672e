// Deterministic scatter-add of rows into a table (embedding_backward on CUDA) without atomics: the word
// and type tables, and the position table when packed rows give position ids (keys: those ids).
//
// Input: the n token rows sorted stably by key (table row): keys[k] ascending and perm[k] the token of
// sorted position k, tokens of one key in their original order. The sorted positions are cut into
// chunks of kChunk; a run of equal keys is summed by one thread per column:
//  - a run that starts and ends inside one chunk (most keys) is added onto the table row in token order,
//    exactly the CPU backend's order, so those rows are bitwise equal to the CPU result;
//  - a run that crosses chunk boundaries (frequent tokens: [MASK], [PAD], "the", [CLS], [SEP]) is summed
//    per chunk: the chunk where it starts sums its part onto the table value ("tail"), every later chunk
//    its part from zero ("head"), and cross_pass adds the heads onto the tail in chunk order.
// Every table row is written by exactly one thread per column, and every sum has a fixed order, so the
// result is the same on every run; it differs from the CPU's in rounding only for crossing runs. The cost
// is a stable sort (CUB radix sort) plus O(n * E) work with kChunk-long sequential sums, instead of one
// thread per table column walking all n tokens (the CPU design: too little parallelism for a GPU).
//
// Both passes are written once, here, as __host__ __device__ functions of (chunk q, column c) with no
// communication between threads, so tests/cuda runs them on the CPU exactly as the kernels run them.
// The rows are float or bfloat16 (the bf16 storage backend's dout; each is widened exactly); the table
// and the partial sums are float.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/core/bfloat16.h"
#include "lib/core/philox.h"  // ELECTRA_HD

namespace electra::cuda::segments {

inline constexpr int kChunk = 32;

ELECTRA_HD inline int chunk_count(int n) { return (n + kChunk - 1) / kChunk; }

ELECTRA_HD inline float row_value(float v) { return v; }
ELECTRA_HD inline float row_value(bfloat16 v) { return static_cast<float>(v); }

// Pass 1 for chunk q, column c: complete runs go straight into table; the chunk's first run, when it
// began in an earlier chunk, into head[q]; its last run, when it began here and goes on, into tail[q]
// (head and tail are [chunks, E]). Returns true when a negative key was seen (that run is skipped).
template <typename Row>
ELECTRA_HD inline bool chunk_pass(float* table, float* head, float* tail, const Row* rows, const int32_t* keys,
                                  const int32_t* perm, int n, int E, int q, int c) {
  const int begin = q * kChunk;
  const int end = begin + kChunk < n ? begin + kChunk : n;
  const bool starts_before = begin > 0 && keys[begin] == keys[begin - 1];
  const bool continues_after = end < n && keys[end] == keys[end - 1];
  const size_t slot = static_cast<size_t>(q) * E + c;
  bool negative = false;
  int j = begin;
  while (j < end) {
    const int32_t key = keys[j];
    int run_end = j + 1;
    while (run_end < end && keys[run_end] == key) ++run_end;
    if (key < 0) {
      negative = true;
    } else {
      const bool is_head = j == begin && starts_before;
      const bool is_tail = !is_head && run_end == end && continues_after;
      float* target = table + static_cast<size_t>(key) * E + c;
      float acc = is_head ? 0.0f : *target;
      for (int k = j; k < run_end; ++k) acc += row_value(rows[static_cast<size_t>(perm[k]) * E + c]);
      if (is_head) {
        head[slot] = acc;
      } else if (is_tail) {
        tail[slot] = acc;
      } else {
        *target = acc;
      }
    }
    j = run_end;
  }
  return negative;
}

// Pass 2 for chunk q, column c: if a run starts in chunk q and goes on past it, add the heads of the
// following chunks it covers onto its tail, in chunk order, and store the row.
ELECTRA_HD inline void cross_pass(float* table, const float* head, const float* tail, const int32_t* keys, int n, int E,
                                  int q, int c) {
  const int begin = q * kChunk;
  const int end = begin + kChunk < n ? begin + kChunk : n;
  if (end >= n || keys[end] != keys[end - 1]) return;  // the last run ends in this chunk
  const int32_t key = keys[end - 1];
  if (key < 0) return;
  if (begin > 0 && keys[begin - 1] == key) return;  // it began in an earlier chunk, which owns it
  float acc = tail[static_cast<size_t>(q) * E + c];
  for (int q2 = q + 1;; ++q2) {
    acc += head[static_cast<size_t>(q2) * E + c];
    const int end2 = (q2 + 1) * kChunk;
    if (end2 >= n || keys[end2] != key) break;
  }
  table[static_cast<size_t>(key) * E + c] = acc;
}

// Without position ids: dposition[s, c] += sum over b of dout[b, s, c], b in order (the CPU backend's
// order: bitwise equal).
template <typename Row>
ELECTRA_HD inline void position_sum(float* dposition, const Row* dout, int B, int S, int E, int s, int c) {
  float* target = dposition + static_cast<size_t>(s) * E + c;
  float acc = *target;
  for (int b = 0; b < B; ++b) acc += row_value(dout[(static_cast<size_t>(b) * S + s) * E + c]);
  *target = acc;
}

}  // namespace electra::cuda::segments
