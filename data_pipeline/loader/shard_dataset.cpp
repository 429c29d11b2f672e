#include "data_pipeline/loader/shard_dataset.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>

#include "data_pipeline/preprocess/file_util.h"
#include "data_pipeline/preprocess/manifest.h"
#include "data_pipeline/preprocess/shard_writer.h"
#include "lib/core/error.h"
#include "lib/core/fnv1a.h"
#include "lib/core/log.h"

namespace electra::data {
namespace fs = std::filesystem;

namespace {
constexpr const char* kNvInputIds = "input_ids";
constexpr const char* kNvInputMask = "input_mask";
constexpr const char* kNvSegmentIds = "segment_ids";
constexpr const char* kNvPositions = "masked_lm_positions";
constexpr const char* kNvMaskedIds = "masked_lm_ids";
constexpr const char* kNvNsp = "next_sentence_labels";
constexpr int kDefaultBlockRows = 256;
}  // namespace

namespace {
// How the HDF5 filter pipeline of one dataset was applied: positions of the shuffle and deflate
// filters (-1: absent) and the element size; chunks are [block_rows, width].
struct RawCodec {
  int shuffle_index = -1, deflate_index = -1;
  size_t element_size = 1;
  uint64_t width = 1;
};
}  // namespace

struct ShardDataset::Shard {
  std::string path;
  uint64_t rows = 0;
  uint32_t crc32 = 0;  // electra-mpi: the manifest's record of the file; NVIDIA: 0 (none is recorded)
  uint64_t block_rows = kDefaultBlockRows;  // rows read (and cached) together: the HDF5 chunk height
  bool ids_uint16 = false;
  int predictions = 0;  // NVIDIA: masked_lm_positions width
  // electra-mpi shards whose chunks we can inflate ourselves (ids, segments, lengths[, example_ids]), else empty.
  std::vector<RawCodec> codecs;
  h5::Handle file;
  // electra: ids, segments, lengths (and example_ids when packed); NVIDIA: the six above in order
  std::vector<h5::Handle> datasets;
};

struct ShardDataset::Chunk {
  uint64_t rows = 0;
  std::vector<uint16_t> ids16;
  std::vector<int32_t> ids32;
  std::vector<uint8_t> segments;
  std::vector<uint16_t> lengths;
  std::vector<uint8_t> example_ids;  // packed shards only
  std::vector<int8_t> nsp;
  uint64_t bytes() const {
    return ids16.size() * 2 + ids32.size() * 4 + segments.size() + lengths.size() * 2 + example_ids.size() +
           nsp.size() + sizeof(Chunk);
  }
};

namespace {

std::string where(const std::string& path, const char* dataset) { return path + ": dataset '" + dataset + "'"; }

h5::Handle open_dataset(hid_t file, const std::string& path, const char* name) {
  if (!h5::has_dataset(file, name)) fail(path, ": missing dataset '", name, "'");
  h5::Handle dataset(h5::check(H5Dopen2(file, name, H5P_DEFAULT), where(path, name) + ": cannot open"));
  // A filter this HDF5 cannot decode (h5py's lzf, a plugin not installed) fails every read: said at set-up.
  const h5::Handle dcpl(h5::check(H5Dget_create_plist(dataset), where(path, name) + ": creation properties"));
  const int filters = H5Pget_nfilters(dcpl);
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0, config = 0;
    size_t values = 0;
    char filter_name[64] = {};
    const H5Z_filter_t id = H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &values, nullptr,
                                           sizeof(filter_name), filter_name, &config);
    if (id < 0 || H5Zfilter_avail(id) <= 0) {
      fail(where(path, name), ": compressed with HDF5 filter ", id, " (", filter_name,
           "), which this HDF5 library cannot decode; rewrite the file with gzip (deflate) or no compression");
    }
  }
  return dataset;
}

// Element class and size of a dataset.
void expect_integer(hid_t dataset, const std::string& path, const char* name) {
  h5::Handle type(h5::check(H5Dget_type(dataset), where(path, name) + ": type"));
  if (H5Tget_class(type) != H5T_INTEGER)
    fail(where(path, name), ": element type is ", h5::describe_type(dataset), ", expected an integer type");
}

void expect_type(hid_t dataset, const std::string& path, const char* name, bool is_signed, size_t bytes) {
  h5::Handle type(h5::check(H5Dget_type(dataset), where(path, name) + ": type"));
  const bool ok = H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == bytes &&
                  (H5Tget_sign(type) != H5T_SGN_NONE) == is_signed;
  if (!ok)
    fail(where(path, name), ": element type is ", h5::describe_type(dataset), ", expected ", is_signed ? "int" : "uint",
         bytes * 8);
}

void expect_dims(hid_t dataset, const std::string& path, const char* name, const std::vector<hsize_t>& expected) {
  const std::vector<hsize_t> d = h5::dims(dataset);
  if (d != expected) {
    auto text = [](const std::vector<hsize_t>& v) {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
      return s + "]";
    };
    fail(where(path, name), ": shape ", text(d), ", expected ", text(expected));
  }
}

