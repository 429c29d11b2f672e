// The electra-preprocess program end to end: plain, under mpirun -np 2, and failing.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data_pipeline/preprocess/manifest.h"
#include "tests/data/test_util.h"

namespace electra::data {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;

std::string app() { return ELECTRA_PREPROCESS_APP; }

// Runs a shell command; returns its exit status, with stdout+stderr in *output.
int run(const std::string& command, std::string* output) {
  const std::string log = fs::temp_directory_path() / ("electra-app-test-" + std::to_string(::getpid()) + ".log");
  const int status = std::system((command + " >" + log + " 2>&1").c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  *output = text.str();
  fs::remove(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

class App : public ::testing::Test {
 protected:
  void SetUp() override {
    if (app().empty() || !fs::exists(app())) GTEST_SKIP() << app() << " not built";
    testing::CorpusOptions co;
    co.files = 5;
    testing::write_corpus(tmp / "corpus", co);
    testing::corpus_vocab().save(tmp / "vocab.txt");
  }
  std::string args(const std::string& out) const {
    return " --input " + (tmp / "corpus") + " --vocab " + (tmp / "vocab.txt") + " --output " + (tmp / out) +
           " --max-seq-length 40 --seed 5 --rows-per-shard 16";
  }
  TempDir tmp{"app"};
};

TEST_F(App, PlainAndUnderMpirunGiveTheSameRows) {
  std::string output;
  ASSERT_EQ(run(app() + args("plain"), &output), 0) << output;
  EXPECT_NE(output.find("MB/s"), std::string::npos) << output;
  const Manifest plain = Manifest::load(tmp / "plain/manifest.json");
  EXPECT_NE(plain.command_line.find("--seed 5"), std::string::npos) << plain.command_line;
  EXPECT_EQ(plain.seed, 5u);
  EXPECT_EQ(plain.max_seq_length, 40);

  const std::string mpirun = "mpirun -np 2 --oversubscribe --allow-run-as-root " + app();
  ASSERT_EQ(run(mpirun + args("mpi"), &output), 0) << output;
  const Manifest mpi = Manifest::load(tmp / "mpi/manifest.json");
  EXPECT_EQ(mpi.total_rows, plain.total_rows);
  EXPECT_EQ(mpi.stats.at("ranks"), 2);
  bool rank1 = false;
  for (const ShardInfo& s : mpi.shards) rank1 |= s.rank == 1;
  EXPECT_TRUE(rank1) << "rank 1 wrote no shard";
  std::vector<testing::Row> a = testing::read_all_rows(tmp / "plain"), b = testing::read_all_rows(tmp / "mpi");
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  EXPECT_TRUE(a == b);
}

TEST_F(App, ErrorsNameTheFileAndExitNonZero) {
  std::string output;
  EXPECT_NE(
      run(app() + " --input " + (tmp / "nope.txt") + " --vocab " + (tmp / "vocab.txt") + " --output " + (tmp / "out"),
          &output),
      0);
  EXPECT_NE(output.find(tmp / "nope.txt"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "out/manifest.json"));
  EXPECT_NE(run(app() + " --vocab " + (tmp / "vocab.txt"), &output), 0);  // --input and --output missing
}

}  // namespace
}  // namespace electra::data
