#include "lib/core/h5.h"

#include <cstdlib>

#include "lib/core/error.h"

namespace electra::h5 {
namespace {

// HDF5 1.10 closes what is still open when the process exits (H5_term_library, registered with atexit at
// the library's first call) and crashes there (H5F__close_cb) on a file whose close failed, as it does on a
// full disk: the program then dies with SIGSEGV instead of its exit code. Every file is closed explicitly
// (Handle), so the handler is not needed; this runs before main, before any HDF5 call could register it.
[[maybe_unused]] const bool kNoHdf5ExitHandler = H5dont_atexit() >= 0;

}  // namespace

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    case H5I_GROUP:
      H5Gclose(id_);
      break;
    default:
      break;
  }
  id_ = H5I_INVALID_HID;
}

void quiet_errors() {
  thread_local bool quiet = false;
  if (!quiet) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    quiet = true;
  }
}

namespace {
herr_t collect_innermost(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n == 0 && err->desc != nullptr) *out = err->desc;  // walked upward: 0 is the innermost
  return 0;
}
}  // namespace

std::string last_error() {
  std::string message;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_innermost, &message);
  return message;
}

hid_t check(hid_t id, const std::string& what) {
  if (id < 0) {
    const std::string reason = last_error();
    fail(what, reason.empty() ? std::string() : ": " + reason);
  }
  return id;
}

Handle fapl_no_locking() {
  quiet_errors();
  Handle fapl(check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate(file access)"));
#if H5_VERSION_GE(1, 12, 1) || (H5_VERS_MAJOR == 1 && H5_VERS_MINOR == 10 && H5_VERS_RELEASE >= 7)
  check(H5Pset_file_locking(fapl, false, true), "H5Pset_file_locking");
#else
  // Read by the library when a file is opened; harmless where locking is already off.
  setenv("HDF5_USE_FILE_LOCKING", "FALSE", 0);
#endif
  return fapl;
}

Handle open_read_only(const std::string& path) {
  Handle fapl = fapl_no_locking();
  return Handle(check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), path + ": cannot open as HDF5"));
}

bool has_dataset(hid_t file, const char* name) {
  quiet_errors();
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return false;
  H5O_info_t info;
#if H5_VERSION_GE(1, 12, 0)
  if (H5Oget_info_by_name3(file, name, &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) return false;
#else
  if (H5Oget_info_by_name2(file, name, &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) return false;
#endif
  return info.type == H5O_TYPE_DATASET;
}

bool has_attribute(hid_t object, const char* name) {
  quiet_errors();
  return H5Aexists(object, name) > 0;
}

std::vector<hsize_t> dims(hid_t dataset) {
  Handle space(check(H5Dget_space(dataset), "H5Dget_space"));
  const int rank = H5Sget_simple_extent_ndims(space);
  check(rank, "H5Sget_simple_extent_ndims");
  std::vector<hsize_t> out(static_cast<size_t>(rank));
  if (rank > 0) check(H5Sget_simple_extent_dims(space, out.data(), nullptr), "H5Sget_simple_extent_dims");
  return out;
}

namespace {
void write_scalar_attribute(hid_t object, const char* name, hid_t file_type, hid_t mem_type, const void* value) {
  quiet_errors();
  if (H5Aexists(object, name) > 0) check(H5Adelete(object, name), std::string("H5Adelete ") + name);
  Handle space(check(H5Screate(H5S_SCALAR), "H5Screate"));
  Handle attr(check(H5Acreate2(object, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT),
                    std::string("creating attribute ") + name));
  check(H5Awrite(attr, mem_type, value), std::string("writing attribute ") + name);
}

void read_scalar_attribute(hid_t object, const char* name, hid_t mem_type, void* value, const std::string& where) {
  quiet_errors();
  if (H5Aexists(object, name) <= 0) fail(where, ": missing attribute '", name, "'");
  Handle attr(check(H5Aopen(object, name, H5P_DEFAULT), where + ": opening attribute " + name));
  Handle type(check(H5Aget_type(attr), where + ": attribute type"));
  if (H5Tget_class(type) != H5T_INTEGER) fail(where, ": attribute '", name, "' is not an integer");
  Handle space(check(H5Aget_space(attr), where + ": attribute space"));
  if (H5Sget_simple_extent_npoints(space) != 1) fail(where, ": attribute '", name, "' is not a scalar");
  check(H5Aread(attr, mem_type, value), where + ": reading attribute " + name);
}
}  // namespace

void write_attribute_u64(hid_t object, const char* name, uint64_t value) {
  write_scalar_attribute(object, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}
void write_attribute_i64(hid_t object, const char* name, int64_t value) {
  write_scalar_attribute(object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}
uint64_t read_attribute_u64(hid_t object, const char* name, const std::string& where) {
  uint64_t value = 0;
  read_scalar_attribute(object, name, H5T_NATIVE_UINT64, &value, where);
  return value;
}
int64_t read_attribute_i64(hid_t object, const char* name, const std::string& where) {
  int64_t value = 0;
  read_scalar_attribute(object, name, H5T_NATIVE_INT64, &value, where);
  return value;
}

std::string describe_type(hid_t dataset) {
  Handle type(check(H5Dget_type(dataset), "H5Dget_type"));
  const size_t bits = H5Tget_size(type) * 8;
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return std::string(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_FLOAT:
      return "float" + std::to_string(bits);
    case H5T_STRING:
      return "string";
    default:
      return "class " + std::to_string(static_cast<int>(H5Tget_class(type)));
  }
}

}  // namespace electra::h5
