#include "data_pipeline/preprocess/shard_writer.h"

#include <filesystem>

#include "data_pipeline/preprocess/file_util.h"
#include "lib/core/atomic_file.h"
#include "lib/core/error.h"

namespace electra::data {
namespace {

h5::Handle create_rows_dataset(hid_t file, const char* name, hid_t type, int rank, hsize_t width, int chunk_rows,
                               int deflate_level, const std::string& where) {
  hsize_t current[2] = {0, width};
  hsize_t maximum[2] = {H5S_UNLIMITED, width};
  hsize_t chunk[2] = {static_cast<hsize_t>(chunk_rows), width};
  h5::Handle space(h5::check(H5Screate_simple(rank, current, maximum), where + ": dataspace"));
  h5::Handle dcpl(h5::check(H5Pcreate(H5P_DATASET_CREATE), where + ": dcpl"));
  h5::check(H5Pset_chunk(dcpl, rank, chunk), where + ": H5Pset_chunk");
  h5::check(H5Pset_shuffle(dcpl), where + ": H5Pset_shuffle");
  h5::check(H5Pset_deflate(dcpl, static_cast<unsigned>(deflate_level)), where + ": H5Pset_deflate");
  // No modification times in the object headers: the same input gives byte-identical shards (and CRCs).
  h5::check(H5Pset_obj_track_times(dcpl, false), where + ": H5Pset_obj_track_times");
  return h5::Handle(h5::check(H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                              where + ": creating dataset " + name));
}

void append_rows(hid_t dataset, hid_t mem_type, const void* data, hsize_t first_row, hsize_t rows, int rank,
                 hsize_t width, const std::string& where) {
  hsize_t new_dims[2] = {first_row + rows, width};
  h5::check(H5Dset_extent(dataset, new_dims), where + ": H5Dset_extent");
  h5::Handle file_space(h5::check(H5Dget_space(dataset), where + ": H5Dget_space"));
  hsize_t start[2] = {first_row, 0};
  hsize_t count[2] = {rows, width};
  h5::check(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, nullptr, count, nullptr), where + ": hyperslab");
  h5::Handle mem_space(h5::check(H5Screate_simple(rank, count, nullptr), where + ": memory space"));
  h5::check(H5Dwrite(dataset, mem_type, mem_space, file_space, H5P_DEFAULT, data), where + ": H5Dwrite");
}

}  // namespace

ShardWriter::ShardWriter(std::string path, ShardWriterOptions options)
    : path_(std::move(path)),
      tmp_path_(temp_path_for(path_).string()),
      options_(options),
      uint16_ids_(shard_ids_are_uint16(options.vocab_size)) {
  if (options_.max_seq_length < 2 || options_.max_seq_length > 65535)
    fail(path_, ": max_seq_length ", options_.max_seq_length, " is outside [2, 65535]");
  if (options_.chunk_rows < 1) fail(path_, ": chunk_rows must be positive");
  if (options_.deflate_level < 0 || options_.deflate_level > 9) fail(path_, ": deflate level must be in [0, 9]");
  // No file locking: Lustre and some NFS mounts refuse the locks (the temporary name is private anyway).
  const h5::Handle fapl = h5::fapl_no_locking();
  const h5::Handle fcpl(h5::check(H5Pcreate(H5P_FILE_CREATE), path_ + ": fcpl"));
  h5::check(H5Pset_obj_track_times(fcpl, false), path_ + ": H5Pset_obj_track_times");
  file_ = h5::Handle(h5::check(H5Fcreate(tmp_path_.c_str(), H5F_ACC_TRUNC, fcpl, fapl), tmp_path_ + ": cannot create"));
  const hsize_t width = static_cast<hsize_t>(options_.max_seq_length);
  ids_ = create_rows_dataset(file_, kInputIds, uint16_ids_ ? H5T_STD_U16LE : H5T_STD_I32LE, 2, width,
                             options_.chunk_rows, options_.deflate_level, tmp_path_);
  segments_ = create_rows_dataset(file_, kSegmentIds, H5T_STD_U8LE, 2, width, options_.chunk_rows,
                                  options_.deflate_level, tmp_path_);
  lengths_ =
      create_rows_dataset(file_, kLengths, H5T_STD_U16LE, 1, 1, options_.chunk_rows, options_.deflate_level, tmp_path_);
  if (options_.packed) {
    example_ids_ = create_rows_dataset(file_, kExampleIds, H5T_STD_U8LE, 2, width, options_.chunk_rows,
                                       options_.deflate_level, tmp_path_);
  }
  const size_t cells = static_cast<size_t>(options_.chunk_rows) * width;
  if (uint16_ids_) {
    buf_ids16_.resize(cells);
  } else {
    buf_ids32_.resize(cells);
  }
  buf_segments_.resize(cells);
  buf_lengths_.resize(static_cast<size_t>(options_.chunk_rows));
  if (options_.packed) buf_example_ids_.resize(cells);
}

