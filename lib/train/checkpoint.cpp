#include "lib/train/checkpoint.h"

#include <hdf5.h>

#include <map>
#include <type_traits>
#include <unordered_set>
#include <utility>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "lib/train/crc32c.h"

namespace electra::train {
namespace {

static_assert(std::is_same_v<hid_t, int64_t>, "CheckpointFile stores hid_t as int64_t");

constexpr const char* kFormat = "electra-mpi checkpoint";

// HDF5's innermost reason for the last failed call, as " (HDF5: reason)", or "" (lib/core/h5.h).
std::string hdf5_reason() {
  const std::string reason = h5::last_error();
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? std::string() : " (HDF5: " + reason + ")";
}

h5::Handle checked(hid_t id, const std::filesystem::path& path, const std::string& what) {
  if (id < 0) fail("checkpoint ", path.string(), ": ", what, hdf5_reason());
  return h5::Handle(id);
}

void check_status(herr_t status, const std::filesystem::path& path, const std::string& what) {
  if (status < 0) fail("checkpoint ", path.string(), ": ", what, hdf5_reason());
}

// ---- writing ----

void write_string_attribute(hid_t object, const char* name, const std::string& value,
                            const std::filesystem::path& path) {
  h5::Handle type = checked(H5Tcopy(H5T_C_S1), path, "H5Tcopy");
  check_status(H5Tset_size(type.get(), std::max<size_t>(1, value.size())), path, "H5Tset_size");
  check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), path, "H5Tset_strpad");
  check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), path, "H5Tset_cset");
  h5::Handle space = checked(H5Screate(H5S_SCALAR), path, "H5Screate");
  h5::Handle attr = checked(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), path,
                            std::string("cannot create attribute ") + name);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  check_status(H5Awrite(attr.get(), type.get(), padded.data()), path, std::string("cannot write attribute ") + name);
}

template <typename T>
void write_scalar_attribute(hid_t object, const char* name, hid_t type, T value, const std::filesystem::path& path) {
  h5::Handle space = checked(H5Screate(H5S_SCALAR), path, "H5Screate");
  h5::Handle attr = checked(H5Acreate2(object, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT), path,
                            std::string("cannot create attribute ") + name);
  check_status(H5Awrite(attr.get(), type, &value), path, std::string("cannot write attribute ") + name);
}

// A JSON document as a scalar fixed-length UTF-8 string dataset.
h5::Handle write_json_dataset(hid_t file, const char* name, const nlohmann::json& value,
                              const std::filesystem::path& path) {
  const std::string text = value.dump();
  h5::Handle type = checked(H5Tcopy(H5T_C_S1), path, "H5Tcopy");
  check_status(H5Tset_size(type.get(), std::max<size_t>(1, text.size())), path, "H5Tset_size");
  check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), path, "H5Tset_strpad");
  check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), path, "H5Tset_cset");
  h5::Handle space = checked(H5Screate(H5S_SCALAR), path, "H5Screate");
  h5::Handle dataset = checked(H5Dcreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                               path, std::string("cannot create /") + name);
  std::string padded = text.empty() ? std::string(1, '\0') : text;
  check_status(H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data()), path,
               std::string("cannot write /") + name);
  return dataset;
}

void write_section(hid_t file, Section section, std::span<const TensorSlice> layout, std::span<const float> data,
                   const std::filesystem::path& path) {
  const std::string group_name = section_name(section);
  h5::Handle group = checked(H5Gcreate2(file, group_name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), path,
                             "cannot create /" + group_name);
  for (const TensorSlice& tensor : layout) {
    const std::string where = "/" + group_name + "/" + tensor.name;
    std::vector<hsize_t> dims(tensor.shape.begin(), tensor.shape.end());
    h5::Handle space = checked(
        dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
        path, "cannot make the dataspace of " + where);
    h5::Handle dataset = checked(H5Dcreate2(group.get(), tensor.name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                                            H5P_DEFAULT, H5P_DEFAULT),
                                 path, "cannot create " + where);
    const float* begin = data.data() + tensor.offset;
    if (tensor.size > 0) {
      check_status(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, begin), path,
                   "cannot write " + where);
    }
    const uint32_t crc = crc32c(begin, tensor.size * sizeof(float));
    write_scalar_attribute(dataset.get(), "crc32c", H5T_NATIVE_UINT32, crc, path);
  }
}

// ---- reading ----

std::string read_string_attribute(hid_t object, const char* name, const std::filesystem::path& path) {
  h5::Handle attr = checked(H5Aopen(object, name, H5P_DEFAULT), path, std::string("no attribute ") + name);
  h5::Handle type = checked(H5Aget_type(attr.get()), path, "H5Aget_type");
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) {
    fail("checkpoint ", path.string(), ": attribute ", name, " is not a fixed-length string");
  }
  std::string value(H5Tget_size(type.get()), '\0');
  check_status(H5Aread(attr.get(), type.get(), value.data()), path, std::string("cannot read attribute ") + name);
  value.resize(value.find_last_not_of('\0') + 1);
  return value;
}

