#include "lib/backend/cuda/arena.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <sstream>

#include "lib/core/error.h"

namespace electra::cuda {
namespace {

std::string hex(uintptr_t address) {
  std::ostringstream out;
  out << "0x" << std::hex << address;
  return out.str();
}

}  // namespace

std::string format_bytes(size_t bytes) {
  char text[64];
  const double b = static_cast<double>(bytes);
  if (bytes >= (size_t{1} << 30)) {
    std::snprintf(text, sizeof(text), "%.2f GiB", b / (1 << 30));
  } else if (bytes >= (size_t{1} << 20)) {
    std::snprintf(text, sizeof(text), "%.1f MiB", b / (1 << 20));
  } else if (bytes >= (size_t{1} << 10)) {
    std::snprintf(text, sizeof(text), "%.1f KiB", b / (1 << 10));
  } else {
    std::snprintf(text, sizeof(text), "%zu B", bytes);
  }
  return text;
}

Arena::Arena(uintptr_t base, size_t capacity, std::string size_hint) : size_hint_(std::move(size_hint)) {
  const uintptr_t aligned = (base + kAlignment - 1) / kAlignment * kAlignment;
  const size_t lost = static_cast<size_t>(aligned - base);
  base_ = aligned;
  capacity_ = capacity > lost ? (capacity - lost) / kAlignment * kAlignment : 0;
  if (capacity_ > 0) {
    blocks_[0] = Block{capacity_, true};
    insert_free(0, capacity_);
  }
}

void Arena::insert_free(size_t offset, size_t size) { free_by_size_.emplace(size, offset); }
void Arena::erase_free(size_t offset, size_t size) { free_by_size_.erase({size, offset}); }

uintptr_t Arena::allocate(size_t bytes) {
  if (bytes == 0) return 0;
  const size_t units = bytes / kAlignment + (bytes % kAlignment != 0 ? 1 : 0);
  const bool too_large = units > capacity_ / kAlignment;
  const size_t size = units * kAlignment;
  // Best fit: the smallest free block of at least `size` bytes, the lowest offset among equal sizes.
  const auto fit = too_large ? free_by_size_.end() : free_by_size_.lower_bound({size, 0});
  if (fit == free_by_size_.end()) {
    const ArenaStats s = stats();
    fail("device memory arena: cannot allocate ", bytes, " bytes (", format_bytes(bytes), "): capacity ",
         format_bytes(s.capacity), ", in use ", format_bytes(s.in_use), " in ", s.blocks, " block",
         s.blocks == 1 ? "" : "s", ", largest free block ", format_bytes(s.largest_free_block),
         "; to make the arena larger set ", size_hint_);
  }
  const auto [block_size, offset] = *fit;
  free_by_size_.erase(fit);
  Block& block = blocks_.at(offset);
  block.free = false;
  if (block_size > size) {
    // The rest stays free, right after the new block.
    block.size = size;
    blocks_[offset + size] = Block{block_size - size, true};
    insert_free(offset + size, block_size - size);
  }
  in_use_ += size;
  peak_ = std::max(peak_, in_use_);
  ++live_blocks_;
  return base_ + offset;
}

void Arena::deallocate(uintptr_t address) {
  if (address == 0) return;
  const auto it = owns(address) ? blocks_.find(static_cast<size_t>(address - base_)) : blocks_.end();
  if (it == blocks_.end() || it->second.free) {
    fail("device memory arena: free of ", hex(address), ", which is not a live block (",
         it == blocks_.end() ? (owns(address) ? "not the start of a block" : "outside the arena") : "already freed",
         "; arena ", hex(base_), " + ", format_bytes(capacity_), ")");
  }
  in_use_ -= it->second.size;
  --live_blocks_;
  size_t offset = it->first, size = it->second.size;
  auto current = it;
  // Merge with the free neighbours on both sides.
  const auto next = std::next(current);
  if (next != blocks_.end() && next->second.free) {
    erase_free(next->first, next->second.size);
    size += next->second.size;
    blocks_.erase(next);
  }
  if (current != blocks_.begin()) {
    const auto previous = std::prev(current);
    if (previous->second.free) {
      erase_free(previous->first, previous->second.size);
      offset = previous->first;
      size += previous->second.size;
      blocks_.erase(current);
      current = previous;
    }
  }
  current->second = Block{size, true};
  insert_free(offset, size);
}

size_t Arena::block_size(uintptr_t address) const {
  if (!owns(address)) return 0;
  const auto it = blocks_.find(static_cast<size_t>(address - base_));
  return it == blocks_.end() || it->second.free ? 0 : it->second.size;
}

ArenaStats Arena::stats() const {
  ArenaStats s;
  s.capacity = capacity_;
  s.in_use = in_use_;
  s.peak = peak_;
  s.largest_free_block = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  s.blocks = live_blocks_;
  s.free_blocks = free_by_size_.size();
  return s;
}

}  // namespace electra::cuda
