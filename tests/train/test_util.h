// Helpers shared by the lib/train tests.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "lib/train/checkpoint.h"

namespace electra::train::testing {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("electra-train-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A small model-like layout with Hugging Face style names (dots) and a scalar-free set of shapes.
inline std::vector<TensorSlice> small_layout() {
  std::vector<TensorSlice> layout;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    size_t size = 1;
    for (int64_t d : shape) size *= static_cast<size_t>(d);
    layout.push_back(TensorSlice{std::move(name), std::move(shape), offset, size});
    offset += size;
  };
  add("electra.embeddings.word_embeddings.weight", {30, 8});
  add("electra.embeddings.LayerNorm.weight", {8});
  add("electra.encoder.layer.0.attention.self.query.weight", {8, 8});
  add("electra.encoder.layer.0.attention.self.query.bias", {8});
  add("discriminator_predictions.dense_prediction.weight", {1, 8});
  return layout;
}

inline size_t layout_size(const std::vector<TensorSlice>& layout) {
  size_t total = 0;
  for (const TensorSlice& t : layout) total = std::max(total, t.offset + t.size);
  return total;
}

}  // namespace electra::train::testing