int64_t read_int_attribute(hid_t object, const char* name, const std::filesystem::path& path) {
  h5::Handle attr = checked(H5Aopen(object, name, H5P_DEFAULT), path, std::string("no attribute ") + name);
  int64_t value = 0;
  check_status(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), path, std::string("cannot read attribute ") + name);
  return value;
}

nlohmann::json read_json_dataset(hid_t file, const char* name, const std::filesystem::path& path) {
  h5::Handle dataset = checked(H5Dopen2(file, name, H5P_DEFAULT), path, std::string("no dataset /") + name);
  h5::Handle type = checked(H5Dget_type(dataset.get()), path, "H5Dget_type");
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0) {
    fail("checkpoint ", path.string(), ": /", name, " is not a fixed-length string");
  }
  std::string text(H5Tget_size(type.get()), '\0');
  check_status(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()), path,
               std::string("cannot read /") + name);
  text.resize(text.find_last_not_of('\0') + 1);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    fail("checkpoint ", path.string(), ": /", name, " is not valid JSON: ", error.what());
  }
}

std::vector<int64_t> dataset_shape(hid_t dataset, const std::filesystem::path& path, const std::string& where) {
  h5::Handle space = checked(H5Dget_space(dataset), path, "cannot get the dataspace of " + where);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail("checkpoint ", path.string(), ": cannot get the rank of ", where, hdf5_reason());
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

// Reads `where` (a float32 dataset of `count` elements) into `out` and verifies its checksum.
void read_dataset(hid_t dataset, float* out, size_t count, const std::filesystem::path& path,
                  const std::string& where) {
  h5::Handle type = checked(H5Dget_type(dataset), path, "H5Dget_type");
  if (H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != sizeof(float)) {
    fail("checkpoint ", path.string(), ": ", where, " is not float32");
  }
  if (count > 0 && H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
    throw CorruptCheckpointError(detail::concat("checkpoint ", path.string(), ": cannot read ", where));
  }
  if (!h5::has_attribute(dataset, "crc32c"))
    fail("checkpoint ", path.string(), ": ", where, " has no crc32c attribute");
  h5::Handle attr = checked(H5Aopen(dataset, "crc32c", H5P_DEFAULT), path, "cannot open crc32c of " + where);
  uint32_t stored = 0;
  check_status(H5Aread(attr.get(), H5T_NATIVE_UINT32, &stored), path, "cannot read crc32c of " + where);
  const uint32_t actual = crc32c(out, count * sizeof(float));
  if (stored != actual) {
    throw CorruptCheckpointError(detail::concat("checkpoint ", path.string(), ": ", where, " is corrupt (CRC-32C ",
                                                actual, ", stored ", stored, ")"));
  }
}

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

const char* section_name(Section section) {
  switch (section) {
    case Section::kParams:
      return "params";
    case Section::kAdamM:
      return "adam_m";
    case Section::kAdamV:
      return "adam_v";
  }
  return "?";
}

void validate_layout(std::span<const TensorSlice> layout, size_t buffer_size) {
  std::unordered_set<std::string> names;
  for (const TensorSlice& tensor : layout) {
    if (tensor.name.empty() || tensor.name == "." || tensor.name == ".." ||
        tensor.name.find('/') != std::string::npos) {
      fail("tensor layout: invalid tensor name '", tensor.name, "' (must be non-empty, without '/')");
    }
    if (!names.insert(tensor.name).second) fail("tensor layout: duplicate tensor name '", tensor.name, "'");
    int64_t count = 1;
    for (int64_t d : tensor.shape) {
      if (d < 0)
        fail("tensor layout: tensor '", tensor.name, "' has a negative dimension in ", shape_string(tensor.shape));
      count *= d;
    }
    if (static_cast<size_t>(count) != tensor.size) {
      fail("tensor layout: tensor '", tensor.name, "' has size ", tensor.size, " but shape ",
           shape_string(tensor.shape));
    }
    if (tensor.offset > buffer_size || tensor.size > buffer_size - tensor.offset) {
      fail("tensor layout: tensor '", tensor.name, "' [", tensor.offset, ", ", tensor.offset + tensor.size,
           ") lies outside the buffer of ", buffer_size, " elements");
    }
  }
}

void write_checkpoint(const std::filesystem::path& path, const CheckpointContent& content) {
  validate_layout(content.layout, content.params.size());
  for (const auto& [moment, name] : {std::pair{content.adam_m, "adam_m"}, std::pair{content.adam_v, "adam_v"}}) {
    if (!moment.empty() && moment.size() != content.params.size()) {
      fail("write_checkpoint ", path.string(), ": ", name, " has ", moment.size(), " elements, params ",
           content.params.size());
    }
  }
  if (!content.state.is_object() || !content.state.contains("step") || !content.state["step"].is_number_integer()) {
    fail("write_checkpoint ", path.string(), ": state must be a JSON object with an integer \"step\"");
  }
  const int64_t step = content.state["step"].get<int64_t>();

  h5::quiet_errors();  // our messages say what failed, not HDF5's stack on stderr
  const std::filesystem::path temp = temp_path_for(path);
  try {
    h5::Handle file = checked(H5Fcreate(temp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, h5::fapl_no_locking().get()), temp,
                              "cannot create the file");
    write_string_attribute(file.get(), "format", kFormat, temp);
    write_scalar_attribute(file.get(), "format_version", H5T_NATIVE_INT32, int32_t{kCheckpointFormatVersion}, temp);
    write_scalar_attribute(file.get(), "step", H5T_NATIVE_INT64, step, temp);
    {
      h5::Handle state = write_json_dataset(file.get(), "state", content.state, temp);
      // Typed copies of the top-level numbers, for people reading the file with h5py.
      for (const auto& [key, value] : content.state.items()) {
        if (key.empty() || key.find('/') != std::string::npos) continue;
        if (value.is_number_integer() || value.is_boolean()) {
          write_scalar_attribute(state.get(), key.c_str(), H5T_NATIVE_INT64,
                                 value.is_boolean() ? int64_t{value.get<bool>()} : value.get<int64_t>(), temp);
        } else if (value.is_number()) {
          write_scalar_attribute(state.get(), key.c_str(), H5T_NATIVE_DOUBLE, value.get<double>(), temp);
        }
      }
    }
    write_json_dataset(file.get(), "loader", content.loader, temp);
    write_json_dataset(file.get(), "config", content.config, temp);
    write_section(file.get(), Section::kParams, content.layout, content.params, temp);
    if (!content.adam_m.empty()) write_section(file.get(), Section::kAdamM, content.layout, content.adam_m, temp);
    if (!content.adam_v.empty()) write_section(file.get(), Section::kAdamV, content.layout, content.adam_v, temp);
    // Last: a file without this mark is never taken for a checkpoint.
    write_scalar_attribute(file.get(), "complete", H5T_NATIVE_INT32, int32_t{1}, temp);
    check_status(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), temp, "H5Fflush");
    file.reset();
    commit_file(temp, path);
  } catch (...) {
    // A full disk must not stay fuller: the partial file goes (the handle closed as the exception left its
    // scope). The previous checkpoints are untouched.
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw;
  }
}

