// The electra-preprocess program end to end: plain, under mpirun -np 2, packed (--pack true), failing, and
// refusing or replacing (--force) an existing output directory.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data_pipeline/loader/shard_dataset.h"
#include "data_pipeline/preprocess/manifest.h"
#include "lib/core/dir_lock.h"
#include "lib/core/error.h"
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
  std::string args(const std::string& out, int rows_per_shard = 16) const {
    return " --input " + (tmp / "corpus") + " --vocab " + (tmp / "vocab.txt") + " --output " + (tmp / out) +
           " --max-seq-length 40 --seed 5 --rows-per-shard " + std::to_string(rows_per_shard);
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
  EXPECT_EQ(
      run(app() + " --input " + (tmp / "nope.txt") + " --vocab " + (tmp / "vocab.txt") + " --output " + (tmp / "out"),
          &output),
      2);
  EXPECT_NE(output.find(tmp / "nope.txt"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "out/manifest.json"));
  EXPECT_EQ(run(app() + " --vocab " + (tmp / "vocab.txt"), &output), 2);  // --input and --output missing
  // A vocabulary that cannot be read is bad input too: refused before the output directory is made.
  EXPECT_EQ(run(app() + " --input " + (tmp / "corpus") + " --vocab " + (tmp / "nope-vocab.txt") + " --output " +
                    (tmp / "out2"),
                &output),
            2)
      << output;
  EXPECT_NE(output.find(tmp / "nope-vocab.txt"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "out2"));
}

// Flag values out of range: exit 2 naming the flag, before the output directory is made. The unsigned ones
// (--seed, --rows-per-shard) would otherwise read -1 as 2^64 - 1.
TEST_F(App, OutOfRangeFlagsAreRefusedBeforeAnythingIsWritten) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--seed -1", "--seed"},
      {"--seed 18446744073709551616", "--seed"},  // was read as 2^64 - 1, as was 1e23
      {"--seed 1e23", "--seed"},
      {"--rows-per-shard -1", "--rows-per-shard"},
      {"--rows-per-shard 0", "--rows-per-shard"},
      {"--chunk-rows 0", "--chunk-rows 0 must be positive"},
      {"--chunk-rows -3", "--chunk-rows -3 must be positive"},
      {"--deflate-level 10", "--deflate-level 10 is outside [0, 9]"},
      {"--deflate-level -1", "--deflate-level -1 is outside [0, 9]"},
      {"--max-seq-length 4", "--max-seq-length 4 is outside [5, 65535]"},
      {"--progress-interval -5", "--progress-interval: must be a number of seconds >= 0"},
      {"--progress-interval nan", "--progress-interval: must be a number of seconds >= 0"},
  };
  for (const auto& [flags, message] : cases) {
    std::string output;
    EXPECT_EQ(run(app() + " --input " + (tmp / "corpus") + " --vocab " + (tmp / "vocab.txt") + " --output " +
                      (tmp / "out") + " " + flags,
                  &output),
              2)
        << flags << ": " << output;
    EXPECT_NE(output.find(message), std::string::npos) << flags << ": " << output;
    EXPECT_FALSE(fs::exists(tmp / "out")) << flags;
  }
}

// A write that fails (the shell's file-size limit standing in for a full disk; SIGXFSZ ignored, so write()
// returns EFBIG) ends with exit 1 naming the file, and leaves no manifest and no temporary shard. HDF5's exit
// handler used to crash on the shard whose close had failed (SIGSEGV instead of 1).
TEST_F(App, AFullDiskExitsOneAndLeavesNoPartialShard) {
  std::string output;
  // PMIx's shared-memory store would hit the limit in MPI_Init: its hash store keeps to memory.
  const int status =
      run("PMIX_MCA_gds=hash sh -c \"trap '' XFSZ; ulimit -f 16; exec " + app() + args("full", 100000) + "\"", &output);
  EXPECT_EQ(status, 1) << output;
  EXPECT_NE(output.find("shard-r0000-00000.h5.tmp"), std::string::npos) << output;
  EXPECT_EQ(output.find("Segmentation"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "full/manifest.json"));
  // Nothing stays: the shards were staged, and the lock file this run made goes with them.
  if (fs::exists(tmp / "full")) {
    for (const auto& entry : fs::directory_iterator(tmp / "full")) ADD_FAILURE() << "left " << entry.path();
  }
}