uint64_t chunk_height(hid_t dataset) {
  h5::Handle dcpl(h5::check(H5Dget_create_plist(dataset), "H5Dget_create_plist"));
  if (H5Pget_layout(dcpl) != H5D_CHUNKED) return kDefaultBlockRows;
  hsize_t chunk[2] = {0, 0};
  if (H5Pget_chunk(dcpl, 2, chunk) < 1 || chunk[0] == 0) return kDefaultBlockRows;
  return chunk[0];
}

// The codec of a dataset whose chunks are whole [block_rows, width] row blocks of little-endian integers
// filtered by at most shuffle then deflate (what ShardWriter writes); nullopt for anything else (read through
// H5Dread, which converts, e.g., big-endian values that raw bytes would misread).
std::optional<RawCodec> raw_codec(hid_t dataset, uint64_t block_rows, uint64_t width, size_t element_size) {
  if constexpr (std::endian::native != std::endian::little) return std::nullopt;
  if (element_size > 1) {
    h5::Handle type(h5::check(H5Dget_type(dataset), "H5Dget_type"));
    if (H5Tget_order(type) != H5T_ORDER_LE) return std::nullopt;
  }
  h5::Handle dcpl(h5::check(H5Dget_create_plist(dataset), "H5Dget_create_plist"));
  if (H5Pget_layout(dcpl) != H5D_CHUNKED) return std::nullopt;
  const int rank = static_cast<int>(h5::dims(dataset).size());
  hsize_t chunk[2] = {0, 0};
  if (H5Pget_chunk(dcpl, 2, chunk) != rank || chunk[0] != block_rows || (rank == 2 && chunk[1] != width))
    return std::nullopt;
  RawCodec codec;
  codec.element_size = element_size;
  codec.width = width;
  const int n = H5Pget_nfilters(dcpl);
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0;
    size_t cd_count = 0;
    const H5Z_filter_t id =
        H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &cd_count, nullptr, 0, nullptr, nullptr);
    if (id == H5Z_FILTER_SHUFFLE && codec.shuffle_index < 0 && codec.deflate_index < 0) {
      codec.shuffle_index = i;
    } else if (id == H5Z_FILTER_DEFLATE && codec.deflate_index < 0) {
      codec.deflate_index = i;
    } else {
      return std::nullopt;
    }
  }
  return codec;
}

// Undoes the filters of one raw chunk: inflate, then unshuffle. `expected` is the chunk's full size.
std::vector<uint8_t> decode_raw_chunk(std::vector<uint8_t> raw, uint32_t skipped, const RawCodec& codec,
                                      size_t expected, const std::string& what) {
  if (codec.deflate_index >= 0 && (skipped & (1u << codec.deflate_index)) == 0) {
    std::vector<uint8_t> out(expected);
    uLongf size = static_cast<uLongf>(expected);
    const int rc = uncompress(out.data(), &size, raw.data(), static_cast<uLong>(raw.size()));
    if (rc != Z_OK || size != expected) fail(what, ": corrupt compressed chunk (zlib error ", rc, ")");
    raw.swap(out);
  }
  if (raw.size() != expected) fail(what, ": chunk holds ", raw.size(), " bytes, expected ", expected);
  const size_t e = codec.element_size;
  if (codec.shuffle_index >= 0 && (skipped & (1u << codec.shuffle_index)) == 0 && e > 1) {
    std::vector<uint8_t> out(expected);
    const size_t n = expected / e;
    for (size_t b = 0; b < e; ++b) {
      const uint8_t* plane = raw.data() + b * n;
      for (size_t i = 0; i < n; ++i) out[i * e + b] = plane[i];
    }
    raw.swap(out);
  }
  return raw;
}

// Reads rows [first, first + rows) of a 1-D or 2-D dataset into `out` (converted to mem_type).
void read_rows(hid_t dataset, hid_t mem_type, uint64_t first, uint64_t rows, uint64_t width, int rank, void* out,
               const std::string& what) {
  h5::Handle file_space(h5::check(H5Dget_space(dataset), what + ": H5Dget_space"));
  hsize_t start[2] = {first, 0};
  hsize_t count[2] = {rows, width};
  h5::check(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, nullptr, count, nullptr), what + ": hyperslab");
  h5::Handle mem_space(h5::check(H5Screate_simple(rank, count, nullptr), what + ": memory space"));
  h5::check(H5Dread(dataset, mem_type, mem_space, file_space, H5P_DEFAULT, out),
            what + ": read of rows " + std::to_string(first) + ".." + std::to_string(first + rows - 1) + " failed");
}

// The NVIDIA shard files of `dir`, sorted (hidden files left out).
std::vector<std::string> nvidia_shard_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".hdf5" || ext == ".h5") && e.path().filename().string()[0] != '.')
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

