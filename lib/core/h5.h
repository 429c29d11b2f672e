// Small RAII layer over the HDF5 C API, shared by the shard writer, the loader and checkpoints. Every
// failing call becomes an electra::Error whose message names the file (and dataset) and carries HDF5's own
// reason (e.g. "truncated file"), instead of HDF5's error stack printed on stderr. Linking it also turns
// off HDF5's exit handler (h5.cpp says why).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace electra::h5 {

// Owns one hid_t (file, dataset, dataspace, datatype, attribute or property list) and closes it.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : id_(other.id_) { other.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = other.id_;
      other.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }  // NOLINT: handles are passed straight to H5* calls
  bool valid() const { return id_ >= 0; }
  void reset();
  // Gives up ownership: the caller closes the identifier.
  hid_t release() {
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Turns off HDF5's automatic error printing for the calling thread (the error stack is per thread in
// thread-safe builds). Called by every function below; cheap after the first call in a thread.
void quiet_errors();

// HDF5's innermost error message for the last failing call in this thread ("" when none).
std::string last_error();

// Throws electra::Error("<what>: <HDF5 reason>") when id/status is negative; returns it otherwise.
hid_t check(hid_t id, const std::string& what);

// A file access property list with file locking off, so shards can be read from network filesystems
// (Lustre, NFS) and by many ranks at once. Falls back to HDF5_USE_FILE_LOCKING=FALSE on old HDF5.
Handle fapl_no_locking();

// Opens an existing file read-only (no locking); errors name the path.
Handle open_read_only(const std::string& path);

bool has_dataset(hid_t file, const char* name);
bool has_attribute(hid_t object, const char* name);

// Dimensions of a dataset.
std::vector<hsize_t> dims(hid_t dataset);

// Scalar attributes (written as the native type given; read with conversion).
void write_attribute_u64(hid_t object, const char* name, uint64_t value);
void write_attribute_i64(hid_t object, const char* name, int64_t value);
uint64_t read_attribute_u64(hid_t object, const char* name, const std::string& where);
int64_t read_attribute_i64(hid_t object, const char* name, const std::string& where);

// Type of a dataset's elements in words: "uint16", "int32", "float32", "string", ...
std::string describe_type(hid_t dataset);

}  // namespace electra::h5
