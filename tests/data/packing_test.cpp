// Sequence packing (electra-preprocess --pack true): RowPacker's first fit, packed shards and their
// manifest, the loader's example ids and positions, trimming packed batches, and refusal of bad
// example_ids or of a directory that mixes packed and unpacked shards.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "data_pipeline/loader/loader.h"
#include "data_pipeline/preprocess/preprocess.h"
#include "data_pipeline/preprocess/row_packer.h"
#include "lib/core/batch.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "tests/data/test_util.h"

namespace electra::data {
namespace {
namespace fs = std::filesystem;
using testing::Row;
using testing::TempDir;

constexpr int32_t kPad = 0, kCls = 2, kSep = 3;  // testing::corpus_vocab()
constexpr int kSeq = 128;

void ensure_mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);  // preprocess_test.cpp's environment finalizes
}

// [CLS] tag tag ... [SEP]: `length` tokens, segment 1 on the last two.
Example make_example(int length, int32_t tag, int max_length) {
  Example e;
  e.input_ids.assign(static_cast<size_t>(max_length), kPad);
  e.segment_ids.assign(static_cast<size_t>(max_length), 0);
  e.input_ids[0] = kCls;
  for (int c = 1; c < length - 1; ++c) e.input_ids[static_cast<size_t>(c)] = tag;
  e.input_ids[static_cast<size_t>(length - 1)] = kSep;
  for (int c = std::max(1, length - 2); c < length; ++c) e.segment_ids[static_cast<size_t>(c)] = 1;
  e.length = length;
  return e;
}

// Each emitted row as the tags of its examples in order (the token after [CLS]).
struct Collected {
  std::vector<std::vector<int32_t>> tags;
  std::vector<PackedRow> rows;
  RowPacker::Emit emit() {
    return [this](const PackedRow& row) {
      rows.push_back(row);
      std::vector<int32_t> t;
      for (int c = 0; c < row.length; ++c)
        if (c == 0 || row.example_ids[static_cast<size_t>(c)] != row.example_ids[static_cast<size_t>(c - 1)])
          t.push_back(row.input_ids[static_cast<size_t>(c + 1)]);
      tags.push_back(t);
    };
  }
};

