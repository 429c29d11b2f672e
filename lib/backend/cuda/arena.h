// Arena: the CUDA backend's allocator over one device range [base, base + capacity) obtained once with
// cudaMalloc. Plain C++ (addresses are numbers here, nothing is dereferenced), so tests/cuda/arena_test.cpp
// runs it on the CPU.
//
// Blocks are kAlignment-byte aligned and sized in multiples of kAlignment. Allocation is best fit (the
// smallest free block that fits, the lowest address among equals), so a step that frees and reallocates
// the same shapes gets the same addresses back; freeing a block merges it with free neighbours, so the
// range never fragments into pieces smaller than what was freed together. Not thread-safe (the backend
// is used by one host thread at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>

namespace electra::cuda {

struct ArenaStats {
  size_t capacity = 0;            // bytes managed (the range, rounded to whole kAlignment units)
  size_t in_use = 0;              // bytes in live blocks (requests rounded up to kAlignment)
  size_t peak = 0;                // the largest in_use since construction or reset_peak()
  size_t largest_free_block = 0;  // the largest request that can succeed now
  size_t blocks = 0;              // live blocks
  size_t free_blocks = 0;         // free runs between them
};

class Arena {
 public:
  static constexpr size_t kAlignment = 256;

  // Manages [base, base + capacity); base is rounded up to kAlignment (the usable capacity shrinks to
  // match). `size_hint` ends the out-of-memory message: what the user changes to get a larger arena
  // (a config key or flag).
  Arena(uintptr_t base, size_t capacity, std::string size_hint);

  // A block of at least `bytes` bytes; 0 bytes gives 0 (null). Throws electra::Error naming the request,
  // the capacity, what is in use (in how many blocks), the largest free block and `size_hint`.
  uintptr_t allocate(size_t bytes);
  // Frees a block returned by allocate; 0 is ignored. Throws electra::Error naming the address when it is
  // not a live block (a double free, or a pointer this arena never returned).
  void deallocate(uintptr_t address);

  bool owns(uintptr_t address) const { return address >= base_ && address < base_ + capacity_; }
  // The size of the live block at `address` (0 when there is none).
  size_t block_size(uintptr_t address) const;
  ArenaStats stats() const;
  void reset_peak() { peak_ = in_use_; }
  uintptr_t base() const { return base_; }

 private:
  struct Block {
    size_t size = 0;
    bool free = true;
  };
  void insert_free(size_t offset, size_t size);
  void erase_free(size_t offset, size_t size);

  uintptr_t base_ = 0;
  size_t capacity_ = 0;
  std::string size_hint_;
  std::map<size_t, Block> blocks_;                    // every block, live or free, by offset (they tile the range)
  std::set<std::pair<size_t, size_t>> free_by_size_;  // (size, offset) of the free blocks
  size_t in_use_ = 0, peak_ = 0, live_blocks_ = 0;
};

// "1.50 GiB", "12.0 MiB", "512 B": sizes for messages and logs.
std::string format_bytes(size_t bytes);

}  // namespace electra::cuda
