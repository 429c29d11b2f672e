// The CUDA backend's device-memory arena (lib/backend/cuda/arena.h) on the CPU: addresses are numbers,
// nothing is dereferenced, so these run everywhere. Random allocate/free sequences are checked against a
// plain model of the live blocks (no overlap, inside the range, aligned, statistics equal to the model's
// sums); coalescing, best fit, exhaustion and double-free messages are checked directly.
#include "lib/backend/cuda/arena.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "lib/core/error.h"
#include "lib/core/philox.h"

namespace electra::cuda {
namespace {

constexpr size_t kA = Arena::kAlignment;
constexpr uintptr_t kBase = uintptr_t{1} << 40;  // an aligned, made-up device address

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

size_t rounded(size_t bytes) { return (bytes + kA - 1) / kA * kA; }

TEST(CudaArena, FreshArenaIsOneFreeBlock) {
  Arena arena(kBase, 1000 * kA + 17, "device.arena_bytes");
  const ArenaStats s = arena.stats();
  EXPECT_EQ(s.capacity, 1000 * kA);  // whole units only
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.largest_free_block, 1000 * kA);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.free_blocks, 1u);
  EXPECT_EQ(arena.allocate(0), 0u);
  EXPECT_NO_THROW(arena.deallocate(0));
}

TEST(CudaArena, UnalignedBaseIsRoundedUp) {
  Arena arena(kBase + 3, 10 * kA, "x");
  EXPECT_EQ(arena.base(), kBase + kA);
  EXPECT_EQ(arena.stats().capacity, 9 * kA);
  const uintptr_t p = arena.allocate(1);
  EXPECT_EQ(p % kA, 0u);
  EXPECT_EQ(p, kBase + kA);
}

TEST(CudaArena, BlocksAreAlignedAndRounded) {
  Arena arena(kBase, 64 * kA, "x");
  const uintptr_t a = arena.allocate(1), b = arena.allocate(kA + 1), c = arena.allocate(kA);
  for (uintptr_t p : {a, b, c}) EXPECT_EQ(p % kA, 0u);
  EXPECT_EQ(arena.block_size(a), kA);
  EXPECT_EQ(arena.block_size(b), 2 * kA);
  EXPECT_EQ(arena.block_size(c), kA);
  EXPECT_EQ(arena.stats().in_use, 4 * kA);
  EXPECT_EQ(arena.stats().blocks, 3u);
}

TEST(CudaArena, FreedNeighboursCoalesce) {
  Arena arena(kBase, 8 * kA, "x");
  std::vector<uintptr_t> p;
  for (int i = 0; i < 8; ++i) p.push_back(arena.allocate(kA));
  EXPECT_THROW(arena.allocate(1), Error);  // full
  // Free 1, 3, 2 (the middle one joins both neighbours), then 5.
  arena.deallocate(p[1]);
  arena.deallocate(p[3]);
  EXPECT_EQ(arena.stats().free_blocks, 2u);
  EXPECT_EQ(arena.stats().largest_free_block, kA);
  arena.deallocate(p[2]);
  EXPECT_EQ(arena.stats().free_blocks, 1u);
  EXPECT_EQ(arena.stats().largest_free_block, 3 * kA);
  arena.deallocate(p[5]);
  // Three units fit only where 1..3 were.
  const uintptr_t three = arena.allocate(3 * kA);
  EXPECT_EQ(three, p[1]);
  arena.deallocate(three);
  for (int i : {0, 4, 6, 7}) arena.deallocate(p[i]);
  const ArenaStats s = arena.stats();
  EXPECT_EQ(s.free_blocks, 1u);
  EXPECT_EQ(s.largest_free_block, 8 * kA);
  EXPECT_EQ(s.in_use, 0u);
  EXPECT_EQ(s.peak, 8 * kA);
  EXPECT_EQ(arena.allocate(8 * kA), kBase);  // all of it again
}

TEST(CudaArena, BestFitTakesTheSmallestHole) {
  Arena arena(kBase, 32 * kA, "x");
  const uintptr_t a = arena.allocate(4 * kA), sep1 = arena.allocate(kA), b = arena.allocate(2 * kA),
                  sep2 = arena.allocate(kA);
  arena.deallocate(a);  // a hole of 4 units before a hole of 2 (and the tail)
  arena.deallocate(b);
  EXPECT_EQ(arena.allocate(2 * kA), b);  // the exact fit, not the first one
  EXPECT_EQ(arena.allocate(3 * kA), a);  // the 4-unit hole before the large tail
  (void)sep1;
  (void)sep2;
}

