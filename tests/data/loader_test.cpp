#include "data_pipeline/loader/loader.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <tuple>

#include "data_pipeline/loader/permutation.h"
#include "lib/core/error.h"
#include "lib/core/h5.h"
#include "tests/data/test_util.h"

namespace electra::data {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;

constexpr int kSeq = 48;

// Three shards of 701 + 500 + 300 = 1501 synthetic examples, chunks of 64 rows.
struct Fixture {
  TempDir tmp{"loader"};
  text::Vocab vocab = testing::corpus_vocab();
  std::string dir = tmp / "data";
  Fixture() { testing::write_synthetic_dataset(dir, vocab, {701, 500, 300}, kSeq, 64); }

  LoaderOptions options(int global_batch, int rank = 0, int world = 1) const {
    LoaderOptions o;
    o.data_dir = dir;
    o.global_batch_size = global_batch;
    o.seq_length = kSeq;
    o.seed = 11;
    o.rank = rank;
    o.world_size = world;
    return o;
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

TEST(Permutation, IsABijectionAndDependsOnSeedAndEpoch) {
  for (uint64_t n : {1ull, 2ull, 3ull, 17ull, 1000ull, 4097ull, 65536ull}) {
    FeistelPermutation p(n, 5, 0);
    std::vector<char> seen(n, 0);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t x = p(i);
      ASSERT_LT(x, n);
      ASSERT_FALSE(seen[x]) << "n=" << n << " duplicate " << x;
      seen[x] = 1;
    }
  }
  auto order = [](uint64_t seed, uint64_t epoch) {
    FeistelPermutation p(1000, seed, epoch);
    std::vector<uint64_t> v;
    for (uint64_t i = 0; i < 1000; ++i) v.push_back(p(i));
    return v;
  };
  EXPECT_EQ(order(5, 0), order(5, 0));
  EXPECT_NE(order(5, 0), order(5, 1));
  EXPECT_NE(order(5, 0), order(6, 0));
  // Well mixed: few fixed points and neighbours far apart on average.
  const std::vector<uint64_t> v = order(5, 0);
  int fixed = 0;
  double distance = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    fixed += v[i] == i;
    if (i) distance += std::abs(static_cast<double>(v[i]) - static_cast<double>(v[i - 1]));
  }
  EXPECT_LT(fixed, 10);
  EXPECT_GT(distance / 999, 200);
  // Huge domains work in O(1) memory.
  FeistelPermutation big(300'000'000'000ull, 1, 0);
  EXPECT_LT(big(123'456'789'012ull), 300'000'000'000ull);
}

TEST(Loader, ReadsEveryRowExactlyWithoutShuffle) {
  LoaderOptions o = fixture().options(50);
  o.shuffle = false;
  Loader loader(o);
  EXPECT_EQ(loader.num_examples(), 1501u);
  EXPECT_EQ(loader.batches_per_epoch(), 30);
  EXPECT_EQ(loader.max_predictions(), static_cast<int>((0.15f + 0.005f) * kSeq));
  for (int k = 0; k < 30; ++k) {
    const Batch b = loader.next();
    ASSERT_EQ(b.rows, 50);
    for (int i = 0; i < b.rows; ++i) {
      const uint64_t example = static_cast<uint64_t>(k) * 50 + static_cast<uint64_t>(i);
      ASSERT_EQ(b.example_index[static_cast<size_t>(i)], example);
      const testing::Row want = testing::synthetic_row(example, kSeq, fixture().vocab.size());
      ASSERT_EQ(testing::unmasked_row(b, i), want.ids) << "example " << example;
      for (int c = 0; c < kSeq; ++c) {
        ASSERT_EQ(b.input_type_ids[static_cast<size_t>(i * kSeq + c)], want.segments[static_cast<size_t>(c)]);
        ASSERT_EQ(b.input_mask[static_cast<size_t>(i * kSeq + c)], c < want.length ? 1 : 0);
      }
    }
  }
  EXPECT_EQ(loader.state(), (LoaderState{0, 1500}));
  EXPECT_EQ(loader.next().example_index.front(), 0u);  // epoch 1 starts over; the tail row 1500 is dropped
  EXPECT_EQ(loader.state(), (LoaderState{1, 50}));
}

// Evaluation's loader (pad_last_batch): the tail of 1501 = 15 x 96 + 61 examples is a 16th batch whose last 35
// rows are empty (no tokens, no predictions), split over 2 ranks like any batch; the real rows are as without it.
TEST(Loader, PadLastBatchReadsTheTailAndCompletesItWithEmptyRows) {
  LoaderOptions o = fixture().options(96, 1, 2);
  o.shuffle = false;
  LoaderOptions plain = o;
  o.pad_last_batch = true;
  Loader padded(o), dropped(plain);
  EXPECT_EQ(padded.batches_per_epoch(), 16);
  EXPECT_EQ(dropped.batches_per_epoch(), 15);
  for (int k = 0; k < 15; ++k) testing::expect_same_batch(padded.next(), dropped.next());
  const Batch last = padded.next();  // rank 1: global rows 48..95 of the batch, examples 1488..1535
  ASSERT_EQ(last.rows, 48);
  for (int i = 0; i < last.rows; ++i) {
    const uint64_t example = 1488 + static_cast<uint64_t>(i);
    const auto mask = std::span(last.input_mask).subspan(static_cast<size_t>(i) * kSeq, kSeq);
    const auto weights =
        std::span(last.masked_lm_weights)
            .subspan(static_cast<size_t>(i) * last.num_predictions, static_cast<size_t>(last.num_predictions));
    if (example < 1501) {
      ASSERT_EQ(last.example_index[static_cast<size_t>(i)], example);
      EXPECT_EQ(testing::unmasked_row(last, i), testing::synthetic_row(example, kSeq, fixture().vocab.size()).ids);
      EXPECT_GT(std::count(weights.begin(), weights.end(), 1.0f), 0) << example;
    } else {
      EXPECT_EQ(last.example_index[static_cast<size_t>(i)], kNoExample);
      EXPECT_EQ(std::count(mask.begin(), mask.end(), 0), kSeq) << example;
      EXPECT_EQ(std::count(weights.begin(), weights.end(), 0.0f), last.num_predictions) << example;
    }
  }
  EXPECT_EQ(padded.next().example_index.front(), 48u);  // epoch 1 starts over
  EXPECT_EQ(padded.state(), (LoaderState{1, 96}));
  o.shuffle = true;
  EXPECT_THROW(Loader{o}, Error);  // the empty rows would land in the middle of a shuffled epoch
}

// The union of an epoch's rows over W ranks is every example exactly once (but the dropped tail).
void check_epoch_coverage(int world) {
  const int G = 12;
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back(std::make_unique<Loader>(fixture().options(G, r, world)));
  Loader single(fixture().options(G));
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<int> seen(1501, 0);
    for (int k = 0; k < ranks[0]->batches_per_epoch(); ++k) {
      const Batch whole = single.next();
      for (int r = 0; r < world; ++r) {
        const Batch b = ranks[static_cast<size_t>(r)]->next();
        ASSERT_EQ(b.rows, G / world);
        ASSERT_EQ(b.global_row_offset, static_cast<uint64_t>(r * G / world));
        ASSERT_EQ(b.global_batch_rows, G);
        for (uint64_t e : b.example_index) ++seen[e];
        // The rank's slice is exactly that part of the single-rank batch, masking included.
        testing::expect_same_batch(b, slice_rows(whole, r * G / world, (r + 1) * G / world));
      }
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 1500) << "world " << world << " epoch " << epoch;
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 0), 1);
  }
}

