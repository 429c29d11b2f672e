// Start-up validation and read-time errors: each names the file (and the dataset).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "data_pipeline/loader/loader.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "tests/data/test_util.h"

namespace electra::data {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;

constexpr int kSeq = 32;

struct Broken {
  TempDir tmp{"broken"};
  text::Vocab vocab = testing::corpus_vocab();
  std::string dir = tmp / "data";
  std::string shard = dir + "/shard-1.h5";
  Broken() { testing::write_synthetic_dataset(dir, vocab, {100, 90, 80}, kSeq, 16); }
  LoaderOptions options() const {
    LoaderOptions o;
    o.data_dir = dir;
    o.global_batch_size = 10;
    o.seq_length = kSeq;
    return o;
  }
};

// The message of the error Loader's constructor throws ("" when none).
std::string construction_error(const LoaderOptions& o) {
  try {
    Loader loader(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_mentions(const std::string& message, std::initializer_list<std::string> parts) {
  EXPECT_FALSE(message.empty()) << "no error";
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos) << message << "\nlacks: " << part;
}

TEST(ShardErrors, IntactDataLoads) {
  Broken b;
  EXPECT_EQ(construction_error(b.options()), "");
}

TEST(ShardErrors, TruncatedShard) {
  Broken b;
  fs::resize_file(b.shard, fs::file_size(b.shard) / 2);
  expect_mentions(construction_error(b.options()), {b.shard, "truncated"});
}

TEST(ShardErrors, NotHdf5) {
  Broken b;
  std::ofstream(b.shard, std::ios::trunc) << "not an hdf5 file";
  expect_mentions(construction_error(b.options()), {b.shard});
}

TEST(ShardErrors, MissingShardFile) {
  Broken b;
  fs::remove(b.shard);
  expect_mentions(construction_error(b.options()), {b.shard, "does not exist"});
}

// A listed shard that is a FIFO (or a link to a device) is refused; reading it hung set-up.
TEST(ShardErrors, ShardThatIsNotARegularFile) {
  Broken b;
  fs::remove(b.shard);
  ASSERT_EQ(::mkfifo(b.shard.c_str(), 0644), 0);
  LoaderOptions o = b.options();
  o.verify_checksums = true;
  expect_mentions(construction_error(o), {b.shard, "is not a regular file"});
  fs::remove(b.shard);
  fs::create_symlink("/dev/zero", b.shard);
  expect_mentions(construction_error(o), {b.shard, "is not a regular file"});
  // The manifest and the directory's vocab.txt as FIFOs: refused, where opening them waited for a writer.
  for (const std::string name : {"manifest.json", "vocab.txt"}) {
    Broken fifo;
    const std::string path = fifo.dir + "/" + name;
    fs::remove(path);
    ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0);
    expect_mentions(construction_error(fifo.options()), {path, "not a regular file"});
  }
}

// What --data names must be a directory of shards; each refusal says which of the three it is not.
TEST(ShardErrors, DataDirectoryThatIsNoneOfShards) {
  Broken b;
  LoaderOptions o = b.options();
  o.data_dir = b.dir + "/missing";
  expect_mentions(construction_error(o), {o.data_dir, "does not exist"});
  o.data_dir = b.shard;
  expect_mentions(construction_error(o), {b.shard, "not a directory"});
  o.data_dir = b.tmp / "empty";
  fs::create_directories(o.data_dir);
  std::ofstream(o.data_dir + "/README.txt") << "no shards here\n";
  expect_mentions(construction_error(o), {o.data_dir, "no shards", "manifest.json", "*.hdf5/*.h5"});
  EXPECT_THROW(check_data_directory(o.data_dir), Error);
  EXPECT_EQ(check_data_directory(b.dir), ShardFormat::kElectra);
}

TEST(ShardErrors, MissingDataset) {
  Broken b;
  {
    h5::Handle f(H5Fopen(b.shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Ldelete(f, "lengths", H5P_DEFAULT), 0);
  }
  expect_mentions(construction_error(b.options()), {b.shard, "lengths", "missing"});
}

TEST(ShardErrors, WrongDtype) {
  Broken b;
  {
    h5::Handle f(H5Fopen(b.shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Ldelete(f, "segment_ids", H5P_DEFAULT), 0);
    hsize_t dims[2] = {90, kSeq};
    h5::Handle space(H5Screate_simple(2, dims, nullptr));
    h5::Handle ds(H5Dcreate2(f, "segment_ids", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_TRUE(ds.valid());
  }
  expect_mentions(construction_error(b.options()), {b.shard, "segment_ids", "int32", "uint8"});
}

TEST(ShardErrors, WrongShape) {
  Broken b;
  std::ifstream in(b.dir + "/manifest.json");
  nlohmann::json m = nlohmann::json::parse(in);
  m["shards"][1]["rows"] = 91;
  m["total_rows"] = 271;
  std::ofstream(b.dir + "/manifest.json", std::ios::trunc) << m.dump();
  expect_mentions(construction_error(b.options()), {b.shard, "input_ids", "[90, 32]", "[91, 32]"});
}

// A manifest that lists a shard twice (its rows would be read twice an epoch), one with text after its
// object, a crc32 other than 8 hex digits, a max_seq_length not positive: each refused naming the manifest.
TEST(ShardErrors, MalformedManifests) {
  Broken b;
  const std::string path = b.dir + "/manifest.json";
  std::ifstream in(path);
  const nlohmann::json good = nlohmann::json::parse(in);
  in.close();
  nlohmann::json twice = good;
  twice["shards"].push_back(good["shards"][0]);
  twice["total_rows"] = good["total_rows"].get<uint64_t>() + good["shards"][0]["rows"].get<uint64_t>();
  std::ofstream(path, std::ios::trunc) << twice.dump();
  expect_mentions(construction_error(b.options()), {path, "is listed twice"});
  std::ofstream(path, std::ios::trunc) << good.dump() << "}}";
  expect_mentions(construction_error(b.options()), {path, "not valid JSON"});
  for (const std::string crc : {"1ffffffffffffffffffff", "f1474dcf1", "1474dcf1zz", "-1", "1474dcf"}) {
    nlohmann::json bad_crc = good;
    bad_crc["shards"][0]["crc32"] = crc;
    std::ofstream(path, std::ios::trunc) << bad_crc.dump();
    expect_mentions(construction_error(b.options()), {path, "crc32 \"" + crc + "\" (expected 8 hex digits)"});
  }
  for (const int length : {0, -5}) {  // not "NVIDIA BERT shards (no manifest.json)", as electra-eval said
    nlohmann::json bad_length = good;
    bad_length["max_seq_length"] = length;
    std::ofstream(path, std::ios::trunc) << bad_length.dump();
    expect_mentions(construction_error(b.options()), {path, "max_seq_length " + std::to_string(length)});
  }
  std::ofstream(path, std::ios::trunc) << good.dump();
  EXPECT_EQ(construction_error(b.options()), "");
}

TEST(ShardErrors, VocabularyMismatch) {
  Broken b;
  std::vector<std::string> tokens = b.vocab.tokens();
  tokens.push_back("another");
  text::Vocab::from_tokens(tokens).save(b.tmp / "other-vocab.txt");
  LoaderOptions o = b.options();
  o.vocab_path = b.tmp / "other-vocab.txt";
  expect_mentions(construction_error(o), {"other-vocab.txt", "vocabulary mismatch", "manifest.json"});
  // A shard written with another vocabulary than the manifest's.
  {
    h5::Handle f(H5Fopen(b.shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    h5::write_attribute_u64(f, "vocab_hash", 12345);
  }
  expect_mentions(construction_error(b.options()), {b.shard, "vocab_hash", "12345"});
}

TEST(ShardErrors, ChecksumMismatchWhenVerifying) {
  Broken b;
  {
    std::fstream f(b.shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(b.shard) / 2));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(fs::file_size(b.shard) / 2));
    f.write(&c, 1);
  }
  LoaderOptions o = b.options();
  o.verify_checksums = true;
  expect_mentions(construction_error(o), {b.shard, "CRC-32"});
}

// Overwrites one element of a shard's dataset (row, and column for 2-D datasets) with `value`.
template <typename T>
void overwrite(const std::string& shard, const char* dataset, hsize_t row, std::optional<hsize_t> column, T value) {
  h5::Handle f(H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  h5::Handle ds(H5Dopen2(f, dataset, H5P_DEFAULT));
  h5::Handle space(H5Dget_space(ds));
  const hsize_t start[2] = {row, column.value_or(0)}, count[2] = {1, 1};
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
  h5::Handle mem(H5Screate_simple(1, count, nullptr));
  const hid_t type = sizeof(T) == 1 ? H5T_NATIVE_UINT8 : H5T_NATIVE_UINT16;
  ASSERT_GE(H5Dwrite(ds, type, mem, space, H5P_DEFAULT, &value), 0);
}

// Shapes and attributes stay fine, so the loader is built; the bad row fails the first batch that reads it
// (every row: the batch is the whole data), naming file, dataset and value, and the loader stays failed.
void expect_bad_row_fails_next(const Broken& b, std::initializer_list<std::string> parts) {
  LoaderOptions o = b.options();
  o.global_batch_size = 270;
  Loader loader(o);
  try {
    loader.next();
    FAIL() << "no error";
  } catch (const Error& e) {
    expect_mentions(e.what(), parts);
  }
  EXPECT_THROW(loader.next(), Error);
}

// Rewrites a uint16 dataset of `shard` as big-endian uint16 with the same values, chunking and filters.
void rewrite_big_endian(const std::string& shard, const char* dataset) {
  h5::Handle f(H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  std::vector<uint16_t> values;
  std::vector<hsize_t> dims;
  h5::Handle dcpl;
  {
    h5::Handle ds(H5Dopen2(f, dataset, H5P_DEFAULT));
    dims = h5::dims(ds);
    hsize_t n = 1;
    for (hsize_t d : dims) n *= d;
    values.resize(n);
    ASSERT_GE(H5Dread(ds, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    dcpl = h5::Handle(H5Dget_create_plist(ds));
  }
  ASSERT_GE(H5Ldelete(f, dataset, H5P_DEFAULT), 0);
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  h5::Handle ds(H5Dcreate2(f, dataset, H5T_STD_U16BE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  ASSERT_TRUE(ds.valid());
  ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
}

// Big-endian datasets (written by another tool) hold the same numbers: read as such, not as raw bytes.
TEST(ShardErrors, BigEndianDatasetsReadTheSameValues) {
  Broken b;
  rewrite_big_endian(b.shard, "input_ids");
  rewrite_big_endian(b.shard, "lengths");
  LoaderOptions o = b.options();
  o.shuffle = false;
  o.global_batch_size = 270;
  Loader loader(o);
  const Batch batch = loader.next();
  for (int i = 100; i < 190; ++i) {  // shard-1's rows
    const testing::Row want = testing::synthetic_row(static_cast<uint64_t>(i), kSeq, b.vocab.size());
    ASSERT_EQ(testing::unmasked_row(batch, i), want.ids) << "example " << i;
    int length = 0;
    for (int c = 0; c < kSeq; ++c) length += batch.input_mask[static_cast<size_t>(i * kSeq + c)] != 0;
    ASSERT_EQ(length, want.length) << "example " << i;
  }
}

// A damaged chunk index (here the v1 B-tree key of input_ids' chunk at row 16) that claims a stored size of
// 4 GB: refused naming the file, not a 4 GB allocation (a bare std::bad_alloc under a memory limit).
TEST(ShardErrors, ChunkIndexClaimingGigabytesFailsNext) {
  Broken b;
  hsize_t stored = 0;
  {
    h5::Handle f(H5Fopen(b.shard.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    h5::Handle ds(H5Dopen2(f, "input_ids", H5P_DEFAULT));
    const hsize_t offset[2] = {16, 0};
    ASSERT_GE(H5Dget_chunk_storage_size(ds, offset, &stored), 0);
  }
  std::string bytes;
  {
    std::ifstream in(b.shard, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string key(32, '\0');  // size (u32), filter mask (u32), then the chunk's offsets (u64 each)
  const auto size32 = static_cast<uint32_t>(stored);
  const uint64_t row = 16;
  std::memcpy(key.data(), &size32, 4);
  std::memcpy(key.data() + 8, &row, 8);
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos) << "no v1 B-tree key for the chunk";
  ASSERT_EQ(bytes.find(key, at + 1), std::string::npos);
  const uint32_t huge = 0xFFFFFFF0u;
  std::memcpy(bytes.data() + at, &huge, 4);
  std::ofstream(b.shard, std::ios::binary | std::ios::trunc) << bytes;
  expect_bad_row_fails_next(b, {b.shard, "input_ids", "chunk at row 16", "a damaged chunk index"});
}

TEST(ShardErrors, BadLengthFailsNextWithFileAndDataset) {
  Broken b;
  overwrite<uint16_t>(b.shard, "lengths", 5, std::nullopt, 999);
  expect_bad_row_fails_next(b, {b.shard, "lengths", "row 5", "999"});
}

TEST(ShardErrors, TokenIdOutsideVocabularyFailsNext) {
  Broken b;
  const auto outside = static_cast<uint16_t>(b.vocab.size() + 7);
  overwrite<uint16_t>(b.shard, "input_ids", 6, 3, outside);
  expect_bad_row_fails_next(b, {b.shard, "input_ids", "row 6 slot 3", std::to_string(outside)});
}

// Rows whose lengths disagree with their ids: a token past the length (padding that is not [PAD]), a length
// that takes in padding (the row then ends in [PAD], not [SEP]), a row that does not start with [CLS].
TEST(ShardErrors, LengthsThatDisagreeWithTheIdsFailNext) {
  {
    Broken b;  // shard-1's row 5 (example 105) has length 25 (synthetic_row)
    overwrite<uint16_t>(b.shard, "input_ids", 5, 28, 7);
    expect_bad_row_fails_next(
        b, {b.shard, "input_ids", "row 5 slot 28", "past the row's length 25", "padding must be [PAD]"});
  }
  {
    Broken b;
    overwrite<uint16_t>(b.shard, "lengths", 5, std::nullopt, 27);
    expect_bad_row_fails_next(b, {b.shard, "input_ids", "row 5 ends (at its length 27)", "not [SEP]"});
  }
  {
    Broken b;
    overwrite<uint16_t>(b.shard, "input_ids", 5, 0, 7);
    expect_bad_row_fails_next(b, {b.shard, "input_ids", "row 5 starts with token id 7, not [CLS]"});
  }
}

TEST(ShardErrors, SegmentIdAboveOneFailsNext) {
  Broken b;
  overwrite<uint8_t>(b.shard, "segment_ids", 7, 4, 7);
  expect_bad_row_fails_next(b, {b.shard, "segment_ids", "row 7", "segment id 7", "slot 4"});
}

}  // namespace
}  // namespace electra::data