TEST(RowPacker, FirstFitClosesFullRowsAndFlushesInOrder) {
  Collected got;
  RowPacker packer(10, kPad, got.emit());
  packer.add(make_example(6, 10, 10));  // row a
  packer.add(make_example(5, 11, 10));  // does not fit a: row b
  packer.add(make_example(4, 12, 10));  // fills a (10): closed
  packer.add(make_example(3, 13, 10));  // b reaches 8: fewer free slots than the shortest example, closed
  packer.add(make_example(6, 14, 10));  // row c, left open
  EXPECT_EQ(got.tags, (std::vector<std::vector<int32_t>>{{10, 12}, {11, 13}}));
  packer.flush();
  ASSERT_EQ(got.tags.size(), 3u);
  EXPECT_EQ(got.tags[2], (std::vector<int32_t>{14}));

  const PackedRow& a = got.rows[0];
  EXPECT_EQ(a.length, 10);
  EXPECT_EQ(a.examples, 2);
  EXPECT_EQ(a.example_ids, (std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 2, 2, 2, 2}));
  EXPECT_EQ(a.input_ids, (std::vector<int32_t>{kCls, 10, 10, 10, 10, kSep, kCls, 12, 12, kSep}));
  EXPECT_EQ(a.segment_ids, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 0, 0, 1, 1}));
  const PackedRow& c = got.rows[2];
  EXPECT_EQ(c.length, 6);
  EXPECT_EQ(c.example_ids, (std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(c.input_ids, (std::vector<int32_t>{kCls, 14, 14, 14, 14, kSep, kPad, kPad, kPad, kPad}));

  // A row with 8 of 10 slots used has no room for the shortest example: it is closed at once.
  packer.add(make_example(8, 15, 10));
  EXPECT_EQ(got.tags.size(), 4u);
}

TEST(RowPacker, LookBackWindowBoundsTheOpenRows) {
  Collected got;
  RowPacker packer(10, kPad, got.emit(), /*look_back=*/2);
  packer.add(make_example(6, 10, 10));
  packer.add(make_example(6, 11, 10));
  packer.add(make_example(6, 12, 10));  // a third open row: the oldest (10) leaves the window
  EXPECT_EQ(got.tags, (std::vector<std::vector<int32_t>>{{10}}));
  packer.add(make_example(4, 13, 10));  // first fit among the open rows: 11's
  EXPECT_EQ(got.tags.back(), (std::vector<int32_t>{11, 13}));
  packer.flush();
  EXPECT_EQ(got.tags.back(), (std::vector<int32_t>{12}));
}

TEST(RowPacker, AtMost255ExamplesPerRow) {
  Collected got;
  RowPacker packer(1000, kPad, got.emit());
  for (int i = 0; i < 256; ++i) packer.add(make_example(3, 10 + i % 50, 1000));
  packer.flush();
  ASSERT_EQ(got.rows.size(), 2u);
  EXPECT_EQ(got.rows[0].examples, 255);
  EXPECT_EQ(got.rows[0].length, 765);
  EXPECT_EQ(got.rows[0].example_ids[764], 255);
  EXPECT_EQ(got.rows[1].examples, 1);
  EXPECT_THROW(packer.add(make_example(1001, 10, 1001)), Error) << "length beyond max_seq_length";
}

// ---------------------------------------------------------------------------------------------------
// Preprocessing a corpus of short documents

// Short documents (1-2 sentences of up to 6 words) in 4 files; plain, packed and packed again.
struct ShortDocs {
  TempDir tmp{"pack"};
  text::Vocab vocab = testing::corpus_vocab();
  Manifest plain, packed, again;
  ShortDocs() {
    testing::CorpusOptions co;
    co.files = 4;
    co.docs_per_file = 150;
    co.max_sentences = 2;
    co.max_words = 6;
    co.messy = false;
    testing::write_corpus(tmp / "corpus", co);
    vocab.save(tmp / "vocab.txt");
    plain = run("plain", false);
    packed = run("packed", true);
    again = run("again", true);
  }
  Manifest run(const std::string& out, bool pack) {
    PreprocessOptions o;
    o.inputs = {tmp / "corpus"};
    o.vocab_path = tmp / "vocab.txt";
    o.output_dir = tmp / out;
    o.max_seq_length = kSeq;
    o.seed = 3;
    o.rows_per_shard = 40;
    o.chunk_rows = 16;
    o.pack = pack;
    o.progress_interval_s = 0;
    ensure_mpi();
    return run_preprocess(o, MPI_COMM_SELF);
  }
  LoaderOptions loader_options(const std::string& dir, int global_batch) const {
    LoaderOptions o;
    o.data_dir = tmp / dir;
    o.global_batch_size = global_batch;
    o.seq_length = kSeq;
    o.max_predictions = 20;
    o.shuffle = false;
    o.seed = 5;
    return o;
  }
};

ShortDocs& short_docs() {
  static ShortDocs d;
  return d;
}

// One example as stored: its real tokens and segment ids.
using Piece = std::pair<std::vector<int32_t>, std::vector<uint8_t>>;

TEST(Packing, FillsTheSlotsAndKeepsEveryExampleIntact) {
  const ShortDocs& d = short_docs();
  EXPECT_FALSE(d.plain.pack);
  EXPECT_EQ(d.plain.format_version, kShardFormatVersion);
  EXPECT_TRUE(d.packed.pack);
  EXPECT_EQ(d.packed.format_version, kPackedShardFormatVersion);
  const uint64_t examples = d.plain.stats.at("examples").get<uint64_t>();
  EXPECT_EQ(d.plain.total_rows, examples);
  EXPECT_EQ(d.packed.stats.at("examples").get<uint64_t>(), examples);
  EXPECT_EQ(d.packed.stats.at("rows").get<uint64_t>(), d.packed.total_rows);
  EXPECT_LT(d.packed.total_rows * 4, examples);
  const double plain_fill = d.plain.stats.at("slot_fill").get<double>();
  const double packed_fill = d.packed.stats.at("slot_fill").get<double>();
  std::printf("slot fill: %.3f unpacked (%llu rows), %.3f packed (%llu rows) for %llu examples\n", plain_fill,
              static_cast<unsigned long long>(d.plain.total_rows), packed_fill,
              static_cast<unsigned long long>(d.packed.total_rows), static_cast<unsigned long long>(examples));
  EXPECT_LT(plain_fill, 0.2);
  EXPECT_GT(packed_fill, 0.9);

  // manifest.json on disk says pack, and the shards carry format_version 2 and example_ids [N, L] uint8.
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(d.tmp / "packed/manifest.json"));
  EXPECT_EQ(j.at("pack"), true);
  EXPECT_EQ(j.at("format_version"), 2);
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(d.tmp / "plain/manifest.json")).at("pack"), false);
  for (const ShardInfo& s : d.packed.shards) {
    const std::string path = d.tmp / ("packed/" + s.file);
    h5::Handle file = h5::open_read_only(path);
    EXPECT_EQ(h5::read_attribute_i64(file, "format_version", path), 2);
    h5::Handle ex(H5Dopen2(file, "example_ids", H5P_DEFAULT));
    ASSERT_TRUE(ex.valid()) << path;
    EXPECT_EQ(h5::describe_type(ex), "uint8");
    EXPECT_EQ(h5::dims(ex), (std::vector<hsize_t>{s.rows, static_cast<hsize_t>(kSeq)}));
  }
  for (const ShardInfo& s : d.plain.shards) {
    h5::Handle file = h5::open_read_only(d.tmp / ("plain/" + s.file));
    EXPECT_FALSE(h5::has_dataset(file, "example_ids"));
  }

  // Every packed row: examples 1..k one after another from slot 0, each [CLS] ... [SEP], padding after.
  const std::vector<Row> rows = testing::read_all_rows(d.tmp / "packed");
  const std::vector<std::vector<uint8_t>> ids = testing::read_all_example_ids(d.tmp / "packed");
  ASSERT_EQ(rows.size(), ids.size());
  std::vector<Piece> pieces;
  std::vector<size_t> row_of;  // the packed row of each piece
  int most = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const Row& row = rows[r];
    const std::vector<uint8_t>& ex = ids[r];
    int start = 0;
    for (int c = 0; c <= row.length; ++c) {
      const bool boundary = c == row.length || (c > 0 && ex[static_cast<size_t>(c)] != ex[static_cast<size_t>(c - 1)]);
      if (!boundary) continue;
      const auto b = static_cast<std::ptrdiff_t>(start), e = static_cast<std::ptrdiff_t>(c);
      pieces.emplace_back(std::vector<int32_t>(row.ids.begin() + b, row.ids.begin() + e),
                          std::vector<uint8_t>(row.segments.begin() + b, row.segments.begin() + e));
      row_of.push_back(r);
      EXPECT_EQ(row.ids[static_cast<size_t>(start)], kCls) << "row " << r;
      EXPECT_EQ(row.ids[static_cast<size_t>(c - 1)], kSep) << "row " << r;
      const int first_id = start == 0 ? 1 : ex[static_cast<size_t>(start - 1)] + 1;
      EXPECT_EQ(ex[static_cast<size_t>(start)], first_id) << "row " << r << " slot " << start;
      start = c;
    }
    most = std::max(most, static_cast<int>(ex[static_cast<size_t>(row.length - 1)]));
    for (int c = row.length; c < kSeq; ++c) {
      ASSERT_EQ(ex[static_cast<size_t>(c)], 0) << "row " << r;
      ASSERT_EQ(row.ids[static_cast<size_t>(c)], kPad) << "row " << r;
      ASSERT_EQ(row.segments[static_cast<size_t>(c)], 0) << "row " << r;
    }
  }
  EXPECT_GT(most, 5) << "rows should hold many short examples";
  // The same examples as without packing, each intact (tokens and segment ids in order).
  std::vector<Piece> expected;
  for (const Row& row : testing::read_all_rows(d.tmp / "plain"))
    expected.emplace_back(std::vector<int32_t>(row.ids.begin(), row.ids.begin() + row.length),
                          std::vector<uint8_t>(row.segments.begin(), row.segments.begin() + row.length));
  // Inside a row the examples keep the builder's order (the unpacked rows' order; one rank, so one stream).
  std::map<Piece, int> copies;
  std::map<Piece, size_t> order;
  for (size_t i = 0; i < expected.size(); ++i) {
    ++copies[expected[i]];
    order[expected[i]] = i;
  }
  for (size_t i = 1; i < pieces.size(); ++i) {
    if (row_of[i] != row_of[i - 1] || copies[pieces[i]] != 1 || copies[pieces[i - 1]] != 1) continue;
    EXPECT_LT(order[pieces[i - 1]], order[pieces[i]]) << "row " << row_of[i];
  }
  std::sort(pieces.begin(), pieces.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(pieces.size(), expected.size());
  EXPECT_TRUE(pieces == expected);
}

