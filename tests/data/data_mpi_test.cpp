// Preprocessing and loading under mpirun -np 2 / 3: real ranks, real collectives.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>

#include "data_pipeline/loader/loader.h"
#include "data_pipeline/preprocess/preprocess.h"
#include "lib/core/error.h"
#include "tests/data/test_util.h"

namespace electra::data {
namespace {
namespace fs = std::filesystem;

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// A temporary directory made by rank 0 and known to all ranks; removed by rank 0 at the end.
class SharedDir {
 public:
  explicit SharedDir(const std::string& tag) {
    std::string path;
    if (rank() == 0) {
      dir_ = std::make_unique<testing::TempDir>(tag);
      path = dir_->path();
    }
    int n = static_cast<int>(path.size());
    MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
    path.resize(static_cast<size_t>(n));
    MPI_Bcast(path.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = path;
  }
  ~SharedDir() { MPI_Barrier(MPI_COMM_WORLD); }  // nobody still reads when rank 0 removes it
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::unique_ptr<testing::TempDir> dir_;
  std::string path_;
};

TEST(DataMpi, PreprocessManifestCompleteAndRowsMatchOneRank) {
  SharedDir tmp("mpi-pre");
  testing::CorpusOptions co;
  co.files = 7;
  co.max_sentences = 10;
  if (rank() == 0) {
    testing::write_corpus(tmp / "corpus", co);
    testing::corpus_vocab().save(tmp / "vocab.txt");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  PreprocessOptions o;
  o.inputs = {tmp / "corpus"};
  o.vocab_path = tmp / "vocab.txt";
  o.output_dir = tmp / "many";
  o.max_seq_length = 32;
  o.rows_per_shard = 25;
  o.progress_interval_s = 0;
  const Manifest manifest = run_preprocess(o, MPI_COMM_WORLD);

  // Every rank got the same manifest; every rank wrote shards; the counts add up.
  std::vector<int> ranks_seen(static_cast<size_t>(world()), 0);
  uint64_t total = 0;
  for (const ShardInfo& s : manifest.shards) {
    ++ranks_seen[static_cast<size_t>(s.rank)];
    total += s.rows;
    EXPECT_TRUE(fs::exists(tmp / ("many/" + s.file))) << s.file;
  }
  EXPECT_EQ(total, manifest.total_rows);
  for (int r = 0; r < world(); ++r)
    EXPECT_GT(ranks_seen[static_cast<size_t>(r)], 0) << "rank " << r << " wrote no shard";

  if (rank() == 0) {
    EXPECT_EQ(Manifest::load(tmp / "many/manifest.json").to_json(), manifest.to_json());
    o.output_dir = tmp / "one";
    run_preprocess(o, MPI_COMM_SELF);
    std::vector<testing::Row> many = testing::read_all_rows(tmp / "many"), one = testing::read_all_rows(tmp / "one");
    EXPECT_GT(one.size(), 50u);
    std::sort(many.begin(), many.end());
    std::sort(one.begin(), one.end());
    EXPECT_TRUE(many == one) << many.size() << " vs " << one.size() << " rows";
    for (const auto& entry : fs::directory_iterator(tmp / "many"))
      EXPECT_NE(entry.path().extension(), ".tmp") << entry.path();
  }
}

TEST(DataMpi, PreprocessErrorReachesEveryRank) {
  SharedDir tmp("mpi-err");
  if (rank() == 0) {
    fs::create_directories(tmp / "corpus");
    for (int f = 0; f < 4; ++f) std::ofstream(tmp / ("corpus/f" + std::to_string(f) + ".txt")) << "kaka lolo.\n";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  PreprocessOptions o;
  o.inputs = {tmp / "corpus"};
  o.vocab_path = tmp / "missing-vocab.txt";
  o.output_dir = tmp / "out";
  o.progress_interval_s = 0;
  EXPECT_THROW(run_preprocess(o, MPI_COMM_WORLD), Error);
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(tmp / "out/manifest.json"));
}

TEST(DataMpi, LoaderRanksCoverTheEpochAndMatchOneRank) {
  SharedDir tmp("mpi-loader");
  const text::Vocab vocab = testing::corpus_vocab();
  const int seq = 24, G = 12;
  if (rank() == 0) testing::write_synthetic_dataset(tmp / "data", vocab, {200, 161}, seq, 32);
  MPI_Barrier(MPI_COMM_WORLD);
  LoaderOptions o;
  o.data_dir = tmp / "data";
  o.global_batch_size = G;
  o.seq_length = seq;
  o.seed = 5;
  o.rank = rank();
  o.world_size = world();
  Loader loader(o);
  std::unique_ptr<Loader> single;
  if (rank() == 0) {
    LoaderOptions s = o;
    s.rank = 0;
    s.world_size = 1;
    single = std::make_unique<Loader>(s);
  }
  const int B = G / world();
  std::vector<int> seen(361, 0);
  for (int k = 0; k < loader.batches_per_epoch(); ++k) {
    const Batch b = loader.next();
    ASSERT_EQ(b.rows, B);
    std::vector<uint64_t> indices(static_cast<size_t>(G));
    std::vector<int32_t> words(static_cast<size_t>(G * seq));
    MPI_Gather(b.example_index.data(), B, MPI_UINT64_T, indices.data(), B, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    MPI_Gather(b.input_word_ids.data(), B * seq, MPI_INT32_T, words.data(), B * seq, MPI_INT32_T, 0, MPI_COMM_WORLD);
    if (rank() == 0) {
      const Batch whole = single->next();
      ASSERT_EQ(indices, whole.example_index) << "batch " << k;
      ASSERT_EQ(words, whole.input_word_ids) << "batch " << k;
      for (uint64_t e : indices) ++seen[e];
    }
  }
  if (rank() == 0) {
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 360);
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 0), 1);
  }
}

}  // namespace
}  // namespace electra::data

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  if (r != 0) {  // one report, from rank 0; other ranks still fail the run through their exit code
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int result = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
