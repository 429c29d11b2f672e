// Owning handle for backend memory (parameters, activations, scratch). Move-only; frees through the
// backend that allocated it, which must outlive the buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "lib/backend/backend.h"

namespace electra {

// Elements of type E (T, int32_t or uint8_t) allocated by a Backend<T>.
template <typename T, typename E = T>
class DeviceBuffer {
  static_assert(std::is_same_v<E, T> || std::is_same_v<E, int32_t> || std::is_same_v<E, uint8_t>,
                "DeviceBuffer holds T, int32_t or uint8_t");

 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend<T>& backend, size_t n) { reset(backend, n); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      backend_ = std::exchange(other.backend_, nullptr);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  // Frees the old storage and allocates n uninitialised elements (none when n == 0).
  void reset(Backend<T>& backend, size_t n) {
    release();
    backend_ = &backend;
    size_ = n;
    if (n == 0) return;
    if constexpr (std::is_same_v<E, T>) {
      data_ = backend.allocate(n);
    } else if constexpr (std::is_same_v<E, int32_t>) {
      data_ = backend.allocate_ints(n);
    } else {
      data_ = backend.allocate_bytes(n);
    }
  }

  E* data() { return data_; }
  const E* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void release() {
    if (data_ != nullptr) {
      if constexpr (std::is_same_v<E, T>) {
        backend_->deallocate(data_);
      } else if constexpr (std::is_same_v<E, int32_t>) {
        backend_->deallocate_ints(data_);
      } else {
        backend_->deallocate_bytes(data_);
      }
    }
    data_ = nullptr;
    size_ = 0;
  }

  Backend<T>* backend_ = nullptr;
  E* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace electra