TEST(Packing, DeterministicAndIndependentOfTheRankCount) {
  ShortDocs& d = short_docs();
  ASSERT_EQ(d.packed.shards.size(), d.again.shards.size());
  for (size_t s = 0; s < d.packed.shards.size(); ++s) {
    EXPECT_EQ(d.packed.shards[s].rows, d.again.shards[s].rows);
    EXPECT_EQ(d.packed.shards[s].crc32, d.again.shards[s].crc32) << d.packed.shards[s].file;
  }

  // Three ranks simulated in one process give the same rows (packing never mixes files).
  PreprocessOptions o;
  o.inputs = {d.tmp / "corpus"};
  o.vocab_path = d.tmp / "vocab.txt";
  o.output_dir = d.tmp / "three";
  o.max_seq_length = kSeq;
  o.seed = 3;
  o.pack = true;
  o.progress_interval_s = 0;
  fs::create_directories(o.output_dir);
  const std::vector<InputFile> files = list_input_files(o.inputs);
  const std::vector<int> owner = assign_files_to_ranks(files, 3);
  std::vector<Row> three;
  for (int r = 0; r < 3; ++r) {
    for (const ShardInfo& s : preprocess_rank(o, d.vocab, files, owner, r).shards) {
      std::vector<Row> part = testing::read_shard_rows(o.output_dir + "/" + s.file);
      three.insert(three.end(), part.begin(), part.end());
    }
  }
  std::vector<Row> one = testing::read_all_rows(d.tmp / "packed");
  std::sort(one.begin(), one.end());
  std::sort(three.begin(), three.end());
  EXPECT_TRUE(one == three) << one.size() << " vs " << three.size() << " rows";
}

