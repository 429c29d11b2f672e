// Shared by the MPI test binary: the world communicator made by main (Communicator::init).
#pragma once

#include <cstring>
#include <span>
#include <vector>

#include "lib/dist/communicator.h"

namespace electra::dist::testing {

const Communicator& world();

// True on every rank when every rank's `data` is bitwise equal to rank 0's.
template <typename T>
bool identical_on_all_ranks(std::span<const T> data) {
  std::vector<T> root(data.begin(), data.end());
  world().broadcast(root.data(), root.size() * sizeof(T), 0);
  const bool same = std::memcmp(root.data(), data.data(), data.size() * sizeof(T)) == 0;
  return world().agree_all(same);
}

}  // namespace electra::dist::testing
