// The safetensors file format (Hugging Face), read and written by our own code.
//
// Layout: an unsigned little-endian 64-bit header length N, then N bytes of UTF-8 JSON
//   {"<name>": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>", ...}}
// (padded with spaces to a multiple of 8 bytes), then the byte buffer: every tensor's raw little-endian
// row-major data at [begin, end) relative to the start of the buffer.
//
// Writer: float32 only, tensors in sorted name order both in the header and in the buffer, metadata
// {"format": "pt"} by default, so identical tensors always give identical bytes. The file is written to
// a temporary name, fsynced and renamed (lib/core/atomic_file.h).
//
// Reader: the whole file is read into memory and checked before anything is returned; every problem is
// an electra::Error naming the file (and the tensor): header length beyond the file or above 100 MB
// (safetensors' own limit), JSON that does not parse or is not an object, an entry without dtype,
// shape or data_offsets or with other keys, an unknown dtype, negative dimensions, an element count
// whose byte size differs from end - begin, offsets beyond the buffer, overlapping tensors, or a buffer
// that is not covered exactly (gaps, trailing bytes). All dtypes of the format are accepted in the
// header; read_floats() converts F32, F16, BF16 and F64 to float (F64 rounds to nearest; F16 and BF16
// are exact) and fails naming the tensor for every other dtype.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace electra::interop {

enum class SafetensorsDtype {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2
};

// "F32" -> kF32 etc.; nullopt for a name the format does not define.
std::optional<SafetensorsDtype> parse_safetensors_dtype(std::string_view name);
const char* to_string(SafetensorsDtype dtype);
size_t dtype_bytes(SafetensorsDtype dtype);

struct SafetensorsEntry {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range in the data buffer
  uint64_t end = 0;
  uint64_t elements() const;
};

// A parsed, validated safetensors file held in memory.
class SafetensorsFile {
 public:
  // Reads and validates `path`.
  static SafetensorsFile load(const std::filesystem::path& path);
  // Validates `bytes` (a whole file); `origin` names it in errors.
  static SafetensorsFile parse(std::string bytes, std::string origin);

  const std::string& origin() const { return origin_; }
  // Entries sorted by name.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const SafetensorsEntry* find(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's elements converted to float (F32, F16, BF16, F64); fails naming the tensor when it is
  // absent or of another dtype.
  std::vector<float> read_floats(std::string_view name) const;
  // The tensor's raw bytes.
  std::string_view raw(const SafetensorsEntry& entry) const;

 private:
  std::string origin_;
  std::string bytes_;
  size_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// A float32 tensor to write; `data` must hold product(shape) elements and outlive the call.
struct SafetensorsTensorRef {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;
};

inline const std::map<std::string, std::string> kPytorchMetadata = {{"format", "pt"}};

// The header bytes (length prefix + padded JSON) for `tensors` in sorted name order. Fails on duplicate
// or empty names, "__metadata__" as a tensor name, or a data size that is not the product of the shape.
std::string safetensors_header(std::vector<SafetensorsTensorRef> tensors,
                               const std::map<std::string, std::string>& metadata = kPytorchMetadata);
// The whole file in memory (tests, small tensors).
std::string serialize_safetensors(std::vector<SafetensorsTensorRef> tensors,
                                  const std::map<std::string, std::string>& metadata = kPytorchMetadata);
// Writes `path` atomically (temporary name, fsync, rename, directory fsync).
void write_safetensors(const std::filesystem::path& path, std::vector<SafetensorsTensorRef> tensors,
                       const std::map<std::string, std::string>& metadata = kPytorchMetadata);

}  // namespace electra::interop