// ---------------------------------------------------------------------------------------------------
// Loading packed shards

TEST(Packing, LoaderGivesExampleIdsPositionsAndMasksEachRowAsOne) {
  const ShortDocs& d = short_docs();
  const std::vector<Row> rows = testing::read_all_rows(d.tmp / "packed");
  const std::vector<std::vector<uint8_t>> ids = testing::read_all_example_ids(d.tmp / "packed");
  const int G = 8;
  Loader loader(d.loader_options("packed", G));
  EXPECT_TRUE(loader.packed());
  EXPECT_TRUE(loader.dataset().packed());
  const int P = loader.max_predictions();
  int specials_seen = 0;
  for (int k = 0; k < loader.batches_per_epoch(); ++k) {
    const Batch b = loader.next();
    ASSERT_EQ(b.position_ids.size(), b.input_mask.size());
    for (int i = 0; i < b.rows; ++i) {
      const size_t g = static_cast<size_t>(k * G + i);  // no shuffle: batch row i is shard row k*G + i
      ASSERT_EQ(b.example_index[static_cast<size_t>(i)], g);
      const Row& row = rows[g];
      const std::vector<int32_t> original = testing::unmasked_row(b, i);
      int real = 0;
      for (int s = 0; s < kSeq; ++s) {
        const size_t at = static_cast<size_t>(i * kSeq + s);
        ASSERT_EQ(original[static_cast<size_t>(s)], row.ids[static_cast<size_t>(s)]) << "row " << g << " slot " << s;
        ASSERT_EQ(b.input_type_ids[at], row.segments[static_cast<size_t>(s)]);
        ASSERT_EQ(b.input_mask[at], ids[g][static_cast<size_t>(s)]) << "row " << g << " slot " << s;
        // Position within the example: 0 at each [CLS], +1 after; 0 on padding.
        const int32_t want = s >= row.length                           ? 0
                             : row.ids[static_cast<size_t>(s)] == kCls ? 0
                                                                       : b.position_ids[at - 1] + 1;
        ASSERT_EQ(b.position_ids[at], want) << "row " << g << " slot " << s;
        const int32_t t = original[static_cast<size_t>(s)];
        if (s < row.length && t != kCls && t != kSep) ++real;
        if (s < row.length && (t == kCls || t == kSep)) ++specials_seen;
      }
      // Masking: never a [CLS]/[SEP] (there are several per row), n follows the row's real tokens.
      int n = 0;
      for (int p = 0; p < P; ++p) {
        const size_t q = static_cast<size_t>(i * P + p);
        if (b.masked_lm_weights[q] == 0.0f) continue;
        ++n;
        const int32_t pos = b.masked_lm_positions[q];
        ASSERT_LT(pos, row.length);
        ASSERT_NE(b.masked_lm_ids[q], kCls);
        ASSERT_NE(b.masked_lm_ids[q], kSep);
        ASSERT_EQ(b.masked_lm_ids[q], row.ids[static_cast<size_t>(pos)]);
      }
      const int want = std::min(real, std::max(1, std::min(P, static_cast<int>(std::nearbyint(real * 0.15f)))));
      ASSERT_EQ(n, want) << "row " << g << " with " << real << " real tokens";
    }
  }
  EXPECT_GT(specials_seen, 4 * static_cast<int>(rows.size())) << "rows should hold several [CLS]/[SEP] each";
}

