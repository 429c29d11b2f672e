// Helpers shared by the CPU kernels (not part of the backend interface): ISA clones of hot loops,
// per-thread scratch memory, OpenBLAS thread control, batched Philox words, fixed-chunk parallel loops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "lib/backend/cpu/philox_simd.h"
#include "lib/core/error.h"
#include "lib/core/philox.h"

// Hot float loops are compiled three times (AVX-512, AVX2, baseline x86-64) and the best one for the
// running CPU is picked at load time (GNU ifunc), so one binary is fast here and still runs anywhere.
// Use it on leaf functions (no OpenMP parallel region inside: outlined regions are not cloned).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ELECTRA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ELECTRA_CPU_CLONES
#endif

namespace electra::cpu::detail {

// Per-thread scratch that grows once and is then reused, so ops do not allocate in the steady state.
// Each user has its own slot, so no two live buffers alias. The pointer stays valid until the same
// thread asks the same (T, Slot) for more elements.
enum ScratchSlot : int {
  kScratchAttention = 1,
  kScratchLayerNorm = 2,
  kScratchSumSquares = 3,
  kScratchAttentionGrad = 4,  // fused attention backward: d(scores) next to the recomputed probabilities
  kScratchAttentionKeep = 5,  // fused attention: the regenerated dropout keep bits of one (batch, head)
  kScratchAttentionPack = 6,  // attention_gemm: the transposed right operand of A B^T
  kScratchGumbelMaxima = 7,   // gumbel_sample_rows: the largest logit of each chunk of a row
};
template <typename T, int Slot>
T* thread_scratch(size_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// Switches OpenBLAS to one thread for the rest of the process (make_cpu_backend does).
void set_blas_single_threaded();

// Host memory of `bytes` bytes aligned to 64 (a cache line, an AVX-512 vector), freed with std::free;
// nullptr for 0 bytes. Fails naming the size when out of memory. The CPU backends' allocate*.
void* aligned_allocate(size_t bytes);

// Runs OpenBLAS single-threaded for the lifetime of the object. Create it outside an OpenMP parallel
// region whose threads call BLAS: the pthread OpenBLAS would otherwise start its own threads from every
// OpenMP thread and oversubscribe the cores.
class BlasSingleThreaded {
 public:
  BlasSingleThreaded();
  ~BlasSingleThreaded();
  BlasSingleThreaded(const BlasSingleThreaded&) = delete;
  BlasSingleThreaded& operator=(const BlasSingleThreaded&) = delete;

 private:
  int saved_;
};

// Philox words of blocks first_block .. first_block + count - 1 of a stream, in stream order:
// words[i] = stream.at(4 * first_block + i) for i < 4 * count. Written so the compiler vectorises across
// blocks (inline it into an ELECTRA_CPU_CLONES function to get AVX-512 / AVX2 code).
inline void philox_words(uint32_t* words, const PhiloxStream& stream, uint64_t first_block, int count) {
  const uint32_t lane = stream.lane, example = stream.example, step = stream.step;
  const uint32_t key0 = stream.key0, key1 = stream.key1;
  const uint32_t base = static_cast<uint32_t>(first_block);  // PhiloxStream::at truncates the same way
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    const Philox4x32 r = philox4x32_10(base + static_cast<uint32_t>(j), lane, example, step, key0, key1);
    words[4 * j] = r.v[0];
    words[4 * j + 1] = r.v[1];
    words[4 * j + 2] = r.v[2];
    words[4 * j + 3] = r.v[3];
  }
}

// Splits [0, n) into fixed chunks and runs f(begin, end) on each, in parallel when n > min_parallel.
// The chunking is fixed, so results never depend on the thread count.
template <typename F>
void parallel_chunks(size_t n, size_t chunk, size_t min_parallel, F&& f) {
  const size_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n > min_parallel)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t begin = c * chunk;
    f(begin, begin + chunk < n ? begin + chunk : n);
  }
}

template <typename T>
double logit_value(T x) {  // float and double as they are, bfloat16 through its float
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<double>(x);
  } else {
    return static_cast<double>(static_cast<float>(x));
  }
}

// Gumbel-max sampling works on chunks of a row's tokens: scores are computed, or skipped, a chunk at a time.
inline constexpr int kGumbelChunk = 32;

