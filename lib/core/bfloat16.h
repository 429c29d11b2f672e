// bfloat16: the storage type of activations and weight copies in bf16 mixed precision (Backend<bfloat16>).
// Two bytes, the top half of an IEEE float: 8 exponent bits (float's range) and 7 mantissa bits. Arithmetic
// is never done in bfloat16: values are widened to float, computed, and rounded back to nearest-even, as
// the CUDA intrinsics __float2bfloat16_rn / __bfloat162float do (the bits are laid out as __nv_bfloat16's,
// so device code reinterprets the pointers). Usable from host and device code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define ELECTRA_BF16_HD __host__ __device__ inline
#else
#define ELECTRA_BF16_HD inline
#endif

namespace electra {

struct bfloat16 {
  uint16_t bits = 0;

  bfloat16() = default;
  // Rounds to nearest, ties to even; NaN stays NaN (quieted), infinities and overflow to infinity as in IEEE.
  ELECTRA_BF16_HD explicit bfloat16(float value) : bits(round_bits(value)) {}
  ELECTRA_BF16_HD explicit operator float() const { return to_float(bits); }

  ELECTRA_BF16_HD static bfloat16 from_bits(uint16_t bits) {
    bfloat16 b;
    b.bits = bits;
    return b;
  }

  ELECTRA_BF16_HD static uint16_t round_bits(float value) {
    uint32_t u = 0;
    std::memcpy(&u, &value, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    const uint32_t lsb = (u >> 16) & 1u;
    return static_cast<uint16_t>((u + 0x7fffu + lsb) >> 16);
  }
  ELECTRA_BF16_HD static float to_float(uint16_t bits) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f = 0.0f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
};
static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>);

ELECTRA_BF16_HD bool operator==(bfloat16 a, bfloat16 b) { return a.bits == b.bits; }

// The float nearest to `value` that bfloat16 can hold (what storing and loading it again gives).
ELECTRA_BF16_HD float round_to_bfloat16(float value) { return static_cast<float>(bfloat16(value)); }

// Bulk conversions on the host.
inline void widen_bfloat16(float* dst, const bfloat16* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
inline void narrow_to_bfloat16(bfloat16* dst, const float* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = bfloat16(src[i]);
}

}  // namespace electra
