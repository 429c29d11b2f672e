// Checks on the checkpoint files that electra-train writes, shared by the end-to-end tests that link
// electra_train (tests/e2e, tests/train).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "lib/train/checkpoint.h"

namespace electra::test {

// The parameters and Adam moments of two checkpoint files are bitwise equal, tensor by tensor.
inline void expect_same_checkpoint_tensors(const std::filesystem::path& a_path, const std::filesystem::path& b_path) {
  const train::CheckpointFile a = train::CheckpointFile::open(a_path);
  const train::CheckpointFile b = train::CheckpointFile::open(b_path);
  for (train::Section section : {train::Section::kParams, train::Section::kAdamM, train::Section::kAdamV}) {
    const auto tensors = a.tensors(section);
    ASSERT_EQ(tensors.size(), b.tensors(section).size());
    for (const auto& t : tensors) {
      EXPECT_EQ(a.read_tensor(section, t.name), b.read_tensor(section, t.name)) << t.name;
    }
  }
}

// Every parameter in `checkpoint` is finite; the first one that is not is a fatal failure (call it inside
// ASSERT_NO_FATAL_FAILURE).
inline void assert_finite_params(const train::CheckpointFile& checkpoint) {
  for (const auto& t : checkpoint.tensors(train::Section::kParams)) {
    for (float x : checkpoint.read_tensor(train::Section::kParams, t.name)) ASSERT_TRUE(std::isfinite(x)) << t.name;
  }
}

}  // namespace electra::test
