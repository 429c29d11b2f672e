// Counter-based randomness (Philox4x32-10, Salmon et al. 2011). Every random number in training is a
// pure function of (seed, purpose, step, example, lane, offset), so dropout, masking and generator
// sampling are reproducible, identical after resume, independent of the rank count, and computable
// the same way on the CPU and in a CUDA kernel.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ELECTRA_HD __host__ __device__
#else
#define ELECTRA_HD
#endif

namespace electra {

// What a random stream is used for; part of the key, so streams for different purposes never overlap.
enum class RandomPurpose : uint32_t {
  kInit = 1,                // parameter initialisation
  kDropout = 2,             // dropout masks (lane = layer/site)
  kMasking = 3,             // dynamic MLM masking in the loader
  kSampling = 4,            // generator Gumbel-max sampling
  kShuffle = 5,             // epoch permutation
  kPreprocess = 6,          // example building in electra-preprocess
  kUnigramReplacement = 7,  // electra-eval's fixed replacements (EvalOptions::unigram_auc)
  kTest = 100,
};

struct Philox4x32 {
  uint32_t v[4];
};

// One Philox4x32-10 block.
ELECTRA_HD inline Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                           uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// A random stream addressed by offset: at(n) is the n-th 32-bit number of the stream.
// Key: (seed, purpose). Counter: (block, lane, example, step) with block = n / 4.
struct PhiloxStream {
  uint32_t key0, key1;
  uint32_t lane, example, step;

  ELECTRA_HD PhiloxStream(uint64_t seed, RandomPurpose purpose, uint64_t step_, uint64_t example_, uint32_t lane_ = 0)
      : key0(static_cast<uint32_t>(seed)),
        key1(static_cast<uint32_t>(seed >> 32) ^ (static_cast<uint32_t>(purpose) * 0x9E3779B9u)),
        lane(lane_),
        example(static_cast<uint32_t>(example_)),
        step(static_cast<uint32_t>(step_)) {}

  ELECTRA_HD uint32_t at(uint64_t n) const {
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(n >> 2), lane, example, step, key0, key1);
    return r.v[n & 3];
  }
  // Uniform in [0, 1) with 24 random bits (exactly representable as float).
  ELECTRA_HD float uniform(uint64_t n) const { return static_cast<float>(at(n) >> 8) * (1.0f / 16777216.0f); }
  // Uniform in (0, 1) with 52 random bits: (bits + 0.5) / 2^52 is exact and at most 1 - 2^-53, so it is
  // never 0 or 1 and safe for log().
  ELECTRA_HD double uniform_open(uint64_t n) const {
    const uint64_t hi = at(2 * n), lo = at(2 * n + 1);
    const uint64_t bits = ((hi << 32) | lo) >> 12;
    return (static_cast<double>(bits) + 0.5) * (1.0 / 4503599627370496.0);
  }
  // Gumbel(0, 1) noise for Gumbel-max sampling.
  ELECTRA_HD double gumbel(uint64_t n) const { return -::log(-::log(uniform_open(n))); }
  // Uniform integer in [0, bound) (Lemire's multiply-shift; bias < bound / 2^32, negligible here).
  ELECTRA_HD uint32_t below(uint64_t n, uint32_t bound) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(at(n)) * bound) >> 32);
  }
};

// A sequential view of a stream for CPU code that draws numbers one after another.
class PhiloxSequence {
 public:
  explicit PhiloxSequence(PhiloxStream stream) : stream_(stream) {}
  PhiloxSequence(uint64_t seed, RandomPurpose purpose, uint64_t step, uint64_t example, uint32_t lane = 0)
      : stream_(seed, purpose, step, example, lane) {}
  uint32_t next_u32() { return stream_.at(next_++); }
  float next_uniform() { return stream_.uniform(next_++); }
  double next_uniform_open() { return stream_.uniform_open(next_++); }
  uint32_t next_below(uint32_t bound) { return stream_.below(next_++, bound); }
  uint64_t position() const { return next_; }

 private:
  PhiloxStream stream_;
  uint64_t next_ = 0;
};

}  // namespace electra
