// Shard checksums. Durable writes (temporary name, fsync, rename) are lib/core/atomic_file.h.
#pragma once

#include <cstdint>
#include <string>

namespace electra::data {

// CRC-32 (zlib polynomial) of a whole file, streamed.
uint32_t file_crc32(const std::string& path);
// Hex form used in manifests: 8 lowercase digits.
std::string crc32_hex(uint32_t crc);

}  // namespace electra::data