TEST(Packing, TrimmingAndSlicingCarryPositions) {
  const ShortDocs& d = short_docs();
  Loader loader(d.loader_options("packed", 6));
  Batch b = loader.next();
  // The last row made two short examples, so that trimming has something to cut.
  const size_t last = 5 * static_cast<size_t>(kSeq);
  for (size_t s = 0; s < static_cast<size_t>(kSeq); ++s) {
    b.input_mask[last + s] = s < 5 ? 1 : s < 9 ? 2 : 0;
    b.position_ids[last + s] = s < 5 ? static_cast<int32_t>(s) : s < 9 ? static_cast<int32_t>(s - 5) : 0;
  }
  for (size_t q = static_cast<size_t>(5 * b.num_predictions); q < b.masked_lm_positions.size(); ++q) {
    b.masked_lm_positions[q] = q % 2 == 0 ? 1 : 0;
    b.masked_lm_weights[q] = q % 2 == 0 ? 1.0f : 0.0f;
  }
  const int needed = needed_seq_length(b, 5, 6);
  EXPECT_EQ(needed, 16);  // 9 real tokens, rounded up to kTrimMultiple
  Batch out;
  copy_rows(b, 5, 6, needed, out);
  ASSERT_EQ(out.position_ids.size(), static_cast<size_t>(needed));
  EXPECT_EQ(std::vector<int32_t>(out.position_ids.begin(), out.position_ids.begin() + 10),
            (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 0}));
  EXPECT_EQ(std::vector<int32_t>(out.input_mask.begin(), out.input_mask.begin() + 10),
            (std::vector<int32_t>{1, 1, 1, 1, 1, 2, 2, 2, 2, 0}));

  // Whole-batch copies keep every row's positions; slice_rows cuts them with the rows.
  copy_rows(b, 1, 4, kSeq, out);
  EXPECT_EQ(out.position_ids, std::vector<int32_t>(b.position_ids.begin() + kSeq, b.position_ids.begin() + 4 * kSeq));
  const Batch sliced = slice_rows(b, 2, 3);
  EXPECT_EQ(sliced.position_ids,
            std::vector<int32_t>(b.position_ids.begin() + 2 * kSeq, b.position_ids.begin() + 3 * kSeq));

  // A reused `out` drops the positions when the next batch is not packed; a wrong size is refused.
  Batch unpacked = b;
  unpacked.position_ids.clear();
  copy_rows(unpacked, 0, 2, kSeq, out);
  EXPECT_TRUE(out.position_ids.empty());
  EXPECT_TRUE(slice_rows(unpacked, 0, 2).position_ids.empty());
  Batch wrong = b;
  wrong.position_ids.resize(7);
  EXPECT_THROW(copy_rows(wrong, 0, 1, kSeq, out), Error);
  EXPECT_THROW(needed_seq_length(wrong, 0, 1), Error);
}