// maxima[c] = the largest logit of chunk c (tokens [c kGumbelChunk, (c + 1) kGumbelChunk) of V).
template <typename T>
ELECTRA_CPU_CLONES void gumbel_chunk_maxima(double* maxima, const T* x, int V) {
  for (int v0 = 0, c = 0; v0 < V; v0 += kGumbelChunk, ++c) {
    const int count = std::min(kGumbelChunk, V - v0);
    double m = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : m)
    for (int i = 0; i < count; ++i) m = std::max(m, logit_value(x[v0 + i]));
    maxima[c] = m;
  }
}

// Gumbel-max sampling (backend.h's gumbel_sample) of `rows` rows of V logits: samples[r] = the token
// with the highest score z / t + g, g = -log(-log u) (the first on ties), where scores(score, stream, n0,
// x, count, banned, temperature) writes the scores of `count` (<= kGumbelChunk) consecutive tokens x of
// one row whose first has stream offset n0 (the float kernel's in losses.cpp, the bf16 one's in
// bf16_kernels.cpp). Each row's stream is keyed by its example, so the samples do not depend on the
// thread count.
//
// Scores are computed only where they can win. The chunk with the row's largest logit is scored first:
// its best score is one the row reaches, and later the best so far is. A chunk is skipped when its
// largest logit Z and a bound on its uniforms keep every score of it below the score reached:
// Z / t + g(u_max) < reached - margin. The bound is the largest uniform there is (1 - 2^-53) when that
// suffices, else the chunk's largest Philox high word (max_uniform_high_word, philox_simd.h: Philox
// without logarithms). The margin (1e-9 relative) is far above the rounding of the double arithmetic, so
// a skipped token's computed score is below one that some token has, and the samples are the full
// computation's, bit for bit. Of 8,000 tokens a row scores 3% with flat logits (an untrained generator),
// 11% with normal logits of sd 3, 2% of sd 8.
template <typename T, typename Scores>
void gumbel_sample_rows(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                        uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example, Scores scores) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "gumbel_sample: bad shape rows=", rows, " V=", V);
  ELECTRA_CHECK(rows_per_example > 0, "gumbel_sample: rows_per_example must be positive");
  ELECTRA_CHECK(temperature > 0.0f, "gumbel_sample: temperature ", temperature, " must be positive");
  const double t = temperature;
  const int chunks = (V + kGumbelChunk - 1) / kGumbelChunk;
  constexpr double kLargestGumbel = 36.8;                         // g(1 - 2^-53) = 36.74: no draw scores more
  const bool parallel = static_cast<long long>(rows) * V > 4096;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int r = 0; r < rows; ++r) {
    const T* x = logits + static_cast<size_t>(r) * V;
    const PhiloxStream stream(seed, RandomPurpose::kSampling, step, first_example + r / rows_per_example);
    const uint64_t base = static_cast<uint64_t>(r % rows_per_example) * V;
    const int banned = disallow != nullptr ? disallow[r] : -1;
    double* maxima = thread_scratch<double, kScratchGumbelMaxima>(chunks);
    gumbel_chunk_maxima(maxima, x, V);
    const int top = static_cast<int>(std::max_element(maxima, maxima + chunks) - maxima);
    alignas(64) double score[kGumbelChunk];
    const int top_v0 = top * kGumbelChunk, top_count = std::min(kGumbelChunk, V - top_v0);
    scores(score, stream, base + top_v0, x + top_v0, top_count, banned - top_v0, t);
    double reached = *std::max_element(score, score + top_count);
    double best = -std::numeric_limits<double>::infinity();
    int best_v = 0;
    for (int c = 0; c < chunks; ++c) {
      const int v0 = c * kGumbelChunk, count = std::min(kGumbelChunk, V - v0);
      const double z = t == 1.0 ? maxima[c] : maxima[c] / t;
      const double below = reached - 1e-9 * (1.0 + std::abs(reached) + std::abs(z));  // NaN: never skipped
      if (z + kLargestGumbel < below) continue;
      if (std::isfinite(z) && std::isfinite(below)) {
        // Every uniform of the chunk is below (hi + 1) 2^-32 (philox_simd.h).
        const uint32_t hi = max_uniform_high_word(stream, base + v0, count);
        const double u = (static_cast<double>(hi) + 1.0) * (1.0 / 4294967296.0);
        if (u < 1.0 && z - std::log(-std::log(u)) < below) continue;
      }
      scores(score, stream, base + v0, x + v0, count, banned - v0, t);
      for (int i = 0; i < count; ++i) {
        if (score[i] > best) {
          best = score[i];
          best_v = v0 + i;
        }
      }
      reached = std::max(reached, best);
    }
    samples[r] = best_v;
  }
}

}  // namespace electra::cpu::detail