CheckpointFile CheckpointFile::open(const std::filesystem::path& path) {
  h5::quiet_errors();
  if (std::filesystem::is_directory(path)) {
    fail("checkpoint ", path.string(), ": is a directory, not a checkpoint file (ckpt-*.h5)");
  }
  if (!std::filesystem::is_regular_file(path)) fail("checkpoint ", path.string(), ": no such file");
  CheckpointFile result;  // closes the file if a check below throws
  result.path_ = path;
  result.file_ = checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, h5::fapl_no_locking().get()), path,
                         "cannot open as HDF5 (truncated, corrupt or not HDF5)")
                     .release();
  const hid_t id = result.file_;
  if (!h5::has_attribute(id, "format") || read_string_attribute(id, "format", path) != kFormat) {
    fail("checkpoint ", path.string(), ": not an electra-mpi checkpoint (attribute format)");
  }
  result.format_version_ = static_cast<int>(read_int_attribute(id, "format_version", path));
  if (result.format_version_ != kCheckpointFormatVersion) {
    fail("checkpoint ", path.string(), ": format_version ", result.format_version_, ", this build reads ",
         kCheckpointFormatVersion);
  }
  if (!h5::has_attribute(id, "complete") || read_int_attribute(id, "complete", path) != 1) {
    fail("checkpoint ", path.string(), ": incomplete (no completion mark)");
  }
  result.step_ = read_int_attribute(id, "step", path);
  result.state_ = read_json_dataset(id, "state", path);
  result.loader_ = read_json_dataset(id, "loader", path);
  result.config_ = read_json_dataset(id, "config", path);
  if (!result.has_section(Section::kParams)) fail("checkpoint ", path.string(), ": no /params group");
  return result;
}

std::optional<std::string> CheckpointFile::check(const std::filesystem::path& path) {
  try {
    CheckpointFile file = open(path);
    return std::nullopt;
  } catch (const std::exception& error) {
    return std::string(error.what());
  }
}

CheckpointFile::CheckpointFile(CheckpointFile&& other) noexcept { *this = std::move(other); }

