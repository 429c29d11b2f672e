// One training checkpoint = one HDF5 file, written atomically.
//
// Layout (format_version 1):
//   /params/<name>, /adam_m/<name>, /adam_v/<name>   float32 datasets, the shape of each slice,
//                                                    attribute crc32c (uint32) of the raw bytes; the
//                                                    moments are those of the optimizer state names
//   /state    JSON string (scalar dataset): step, tokens_seen (real tokens; older files: slots), seed, skipped steps,
//             loss_scale, loss_scale_mode and loss_scale_good_steps (LossScaler::state; older files: loss_scale 1
//             only), electra-train's vocab {hash, size} and tokenizer {lower_case} (older files: absent), optimizer
//             ("adamw" | "lamb", optim.name; older files: absent, meaning adamw), log_windows (each rank's open
//             LogWindow::state(); older files: absent)...;
//             its top-level numbers are repeated as typed attributes of the dataset for h5py users
//   /loader   JSON string: the loader state (global cursor, or per-rank states "rank_<r>")
//   /config   JSON string: the run configuration
//   root attributes: format = "electra-mpi checkpoint", format_version, step (int64), and
//   complete = 1, written last.
// JSON lives in datasets rather than attributes because attributes are limited to 64 KiB.
// Tensor names are the Hugging Face state-dict names; they contain dots, never slashes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lib/core/error.h"
#include "lib/core/tensor_slice.h"

namespace electra::train {

// A checkpoint section is written and read by a list of TensorSlice (lib/core/tensor_slice.h) into one
// flat float buffer: params and both optimizer moments share that list.
// Fails naming the first problem: empty name or one with '/', "." or "..", a duplicate name, a size
// that is not the product of the shape, a range outside [0, buffer_size).
void validate_layout(std::span<const TensorSlice> layout, size_t buffer_size);

std::string shape_string(const std::vector<int64_t>& shape);  // "[2, 3]"

// A tensor whose bytes do not match its crc32c, or cannot be read: the file is damaged, not the run's
// settings wrong (electra-train's --resume auto then tries an older checkpoint).
class CorruptCheckpointError : public Error {
 public:
  using Error::Error;
};

enum class Section { kParams, kAdamM, kAdamV };
const char* section_name(Section section);  // "params", "adam_m", "adam_v"

inline constexpr int kCheckpointFormatVersion = 1;

struct CheckpointContent {
  std::span<const TensorSlice> layout;
  std::span<const float> params;
  // Empty: the section is not written (a weights-only file); else the size of params.
  std::span<const float> adam_m;
  std::span<const float> adam_v;
  nlohmann::json state = nlohmann::json::object();  // must hold an integer "step"
  nlohmann::json loader = nlohmann::json::object();
  nlohmann::json config = nlohmann::json::object();
};

// Writes `path` atomically: "<dir>/.<name>.tmp" is written, closed, fsynced and renamed to `path`,
// then the directory is fsynced. An existing file at `path` is replaced.
void write_checkpoint(const std::filesystem::path& path, const CheckpointContent& content);

struct StoredTensor {
  std::string name;
  std::vector<int64_t> shape;
};

// A complete checkpoint opened for reading. Move-only; closes the file on destruction.
class CheckpointFile {
 public:
  // Fails (naming the path) when the file is not an HDF5 file, truncated, of another format or
  // version, or lacks the completion mark.
  static CheckpointFile open(const std::filesystem::path& path);
  // open() without throwing: nullopt when the file is a complete checkpoint, else the reason.
  static std::optional<std::string> check(const std::filesystem::path& path);

  CheckpointFile(CheckpointFile&& other) noexcept;
  CheckpointFile& operator=(CheckpointFile&& other) noexcept;
  CheckpointFile(const CheckpointFile&) = delete;
  CheckpointFile& operator=(const CheckpointFile&) = delete;
  ~CheckpointFile();

  const std::filesystem::path& path() const { return path_; }
  int64_t step() const { return step_; }
  int format_version() const { return format_version_; }
  const nlohmann::json& state() const { return state_; }
  const nlohmann::json& loader() const { return loader_; }
  const nlohmann::json& config() const { return config_; }

  bool has_section(Section section) const;
  // The section's tensors, sorted by name.
  std::vector<StoredTensor> tensors(Section section) const;

  // Reads the section into `buffer` at the layout's offsets. The names and shapes must match exactly;
  // fails before reading anything naming the first difference (a tensor missing from the file, in the
  // layout's order; a shape mismatch; a tensor the layout does not have). Each tensor's CRC-32C is
  // verified after reading.
  void read_into(Section section, std::span<const TensorSlice> layout, std::span<float> buffer) const;
  // One tensor (export tools that use their own layout). Fails naming it when absent or corrupt.
  std::vector<float> read_tensor(Section section, const std::string& name, std::vector<int64_t>* shape = nullptr) const;

 private:
  CheckpointFile() = default;
  void close() noexcept;

  std::filesystem::path path_;
  int64_t file_ = -1;  // hid_t
  int64_t step_ = 0;
  int format_version_ = 0;
  nlohmann::json state_;
  nlohmann::json loader_;
  nlohmann::json config_;
};

inline CheckpointFile read_checkpoint(const std::filesystem::path& path) { return CheckpointFile::open(path); }

}  // namespace electra::train
