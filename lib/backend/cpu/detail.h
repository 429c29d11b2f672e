// Helpers shared by the CPU kernels (not part of the backend interface): ISA clones of hot loops,
// per-thread scratch memory, OpenBLAS thread control, batched Philox words, fixed-chunk parallel loops.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

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

// Gumbel-max sampling (backend.h's gumbel_sample) of `rows` rows of V logits: samples[r] = the token
// with the highest score, where scores(score, stream, n0, x, count, banned, temperature) writes the
// scores of `count` (<= 128) consecutive tokens x of one row whose first has stream offset n0 (the float
// kernel's in losses.cpp, the bf16 one's in bf16_kernels.cpp). Each row's stream is keyed by its example,
// so the samples do not depend on the thread count.
template <typename T, typename Scores>
void gumbel_sample_rows(int32_t* samples, const T* logits, const int32_t* disallow, int rows, int V, float temperature,
                        uint64_t seed, uint64_t step, uint64_t first_example, int rows_per_example, Scores scores) {
  ELECTRA_CHECK(rows >= 0 && V > 0, "gumbel_sample: bad shape rows=", rows, " V=", V);
  ELECTRA_CHECK(rows_per_example > 0, "gumbel_sample: rows_per_example must be positive");
  ELECTRA_CHECK(temperature > 0.0f, "gumbel_sample: temperature ", temperature, " must be positive");
  const double t = temperature;
  const bool parallel = static_cast<long long>(rows) * V > 4096;  // else not worth a thread team
#pragma omp parallel for schedule(static) if (parallel)
  for (int r = 0; r < rows; ++r) {
    const T* x = logits + static_cast<size_t>(r) * V;
    const PhiloxStream stream(seed, RandomPurpose::kSampling, step, first_example + r / rows_per_example);
    const uint64_t base = static_cast<uint64_t>(r % rows_per_example) * V;
    const int banned = disallow != nullptr ? disallow[r] : -1;
    constexpr int kTokens = 128;
    alignas(64) double score[kTokens];
    double best = -std::numeric_limits<double>::infinity();
    int best_v = 0;
    for (int v0 = 0; v0 < V; v0 += kTokens) {
      const int count = std::min(kTokens, V - v0);
      scores(score, stream, base + v0, x + v0, count, banned - v0, t);
      for (int i = 0; i < count; ++i) {
        if (score[i] > best) {
          best = score[i];
          best_v = v0 + i;
        }
      }
    }
    samples[r] = best_v;
  }
}

}  // namespace electra::cpu::detail