CheckpointFile& CheckpointFile::operator=(CheckpointFile&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    file_ = std::exchange(other.file_, H5I_INVALID_HID);
    step_ = other.step_;
    format_version_ = other.format_version_;
    state_ = std::move(other.state_);
    loader_ = std::move(other.loader_);
    config_ = std::move(other.config_);
  }
  return *this;
}

CheckpointFile::~CheckpointFile() { close(); }

void CheckpointFile::close() noexcept {
  if (file_ >= 0) H5Fclose(file_);
  file_ = H5I_INVALID_HID;
}

bool CheckpointFile::has_section(Section section) const {
  h5::quiet_errors();
  const bool exists = H5Lexists(file_, section_name(section), H5P_DEFAULT) > 0;
  H5Eclear2(H5E_DEFAULT);
  return exists;
}

std::vector<StoredTensor> CheckpointFile::tensors(Section section) const {
  h5::quiet_errors();
  const std::string group_name = section_name(section);
  if (!has_section(section)) fail("checkpoint ", path_.string(), ": no /", group_name, " group");
  h5::Handle group = checked(H5Gopen2(file_, group_name.c_str(), H5P_DEFAULT), path_, "cannot open /" + group_name);
  std::vector<std::string> names;
  hsize_t index = 0;
  check_status(H5Literate(
                   group.get(), H5_INDEX_NAME, H5_ITER_INC, &index,
                   [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
                     static_cast<std::vector<std::string>*>(out)->emplace_back(name);
                     return 0;
                   },
                   &names),
               path_, "cannot list /" + group_name);
  std::vector<StoredTensor> result;
  result.reserve(names.size());
  for (const std::string& name : names) {
    const std::string where = "/" + group_name + "/" + name;
    h5::Handle dataset = checked(H5Dopen2(group.get(), name.c_str(), H5P_DEFAULT), path_, where + " is not a dataset");
    result.push_back(StoredTensor{name, dataset_shape(dataset.get(), path_, where)});
  }
  return result;
}

void CheckpointFile::read_into(Section section, std::span<const TensorSlice> layout, std::span<float> buffer) const {
  validate_layout(layout, buffer.size());
  const std::string group_name = section_name(section);
  std::map<std::string, std::vector<int64_t>> stored;
  for (StoredTensor& tensor : tensors(section)) stored.emplace(std::move(tensor.name), std::move(tensor.shape));

  // All names and shapes first, so a mismatch leaves the buffer untouched.
  std::unordered_set<std::string> expected;
  for (const TensorSlice& tensor : layout) {
    expected.insert(tensor.name);
    auto found = stored.find(tensor.name);
    if (found == stored.end()) {
      fail("checkpoint ", path_.string(), ": /", group_name, " has no tensor '", tensor.name, "' (the model expects ",
           shape_string(tensor.shape), ")");
    }
    if (found->second != tensor.shape) {
      fail("checkpoint ", path_.string(), ": /", group_name, "/", tensor.name, " has shape ",
           shape_string(found->second), ", the model expects ", shape_string(tensor.shape));
    }
  }
  for (const auto& [name, shape] : stored) {
    if (!expected.contains(name)) {
      fail("checkpoint ", path_.string(), ": /", group_name, "/", name, " ", shape_string(shape),
           " is not a tensor of the model");
    }
  }

  h5::quiet_errors();
  h5::Handle group = checked(H5Gopen2(file_, group_name.c_str(), H5P_DEFAULT), path_, "cannot open /" + group_name);
  for (const TensorSlice& tensor : layout) {
    const std::string where = "/" + group_name + "/" + tensor.name;
    h5::Handle dataset =
        checked(H5Dopen2(group.get(), tensor.name.c_str(), H5P_DEFAULT), path_, "cannot open " + where);
    read_dataset(dataset.get(), buffer.data() + tensor.offset, tensor.size, path_, where);
  }
}

std::vector<float> CheckpointFile::read_tensor(Section section, const std::string& name,
                                               std::vector<int64_t>* shape) const {
  h5::quiet_errors();
  const std::string where = std::string("/") + section_name(section) + "/" + name;
  if (name.empty() || name.find('/') != std::string::npos || !has_section(section) ||
      H5Lexists(file_, where.c_str(), H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    fail("checkpoint ", path_.string(), ": no tensor ", where);
  }
  h5::Handle dataset = checked(H5Dopen2(file_, where.c_str(), H5P_DEFAULT), path_, "cannot open " + where);
  std::vector<int64_t> dims = dataset_shape(dataset.get(), path_, where);
  std::vector<float> data(static_cast<size_t>(element_count(dims)));
  read_dataset(dataset.get(), data.data(), data.size(), path_, where);
  if (shape != nullptr) *shape = std::move(dims);
  return data;
}

}  // namespace electra::train