ShardWriter::~ShardWriter() {
  if (!finished_) {
    ids_.reset();
    segments_.reset();
    lengths_.reset();
    example_ids_.reset();
    file_.reset();
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
  }
}

void ShardWriter::add(const int32_t* ids, const uint8_t* segments, int length, const uint8_t* example_ids) {
  ELECTRA_CHECK(!finished_, path_, ": add() after finish()");
  ELECTRA_CHECK((example_ids != nullptr) == options_.packed, path_,
                options_.packed ? ": a packed shard needs example_ids for every row"
                                : ": example_ids given for a shard that is not packed");
  const int width = options_.max_seq_length;
  if (length < 0 || length > width) fail(path_, ": example length ", length, " outside [0, ", width, "]");
  const size_t base = static_cast<size_t>(buffered_) * static_cast<size_t>(width);
  for (int i = 0; i < width; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || static_cast<uint64_t>(id) >= options_.vocab_size)
      fail(path_, ": token id ", id, " outside the vocabulary of ", options_.vocab_size);
    if (uint16_ids_) {
      buf_ids16_[base + i] = static_cast<uint16_t>(id);
    } else {
      buf_ids32_[base + i] = id;
    }
  }
  std::copy(segments, segments + width, buf_segments_.begin() + static_cast<std::ptrdiff_t>(base));
  if (example_ids != nullptr)
    std::copy(example_ids, example_ids + width, buf_example_ids_.begin() + static_cast<std::ptrdiff_t>(base));
  buf_lengths_[static_cast<size_t>(buffered_)] = static_cast<uint16_t>(length);
  if (++buffered_ == options_.chunk_rows) flush_chunk();
}

void ShardWriter::flush_chunk() {
  if (buffered_ == 0) return;
  const hsize_t width = static_cast<hsize_t>(options_.max_seq_length);
  const hsize_t n = static_cast<hsize_t>(buffered_);
  if (uint16_ids_) {
    append_rows(ids_, H5T_NATIVE_UINT16, buf_ids16_.data(), rows_, n, 2, width, tmp_path_ + ": " + kInputIds);
  } else {
    append_rows(ids_, H5T_NATIVE_INT32, buf_ids32_.data(), rows_, n, 2, width, tmp_path_ + ": " + kInputIds);
  }
  append_rows(segments_, H5T_NATIVE_UINT8, buf_segments_.data(), rows_, n, 2, width, tmp_path_ + ": " + kSegmentIds);
  append_rows(lengths_, H5T_NATIVE_UINT16, buf_lengths_.data(), rows_, n, 1, 1, tmp_path_ + ": " + kLengths);
  if (options_.packed) {
    append_rows(example_ids_, H5T_NATIVE_UINT8, buf_example_ids_.data(), rows_, n, 2, width,
                tmp_path_ + ": " + kExampleIds);
  }
  rows_ += n;
  buffered_ = 0;
}

ShardInfo ShardWriter::finish() {
  ELECTRA_CHECK(!finished_, path_, ": finish() called twice");
  flush_chunk();
  h5::write_attribute_i64(file_, "format_version", shard_format_version(options_.packed));
  h5::write_attribute_i64(file_, "max_seq_length", options_.max_seq_length);
  h5::write_attribute_u64(file_, "vocab_size", options_.vocab_size);
  h5::write_attribute_u64(file_, "vocab_hash", options_.vocab_hash);
  ids_.reset();
  segments_.reset();
  lengths_.reset();
  example_ids_.reset();
  h5::check(H5Fflush(file_, H5F_SCOPE_GLOBAL), tmp_path_ + ": H5Fflush");
  file_.reset();
  ShardInfo info;
  info.file = std::filesystem::path(path_).filename().string();
  info.rows = rows_;
  info.crc32 = file_crc32(tmp_path_);
  commit_file(tmp_path_, path_);
  finished_ = true;
  return info;
}

}  // namespace electra::data