TEST(Loader, EpochCoversEveryExampleOnceOneRank) { check_epoch_coverage(1); }
TEST(Loader, EpochCoversEveryExampleOnceTwoRanks) { check_epoch_coverage(2); }
TEST(Loader, EpochCoversEveryExampleOnceThreeRanks) { check_epoch_coverage(3); }

TEST(Loader, RestoreContinuesExactlyAcrossEpochsAndWorldSizes) {
  const int G = 60;  // 25 batches per epoch
  Loader reference(fixture().options(G));
  std::vector<Batch> expected;
  LoaderState saved;
  for (int k = 0; k < 60; ++k) {
    if (k == 23) saved = reference.state();
    expected.push_back(reference.next());
  }
  EXPECT_EQ(saved, (LoaderState{0, 23 * 60}));
  const LoaderState round_trip = LoaderState::from_json(nlohmann::json::parse(saved.to_json().dump()));
  EXPECT_EQ(round_trip, saved);

  // Same world size, through the epoch boundary (batch 25 starts epoch 1).
  Loader resumed(fixture().options(G));
  resumed.next();  // some progress that restore() discards
  resumed.restore(round_trip);
  for (int k = 23; k < 30; ++k) testing::expect_same_batch(resumed.next(), expected[static_cast<size_t>(k)]);
  EXPECT_EQ(resumed.state(), (LoaderState{1, 5 * 60}));

  // Three ranks resuming a one-rank run.
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.push_back(std::make_unique<Loader>(fixture().options(G, r, 3)));
    ranks.back()->restore(round_trip);
  }
  for (int k = 23; k < 28; ++k)
    for (int r = 0; r < 3; ++r)
      testing::expect_same_batch(ranks[static_cast<size_t>(r)]->next(),
                                 slice_rows(expected[static_cast<size_t>(k)], r * 20, (r + 1) * 20));

  // A state saved in epoch 1 resumes there.
  Loader late(fixture().options(G));
  late.restore(LoaderState{1, 10 * 60});
  testing::expect_same_batch(late.next(), expected[35]);
}