ShardFormat check_data_directory(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail(dir, ": data directory does not exist");
  if (!fs::is_directory(dir, ec)) fail(dir, ": not a directory: give the directory that holds the shards");
  check_not_half_written(dir);
  if (fs::exists(fs::path(dir) / kManifestName, ec)) return ShardFormat::kElectra;
  if (nvidia_shard_files(dir).empty())
    fail(dir,
         ": no shards: neither manifest.json (electra-preprocess's shards) nor *.hdf5/*.h5 files (NVIDIA BERT "
         "shards)");
  return ShardFormat::kNvidia;
}

ShardDataset::ShardDataset(const DatasetOptions& options) : options_(options) {
  h5::quiet_errors();
  if (options_.seq_length <= 0) fail("seq_length must be positive");
  format_ = check_data_directory(options_.data_dir);
  if (format_ == Format::kElectra)
    open_electra((fs::path(options_.data_dir) / kManifestName).string());
  else
    open_nvidia();
  shard_begin_.push_back(0);
  for (const auto& s : shards_) shard_begin_.push_back(shard_begin_.back() + s->rows);
  num_examples_ = shard_begin_.back();
  if (num_examples_ == 0) fail(options_.data_dir, ": the data holds no examples");
  if (options_.cache_bytes == 0) options_.cache_bytes = 1;
  if (options_.max_open_files < 1) options_.max_open_files = 1;
}

ShardDataset::~ShardDataset() = default;

nlohmann::json ShardDataset::identity() const {
  Fnv1a shard_list;  // each shard's file name, rows and CRC-32
  for (const auto& shard : shards_) {
    const std::string name = fs::path(shard->path).filename().string();
    shard_list.add(name.data(), name.size() + 1).add_value(shard->rows).add_value(shard->crc32);
  }
  return {{"format", format_ == Format::kElectra ? "electra-mpi" : "nvidia"},
          {"examples", num_examples_},
          {"shards", shards_.size()},
          {"seq_length", seq_length_},
          {"packed", packed_},
          {"vocab_hash", vocab_->hash()},
          {"shard_list_hash", shard_list.hex()}};
}

void ShardDataset::open_electra(const std::string& manifest_path) {
  const Manifest manifest = Manifest::load(manifest_path);
  if (manifest.max_seq_length != options_.seq_length)
    fail(manifest_path, ": the data has max_seq_length ", manifest.max_seq_length, " but ", options_.seq_length,
         " was asked for (electra-train: config key 'data.seq_length'; electra-eval: --seq-length)");
  seq_length_ = manifest.max_seq_length;
  packed_ = manifest.pack;
  lower_case_ = manifest.lower_case;
  const std::string vocab_path =
      options_.vocab_path.empty() ? (fs::path(options_.data_dir) / kVocabFileName).string() : options_.vocab_path;
  vocab_ = text::Vocab::load(vocab_path);
  if (vocab_->hash() != manifest.vocab_hash || vocab_->size() != manifest.vocab_size)
    fail(vocab_path, ": vocabulary mismatch: its hash/size ", vocab_->hash(), "/", vocab_->size(), " differ from ",
         manifest_path, " (", manifest.vocab_hash, "/", manifest.vocab_size, ")");
  for (const ShardInfo& info : manifest.shards) {
    auto shard = std::make_unique<Shard>();
    shard->path = (fs::path(options_.data_dir) / info.file).string();
    shard->crc32 = info.crc32;
    if (!fs::exists(shard->path)) fail(shard->path, ": shard listed in ", manifest_path, " does not exist");
    // A FIFO or a device would hang the checksum or the HDF5 open instead of failing.
    if (!fs::is_regular_file(shard->path))
      fail(shard->path, ": shard listed in ", manifest_path, " is not a regular file");
    if (options_.verify_checksums) {
      const uint32_t crc = file_crc32(shard->path);
      if (crc != info.crc32)
        fail(shard->path, ": CRC-32 ", crc32_hex(crc), " differs from the manifest's ", crc32_hex(info.crc32),
             " (corrupt or replaced file)");
    }
    validate_electra_shard(*shard, info.rows, manifest.vocab_hash, manifest.vocab_size, manifest_path);
    shards_.push_back(std::move(shard));
  }
  ELECTRA_LOG(info) << "loader: " << options_.data_dir << ": " << shards_.size() << " electra-mpi shards, "
                    << manifest.total_rows << (packed_ ? " packed rows" : " examples") << ", seq " << seq_length_
                    << ", vocab " << vocab_->size();
}