// example_ids stored without chunks or filters is read through HDF5's own pipeline instead of the raw-chunk
// path: the same batches.
TEST(Packing, ContiguousExampleIdsReadBackTheSame) {
  const ShortDocs& d = short_docs();
  TempDir tmp("pack-contiguous");
  const std::string dir = tmp / "data";
  fs::copy(d.tmp / "packed", dir, fs::copy_options::recursive);
  for (const ShardInfo& s : d.packed.shards) {
    const std::string path = dir + "/" + s.file;
    h5::Handle f(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    std::vector<uint8_t> all;
    {
      h5::Handle ds(H5Dopen2(f, "example_ids", H5P_DEFAULT));
      all.resize(s.rows * kSeq);
      ASSERT_GE(H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all.data()), 0);
    }
    ASSERT_GE(H5Ldelete(f, "example_ids", H5P_DEFAULT), 0);
    const hsize_t dims[2] = {s.rows, static_cast<hsize_t>(kSeq)};
    h5::Handle space(H5Screate_simple(2, dims, nullptr));
    h5::Handle ds(H5Dcreate2(f, "example_ids", H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all.data()), 0);
  }
  const int G = static_cast<int>(d.packed.total_rows);
  LoaderOptions o = d.loader_options("packed", G);
  Loader raw(o);
  o.data_dir = dir;
  Loader plain_hdf5(o);
  testing::expect_same_batch(raw.next(), plain_hdf5.next());
}

TEST(Packing, UnpackedDataKeepsZeroOneMaskAndNoPositions) {
  const ShortDocs& d = short_docs();
  Loader loader(d.loader_options("plain", 16));
  EXPECT_FALSE(loader.packed());
  const Batch b = loader.next();
  EXPECT_TRUE(b.position_ids.empty());
  for (int32_t m : b.input_mask) ASSERT_TRUE(m == 0 || m == 1) << m;
}

// ---------------------------------------------------------------------------------------------------
// Bad packed data