TEST(Loader, MaskingStatistics) {
  LoaderOptions o = fixture().options(100);
  o.max_predictions = 20;
  Loader loader(o);
  const text::Vocab& v = fixture().vocab;
  uint64_t candidates = 0, predicted = 0, masked = 0, kept = 0;
  for (int k = 0; k < 45; ++k) {
    const Batch b = loader.next();
    ASSERT_EQ(b.num_predictions, 20);
    for (int i = 0; i < b.rows; ++i) {
      const std::vector<int32_t> original = testing::unmasked_row(b, i);
      int real = 0, n = 0;
      for (int c = 0; c < kSeq; ++c) {
        const int32_t t = original[static_cast<size_t>(c)];
        if (b.input_mask[static_cast<size_t>(i * kSeq + c)] && t != v.cls_id() && t != v.sep_id() && t != v.mask_id() &&
            t != v.pad_id())
          ++real;
      }
      std::set<int32_t> positions;
      for (int p = 0; p < 20; ++p) {
        const size_t q = static_cast<size_t>(i * 20 + p);
        if (b.masked_lm_weights[q] == 0.0f) {
          EXPECT_EQ(b.masked_lm_positions[q], 0);
          EXPECT_EQ(b.masked_lm_ids[q], 0);
          continue;
        }
        ASSERT_EQ(b.masked_lm_weights[q], 1.0f);
        ++n;
        const int32_t pos = b.masked_lm_positions[q];
        ASSERT_TRUE(positions.insert(pos).second) << "duplicate position";
        ASSERT_EQ(b.input_mask[static_cast<size_t>(i * kSeq + pos)], 1) << "padding masked";
        const int32_t t = b.masked_lm_ids[q];
        ASSERT_TRUE(t != v.cls_id() && t != v.sep_id() && t != v.pad_id() && t != v.mask_id()) << "special masked";
        const int32_t shown = b.input_word_ids[static_cast<size_t>(i * kSeq + pos)];
        if (shown == v.mask_id()) {
          ++masked;
        } else {
          ASSERT_EQ(shown, t);
          ++kept;
        }
      }
      const int want = std::min(real, std::max(1, std::min(20, static_cast<int>(std::nearbyint(real * 0.15f)))));
      ASSERT_EQ(n, want) << "real tokens " << real;
      // Weights are a prefix: predictions first, padding after, positions ascending.
      for (int p = 1; p < n; ++p)
        ASSERT_LT(b.masked_lm_positions[static_cast<size_t>(i * 20 + p - 1)],
                  b.masked_lm_positions[static_cast<size_t>(i * 20 + p)]);
      candidates += static_cast<uint64_t>(real);
      predicted += static_cast<uint64_t>(n);
    }
  }
  EXPECT_NEAR(static_cast<double>(predicted) / static_cast<double>(candidates), 0.15, 0.01);
  EXPECT_NEAR(static_cast<double>(masked) / static_cast<double>(predicted), 0.85, 0.015);
  EXPECT_GT(kept, 0u);
}

TEST(Loader, MaskingIsKeyedByEpochAndExample) {
  LoaderOptions o = fixture().options(1501);
  o.shuffle = false;
  Loader loader(o);
  const Batch e0 = loader.next();
  const Batch e1 = loader.next();
  ASSERT_EQ(e0.example_index, e1.example_index);
  EXPECT_NE(e0.masked_lm_positions, e1.masked_lm_positions) << "epochs should mask differently";
  LoaderOptions o2 = o;
  o2.seed = 12;
  Loader other(o2);
  EXPECT_NE(other.next().masked_lm_positions, e0.masked_lm_positions);
}

TEST(Loader, SliceRowsMakesMicroBatches) {
  Loader loader(fixture().options(12, 1, 2));
  const Batch b = loader.next();
  const Batch a = slice_rows(b, 0, 4), c = slice_rows(b, 4, 6);
  EXPECT_EQ(a.rows, 4);
  EXPECT_EQ(c.rows, 2);
  EXPECT_EQ(a.global_row_offset, 6u);
  EXPECT_EQ(c.global_row_offset, 10u);
  EXPECT_EQ(c.global_batch_rows, 12);
  EXPECT_EQ(c.example_index, std::vector<uint64_t>(b.example_index.begin() + 4, b.example_index.end()));
  std::vector<int32_t> joined = a.input_word_ids;
  joined.insert(joined.end(), c.input_word_ids.begin(), c.input_word_ids.end());
  EXPECT_EQ(joined, b.input_word_ids);
  EXPECT_EQ(std::vector<float>(b.masked_lm_weights.begin() + 4 * b.num_predictions, b.masked_lm_weights.end()),
            c.masked_lm_weights);
  EXPECT_THROW(slice_rows(b, 3, 7), Error);
}