void ShardDataset::validate_electra_shard(Shard& shard, uint64_t expected_rows, uint64_t vocab_hash,
                                          uint64_t vocab_size, const std::string& manifest_path) {
  const std::string& path = shard.path;
  h5::Handle file = h5::open_read_only(path);
  const int64_t version = h5::read_attribute_i64(file, "format_version", path);
  const bool has_example_ids = h5::has_dataset(file, kExampleIds);
  // A directory is packed or not as a whole: mixing would give rows whose attention and positions the
  // manifest does not describe (and a packed shard read as unpacked trains across example boundaries).
  if (has_example_ids != packed_)
    fail(path, ": ", has_example_ids ? "has" : "lacks", " dataset '", kExampleIds, "' but ", manifest_path,
         " says pack ", packed_ ? "true" : "false", "; packed and unpacked shards cannot share a data directory");
  if (version != shard_format_version(packed_))
    fail(path, ": format_version ", version, " is not supported", packed_ ? " for packed shards" : "", " (expected ",
         shard_format_version(packed_), ")");
  const int64_t max_len = h5::read_attribute_i64(file, "max_seq_length", path);
  if (max_len != seq_length_)
    fail(path, ": attribute max_seq_length is ", max_len, ", the manifest says ", seq_length_);
  const uint64_t hash = h5::read_attribute_u64(file, "vocab_hash", path);
  const uint64_t size = h5::read_attribute_u64(file, "vocab_size", path);
  if (hash != vocab_hash || size != vocab_size)
    fail(path, ": vocabulary mismatch: attributes vocab_hash/vocab_size ", hash, "/", size,
         " differ from the manifest's ", vocab_hash, "/", vocab_size);
  shard.ids_uint16 = shard_ids_are_uint16(vocab_size);
  const hsize_t rows = expected_rows, width = static_cast<hsize_t>(seq_length_);
  h5::Handle ids = open_dataset(file, path, kInputIds);
  expect_type(ids, path, kInputIds, !shard.ids_uint16, shard.ids_uint16 ? 2 : 4);
  h5::Handle segments = open_dataset(file, path, kSegmentIds);
  expect_type(segments, path, kSegmentIds, false, 1);
  h5::Handle lengths = open_dataset(file, path, kLengths);
  expect_type(lengths, path, kLengths, false, 2);
  expect_dims(ids, path, kInputIds, {rows, width});
  expect_dims(segments, path, kSegmentIds, {rows, width});
  expect_dims(lengths, path, kLengths, {rows});
  shard.rows = expected_rows;
  shard.block_rows = chunk_height(ids);
  const auto c_ids = raw_codec(ids, shard.block_rows, width, shard.ids_uint16 ? 2 : 4);
  const auto c_segments = raw_codec(segments, shard.block_rows, width, 1);
  const auto c_lengths = raw_codec(lengths, shard.block_rows, 1, 2);
  if (packed_) {
    h5::Handle example_ids = open_dataset(file, path, kExampleIds);
    expect_type(example_ids, path, kExampleIds, false, 1);
    expect_dims(example_ids, path, kExampleIds, {rows, width});
    const auto c_example_ids = raw_codec(example_ids, shard.block_rows, width, 1);
    if (c_ids && c_segments && c_lengths && c_example_ids)
      shard.codecs = {*c_ids, *c_segments, *c_lengths, *c_example_ids};
  } else if (c_ids && c_segments && c_lengths) {
    shard.codecs = {*c_ids, *c_segments, *c_lengths};
  }
}

void ShardDataset::open_nvidia() {
  const std::vector<std::string> files = nvidia_shard_files(options_.data_dir);
  if (files.empty()) fail(options_.data_dir, ": no *.hdf5 or *.h5 files");
  if (options_.vocab_path.empty())
    fail(options_.data_dir,
         ": no manifest.json, so this is read as NVIDIA BERT HDF5 shards, which need a vocabulary: "
         "data.vocab (electra-train) or --vocab (electra-eval)");
  vocab_ = text::Vocab::load(options_.vocab_path);
  seq_length_ = options_.seq_length;
  for (const std::string& path : files) {
    auto shard = std::make_unique<Shard>();
    shard->path = path;
    validate_nvidia_shard(*shard);
    shards_.push_back(std::move(shard));
  }
  uint64_t total = 0;
  for (const auto& s : shards_) total += s->rows;
  ELECTRA_LOG(info) << "loader: " << options_.data_dir << ": " << shards_.size() << " NVIDIA BERT shards, " << total
                    << " examples, seq " << seq_length_ << ", vocab " << vocab_->size();
  if (options_.verify_checksums) {
    ELECTRA_LOG(warning) << "loader: " << options_.data_dir
                         << ": NVIDIA BERT shards carry no checksums (no manifest.json): data.verify_checksums has "
                            "nothing to compare";
  }
}