// Ranks on nodes with their own copies must read the same vocabulary as rank 0 (an MPMD launch gives rank 1
// another one): refused on every rank (exit 2) naming the rank and the hashes, before the output exists.
TEST_F(App, RanksThatReadAnotherVocabularyAreRefused) {
  fs::copy_file(tmp / "vocab.txt", tmp / "vocab_other.txt");
  std::ofstream(tmp / "vocab_other.txt", std::ios::app) << "zzzextra\n";
  std::string other_args = args("out");
  other_args.replace(other_args.find(tmp / "vocab.txt"), (tmp / "vocab.txt").size(), tmp / "vocab_other.txt");
  std::string output;
  EXPECT_EQ(
      run("mpirun --oversubscribe --allow-run-as-root -np 1 " + app() + args("out") + " : -np 1 " + app() + other_args,
          &output),
      2)
      << output;
  EXPECT_NE(output.find("do not read the same vocabulary and input files as rank 0"), std::string::npos) << output;
  EXPECT_NE(output.find("rank 1 on "), std::string::npos) << output;
  EXPECT_NE(output.find("has vocab_hash"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

// The same for the flags that shape the shards: rank 1's --max-seq-length 32 would write rows of another
// length than the manifest (rank 0's) records.
TEST_F(App, RanksWithOtherShardFlagsAreRefused) {
  std::string other_args = args("out");
  other_args.replace(other_args.find("--max-seq-length 40"), 19, "--max-seq-length 32");
  std::string output;
  EXPECT_EQ(
      run("mpirun --oversubscribe --allow-run-as-root -np 1 " + app() + args("out") + " : -np 1 " + app() + other_args,
          &output),
      2)
      << output;
  EXPECT_NE(output.find("--max-seq-length is 32 here, 40 on rank 0"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST_F(App, InputWithoutTextIsRefused) {
  fs::create_directories(tmp / "blank");
  std::ofstream(tmp / "blank/empty.txt");
  std::ofstream(tmp / "blank/blank_lines.txt") << "\n  \n\t\n";
  std::string output;
  const std::string command = " --input " + (tmp / "blank") + " --vocab " + (tmp / "vocab.txt") + " --output " +
                              (tmp / "out") + " --max-seq-length 40";
  EXPECT_EQ(run("mpirun -np 2 --oversubscribe --allow-run-as-root " + app() + command, &output), 2) << output;
  EXPECT_NE(output.find("no examples: the 2 input file(s)"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "out/manifest.json"));
}

TEST_F(App, InvalidUtf8IsWarnedWithFileAndLine) {
  fs::create_directories(tmp / "mixed");
  std::ofstream(tmp / "mixed/a.txt") << "a clean line\n\nanother clean line\n";
  std::ofstream(tmp / "mixed/b.txt") << "clean\nstill clean\nbroken \xff\xfe here\nand \xc3 again\n";
  std::string output;
  ASSERT_EQ(run(app() + " --input " + (tmp / "mixed") + " --vocab " + (tmp / "vocab.txt") + " --output " +
                    (tmp / "out") + " --max-seq-length 40",
                &output),
            0)
      << output;
  EXPECT_NE(
      output.find(tmp / "mixed/b.txt" + ": 3 invalid UTF-8 sequence(s) replaced and dropped, the first on line 3"),
      std::string::npos)
      << output;
  EXPECT_EQ(output.find("a.txt: "), std::string::npos) << output;
  EXPECT_EQ(Manifest::load(tmp / "out/manifest.json").stats.at("invalid_utf8"), 3);
}

// An unreadable input file is bad input (exit 2, the reason named) wherever it sorts: it was exit 2 without
// a reason as the first file read, and exit 1 part-way through the run as a later one. As root (whom
// permissions do not stop) the program runs as nobody through setpriv.
TEST_F(App, AnUnreadableInputIsRefusedWhereverItSorts) {
  std::string runner;
  if (::getuid() == 0) {
    if (run("setpriv --reuid=nobody --regid=nogroup --clear-groups true", &runner) != 0) {
      GTEST_SKIP() << "root without setpriv: permissions cannot be tested";
    }
    runner = "setpriv --reuid=nobody --regid=nogroup --clear-groups ";
  }
  fs::permissions(tmp.path(), fs::perms::all);
  for (const std::string bad : {"a.txt", "b.txt"}) {
    const fs::path dir = fs::path(tmp / ("unreadable_" + bad));
    fs::create_directories(dir);
    std::ofstream(dir / "a.txt") << "some words here\n";
    std::ofstream(dir / "b.txt") << "more words there\n";
    fs::permissions(dir / bad, fs::perms::none);
    std::string output;
    EXPECT_EQ(run(runner + app() + " --input " + dir.string() + " --vocab " + (tmp / "vocab.txt") + " --output " +
                      (tmp / ("out_" + bad)) + " --max-seq-length 40",
                  &output),
              2)
        << output;
    EXPECT_NE(output.find((dir / bad).string() + ": cannot read input file: Permission denied"), std::string::npos)
        << output;
  }
}

// Text the examples lose or cannot read is said: a line longer than an example (google-research/electra's
// builder keeps its start only: a 10 MB line was one example, exit 0, without a word), and words that the
// vocabulary turns into [UNK] (shards of nothing but [UNK] were written without a warning).
TEST_F(App, LongLinesAndUnknownWordsAreWarned) {
  std::string output;
  ASSERT_EQ(run(app() + args("plain"), &output), 0) << output;
  EXPECT_EQ(output.find("held more word pieces"), std::string::npos) << output;
  EXPECT_EQ(output.find("became [UNK]"), std::string::npos) << output;
  const Manifest plain = Manifest::load(tmp / "plain/manifest.json");
  EXPECT_EQ(plain.stats.at("long_lines"), 0);
  EXPECT_EQ(plain.stats.at("long_line_tokens"), 0);

  fs::create_directories(tmp / "long");
  std::string line;
  for (int i = 0; i < 400; ++i) line += "kaka lolo ";
  std::ofstream(tmp / "long/a.txt") << "a short line\n" << line << "\n";
  ASSERT_EQ(run(app() + " --input " + (tmp / "long") + " --vocab " + (tmp / "vocab.txt") + " --output " +
                    (tmp / "long_out") + " --max-seq-length 40",
                &output),
            0)
      << output;
  const Manifest manifest = Manifest::load(tmp / "long_out/manifest.json");
  EXPECT_EQ(manifest.stats.at("long_lines"), 1);
  const uint64_t past = manifest.stats.at("long_line_tokens").get<uint64_t>();
  EXPECT_GT(past, 700u);
  EXPECT_NE(output.find("1 line(s) held more word pieces than an example of 40 tokens; " + std::to_string(past) +
                        " word pieces past that"),
            std::string::npos)
      << output;

  fs::create_directories(tmp / "foreign");
  std::ofstream(tmp / "foreign/a.txt") << "\u4e2d\u6587 \u6587\u4e2d\n\u4e2d \u6587\n";
  ASSERT_EQ(run(app() + " --input " + (tmp / "foreign") + " --vocab " + (tmp / "vocab.txt") + " --output " +
                    (tmp / "foreign_out") + " --max-seq-length 40",
                &output),
            0)
      << output;
  EXPECT_NE(output.find("100% of the words became [UNK]: " + (tmp / "vocab.txt") + " does not fit this text"),
            std::string::npos)
      << output;
}

TEST_F(App, PackPacksUnderMpirunAndRefusesABadValue) {
  std::string output;
  ASSERT_EQ(run(app() + args("plain"), &output), 0) << output;
  const std::string mpirun = "mpirun -np 2 --oversubscribe --allow-run-as-root " + app();
  ASSERT_EQ(run(mpirun + args("packed") + " --pack true", &output), 0) << output;
  EXPECT_NE(output.find("packed into"), std::string::npos) << output;
  const Manifest plain = Manifest::load(tmp / "plain/manifest.json");
  const Manifest packed = Manifest::load(tmp / "packed/manifest.json");
  EXPECT_FALSE(plain.pack);
  EXPECT_TRUE(packed.pack);
  EXPECT_EQ(packed.format_version, 2);
  EXPECT_EQ(packed.stats.at("examples"), plain.stats.at("examples"));
  EXPECT_LT(packed.total_rows, plain.total_rows);
  EXPECT_GT(packed.stats.at("slot_fill").get<double>(), plain.stats.at("slot_fill").get<double>());

  EXPECT_EQ(run(app() + args("bad") + " --pack maybe", &output), 2);
  EXPECT_NE(output.find("--pack"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "bad"));
}

// The shard files in `dir`, sorted.
std::vector<std::string> shard_files(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("shard-r", 0) == 0) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The shard files `manifest` lists, sorted.
std::vector<std::string> listed_files(const Manifest& manifest) {
  std::vector<std::string> names;
  for (const ShardInfo& s : manifest.shards) names.push_back(s.file);
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST_F(App, ExistingOutputIsRefusedWithoutForceOnEveryRank) {
  std::string output;
  ASSERT_EQ(run(app() + args("out"), &output), 0) << output;
  const std::string manifest_before = read_text(tmp / "out/manifest.json");
  const std::vector<std::string> shards_before = shard_files(tmp / "out");
  ASSERT_FALSE(shards_before.empty());

  const std::string mpirun = "mpirun -np 2 --oversubscribe --allow-run-as-root " + app();
  for (const std::string& launcher : {app(), mpirun}) {
    EXPECT_EQ(run(launcher + args("out", 8), &output), 2) << launcher << "\n" << output;
    EXPECT_NE(output.find(tmp / "out"), std::string::npos) << output;
    EXPECT_NE(output.find("--force"), std::string::npos) << output;
    EXPECT_EQ(read_text(tmp / "out/manifest.json"), manifest_before);
    EXPECT_EQ(shard_files(tmp / "out"), shards_before);
  }

  // Any other file makes the directory non-empty too: nothing is written next to it.
  fs::create_directories(tmp / "other");
  std::ofstream(tmp / "other/notes.txt") << "mine\n";
  EXPECT_EQ(run(app() + args("other"), &output), 2) << output;
  EXPECT_NE(output.find(tmp / "other"), std::string::npos) << output;
  EXPECT_FALSE(fs::exists(tmp / "other/manifest.json"));
}

TEST_F(App, ForceReplacesOnlyWhatThePreviousRunWrote) {
  std::string output;
  ASSERT_EQ(run(app() + args("out", 8), &output), 0) << output;
  const size_t many = shard_files(tmp / "out").size();
  std::ofstream(tmp / "out/notes.txt") << "mine\n";
  std::ofstream(tmp / "out/data.h5") << "not a shard of ours\n";
  std::ofstream(tmp / "out/.shard-r0001-00003.h5.tmp") << "left by a run that stopped\n";

  // Fewer, larger shards under mpirun -np 2: the old shards the manifest listed are gone, the rest stays.
  const std::string mpirun = "mpirun -np 2 --oversubscribe --allow-run-as-root " + app();
  ASSERT_EQ(run(mpirun + args("out", 32) + " --force", &output), 0) << output;
  const Manifest replaced = Manifest::load(tmp / "out/manifest.json");
  EXPECT_EQ(replaced.stats.at("ranks"), 2);
  EXPECT_LT(replaced.shards.size(), many);
  EXPECT_EQ(shard_files(tmp / "out"), listed_files(replaced));
  EXPECT_EQ(read_text(tmp / "out/notes.txt"), "mine\n");
  EXPECT_EQ(read_text(tmp / "out/data.h5"), "not a shard of ours\n");
  EXPECT_FALSE(fs::exists(tmp / "out/.shard-r0001-00003.h5.tmp"));
  EXPECT_EQ(read_text(tmp / "out/vocab.txt"), read_text(tmp / "vocab.txt"));
  std::vector<testing::Row> rows = testing::read_all_rows(tmp / "out");
  EXPECT_EQ(rows.size(), replaced.total_rows);

  // A shard file the manifest does not list is not ours to delete: refused even with --force, nothing removed.
  std::ofstream(tmp / "out/shard-r0007-00000.h5") << "someone else's\n";
  const std::string manifest_before = read_text(tmp / "out/manifest.json");
  EXPECT_EQ(run(app() + args("out") + " --force", &output), 2) << output;
  EXPECT_NE(output.find(tmp / "out/shard-r0007-00000.h5"), std::string::npos) << output;
  EXPECT_EQ(read_text(tmp / "out/shard-r0007-00000.h5"), "someone else's\n");
  EXPECT_EQ(read_text(tmp / "out/manifest.json"), manifest_before);
  for (const std::string& name : listed_files(replaced)) EXPECT_TRUE(fs::exists(tmp / ("out/" + name))) << name;
}

// A run that did not finish (killed, preempted, a node lost) leaves its lock file, shards and temporary
// files, and no manifest. Neither a rerun nor --force could use that directory: --force refused every shard
// the (missing) manifest did not list. The lock file now says that an electra-preprocess run wrote them, so
// --force replaces them; without it the refusal says what happened. A finished run leaves no lock file.
TEST_F(App, ForceReplacesWhatARunThatDidNotFinishLeft) {
  std::string output;
  ASSERT_EQ(run(app() + args("done", 8), &output), 0) << output;
  EXPECT_FALSE(fs::exists(fs::path(tmp / "done") / kOutputLockName));

  // The state a killed run leaves: the kernel dropped its flock, the file with its pid stays.
  fs::create_directories(tmp / "out");
  for (const std::string& name : shard_files(tmp / "done"))
    fs::copy_file(fs::path(tmp / "done") / name, fs::path(tmp / "out") / name);
  std::ofstream(tmp / "out/.shard-r0001-00002.h5.tmp") << "half a shard\n";
  std::ofstream(fs::path(tmp / "out") / kOutputLockName) << "pid 12345 on node7, started 2026-12-07 05:00:00 UTC\n";
  std::ofstream(tmp / "out/notes.txt") << "mine\n";

  EXPECT_EQ(run(app() + args("out"), &output), 2) << output;
  EXPECT_NE(output.find("an electra-preprocess run into it did not finish"), std::string::npos) << output;
  EXPECT_NE(output.find("--force"), std::string::npos) << output;
  EXPECT_TRUE(fs::exists(fs::path(tmp / "out") / kOutputLockName));
  // Nor are its shards read (electra-train and electra-eval open data through ShardDataset): exit 2 there.
  DatasetOptions half_written;
  half_written.data_dir = tmp / "out";
  half_written.seq_length = 40;
  try {
    ShardDataset dataset(half_written);
    ADD_FAILURE() << "a half-written directory was opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("electra-preprocess has not finished writing it"), std::string::npos)
        << e.what();
  }

  const std::string mpirun = "mpirun -np 2 --oversubscribe --allow-run-as-root " + app();
  ASSERT_EQ(run(mpirun + args("out", 32) + " --force", &output), 0) << output;
  const Manifest replaced = Manifest::load(tmp / "out/manifest.json");
  EXPECT_EQ(shard_files(tmp / "out"), listed_files(replaced));
  EXPECT_FALSE(fs::exists(tmp / "out/.shard-r0001-00002.h5.tmp"));
  EXPECT_FALSE(fs::exists(fs::path(tmp / "out") / kOutputLockName));
  EXPECT_EQ(read_text(tmp / "out/notes.txt"), "mine\n");
  EXPECT_EQ(testing::read_all_rows(tmp / "out").size(), replaced.total_rows);
}

// A second electra-preprocess into a directory another one is writing is refused, naming the holder, and
// touches nothing (the lock is held here by the test, as a running rank 0 holds it).
TEST_F(App, AnOutputBeingWrittenIsRefused) {
  std::string output;
  const DirectoryLock busy(tmp / "out", kOutputLockName);
  ASSERT_EQ(busy.state(), DirectoryLock::State::kHeld);
  EXPECT_EQ(run(app() + args("out") + " --force", &output), 2) << output;
  EXPECT_NE(output.find("is being written by another electra-preprocess (pid " + std::to_string(::getpid())),
            std::string::npos)
      << output;
  EXPECT_FALSE(fs::exists(tmp / "out/manifest.json"));
  EXPECT_TRUE(shard_files(tmp / "out").empty());
}

// Inputs that used to be found only after the output directory was taken (--force had then already removed
// the previous run's manifest and shards) or that threw past rank 0's refusal (a symbolic-link loop: exit 1 on
// one rank while the other waited for ever) are refused on every rank, before the output is touched: a
// vocabulary without a special token, inputs of blank lines, an unlistable input, HDF5 chunks too large.
TEST_F(App, BadInputsAreRefusedBeforeAnEarlierOutputIsTouched) {
  std::string output;
  ASSERT_EQ(run(app() + args("good"), &output), 0) << output;
  const std::string manifest = read_text(tmp / "good/manifest.json");
  const auto expect_good_untouched = [&](const std::string& what) {
    EXPECT_EQ(read_text(tmp / "good/manifest.json"), manifest) << what;
    EXPECT_FALSE(fs::exists(tmp / ("good/" + std::string(kOutputLockName)))) << what;
    for (const std::string& name : listed_files(Manifest::load(tmp / "good/manifest.json")))
      EXPECT_TRUE(fs::exists(tmp / ("good/" + name))) << what << ": " << name;
  };
  const std::string mpirun = "timeout 120 mpirun -np 2 --oversubscribe --allow-run-as-root " + app();
  const auto preprocess = [&](const std::string& input, const std::string& vocab, const std::string& more) {
    return run(mpirun + " --input " + input + " --vocab " + vocab + " --output " + (tmp / "good") +
                   " --max-seq-length 40 --force " + more,
               &output);
  };

  const std::string vocab = read_text(tmp / "vocab.txt");
  std::ofstream(tmp / "no_cls.txt") << vocab.substr(0, vocab.find("[CLS]\n")) + vocab.substr(vocab.find("[CLS]\n") + 6);
  EXPECT_EQ(preprocess(tmp / "corpus", tmp / "no_cls.txt", ""), 2) << output;
  EXPECT_NE(output.find("no_cls.txt: the vocabulary lacks the special token [CLS]"), std::string::npos) << output;
  expect_good_untouched("no [CLS]");

  std::ofstream(tmp / "bom.txt") << "\xEF\xBB\xBF" + vocab;
  EXPECT_EQ(preprocess(tmp / "corpus", tmp / "bom.txt", ""), 2) << output;
  EXPECT_NE(output.find("byte-order mark"), std::string::npos) << output;
  expect_good_untouched("byte-order mark");

  fs::create_directories(tmp / "blank");
  std::ofstream(tmp / "blank/blank_lines.txt") << "\n \n\t\n";
  EXPECT_EQ(preprocess(tmp / "blank", tmp / "vocab.txt", ""), 2) << output;
  EXPECT_NE(output.find("hold no text"), std::string::npos) << output;
  expect_good_untouched("blank input");

  fs::create_directories(tmp / "loop");
  std::ofstream(tmp / "loop/a.txt") << "some words\n";
  fs::create_directory_symlink("../loop", tmp / "loop/self");
  EXPECT_EQ(preprocess(tmp / "loop", tmp / "vocab.txt", ""), 2) << output;
  EXPECT_NE(output.find("symbolic links"), std::string::npos) << output;
  expect_good_untouched("symbolic-link loop");

  EXPECT_EQ(preprocess(tmp / "corpus", tmp / "vocab.txt", "--chunk-rows 100000000"), 2) << output;
  EXPECT_NE(output.find("makes HDF5 chunks of 4 GiB or more"), std::string::npos) << output;
  expect_good_untouched("--chunk-rows");

  // A path that is not UTF-8 (a Latin-1 file name): the manifest and the ranks' plan are JSON. Rank 0 threw
  // while encoding the plan, outside the error hand-over, and rank 1 waited for it forever.
  fs::create_directories(tmp / "latin1");
  std::ofstream(tmp / "latin1/caf\xE9.txt") << "some words\n";
  EXPECT_EQ(preprocess(tmp / "latin1", tmp / "vocab.txt", ""), 2) << output;
  EXPECT_NE(output.find("latin1/caf\\xE9.txt: an input file's path is not valid UTF-8"), std::string::npos) << output;
  expect_good_untouched("Latin-1 file name");
  fs::copy_file(tmp / "vocab.txt", tmp / "v\xE9.txt");
  EXPECT_EQ(preprocess(tmp / "corpus", tmp / "v\xE9.txt", ""), 2) << output;  // failed after the whole run
  EXPECT_NE(output.find("--vocab: is not valid UTF-8"), std::string::npos) << output;
  expect_good_untouched("Latin-1 --vocab");
}

// An --output inside an --input directory is not read back: a --force rerun read the first run's shards,
// manifest.json and vocab.txt as text. A file reached twice (a directory and a file in it, a link to a
// directory) is read once.
TEST_F(App, TheOutputAndRepeatedFilesAreNotReadAsInput) {
  std::string output;
  ASSERT_EQ(run(app() + args("once"), &output), 0) << output;
  const Manifest once = Manifest::load(tmp / "once/manifest.json");
  const std::string inside = " --vocab " + (tmp / "vocab.txt") + " --output " + (tmp / "corpus/shards") +
                             " --max-seq-length 40 --seed 5 --rows-per-shard 16";
  ASSERT_EQ(run(app() + " --input " + (tmp / "corpus") + inside, &output), 0) << output;
  ASSERT_EQ(run(app() + " --input " + (tmp / "corpus") + inside + " --force", &output), 0) << output;
  EXPECT_NE(output.find("not read, it is the --output directory"), std::string::npos) << output;
  const Manifest rerun = Manifest::load(tmp / "corpus/shards/manifest.json");
  EXPECT_EQ(rerun.stats["files"], once.stats["files"]);
  EXPECT_EQ(rerun.stats["examples"], once.stats["examples"]);
  EXPECT_EQ(run(app() + " --input " + (tmp / "corpus/shards/manifest.json") + inside + " --force", &output), 2)
      << output;
  EXPECT_NE(output.find("--input lies inside --output"), std::string::npos) << output;

  fs::remove_all(tmp / "corpus/shards");
  fs::create_directory_symlink(tmp / "corpus", tmp / "alias");
  const std::string first = fs::directory_iterator(tmp / "corpus")->path().string();
  ASSERT_EQ(run(app() + " --input " + (tmp / "corpus") + " " + (tmp / "alias") + " " + first + " --vocab " +
                    (tmp / "vocab.txt") + " --output " + (tmp / "twice") + " --max-seq-length 40 --seed 5",
                &output),
            0)
      << output;
  const Manifest twice = Manifest::load(tmp / "twice/manifest.json");
  EXPECT_EQ(twice.stats["files"], once.stats["files"]);
  EXPECT_EQ(twice.stats["examples"], once.stats["examples"]);
  EXPECT_NE(output.find("reached under a second path"), std::string::npos) << output;
}

// --force writes the new shards under .electra-preprocess-staging/ and replaces the earlier output only once
// they are complete: a run that fails part-way (a full disk) leaves the earlier output whole and readable
// (it used to remove its manifest and shards first, and end with neither).
TEST_F(App, AFailedForceRunLeavesTheEarlierOutputWhole) {
  std::string output;
  ASSERT_EQ(run(app() + args("out", 8), &output), 0) << output;
  const std::string manifest = read_text(tmp / "out/manifest.json");
  const Manifest before = Manifest::load(tmp / "out/manifest.json");
  const int status =
      run("PMIX_MCA_gds=hash sh -c \"trap '' XFSZ; ulimit -f 16; exec " + app() + args("out", 100000) + " --force\"",
          &output);
  EXPECT_EQ(status, 1) << output;
  EXPECT_EQ(read_text(tmp / "out/manifest.json"), manifest);
  for (const std::string& name : listed_files(before)) EXPECT_TRUE(fs::exists(tmp / ("out/" + name))) << name;
  EXPECT_FALSE(fs::exists(tmp / ("out/" + std::string(kStagingDirName))));
  EXPECT_FALSE(fs::exists(tmp / ("out/" + std::string(kOutputLockName))));
  EXPECT_EQ(testing::read_all_rows(tmp / "out").size(), before.total_rows);
}

// A run of this version that was killed leaves its lock file and staging directory, never shards beside
// them: a shard file there is another program's, refused even with --force (it used to be taken for the
// unfinished run's and removed).
TEST_F(App, AfterAKilledRunAnUnlistedShardIsStillRefused) {
  std::string output;
  ASSERT_EQ(run(app() + args("out", 8), &output), 0) << output;
  fs::create_directories(fs::path(tmp / "out") / kStagingDirName);
  std::ofstream(fs::path(tmp / "out") / kStagingDirName / "shard-r0000-00000.h5") << "half of it\n";
  std::ofstream(fs::path(tmp / "out") / kOutputLockName) << "pid 12345 on node7, started 2026-12-07 05:00:00 UTC\n";
  std::ofstream(tmp / "out/shard-r0009-00000.h5") << "precious\n";
  EXPECT_EQ(run(app() + args("out") + " --force", &output), 2) << output;
  EXPECT_NE(output.find(tmp / "out/shard-r0009-00000.h5"), std::string::npos) << output;
  EXPECT_EQ(read_text(tmp / "out/shard-r0009-00000.h5"), "precious\n");
  fs::remove(tmp / "out/shard-r0009-00000.h5");
  ASSERT_EQ(run(app() + args("out") + " --force", &output), 0) << output;  // the killed run's leftovers go
  EXPECT_FALSE(fs::exists(fs::path(tmp / "out") / kStagingDirName));
  EXPECT_FALSE(fs::exists(fs::path(tmp / "out") / kOutputLockName));
  EXPECT_EQ(shard_files(tmp / "out"), listed_files(Manifest::load(tmp / "out/manifest.json")));
}

}  // namespace
}  // namespace electra::data