TEST(Loader, SmallCacheGivesTheSameBatches) {
  LoaderOptions big = fixture().options(24);
  LoaderOptions small = big;
  small.cache_bytes = 1;  // every read decompresses its chunk again
  Loader a(big), b(small);
  for (int k = 0; k < 20; ++k) testing::expect_same_batch(a.next(), b.next());
  EXPECT_GT(b.dataset().cache_stats().misses, a.dataset().cache_stats().misses);
}

TEST(Loader, ReaderThreadCountDoesNotChangeBatches) {
  LoaderOptions one = fixture().options(60);
  one.reader_threads = 1;
  LoaderOptions four = one;
  four.reader_threads = 4;
  four.cache_bytes = 200'000;  // a few chunks: threads decode concurrently and evict each other's
  Loader a(one), b(four);
  for (int k = 0; k < 60; ++k) testing::expect_same_batch(a.next(), b.next());
}

// Int32 token ids (vocabulary > 65,536) and shards without chunking or compression (read through
// HDF5's own pipeline instead of the raw-chunk path) give the rows that were written.
TEST(Loader, Int32IdsAndContiguousShardsReadBack) {
  TempDir tmp("loader-int32");
  const text::Vocab big = testing::corpus_vocab(70000);
  const std::string chunked = tmp / "chunked";
  testing::write_synthetic_dataset(chunked, big, {150, 77}, kSeq, 32);
  const std::string contiguous = tmp / "contiguous";
  fs::create_directories(contiguous);
  {
    // The same rows as the second shard above, as contiguous datasets.
    const hsize_t n = 77, L = kSeq;
    std::vector<int32_t> ids;
    std::vector<uint8_t> seg;
    std::vector<uint16_t> len;
    for (uint64_t i = 150; i < 227; ++i) {
      const testing::Row r = testing::synthetic_row(i, kSeq, big.size());
      ids.insert(ids.end(), r.ids.begin(), r.ids.end());
      seg.insert(seg.end(), r.segments.begin(), r.segments.end());
      len.push_back(static_cast<uint16_t>(r.length));
    }
    const std::string path = contiguous + "/plain.h5";
    h5::Handle f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    hsize_t d2[2] = {n, L}, d1[1] = {n};
    h5::Handle s2(H5Screate_simple(2, d2, nullptr)), s1(H5Screate_simple(1, d1, nullptr));
    h5::Handle a(H5Dcreate2(f, "input_ids", H5T_STD_I32LE, s2, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    h5::Handle b(H5Dcreate2(f, "segment_ids", H5T_STD_U8LE, s2, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    h5::Handle c(H5Dcreate2(f, "lengths", H5T_STD_U16LE, s1, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    ASSERT_GE(H5Dwrite(a, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids.data()), 0);
    ASSERT_GE(H5Dwrite(b, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, seg.data()), 0);
    ASSERT_GE(H5Dwrite(c, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, len.data()), 0);
    h5::write_attribute_i64(f, "format_version", 1);
    h5::write_attribute_i64(f, "max_seq_length", kSeq);
    h5::write_attribute_u64(f, "vocab_size", big.size());
    h5::write_attribute_u64(f, "vocab_hash", big.hash());
    Manifest m;
    m.shards.push_back({"plain.h5", n, 0, 0});
    m.total_rows = n;
    m.vocab_hash = big.hash();
    m.vocab_size = big.size();
    m.max_seq_length = kSeq;
    m.save(contiguous);
    big.save(contiguous + "/vocab.txt");
  }
  for (const auto& [dir, first, count] : {std::tuple{chunked, 0, 227}, std::tuple{contiguous, 150, 77}}) {
    LoaderOptions o;
    o.data_dir = dir;
    o.global_batch_size = count;
    o.seq_length = kSeq;
    o.shuffle = false;
    Loader loader(o);
    const Batch b = loader.next();
    bool above_uint16 = false;
    for (int i = 0; i < count; ++i) {
      const testing::Row want = testing::synthetic_row(static_cast<uint64_t>(first + i), kSeq, big.size());
      ASSERT_EQ(testing::unmasked_row(b, i), want.ids) << dir << " row " << i;
      for (int32_t id : want.ids) above_uint16 |= id > 65535;
    }
    EXPECT_TRUE(above_uint16);
  }
}

TEST(Loader, RejectsBadOptions) {
  EXPECT_THROW(Loader(fixture().options(10, 0, 3)), Error);  // 10 does not divide by 3
  EXPECT_THROW(Loader(fixture().options(2000)), Error);      // more than the data
  LoaderOptions o = fixture().options(12);
  o.seq_length = 64;
  try {
    Loader loader(o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_seq_length 48"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("manifest.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace electra::data