void ShardDataset::validate_nvidia_shard(Shard& shard) {
  const std::string& path = shard.path;
  h5::Handle file = h5::open_read_only(path);
  const char* names[] = {kNvInputIds, kNvInputMask, kNvSegmentIds, kNvPositions, kNvMaskedIds, kNvNsp};
  std::vector<h5::Handle> ds;
  for (const char* name : names) {
    ds.push_back(open_dataset(file, path, name));
    expect_integer(ds.back(), path, name);
  }
  const std::vector<hsize_t> d = h5::dims(ds[0]);
  if (d.size() != 2) fail(where(path, kNvInputIds), ": expected 2 dimensions, found ", d.size());
  if (d[1] != static_cast<hsize_t>(seq_length_))
    fail(where(path, kNvInputIds), ": the data has sequence length ", d[1], " but ", seq_length_,
         " was asked for (electra-train: config key 'data.seq_length'; electra-eval: --seq-length)");
  const hsize_t rows = d[0];
  expect_dims(ds[1], path, kNvInputMask, {rows, d[1]});
  expect_dims(ds[2], path, kNvSegmentIds, {rows, d[1]});
  const std::vector<hsize_t> p = h5::dims(ds[3]);
  if (p.size() != 2 || p[0] != rows) fail(where(path, kNvPositions), ": expected shape [", rows, ", P]");
  expect_dims(ds[4], path, kNvMaskedIds, p);
  expect_dims(ds[5], path, kNvNsp, {rows});
  shard.rows = rows;
  shard.predictions = static_cast<int>(p[1]);
  shard.block_rows = chunk_height(ds[0]);
}

ShardDataset::Shard& ShardDataset::open_shard(size_t shard_index) {
  Shard& shard = *shards_[shard_index];
  if (shard.file.valid()) {
    open_lru_.remove(shard_index);
    open_lru_.push_front(shard_index);
    return shard;
  }
  while (static_cast<int>(open_lru_.size()) >= options_.max_open_files) {
    Shard& victim = *shards_[open_lru_.back()];
    victim.datasets.clear();
    victim.file.reset();
    open_lru_.pop_back();
  }
  shard.file = h5::open_read_only(shard.path);
  if (format_ == Format::kElectra) {
    for (const char* name : {kInputIds, kSegmentIds, kLengths})
      shard.datasets.push_back(open_dataset(shard.file, shard.path, name));
    if (packed_) shard.datasets.push_back(open_dataset(shard.file, shard.path, kExampleIds));
  } else {
    for (const char* name : {kNvInputIds, kNvInputMask, kNvSegmentIds, kNvPositions, kNvMaskedIds, kNvNsp})
      shard.datasets.push_back(open_dataset(shard.file, shard.path, name));
  }
  open_lru_.push_front(shard_index);
  return shard;
}

