// Helpers shared by the CPU kernels (not part of the backend interface): per-thread scratch memory,
// OpenBLAS thread control, batched Philox blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "lib/core/philox.h"

namespace electra::cpu::detail {

// Per-thread scratch that grows once and is then reused, so ops do not allocate in the steady state.
// Slot separates buffers a kernel needs at the same time. The pointer stays valid until the same
// thread asks the same (T, Slot) for more elements.
template <typename T, int Slot = 0>
T* thread_scratch(size_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

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

// Philox blocks first_block .. first_block + count - 1 of a stream, one 32-bit word per array
// (w0[j] = stream.at(4 * (first_block + j)), w1 = ... + 1, ...). Written so the compiler vectorises
// across blocks; the values equal PhiloxStream::at exactly.
inline void philox_blocks(uint32_t* w0, uint32_t* w1, uint32_t* w2, uint32_t* w3, const PhiloxStream& stream,
                          uint64_t first_block, int count) {
  const uint32_t lane = stream.lane, example = stream.example, step = stream.step;
  const uint32_t key0 = stream.key0, key1 = stream.key1;
  const uint32_t base = static_cast<uint32_t>(first_block);  // PhiloxStream::at truncates the same way
#pragma omp simd
  for (int j = 0; j < count; ++j) {
    const Philox4x32 r = philox4x32_10(base + static_cast<uint32_t>(j), lane, example, step, key0, key1);
    w0[j] = r.v[0];
    w1[j] = r.v[1];
    w2[j] = r.v[2];
    w3[j] = r.v[3];
  }
}

}  // namespace electra::cpu::detail
