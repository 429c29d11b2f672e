// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): TFRecord framing in TensorBoard event files
// and the per-dataset checksums of checkpoints.
#pragma once

#include <cstddef>
#include <cstdint>

namespace electra::train {

// CRC-32C of `size` bytes. Pass a previous result as `crc` to continue over split data:
// crc32c(b, nb, crc32c(a, na)) == crc32c(a+b). Check value: crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

// TFRecord's masked CRC: rotate right by 15 and add 0xa282ead8.
inline uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace electra::train