// Reads and decodes one block of rows through HDF5's own filter pipeline (NVIDIA shards, or shards
// with filters we do not decode ourselves). Called with mutex_ held.
std::shared_ptr<ShardDataset::Chunk> ShardDataset::read_chunk_hdf5(Shard& shard, uint64_t first, uint64_t rows) {
  const uint64_t L = static_cast<uint64_t>(seq_length_);
  auto chunk = std::make_shared<Chunk>();
  chunk->rows = rows;
  const std::string& path = shard.path;
  if (format_ == Format::kElectra) {
    if (shard.ids_uint16) {
      chunk->ids16.resize(rows * L);
      read_rows(shard.datasets[0], H5T_NATIVE_UINT16, first, rows, L, 2, chunk->ids16.data(), where(path, kInputIds));
    } else {
      chunk->ids32.resize(rows * L);
      read_rows(shard.datasets[0], H5T_NATIVE_INT32, first, rows, L, 2, chunk->ids32.data(), where(path, kInputIds));
    }
    chunk->segments.resize(rows * L);
    read_rows(shard.datasets[1], H5T_NATIVE_UINT8, first, rows, L, 2, chunk->segments.data(), where(path, kSegmentIds));
    chunk->lengths.resize(rows);
    read_rows(shard.datasets[2], H5T_NATIVE_UINT16, first, rows, 1, 1, chunk->lengths.data(), where(path, kLengths));
    if (packed_) {
      chunk->example_ids.resize(rows * L);
      read_rows(shard.datasets[3], H5T_NATIVE_UINT8, first, rows, L, 2, chunk->example_ids.data(),
                where(path, kExampleIds));
    }
    return chunk;
  }

  const int64_t vocab_size = static_cast<int64_t>(vocab_->size());
  const int P = shard.predictions;
  std::vector<int32_t> mask(rows * L), segments(rows * L), positions(rows * static_cast<uint64_t>(P)),
      masked(rows * static_cast<uint64_t>(P)), nsp(rows);
  chunk->ids32.resize(rows * L);
  read_rows(shard.datasets[0], H5T_NATIVE_INT32, first, rows, L, 2, chunk->ids32.data(), where(path, kNvInputIds));
  read_rows(shard.datasets[1], H5T_NATIVE_INT32, first, rows, L, 2, mask.data(), where(path, kNvInputMask));
  read_rows(shard.datasets[2], H5T_NATIVE_INT32, first, rows, L, 2, segments.data(), where(path, kNvSegmentIds));
  if (P > 0) {
    read_rows(shard.datasets[3], H5T_NATIVE_INT32, first, rows, static_cast<uint64_t>(P), 2, positions.data(),
              where(path, kNvPositions));
    read_rows(shard.datasets[4], H5T_NATIVE_INT32, first, rows, static_cast<uint64_t>(P), 2, masked.data(),
              where(path, kNvMaskedIds));
  }
  read_rows(shard.datasets[5], H5T_NATIVE_INT32, first, rows, 1, 1, nsp.data(), where(path, kNvNsp));
  chunk->segments.resize(rows * L);
  chunk->lengths.resize(rows);
  chunk->nsp.resize(rows);
  const int32_t pad = vocab_->pad_id();
  std::vector<uint8_t> restored(L);  // slots whose token came from masked_lm_ids: errors name that dataset
  for (uint64_t r = 0; r < rows; ++r) {
    int32_t* ids = chunk->ids32.data() + r * L;
    std::fill(restored.begin(), restored.end(), uint8_t{0});
    uint64_t length = 0;
    for (uint64_t c = 0; c < L; ++c) length += mask[r * L + c] != 0 ? 1 : 0;
    for (uint64_t c = 0; c < length; ++c)
      if (mask[r * L + c] == 0)
        fail(where(path, kNvInputMask), ": row ", first + r, " is not a prefix of ones followed by zeros");
    for (int j = 0; j < P; ++j) {
      const int32_t pos = positions[r * static_cast<uint64_t>(P) + static_cast<uint64_t>(j)];
      if (pos == 0) break;  // NVIDIA pads masked_lm_positions with 0 ([CLS] is never masked)
      if (pos < 0 || static_cast<uint64_t>(pos) >= length)
        fail(where(path, kNvPositions), ": row ", first + r, " has position ", pos, " outside the ", length,
             " real tokens");
      ids[pos] = masked[r * static_cast<uint64_t>(P) + static_cast<uint64_t>(j)];
      restored[static_cast<uint64_t>(pos)] = 1;
    }
    for (uint64_t c = 0; c < L; ++c) {
      if (c >= length) ids[c] = pad;
      if (ids[c] < 0 || ids[c] >= vocab_size)
        fail(where(path, restored[c] ? kNvMaskedIds : kNvInputIds), ": row ", first + r, " slot ", c,
             " holds token id ", ids[c], " outside the vocabulary of ", vocab_size,
             // HDF5 clamps a wider integer to the int32 it is read as.
             ids[c] == INT32_MAX || ids[c] == INT32_MIN ? " (or beyond: a wider value reads clamped to int32)" : "");
      const int32_t seg = c < length ? segments[r * L + c] : 0;
      if (seg < 0 || seg > 1) fail(where(path, kNvSegmentIds), ": row ", first + r, " has segment id ", seg);
      chunk->segments[r * L + c] = static_cast<uint8_t>(seg);
    }
    chunk->lengths[r] = static_cast<uint16_t>(length);
    if (nsp[r] != 0 && nsp[r] != 1)  // checked before the narrowing: 300 would read as 44
      fail(where(path, kNvNsp), ": row ", first + r, " has label ", nsp[r], " (next-sentence labels are 0 or 1)");
    chunk->nsp[r] = static_cast<int8_t>(nsp[r]);
  }
  return chunk;
}

