// FNV-1a, 64 bits: a quick hash for telling whether two copies of some bytes are the same (the ranks'
// parameters, their views of a data directory). Not for security, and not stored in any file format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>

namespace electra {

class Fnv1a {
 public:
  Fnv1a& add(const void* data, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i) value_ = (value_ ^ p[i]) * 1099511628211ull;
    return *this;
  }
  template <typename T>
  Fnv1a& add_value(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    return add(&value, sizeof(value));
  }
  uint64_t value() const { return value_; }
  // 16 hex digits, for messages and comparisons across processes.
  std::string hex() const {
    char text[17];
    std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value_));
    return text;
  }

 private:
  uint64_t value_ = 14695981039346656037ull;
};

}  // namespace electra