TEST(CudaArena, ExhaustionMessageNamesRequestCapacityUseLargestBlockAndKey) {
  Arena arena(kBase, 16 * kA, "device.arena_bytes or device.memory_fraction");
  const uintptr_t a = arena.allocate(6 * kA);
  const uintptr_t b = arena.allocate(2 * kA);
  arena.allocate(6 * kA);
  arena.deallocate(b);  // 4 free units in two runs of 2: 3 units do not fit although 4 are free
  const std::string what = error_of([&] { arena.allocate(3 * kA); });
  EXPECT_NE(what.find("cannot allocate 768 bytes"), std::string::npos) << what;
  EXPECT_NE(what.find("capacity 4.0 KiB"), std::string::npos) << what;
  EXPECT_NE(what.find("in use 3.0 KiB in 2 blocks"), std::string::npos) << what;
  EXPECT_NE(what.find("largest free block 512 B"), std::string::npos) << what;
  EXPECT_NE(what.find("device.arena_bytes or device.memory_fraction"), std::string::npos) << what;
  // A request larger than everything (and one that would overflow when rounded) fail the same way.
  EXPECT_NE(error_of([&] { arena.allocate(size_t{1} << 50); }).find("cannot allocate"), std::string::npos);
  EXPECT_NE(error_of([&] { arena.allocate(~size_t{0}); }).find("cannot allocate"), std::string::npos);
  arena.deallocate(a);
  EXPECT_NO_THROW(arena.allocate(3 * kA));
}

TEST(CudaArena, DoubleAndForeignFreesNameThePointer) {
  Arena arena(kBase, 16 * kA, "x");
  const uintptr_t a = arena.allocate(2 * kA);
  arena.allocate(kA);
  arena.deallocate(a);
  std::string what = error_of([&] { arena.deallocate(a); });
  EXPECT_NE(what.find("0x10000000000"), std::string::npos) << what;
  EXPECT_NE(what.find("already freed"), std::string::npos) << what;
  what = error_of([&] { arena.deallocate(kBase + 2 * kA + kA / 2); });  // inside a block, not its start
  EXPECT_NE(what.find("not the start of a block"), std::string::npos) << what;
  what = error_of([&] { arena.deallocate(0x1234); });
  EXPECT_NE(what.find("0x1234"), std::string::npos) << what;
  EXPECT_NE(what.find("outside the arena"), std::string::npos) << what;
  EXPECT_EQ(arena.stats().blocks, 1u);  // the failed frees changed nothing
  EXPECT_EQ(arena.stats().in_use, kA);
}

// Random sequences against a model: live blocks never overlap, stay inside the range and aligned; in_use,
// peak and the block count equal the model's; an allocation fails only when the model's free space has no
// run long enough (best fit never fails where a fit exists); everything freed is one block again.
TEST(CudaArena, RandomSequencesMatchAModel) {
  for (uint64_t trial = 0; trial < 20; ++trial) {
    const size_t units = 64 + trial * 37;
    Arena arena(kBase, units * kA, "x");
    std::map<uintptr_t, size_t> live;  // address -> rounded size
    size_t in_use = 0, peak = 0;
    PhiloxSequence rng(trial, RandomPurpose::kTest, 7, 0);
    for (int op = 0; op < 3000; ++op) {
      const bool do_free = !live.empty() && rng.next_below(100) < 45;
      if (do_free) {
        auto it = live.begin();
        std::advance(it, rng.next_below(static_cast<uint32_t>(live.size())));
        arena.deallocate(it->first);
        in_use -= it->second;
        live.erase(it);
      } else {
        // Mostly small requests, now and then a large one; byte counts not multiples of the alignment.
        const size_t bytes = rng.next_below(10) == 0 ? 1 + rng.next_below(static_cast<uint32_t>(units * kA / 3))
                                                     : 1 + rng.next_below(static_cast<uint32_t>(4 * kA));
        // The longest free run of the model (between live blocks), in bytes.
        size_t longest = 0;
        uintptr_t cursor = kBase;
        for (const auto& [address, size] : live) {
          longest = std::max<size_t>(longest, address - cursor);
          cursor = address + size;
        }
        longest = std::max<size_t>(longest, kBase + units * kA - cursor);
        if (rounded(bytes) > longest) {
          EXPECT_THROW(arena.allocate(bytes), Error) << "trial " << trial << " op " << op;
          continue;
        }
        const uintptr_t p = arena.allocate(bytes);
        ASSERT_EQ(p % kA, 0u);
        ASSERT_GE(p, kBase);
        ASSERT_LE(p + rounded(bytes), kBase + units * kA);
        const auto next = live.lower_bound(p);
        if (next != live.end()) {
          ASSERT_LE(p + rounded(bytes), next->first) << "overlaps the next block";
        }
        if (next != live.begin()) {
          const auto previous = std::prev(next);
          ASSERT_LE(previous->first + previous->second, p) << "overlaps the previous block";
        }
        live[p] = rounded(bytes);
        in_use += rounded(bytes);
        peak = std::max(peak, in_use);
      }
      const ArenaStats s = arena.stats();
      ASSERT_EQ(s.in_use, in_use);
      ASSERT_EQ(s.peak, peak);
      ASSERT_EQ(s.blocks, live.size());
      ASSERT_LE(s.largest_free_block, units * kA - in_use);
    }
    for (const auto& [address, size] : live) arena.deallocate(address);
    const ArenaStats s = arena.stats();
    EXPECT_EQ(s.in_use, 0u);
    EXPECT_EQ(s.free_blocks, 1u);
    EXPECT_EQ(s.largest_free_block, units * kA);
  }
}

TEST(CudaArena, FormatBytes) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(3 << 10), "3.0 KiB");
  EXPECT_EQ(format_bytes(size_t{3} << 29), "1.50 GiB");
}

}  // namespace
}  // namespace electra::cuda