void ShardDataset::check_electra_chunk(const Shard& shard, const Chunk& chunk, uint64_t first) const {
  const uint64_t L = static_cast<uint64_t>(seq_length_);
  const int64_t vocab_size = static_cast<int64_t>(vocab_->size());
  const int64_t cls = vocab_->cls_id(), sep = vocab_->sep_id(), pad = vocab_->pad_id();
  auto token = [&](uint64_t r, uint64_t c) -> int64_t {
    return shard.ids_uint16 ? chunk.ids16[r * L + c] : chunk.ids32[r * L + c];
  };
  for (uint64_t r = 0; r < chunk.rows; ++r) {
    const uint64_t length = chunk.lengths[r];
    if (length > L || length < 2)
      fail(where(shard.path, kLengths), ": row ", first + r, " has length ", length, " outside [2, ", L, "]");
    for (uint64_t c = 0; c < L; ++c) {
      const int64_t id = token(r, c);
      if (id < 0 || id >= vocab_size)
        fail(where(shard.path, kInputIds), ": row ", first + r, " slot ", c, " holds token id ", id,
             " outside the vocabulary of ", vocab_size);
      // The preprocessor writes segments 0 and 1 (padding 0), as the NVIDIA path checks above.
      if (chunk.segments[r * L + c] > 1)
        fail(where(shard.path, kSegmentIds), ": row ", first + r, " has segment id ", int{chunk.segments[r * L + c]},
             " at slot ", c, " (segment ids are 0 or 1)");
      // Lengths that disagree with the ids would make padding real tokens (or real tokens padding).
      if (c >= length && id != pad)
        fail(where(shard.path, kInputIds), ": row ", first + r, " slot ", c, " holds token id ", id,
             " past the row's length ", length, " (", kLengths, "): padding must be [PAD] (", pad, ")");
    }
    // Every row is [CLS] ... [SEP] (the example builder's), packed rows too: their last example ends the row.
    if (token(r, 0) != cls)
      fail(where(shard.path, kInputIds), ": row ", first + r, " starts with token id ", token(r, 0), ", not [CLS] (",
           cls, ")");
    if (token(r, length - 1) != sep)
      fail(where(shard.path, kInputIds), ": row ", first + r, " ends (at its length ", length, ") with token id ",
           token(r, length - 1), ", not [SEP] (", sep, ")");
    if (!packed_) continue;
    // Packed rows: examples 1, 2, ... one after another over the `length` real tokens, 0 after; each example
    // is [CLS] ... [SEP] (what the example builder makes), so positions and attention blocks are well formed.
    const uint8_t* ex = chunk.example_ids.data() + r * L;
    const std::string what = where(shard.path, kExampleIds);
    for (uint64_t c = 0; c < L; ++c) {
      const int prev = c == 0 ? 0 : ex[c - 1];
      if (c >= length) {
        if (ex[c] != 0)
          fail(what, ": row ", first + r, " has example id ", int{ex[c]}, " at slot ", c, ", past its length ", length,
               " (padding must be 0)");
        continue;
      }
      if (ex[c] != prev && ex[c] != prev + 1)
        fail(what, ": row ", first + r, " has example id ", int{ex[c]}, " at slot ", c, " after ", prev,
             " (ids must run 1, 2, ... without gaps over the ", length, " real tokens)");
      if (ex[c] == prev && token(r, c) == cls)  // two examples under one id would attend to each other
        fail(what, ": row ", first + r, " has [CLS] at slot ", c, " inside example ", prev,
             " (each example has an id of its own)");
      if (ex[c] != prev) {  // an example starts here
        if (token(r, c) != cls)
          fail(what, ": row ", first + r, " example ", int{ex[c]}, " starts at slot ", c, " with token ", token(r, c),
               ", not [CLS]");
        if (c > 0 && token(r, c - 1) != sep)
          fail(what, ": row ", first + r, " example ", prev, " ends at slot ", c - 1, " with token ", token(r, c - 1),
               ", not [SEP]");
      }
    }
    if (token(r, length - 1) != sep)
      fail(what, ": row ", first + r, " example ", int{ex[length - 1]}, " ends at slot ", length - 1, " with token ",
           token(r, length - 1), ", not [SEP]");
  }
}

// Compressed bytes of one chunk of each dataset, fetched under the lock and decoded outside it.
struct ShardDataset::RawChunk {
  std::vector<uint8_t> bytes[4];
  uint32_t skipped[4] = {0, 0, 0, 0};
};