// A copy of the packed directory whose example_ids get edited.
struct Edited {
  TempDir tmp{"pack-bad"};
  std::string dir = tmp / "data";
  std::string shard;
  Edited() {
    fs::copy(short_docs().tmp / "packed", dir, fs::copy_options::recursive);
    shard = dir + "/" + Manifest::load(dir + "/manifest.json").shards.at(0).file;
  }
  // Sets example_ids[row, slot] of `shard` (rows counted within the shard).
  void set(uint64_t row, uint64_t slot, uint8_t value) const {
    h5::Handle f(H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    h5::Handle ds(H5Dopen2(f, "example_ids", H5P_DEFAULT));
    h5::Handle space(H5Dget_space(ds));
    hsize_t start[2] = {row, slot}, count[2] = {1, 1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
    h5::Handle mem(H5Screate_simple(2, count, nullptr));
    ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_UINT8, mem, space, H5P_DEFAULT, &value), 0);
  }
  // The error of reading every row once ("" when none).
  std::string read_error() const {
    LoaderOptions o = short_docs().loader_options("packed", static_cast<int>(short_docs().packed.total_rows));
    o.data_dir = dir;
    try {
      Loader loader(o);
      loader.next();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  void edit_manifest(bool pack, int format_version) const {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/manifest.json"));
    j["pack"] = pack;
    j["format_version"] = format_version;
    std::ofstream(dir + "/manifest.json") << j.dump(2);
  }
};

void expect_mentions(const std::string& message, std::initializer_list<std::string> parts) {
  EXPECT_FALSE(message.empty()) << "no error";
  std::printf("refused: %s\n", message.c_str());
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos) << message << "\nlacks: " << part;
}

TEST(Packing, BadExampleIdsNameFileDatasetAndRow) {
  const std::vector<Row> rows = testing::read_shard_rows(Edited().shard);
  {
    Edited e;
    e.set(3, 0, 2);  // a row must start with example 1
    expect_mentions(e.read_error(), {e.shard, "example_ids", "row 3 ", "after 0"});
  }
  {
    size_t r = 1;
    while (r + 1 < rows.size() && rows[r].length == kSeq) ++r;  // a row with padding
    ASSERT_LT(rows[r].length, kSeq);
    Edited e;
    e.set(r, static_cast<uint64_t>(rows[r].length), 1);  // padding must be 0
    expect_mentions(e.read_error(), {e.shard, "example_ids", "row " + std::to_string(r) + " ", "padding"});
  }
  {
    // Move the boundary of example 2 one slot later: its [CLS] is then inside example 1 (the two would attend
    // to each other), and example 2 starts after it.
    Edited e;
    size_t r = 0;
    uint64_t boundary = 0;
    for (r = 0; r < rows.size() && boundary == 0; ++r)
      for (int c = 1; c < rows[r].length; ++c)
        if (rows[r].ids[static_cast<size_t>(c)] == kCls) {
          boundary = static_cast<uint64_t>(c);
          break;
        }
    ASSERT_GT(boundary, 0u);
    --r;
    e.set(r, boundary, 1);
    expect_mentions(e.read_error(), {e.shard, "example_ids", "row " + std::to_string(r) + " ",
                                     "has [CLS] at slot " + std::to_string(boundary) + " inside example 1"});
  }
}

TEST(Packing, MixedPackedAndUnpackedShardsAreRefused) {
  {
    Edited e;  // packed shards, a manifest that says unpacked
    e.edit_manifest(false, 1);
    expect_mentions(e.read_error(), {e.dir, "example_ids", "pack false", "cannot share"});
  }
  {
    Edited e;  // a manifest that says packed with the unpacked format version
    e.edit_manifest(true, 1);
    expect_mentions(e.read_error(), {"manifest.json", "format_version 1", "pack true"});
  }
  {
    TempDir tmp("pack-mix");
    const std::string dir = tmp / "data";
    fs::copy(short_docs().tmp / "plain", dir, fs::copy_options::recursive);
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/manifest.json"));
    j["pack"] = true;
    j["format_version"] = 2;
    std::ofstream(dir + "/manifest.json") << j.dump(2);
    LoaderOptions o = short_docs().loader_options("plain", 4);
    o.data_dir = dir;
    std::string message;
    try {
      Loader loader(o);
    } catch (const Error& err) {
      message = err.what();
    }
    expect_mentions(message, {dir, "lacks dataset 'example_ids'", "pack true"});
  }
  {
    // A manifest from before packing (no "pack" key) reads as unpacked.
    TempDir tmp("pack-old");
    const std::string dir = tmp / "data";
    fs::copy(short_docs().tmp / "plain", dir, fs::copy_options::recursive);
    nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/manifest.json"));
    j.erase("pack");
    std::ofstream(dir + "/manifest.json") << j.dump(2);
    EXPECT_FALSE(Manifest::load(dir + "/manifest.json").pack);
    LoaderOptions o = short_docs().loader_options("plain", 4);
    o.data_dir = dir;
    Loader loader(o);
    EXPECT_TRUE(loader.next().position_ids.empty());
  }
}

}  // namespace
}  // namespace electra::data