std::shared_ptr<const ShardDataset::Chunk> ShardDataset::load_chunk(size_t shard_index, uint64_t chunk_index) {
  h5::quiet_errors();  // this thread's HDF5 error stack
  const ChunkKey key = (static_cast<uint64_t>(shard_index) << 40) | chunk_index;
  Shard& shard = *shards_[shard_index];
  const uint64_t first = chunk_index * shard.block_rows;
  const uint64_t rows = std::min(shard.block_rows, shard.rows - first);
  std::shared_ptr<Chunk> chunk;
  RawChunk raw;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = cache_.find(key); it != cache_.end()) {  // another thread loaded it meanwhile
      ++stats_.hits;
      return it->second.chunk;
    }
    ++stats_.misses;
    open_shard(shard_index);
    if (shard.codecs.empty()) {
      chunk = read_chunk_hdf5(shard, first, rows);
    } else {
      const char* names[4] = {kInputIds, kSegmentIds, kLengths, kExampleIds};
      for (int d = 0; d < static_cast<int>(shard.codecs.size()); ++d) {
        const hsize_t offset[2] = {first, 0};
        hsize_t size = 0;
        const std::string what = where(shard.path, names[d]) + ": chunk at row " + std::to_string(first);
        h5::check(H5Dget_chunk_storage_size(shard.datasets[static_cast<size_t>(d)], offset, &size), what);
        if (size == 0) fail(what, ": chunk not stored");
        // A damaged chunk index can claim gigabytes; deflate never grows a chunk beyond compressBound.
        const RawCodec& codec = shard.codecs[static_cast<size_t>(d)];
        const uLong plain = static_cast<uLong>(shard.block_rows * codec.width * codec.element_size);
        if (size > compressBound(plain) + 64)
          fail(what, ": stored as ", size, " bytes, more than its ", plain,
               " bytes can take compressed (a damaged chunk index)");
        raw.bytes[d].resize(size);
        h5::check(H5Dread_chunk(shard.datasets[static_cast<size_t>(d)], H5P_DEFAULT, offset, &raw.skipped[d],
                                raw.bytes[d].data()),
                  what + ": H5Dread_chunk");
      }
    }
  }

  if (!chunk) {  // inflate + unshuffle in parallel with other readers
    const uint64_t L = static_cast<uint64_t>(seq_length_), block = shard.block_rows;
    const char* names[4] = {kInputIds, kSegmentIds, kLengths, kExampleIds};
    std::vector<uint8_t> plain[4];
    for (int d = 0; d < static_cast<int>(shard.codecs.size()); ++d) {
      const RawCodec& codec = shard.codecs[static_cast<size_t>(d)];
      plain[d] =
          decode_raw_chunk(std::move(raw.bytes[d]), raw.skipped[d], codec, block * codec.width * codec.element_size,
                           where(shard.path, names[d]) + ": chunk at row " + std::to_string(first));
    }
    chunk = std::make_shared<Chunk>();
    chunk->rows = rows;
    if (shard.ids_uint16) {
      chunk->ids16.resize(rows * L);
      std::memcpy(chunk->ids16.data(), plain[0].data(), rows * L * 2);
    } else {
      chunk->ids32.resize(rows * L);
      std::memcpy(chunk->ids32.data(), plain[0].data(), rows * L * 4);
    }
    chunk->segments.assign(plain[1].begin(), plain[1].begin() + static_cast<std::ptrdiff_t>(rows * L));
    chunk->lengths.resize(rows);
    std::memcpy(chunk->lengths.data(), plain[2].data(), rows * 2);
    if (packed_) chunk->example_ids.assign(plain[3].begin(), plain[3].begin() + static_cast<std::ptrdiff_t>(rows * L));
  }
  if (format_ == Format::kElectra) check_electra_chunk(shard, *chunk, first);

  std::lock_guard<std::mutex> lock(mutex_);
  if (auto it = cache_.find(key); it != cache_.end()) return it->second.chunk;  // decoded twice: keep the first
  const uint64_t bytes = chunk->bytes();
  while (!chunk_lru_.empty() && cache_used_ + bytes > options_.cache_bytes) {
    auto victim = cache_.find(chunk_lru_.back());
    cache_used_ -= victim->second.chunk->bytes();
    cache_.erase(victim);
    chunk_lru_.pop_back();
  }
  chunk_lru_.push_front(key);
  cache_.emplace(key, CacheEntry{chunk, chunk_lru_.begin()});
  cache_used_ += bytes;
  return chunk;
}

void ShardDataset::check_every_row() {
  for (size_t s = 0; s < shards_.size(); ++s) {
    const uint64_t block = shards_[s]->block_rows, rows = shards_[s]->rows;
    for (uint64_t chunk = 0; chunk * block < rows; ++chunk) load_chunk(s, chunk);
  }
}

void ShardDataset::read(uint64_t index, int32_t* ids, int32_t* segments, int* length, int32_t* next_sentence_label,
                        int32_t* example_ids) {
  ELECTRA_CHECK(index < num_examples_, "example index ", index, " out of range ", num_examples_);
  const size_t s =
      static_cast<size_t>(std::upper_bound(shard_begin_.begin(), shard_begin_.end(), index) - shard_begin_.begin() - 1);
  const uint64_t row = index - shard_begin_[s];
  const uint64_t block = shards_[s]->block_rows;
  const ChunkKey key = (static_cast<uint64_t>(s) << 40) | (row / block);
  std::shared_ptr<const Chunk> chunk;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = cache_.find(key); it != cache_.end()) {
      ++stats_.hits;
      chunk_lru_.splice(chunk_lru_.begin(), chunk_lru_, it->second.lru);
      chunk = it->second.chunk;
    }
  }
  if (!chunk) chunk = load_chunk(s, row / block);
  const uint64_t r = row % block;
  const uint64_t L = static_cast<uint64_t>(seq_length_);
  if (!chunk->ids16.empty()) {
    for (uint64_t c = 0; c < L; ++c) ids[c] = chunk->ids16[r * L + c];
  } else {
    std::copy_n(chunk->ids32.data() + r * L, L, ids);
  }
  for (uint64_t c = 0; c < L; ++c) segments[c] = chunk->segments[r * L + c];
  *length = chunk->lengths[r];
  if (example_ids != nullptr) {
    if (!chunk->example_ids.empty()) {
      for (uint64_t c = 0; c < L; ++c) example_ids[c] = chunk->example_ids[r * L + c];
    } else {
      for (uint64_t c = 0; c < L; ++c) example_ids[c] = c < static_cast<uint64_t>(*length) ? 1 : 0;
    }
  }
  *next_sentence_label = chunk->nsp.empty() ? -1 : chunk->nsp[r];
}

ShardDataset::CacheStats ShardDataset::cache_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  CacheStats s = stats_;
  s.bytes = cache_used_;
  s.chunks = cache_.size();
  return s;
}

}  // namespace electra::data
