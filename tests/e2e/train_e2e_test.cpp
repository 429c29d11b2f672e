// electra-train as users run it: real programs under mpirun on a small preprocessed corpus.
// Each training run is a few seconds (a very small model, 12-example global batches, seq 32).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "lib/train/checkpoint.h"
#include "tests/support/checkpoints.h"
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace {

using namespace electra::test;  // tests/support/programs.h: run, mpirun, read_metrics, ...

// `command` run by /bin/sh in a child process, its output into `log`; the child's pid (-1: fork failed).
// SIGINT takes its default action in the child, as in a terminal's foreground job, even where this test
// was started with SIGINT ignored (a background job of a script).
pid_t start_in_background(const std::string& command, const fs::path& log) {
  const std::string redirected = command + " > '" + log.string() + "' 2>&1";
  const pid_t child = fork();
  if (child == 0) {
    signal(SIGINT, SIG_DFL);
    execl("/bin/sh", "sh", "-c", redirected.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return child;
}

// The exit code of a child started above, once it ends (-1: killed by a signal or not our child).
int exit_code_of(pid_t child) {
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// Whether process `pid` has a handler for `signal` (its bit of SigCgt in /proc/PID/status).
bool catches(pid_t pid, int signal) {
  std::smatch caught;
  const std::string status = read_text(fs::path("/proc") / std::to_string(pid) / "status");
  if (!std::regex_search(status, caught, std::regex("SigCgt:\\s*([0-9a-f]+)"))) return false;
  return (std::stoull(caught[1], nullptr, 16) >> (signal - 1)) & 1;
}

// The pid of the electra-train rank `rank` whose command line names run_dir (found in /proc by its
// OMPI_COMM_WORLD_RANK), once its SIGUSR1 handler is installed; 0 until then.
pid_t rank_catching_sigusr1(const fs::path& run_dir, int rank) {
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator("/proc", ignored)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmdline = read_text(entry.path() / "cmdline");
    if (cmdline.find("electra-train") == std::string::npos || cmdline.find(run_dir.string()) == std::string::npos)
      continue;
    const std::string environment = read_text(entry.path() / "environ");
    if (environment.find(std::string("OMPI_COMM_WORLD_RANK=") + std::to_string(rank) + '\0') == std::string::npos)
      continue;
    const auto pid = static_cast<pid_t>(std::stol(name));
    if (catches(pid, SIGUSR1)) return pid;
  }
  return 0;
}

// Polls every `poll` for up to 120 s until `done()` holds; whether it did.
bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(poll);
  }
  return true;
}

// Polls every `poll` until `ready()` holds and rank `rank` of the run in run_dir catches SIGUSR1; its pid,
// or 0 after 120 s.
pid_t wait_for_rank(const fs::path& run_dir, int rank, std::chrono::milliseconds poll,
                    const std::function<bool()>& ready) {
  pid_t pid = 0;
  wait_until([&] { return ready() && (pid = rank_catching_sigusr1(run_dir, rank)) != 0; }, poll);
  return pid;
}

class TrainE2E : public electra::test::TrainingDataSuite<TrainE2E> {
 protected:
  static void SetUpTestSuite() { ASSERT_NO_FATAL_FAILURE(make_training_data("electra_e2e", 4, 40, 7, mpirun(2))); }
  // The settings every run shares: a very small model on the test shards, one log line per step.
  static std::string train_command(int np, const fs::path& run_dir, const std::string& extra = "") {
    return electra::test::small_train_command(mpirun(np), root() / "shards", run_dir,
                                              "--set train.steps=12 --set train.checkpoint_every=4 " + extra);
  }
};

TEST_F(TrainE2E, OneTwoAndThreeRanksFollowTheSameLossTrajectory) {
  std::vector<std::vector<nlohmann::json>> runs;
  for (int np : {1, 2, 3}) {
    const fs::path dir = run_dir("ranks" + std::to_string(np));
    const fs::path log = root() / ("ranks" + std::to_string(np) + ".log");
    ASSERT_EQ(run(train_command(np, dir), log), 0) << log_of(log);
    runs.push_back(read_metrics(dir));
    ASSERT_EQ(runs.back().size(), 12u) << log_of(log);
  }
  // Same global batch, same random numbers (keyed by position in the global batch): only the float
  // summation order of the gradient allreduce differs.
  expect_same_trajectory(runs[0], runs[1], 1e-4, "1 vs 2 ranks");
  expect_same_trajectory(runs[0], runs[2], 1e-4, "1 vs 3 ranks");
  // Gradient accumulation over micro-batches is the same global batch again.
  const fs::path micro = run_dir("micro");
  const fs::path micro_log = root() / "micro.log";
  ASSERT_EQ(run(train_command(2, micro, "--set train.micro_batch_size=2"), micro_log), 0) << log_of(micro_log);
  expect_same_trajectory(runs[0], read_metrics(micro), 1e-4, "1 rank vs 2 ranks x 3 micro-batches");
  // And it learns something: the loss after 12 steps is below the first step's.
  EXPECT_LT(runs[0].back()["loss"].get<double>(), runs[0].front()["loss"].get<double>());
}

// MFU above 100% means the peak is wrong (measured while other work shared the cores, or set too low): the
// trainer says so once, and stays silent while MFU is below 100%.
TEST_F(TrainE2E, MfuAboveThePeakIsReportedOnce) {
  const std::string warning = "is above 100%: the peak of";
  const fs::path low = run_dir("low_peak"), low_log = root() / "low_peak.log";
  ASSERT_EQ(run(train_command(1, low, "--set train.peak_gflops=0.0001"), low_log), 0) << log_of(low_log);
  const std::string text = read_text(low / "logs" / "rank_0.log");
  const size_t first = text.find(warning);
  ASSERT_NE(first, std::string::npos) << text;
  EXPECT_EQ(text.find(warning, first + 1), std::string::npos) << text;
  EXPECT_NE(text.find("the peak of 0.0001 GFLOP/s per rank (train.peak_gflops) is below what the steps achieve"),
            std::string::npos)
      << text;
  EXPECT_GT(read_metrics(low).front()["mfu"].get<double>(), 1.0);

  const fs::path normal = run_dir("normal_peak"), normal_log = root() / "normal_peak.log";
  ASSERT_EQ(run(train_command(1, normal), normal_log), 0) << log_of(normal_log);  // train.peak_gflops=50
  EXPECT_EQ(read_text(normal / "logs" / "rank_0.log").find(warning), std::string::npos) << log_of(normal_log);
}

// The data's vocabulary decides model.vocab_size; a config naming another size trains anyway, and rank 0 says
// which size it got. A config without the key (or with the data's size) hears nothing.
TEST_F(TrainE2E, AConfigVocabSizeOtherThanTheDataIsNamed) {
  const std::string warning = "config key 'model.vocab_size' = 30522 is replaced by the size of";
  const fs::path named = run_dir("vocab_named"), named_log = root() / "vocab_named.log";
  ASSERT_EQ(run(train_command(2, named, "--set train.steps=2 --set model.vocab_size=30522"), named_log), 0)
      << log_of(named_log);
  const std::string text = read_text(named / "logs" / "rank_0.log");
  EXPECT_NE(text.find(warning), std::string::npos) << text;
  EXPECT_EQ(read_text(named / "logs" / "rank_1.log").find(warning), std::string::npos);
  const fs::path plain = run_dir("vocab_plain"), plain_log = root() / "vocab_plain.log";
  ASSERT_EQ(run(train_command(1, plain, "--set train.steps=2"), plain_log), 0) << log_of(plain_log);
  EXPECT_EQ(read_text(plain / "logs" / "rank_0.log").find("'model.vocab_size'"), std::string::npos)
      << log_of(plain_log);
}

TEST_F(TrainE2E, ResumeIsBitwiseExactOnTheSameWorldSize) {
  const fs::path straight = run_dir("straight");
  const fs::path log = root() / "straight.log";
  ASSERT_EQ(run(train_command(2, straight), log), 0) << log_of(log);

  const fs::path resumed = run_dir("resumed");
  const fs::path log1 = root() / "resumed1.log", log2 = root() / "resumed2.log";
  ASSERT_EQ(run(train_command(2, resumed, "--stop-after 6"), log1), 3) << log_of(log1);
  ASSERT_EQ(read_metrics(resumed).size(), 6u);
  // What a kill during a save leaves (the save of step 8, say): a partial temporary file. The resumed run
  // removes it before its first save and continues exactly.
  const fs::path partial = resumed / "checkpoints" / ".ckpt-00000008.h5.tmp";
  std::ofstream(partial) << "partial";
  ASSERT_EQ(run(train_command(2, resumed, "--resume auto"), log2), 0) << log_of(log2);
  EXPECT_NE(read_text(log2).find("resumed from"), std::string::npos) << log_of(log2);
  EXPECT_FALSE(fs::exists(partial));
  EXPECT_NE(read_text(log2).find("removed 1 temporary file(s) an interrupted save left"), std::string::npos)
      << log_of(log2);
  EXPECT_EQ(read_text(log2).find("differ from its own"), std::string::npos) << log_of(log2);
  expect_same_trajectory(read_metrics(straight), read_metrics(resumed), 0.0, "straight vs stopped+resumed");

  // The final weights and optimizer moments are bitwise identical, and so is the loader position.
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000012.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, resumed / final_name));
  EXPECT_EQ(electra::train::CheckpointFile::open(straight / final_name).loader(),
            electra::train::CheckpointFile::open(resumed / final_name).loader());

  // Resuming a finished run trains nothing and says so; below its step is refused (exit 2, config.json as
  // it was: it was rewritten with the lower step count, and the run ended 0 without a final checkpoint).
  const fs::path log3 = root() / "resumed3.log";
  ASSERT_EQ(run(train_command(2, resumed, "--resume auto"), log3), 0) << log_of(log3);
  EXPECT_NE(read_text(log3).find("the run is complete (train.steps 12)"), std::string::npos) << log_of(log3);
  const std::string config = read_text(resumed / "config.json");
  ASSERT_EQ(run(train_command(2, resumed, "--resume auto --set train.steps=8"), log3), 2) << log_of(log3);
  EXPECT_NE(read_text(log3).find("is at step 12, past config key 'train.steps' (8): nothing would be trained"),
            std::string::npos)
      << log_of(log3);
  EXPECT_EQ(read_text(log3).find("The run continues"), std::string::npos) << "a refused resume does not continue";
  EXPECT_EQ(read_text(resumed / "config.json"), config);
  EXPECT_EQ(read_metrics(resumed).size(), 12u);
}

// The thread count may change on resume: train.parallel_chunks = 0 (one chunk per thread) keeps the
// checkpoint's chunk count, which fixes the order of the gradient sums, so the run still ends bitwise as one
// never stopped (with 1 thread it took 1 chunk, and every tensor differed in the last bits).
TEST_F(TrainE2E, ResumeWithAnotherThreadCountKeepsTheChunksAndTheBits) {
  const fs::path straight = run_dir("threads_straight"), resumed = run_dir("threads_resumed");
  const fs::path log = root() / "threads.log";
  ASSERT_EQ(run(train_command(1, straight, "--set train.threads=2"), log), 0) << log_of(log);
  ASSERT_EQ(run(train_command(1, resumed, "--set train.threads=2 --stop-after 6"), log), 3) << log_of(log);
  ASSERT_EQ(run(train_command(1, resumed, "--set train.threads=1 --resume auto"), log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("keeping the checkpoint's 2"), std::string::npos) << log_of(log);
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000012.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, resumed / final_name));
  expect_same_trajectory(read_metrics(straight), read_metrics(resumed), 0.0, "2 threads vs 2 then 1");
}

// Ranks of other thread counts (nodes of other sizes) run other chunk counts; each keeps its own on resume
// (checkpoints list them per rank), so the run still ends bitwise. Every rank took rank 0's count before.
TEST_F(TrainE2E, RanksOfOtherThreadCountsResumeBitwise) {
  const auto two_ranks = [](const fs::path& dir, const std::string& extra) {
    const std::string settings = "--set train.steps=8 --set train.checkpoint_every=4 " + extra;
    return mpirun(1) + small_train_command("", root() / "shards", dir, settings + " --set train.threads=1") +
           " : -np 1 " + small_train_command("", root() / "shards", dir, settings + " --set train.threads=2");
  };
  const fs::path straight = run_dir("mixed_straight"), resumed = run_dir("mixed_resumed");
  const fs::path log = root() / "mixed_threads.log";
  ASSERT_EQ(run(two_ranks(straight, ""), log), 0) << log_of(log);
  ASSERT_EQ(run(two_ranks(resumed, "--stop-after 3"), log), 3) << log_of(log);
  ASSERT_EQ(run(two_ranks(resumed, "--resume auto"), log), 0) << log_of(log);
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000008.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, resumed / final_name));
  expect_same_trajectory(read_metrics(straight), read_metrics(resumed), 0.0, "mixed threads, straight vs resumed");
  EXPECT_EQ(electra::train::CheckpointFile::open(straight / final_name).state()["rank_parallel_chunks"],
            nlohmann::json::array({1, 2}));
  // A count the run cannot keep is said by the rank it concerns (here only rank 1 ran 2 chunks).
  ASSERT_EQ(run(two_ranks(straight, "--resume auto --set train.steps=9 --set train.parallel_chunks=1"), log), 0)
      << log_of(log);
  EXPECT_NE(read_text(log).find("[rank 1] [warning] the checkpoint was trained with 2 parallel chunk(s), this run "
                                "uses 1"),
            std::string::npos)
      << log_of(log);
  EXPECT_EQ(read_text(log).find("[rank 0] [warning] the checkpoint was trained with"), std::string::npos)
      << log_of(log);
}

// Resuming on other shards of the same vocabulary is allowed, and said: the checkpoint records the data's
// identity (counts, shard list), and the loader's position then counts other examples.
TEST_F(TrainE2E, ResumeOnOtherShardsIsNamedInAWarning) {
  const fs::path dir = run_dir("other_data"), log = root() / "other_data.log";
  fs::create_directories(root() / "corpus_one");
  const fs::path first = fs::directory_iterator(root() / "corpus")->path();
  fs::copy_file(first, root() / "corpus_one" / first.filename(), fs::copy_options::overwrite_existing);
  fs::remove_all(root() / "shards_one");
  ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(root(), "corpus_one", "shards_one", ""));
  ASSERT_EQ(run(train_command(1, dir, "--stop-after 2"), log), 3) << log_of(log);
  ASSERT_EQ(run(train_command(1, dir, "--resume auto --set train.steps=3"), log), 0) << log_of(log);
  EXPECT_EQ(read_text(log).find("was trained on other shards"), std::string::npos) << log_of(log);
  const std::string other = electra::test::small_train_command(
      "", root() / "shards_one", dir, "--set train.steps=4 --set train.checkpoint_every=4 --resume auto");
  ASSERT_EQ(run(other, log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("was trained on other shards than data.dir " + (root() / "shards_one").string()),
            std::string::npos)
      << log_of(log);
  EXPECT_NE(read_text(log).find("examples "), std::string::npos) << log_of(log);
}

// Other shards with fewer examples than the checkpoint's epoch had read: that epoch is over, and training goes
// on with the next one, with a warning (it was refused: "state cursor ... is past the ... examples").
TEST_F(TrainE2E, ResumeOnFewerExamplesThanReadStartsTheNextEpoch) {
  const fs::path dir = run_dir("fewer_examples"), log = root() / "fewer_examples.log";
  const fs::path small = root() / "shards_fewer";
  fs::create_directories(root() / "corpus_fewer");
  const fs::path first = fs::directory_iterator(root() / "corpus")->path();
  fs::copy_file(first, root() / "corpus_fewer" / first.filename(), fs::copy_options::overwrite_existing);
  fs::remove_all(small);
  ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(root(), "corpus_fewer", "shards_fewer", ""));
  const int64_t rows = nlohmann::json::parse(read_text(small / "manifest.json"))["total_rows"].get<int64_t>();
  const int64_t all = nlohmann::json::parse(read_text(root() / "shards" / "manifest.json"))["total_rows"];
  const int64_t stop = rows / 12 + 1;  // batches of 12: past the small set's examples, within the full set's epoch
  ASSERT_GE(rows, 12);
  ASSERT_LE(12 * stop, all);
  ASSERT_EQ(run(train_command(1, dir, "--stop-after " + std::to_string(stop)), log), 3) << log_of(log);
  const std::string other = electra::test::small_train_command(
      "", small, dir,
      "--set train.steps=" + std::to_string(stop + 2) + " --set train.checkpoint_every=4 --resume auto");
  ASSERT_EQ(run(other, log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("examples of its epoch 0, more than the " + std::to_string(rows) + " of data.dir " +
                                small.string() + ": training goes on with epoch 1"),
            std::string::npos)
      << log_of(log);
  const std::string last = nlohmann::json::parse(read_text(dir / "checkpoints" / "latest"))["checkpoint"];
  const electra::train::CheckpointFile end = electra::train::CheckpointFile::open(dir / "checkpoints" / last);
  EXPECT_EQ(end.loader()["epoch"], 1);
  EXPECT_EQ(end.loader()["cursor"], 24);
}

// Paths given relative are recorded absolute: electra-export (which finds the vocabulary through the recorded
// data.dir) from another directory failed with "vocabulary shards/vocab.txt ... does not exist".
TEST_F(TrainE2E, RelativeDataPathsAreRecordedAbsolute) {
  const fs::path log = root() / "relative.log";
  cleared(root() / "relative_run");
  std::string command =
      small_train_command("", "shards", "relative_run", "--set train.steps=1 --set data.eval_dir=shards");
  const std::string preset = "jobs/configs/tiny.json";  // kSmallModelFlags' path, relative to the tests' cwd
  command.replace(command.find(preset), preset.size(), (fs::current_path() / preset).string());
  ASSERT_EQ(run("cd '" + root().string() + "' && " + command, log), 0) << log_of(log);
  const nlohmann::json config = nlohmann::json::parse(read_text(root() / "relative_run" / "config.json"));
  EXPECT_EQ(config["data"]["dir"], (root() / "shards").string());
  EXPECT_EQ(config["data"]["eval_dir"], (root() / "shards").string());
  EXPECT_EQ(run("cd / && " + bin("electra-export") + " --checkpoint '" + (root() / "relative_run").string() +
                    "' --output '" + cleared(root() / "relative_export").string() + "' --force",
                log),
            0)
      << log_of(log);
}

// data.mask_prob above what model.num_token_predictions holds was capped without a word (Google's large
// recipe, 0.25, on the small preset trained at 15%): set-up warns, naming both keys and the value to set.
TEST_F(TrainE2E, MaskingCappedByTheModelsPredictionsIsWarned) {
  const fs::path log = root() / "mask_prob.log";
  ASSERT_EQ(run(train_command(1, run_dir("mask_half"), "--set train.steps=1 --set data.mask_prob=0.5"), log), 0)
      << log_of(log);
  EXPECT_NE(read_text(log).find("config key 'data.mask_prob' = 0.5 asks for 15 masked positions in a full row of 32 "
                                "tokens, more than 'model.num_token_predictions' = 5: full rows get 5 (16.7% of their "
                                "tokens). google-research/electra derives it: set model.num_token_predictions=16"),
            std::string::npos)
      << log_of(log);
  ASSERT_EQ(run(train_command(1, run_dir("mask_default"), "--set train.steps=1"), log), 0) << log_of(log);
  EXPECT_EQ(read_text(log).find("data.mask_prob"), std::string::npos) << log_of(log);
}

// The collapse warning's streak of flat log windows is checkpointed: a run stopped and resumed every few
// windows warns as the run without stops does (it was lost at each resume, so requeued jobs never warned).
// min_gain 10 nats makes every judged window "flat": windows end at 4, 6, 8, 10, 12; the fifth warns.
TEST_F(TrainE2E, TheCollapseWarningsStreakSurvivesAResume) {
  const std::string flat =
      "--set train.log_every=2 --set optim.warmup_steps=2 --set train.collapse_warning.min_gain=10 ";
  const std::string warning = "the discriminator is not learning: for 5 log windows (steps 4-12)";
  const fs::path straight = run_dir("collapse_straight"), log = root() / "collapse.log";
  ASSERT_EQ(run(train_command(1, straight, flat), log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find(warning), std::string::npos) << log_of(log);
  const fs::path resumed = run_dir("collapse_resumed");
  ASSERT_EQ(run(train_command(1, resumed, flat + "--stop-after 7"), log), 3) << log_of(log);  // windows 4 and 6
  EXPECT_EQ(read_text(log).find("is not learning"), std::string::npos) << log_of(log);
  ASSERT_EQ(run(train_command(1, resumed, flat + "--resume auto"), log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find(warning), std::string::npos) << log_of(log);
}

// A stop between two training lines: the stop checkpoint keeps every rank's open log window, so the resumed
// run's next line averages the same steps as the straight run's (it averaged only the steps after the
// resume, and the steps before it were never logged). On another rank count rank 0 takes the windows.
TEST_F(TrainE2E, AStopBetweenTrainingLinesLogsTheSameLines) {
  const std::string every5 = "--set train.log_every=5 ";
  const fs::path straight = run_dir("lines_straight"), log = root() / "lines_straight.log";
  ASSERT_EQ(run(train_command(2, straight, every5), log), 0) << log_of(log);
  const std::vector<std::string> keys = {"loss",          "gen_loss",  "disc_loss", "mlm_accuracy",
                                         "disc_accuracy", "grad_norm", "disc_auc",  "disc_gain"};
  for (int np : {2, 3}) {
    const fs::path resumed = run_dir("lines_resumed" + std::to_string(np));
    const fs::path log1 = root() / "lines1.log", log2 = root() / "lines2.log";
    ASSERT_EQ(run(train_command(2, resumed, every5 + "--stop-after 7"), log1), 3) << log_of(log1);
    ASSERT_EQ(read_metrics(resumed).size(), 1u);  // step 5
    ASSERT_EQ(run(train_command(np, resumed, every5 + "--resume auto"), log2), 0) << log_of(log2);
    expect_same_trajectory(read_metrics(straight), read_metrics(resumed), np == 2 ? 0.0 : 1e-4,
                           "straight vs stopped at 7 and resumed on " + std::to_string(np) + " ranks", keys);
  }
}

TEST_F(TrainE2E, ResumeWithAnotherRankCountContinuesTheSameRun) {
  const fs::path straight = run_dir("straight2");
  const fs::path log = root() / "straight2.log";
  ASSERT_EQ(run(train_command(2, straight), log), 0) << log_of(log);
  const fs::path moved = run_dir("moved");
  const fs::path log1 = root() / "moved1.log", log2 = root() / "moved2.log";
  ASSERT_EQ(run(train_command(2, moved, "--stop-after 5"), log1), 3) << log_of(log1);
  ASSERT_EQ(run(train_command(3, moved, "--resume auto"), log2), 0) << log_of(log2);
  expect_same_trajectory(read_metrics(straight), read_metrics(moved), 1e-4, "2 ranks vs 2 then 3 ranks");
}

TEST_F(TrainE2E, SigusrOnOneRankStopsAllRanksWithACheckpoint) {
  const fs::path dir = run_dir("signal");
  const fs::path log = root() / "signal.log";
  const pid_t child =
      start_in_background(train_command(2, dir, "--set train.steps=100000 --set train.checkpoint_every=0"), log);
  ASSERT_GE(child, 0);
  // Wait until training runs, then signal rank 1 only.
  const pid_t rank1 =
      wait_for_rank(dir, 1, std::chrono::milliseconds(200), [&] { return read_metrics(dir).size() >= 3; });
  ASSERT_GT(rank1, 0) << log_of(log);
  // A second run on the same directory while this one trains is refused (run_lock.h), naming the holder,
  // before it writes anything.
  const fs::path second_log = root() / "signal_second.log";
  EXPECT_EQ(run(train_command(1, dir, "--set train.steps=100000 --resume auto"), second_log), 2) << log_of(second_log);
  EXPECT_NE(read_text(second_log).find("is in use by another electra-train (pid "), std::string::npos)
      << log_of(second_log);
  EXPECT_EQ(read_text(dir / "logs" / "rank_0.log").find("is in use by another"), std::string::npos);
  ASSERT_EQ(kill(rank1, SIGUSR1), 0);
  EXPECT_EQ(exit_code_of(child), 3) << log_of(log);
  EXPECT_NE(read_text(log).find("rank 1: SIGUSR1"), std::string::npos) << log_of(log);
  const auto metrics = read_metrics(dir);
  ASSERT_FALSE(metrics.empty());
  const int64_t stopped_at = metrics.back()["step"].get<int64_t>();
  char name[32];
  std::snprintf(name, sizeof(name), "ckpt-%08lld.h5", static_cast<long long>(stopped_at));
  ASSERT_TRUE(fs::exists(dir / "checkpoints" / name)) << log_of(log);

  // The run continues from there.
  const fs::path log2 = root() / "signal2.log";
  ASSERT_EQ(run(train_command(2, dir, "--set train.steps=100000 --set train.checkpoint_every=0 --stop-after 2"), log2),
            3)
      << log_of(log2);
  const auto after = read_metrics(dir);
  EXPECT_EQ(after.back()["step"].get<int64_t>(), stopped_at + 2) << log_of(log2);
}

// Ctrl-C (SIGINT) used to kill electra-train on the spot, losing the steps since its last checkpoint. The
// first Ctrl-C now stops it as SIGTERM does (a checkpoint, exit 3); a second, while it still works, ends it.
// Under mpirun the ranks get SIGTERM from mpirun instead (jobs.local tests jobs/local/pretrain.sh's Ctrl-C).
TEST_F(TrainE2E, CtrlCStopsWithACheckpointAndASecondCtrlCQuitsAtOnce) {
  const fs::path dir = run_dir("ctrl_c");
  const fs::path log = root() / "ctrl_c.log";
  const pid_t train =
      start_in_background("exec " + small_train_command("", root() / "shards", dir,
                                                        "--set train.steps=100000 --set train.checkpoint_every=0"),
                          log);
  ASSERT_GT(train, 0);
  ASSERT_TRUE(wait_until([&] { return read_metrics(dir).size() >= 3 && catches(train, SIGINT); })) << log_of(log);
  ASSERT_EQ(kill(train, SIGINT), 0);
  EXPECT_EQ(exit_code_of(train), 3) << log_of(log);
  EXPECT_NE(read_text(log).find("(rank 0: SIGINT); writing a checkpoint, then exiting with code 3 (Ctrl-C again quits "
                                "at once, without it)"),
            std::string::npos)
      << log_of(log);
  const auto metrics = read_metrics(dir);
  ASSERT_FALSE(metrics.empty());
  char name[32];
  std::snprintf(name, sizeof(name), "ckpt-%08lld.h5", static_cast<long long>(metrics.back()["step"].get<int64_t>()));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / name)) << log_of(log);

  // A step that never ends (debug.hang_step) keeps the first Ctrl-C waiting for a step boundary; the second
  // ends the process with SIGINT's default action.
  const fs::path hung_dir = run_dir("ctrl_c_twice");
  const fs::path hung_log = root() / "ctrl_c_twice.log";
  const pid_t hung = start_in_background(
      "exec " + small_train_command("", root() / "shards", hung_dir,
                                    "--set train.steps=100 --set train.checkpoint_every=0 --set debug.hang_step=2 "
                                    "--set debug.hang_rank=0"),
      hung_log);
  ASSERT_GT(hung, 0);
  ASSERT_TRUE(wait_until([&] {
    return read_text(hung_log).find("stops making progress at step 2") != std::string::npos && catches(hung, SIGINT);
  })) << log_of(hung_log);
  ASSERT_EQ(kill(hung, SIGINT), 0);
  // The handler has run once SIGINT's action is the default again.
  ASSERT_TRUE(wait_until([&] { return !catches(hung, SIGINT); })) << log_of(hung_log);
  ASSERT_EQ(kill(hung, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(waitpid(hung, &status, 0), hung);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << "status " << status << "\n" << log_of(hung_log);
  EXPECT_FALSE(fs::exists(hung_dir / "checkpoints" / "ckpt-00000002.h5"));
}

TEST_F(TrainE2E, NonFiniteGradientOnOneRankIsSkippedByAllRanks) {
  const fs::path dir = run_dir("nan");
  const fs::path log = root() / "nan.log";
  // Steps are numbered from 1 in logs: debug.nan_step=3 poisons the 4th step.
  ASSERT_EQ(run(train_command(2, dir, "--set debug.nan_step=3 --set debug.nan_rank=1 --set train.steps=8"), log), 0)
      << log_of(log);
  EXPECT_NE(read_text(log).find("non-finite loss or gradient on rank(s) 1"), std::string::npos) << log_of(log);
  std::vector<int64_t> steps;
  for (const auto& m : read_metrics(dir)) steps.push_back(m["step"].get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 5, 6, 7, 8}));
  // The checkpoint at step 8 passed the all-ranks parameter agreement check (exit 0 above) and is finite.
  const auto ckpt = electra::train::CheckpointFile::open(dir / "checkpoints" / "ckpt-00000008.h5");
  ASSERT_NO_FATAL_FAILURE(electra::test::assert_finite_params(ckpt));
  EXPECT_EQ(ckpt.state()["skipped_steps"].get<int64_t>(), 1);

  const fs::path dir2 = run_dir("nan_stop");
  const fs::path log2 = root() / "nan_stop.log";
  EXPECT_EQ(run(train_command(2, dir2, "--set debug.nan_step=2 --set debug.nan_rank=0 --set train.max_skipped_steps=0"),
                log2),
            4)
      << log_of(log2);
}

TEST_F(TrainE2E, ARankThatThrowsEndsTheJobWithinSeconds) {
  const fs::path dir = run_dir("throw");
  const fs::path log = root() / "throw.log";
  const auto start = std::chrono::steady_clock::now();
  const int code = run("timeout 120 " + train_command(2, dir,
                                                      "--set debug.throw_step=3 --set debug.throw_rank=1 "
                                                      "--set train.steps=100000"),
                       log);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(code, 0) << log_of(log);
  EXPECT_NE(code, 124) << "timed out: the job hung" << log_of(log);
  EXPECT_LT(seconds, 60.0);
  EXPECT_NE(read_text(log).find("injected failure on rank 1"), std::string::npos) << log_of(log);

  // It failed before its first checkpoint (step 4): run again, it starts afresh and logs steps 1-2 again. They
  // were kept from the crashed run too, in metrics.jsonl and TensorBoard: 1, 2, 1, 2, 3, 4.
  ASSERT_EQ(run(train_command(1, dir, "--set train.steps=4 --resume auto"), log), 0) << log_of(log);
  std::vector<int64_t> steps;
  for (const nlohmann::json& line : read_metrics(dir)) steps.push_back(line["step"].get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(fs::is_directory(dir / "tensorboard.abandoned")) << "the crashed course's event file, set aside";
}

TEST_F(TrainE2E, AStuckRankIsAbortedByTheWatchdog) {
  const fs::path dir = run_dir("hang");
  const fs::path log = root() / "hang.log";
  const auto start = std::chrono::steady_clock::now();
  const int code = run("timeout 120 " + train_command(2, dir,
                                                      "--set debug.hang_step=2 --set debug.hang_rank=0 "
                                                      "--set train.step_timeout=3 --set train.steps=100000"),
                       log);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(code, 5) << "the watchdog's own exit code (3 means a clean stop with a checkpoint)" << log_of(log);
  EXPECT_LT(seconds, 60.0);
  EXPECT_NE(read_text(log).find("watchdog"), std::string::npos) << log_of(log);
}

// A rank that hangs inside a checkpoint save (the others wait in its collectives) is caught by the
// checkpoint's own deadline, not missed because the step deadline is off during the save.
TEST_F(TrainE2E, AStuckCheckpointIsAbortedByTheWatchdog) {
  const fs::path dir = run_dir("hang_checkpoint");
  const fs::path log = root() / "hang_checkpoint.log";
  const auto start = std::chrono::steady_clock::now();
  const int code =
      run("timeout 120 " + train_command(2, dir,
                                         "--set debug.hang_checkpoint_step=4 "
                                         "--set debug.hang_checkpoint_rank=1 --set train.checkpoint_every=4 "
                                         "--set train.checkpoint_timeout=3 --set train.steps=100000"),
          log);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(code, 5) << log_of(log);
  EXPECT_LT(seconds, 60.0);
  EXPECT_NE(read_text(log).find("in the checkpoint after step 4 (train.checkpoint_timeout)"), std::string::npos)
      << log_of(log);
}

TEST_F(TrainE2E, MaxTimeStopsWithACheckpoint) {
  const fs::path dir = run_dir("maxtime");
  const fs::path log = root() / "maxtime.log";
  ASSERT_EQ(run(train_command(2, dir, "--set train.steps=100000 --set train.checkpoint_every=0 --max-time 2"), log), 3)
      << log_of(log);
  EXPECT_NE(read_text(log).find("--max-time"), std::string::npos) << log_of(log);
  const auto metrics = read_metrics(dir);
  ASSERT_FALSE(metrics.empty()) << log_of(log);
  char name[32];
  std::snprintf(name, sizeof(name), "ckpt-%08lld.h5", static_cast<long long>(metrics.back()["step"].get<int64_t>()));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / name)) << log_of(log);
}

TEST_F(TrainE2E, BadInputIsReportedBeforeTrainingAndOverwritesNothing) {
  const fs::path dir = run_dir("bad");
  const fs::path log = root() / "bad.log";
  EXPECT_EQ(run(train_command(2, dir, "--set train.stpes=5"), log), 2);
  EXPECT_NE(read_text(log).find("train.stpes"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set train.batch_size=0"), log), 2) << log_of(log);
  // A missing data.eval_dir said word for word what a missing data.dir says; a sequence length the shards do
  // not have did not name its key.
  EXPECT_EQ(run(train_command(1, dir, "--set data.eval_dir=/nonexistent --set train.eval_every=2"), log), 2);
  EXPECT_NE(read_text(log).find("config key 'data.eval_dir': /nonexistent: data directory does not exist"),
            std::string::npos)
      << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set data.seq_length=40"), log), 2);
  EXPECT_NE(read_text(log).find("but 40 was asked for (electra-train: config key 'data.seq_length'"), std::string::npos)
      << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set data.dir=" + (root() / "missing").string()), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("missing"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set train.collapse_warning.windows=-1"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("train.collapse_warning.windows"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set train.collapse_warning.min_gain=nan"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("train.collapse_warning.min_gain"), std::string::npos) << log_of(log);
  EXPECT_FALSE(fs::exists(dir)) << "a run refused with exit 2 wrote " << dir;

  // A finished run: --resume none refuses to overwrite it; another model config cannot resume it.
  ASSERT_EQ(run(train_command(1, dir, "--set train.steps=4"), log), 0) << log_of(log);
  const auto before = fs::last_write_time(dir / "checkpoints" / "ckpt-00000004.h5");
  EXPECT_EQ(run(train_command(1, dir, "--set train.steps=8 --resume none"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("already has checkpoints"), std::string::npos) << log_of(log);
  EXPECT_EQ(run(train_command(1, dir, "--set train.steps=8 --set model.num_layers=3"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("model.num_layers"), std::string::npos) << log_of(log);
  EXPECT_EQ(fs::last_write_time(dir / "checkpoints" / "ckpt-00000004.h5"), before);

  // A finished run may be lengthened, and the learning rate changed: it resumes, and says what differs.
  ASSERT_EQ(run(train_command(1, dir, "--set train.steps=6 --set optim.lr=0.002 --resume auto"), log), 0)
      << log_of(log);
  const std::string text = read_text(log);
  EXPECT_NE(text.find("with settings that differ from its own: train.steps: checkpoint 4, run 6; optim.lr: checkpoint"),
            std::string::npos)
      << log_of(log);
  EXPECT_NE(text.find("run 0.002"), std::string::npos) << log_of(log);
}

// Every checkpoint of a run unreadable: --resume auto used to start afresh and append steps 1..N to
// metrics.jsonl a second time. It refuses (exit 2) and leaves the run as it was.
TEST_F(TrainE2E, ResumeAutoRefusesARunWhoseCheckpointsAreAllDamaged) {
  const fs::path dir = run_dir("damaged");
  const fs::path log = root() / "damaged.log";
  ASSERT_EQ(run(train_command(2, dir, "--set train.steps=8"), log), 0) << log_of(log);
  int damaged = 0;
  for (const auto& entry : fs::directory_iterator(dir / "checkpoints")) {
    if (entry.path().extension() != ".h5") continue;
    std::ofstream(entry.path(), std::ios::trunc) << "not a checkpoint";
    ++damaged;
  }
  ASSERT_EQ(damaged, 2);  // steps 4 and 8
  const std::string metrics = read_text(dir / "metrics.jsonl");
  EXPECT_EQ(run(train_command(2, dir, "--set train.steps=12 --resume auto"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("none is complete and readable"), std::string::npos) << log_of(log);
  EXPECT_EQ(read_text(dir / "metrics.jsonl"), metrics);
}

// Changes one value of a checkpoint's first parameter tensor in place, leaving its crc32c as it was (a bit
// that flipped on disk).
void corrupt_first_parameter(const fs::path& path) {
  const std::string name = electra::train::CheckpointFile::open(path).tensors(electra::train::Section::kParams)[0].name;
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0) << path;
  const hid_t dataset = H5Dopen2(file, ("/params/" + name).c_str(), H5P_DEFAULT);
  ASSERT_GE(dataset, 0) << name;
  const hid_t space = H5Dget_space(dataset);
  std::vector<float> values(static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
  ASSERT_GE(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  values[0] += 1.0f;
  ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  H5Sclose(space);
  H5Dclose(dataset);
  H5Fclose(file);
}

// The newest checkpoint's tensor changed on disk: --resume auto skips it with a warning (it stopped the run
// with exit 2) and continues from the one before, ending as the run that never stopped.
TEST_F(TrainE2E, ResumeAutoSkipsACorruptCheckpoint) {
  const fs::path straight = run_dir("corrupt_straight"), log = root() / "corrupt.log";
  ASSERT_EQ(run(train_command(2, straight), log), 0) << log_of(log);
  const fs::path dir = run_dir("corrupt");
  ASSERT_EQ(run(train_command(2, dir, "--stop-after 6"), log), 3) << log_of(log);
  const fs::path newest = dir / "checkpoints" / "ckpt-00000006.h5";
  ASSERT_NO_FATAL_FAILURE(corrupt_first_parameter(newest));
  ASSERT_EQ(run(train_command(2, dir, "--resume auto"), log), 0) << log_of(log);
  const std::string text = read_text(log);
  EXPECT_NE(text.find("skipping checkpoint " + newest.string()), std::string::npos) << log_of(log);
  EXPECT_NE(text.find("is corrupt (CRC-32C"), std::string::npos) << log_of(log);
  EXPECT_NE(text.find("resumed from " + (dir / "checkpoints" / "ckpt-00000004.h5").string()), std::string::npos)
      << log_of(log);
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000012.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, dir / final_name));
  expect_same_trajectory(read_metrics(straight), read_metrics(dir), 0.0, "straight vs resumed past a corrupt file");
}

// --resume of an earlier checkpoint, then a run that ends before its first save (a rank throws): the later
// checkpoints go aside at start-up, with the metrics lines of their course, so `--resume auto` returns to
// the resumed step (it took the abandoned newest, and metrics.jsonl lost the lines between) and the run ends
// as one that never left it.
TEST_F(TrainE2E, AResumeOfAnEarlierCheckpointSetsTheLaterOnesAsideAtOnce) {
  const fs::path straight = run_dir("aside_straight"), dir = run_dir("aside"), log = root() / "aside.log";
  ASSERT_EQ(run(train_command(2, straight), log), 0) << log_of(log);
  ASSERT_EQ(run(train_command(2, dir), log), 0) << log_of(log);
  const fs::path checkpoints = dir / "checkpoints";
  EXPECT_NE(run(train_command(2, dir,
                              "--resume " + (checkpoints / "ckpt-00000004.h5").string() +
                                  " --set debug.throw_step=6 --set debug.throw_rank=0"),
                log),
            0)
      << log_of(log);
  EXPECT_FALSE(fs::exists(checkpoints / "ckpt-00000008.h5"));
  EXPECT_TRUE(fs::exists(checkpoints / "ckpt-00000008.h5.abandoned"));
  EXPECT_TRUE(fs::exists(checkpoints / "ckpt-00000012.h5.abandoned"));
  EXPECT_TRUE(fs::exists(dir / "metrics.jsonl.abandoned"));
  ASSERT_EQ(run(train_command(2, dir, "--resume auto"), log), 0) << log_of(log);
  EXPECT_NE(read_text(log).find("resumed from " + (checkpoints / "ckpt-00000004.h5").string()), std::string::npos)
      << log_of(log);
  const fs::path final_name = fs::path("checkpoints") / "ckpt-00000012.h5";
  ASSERT_NO_FATAL_FAILURE(electra::test::expect_same_checkpoint_tensors(straight / final_name, dir / final_name));
  expect_same_trajectory(read_metrics(straight), read_metrics(dir), 0.0, "straight vs back from a resume that failed");
}

// SIGUSR1 while the ranks are still setting up (data, model, checkpoint) used to kill them (exit 138):
// the handlers are installed first, and a stop before the first step writes a checkpoint of the start
// state and exits 3; the run then continues exactly as one that was never stopped.
TEST_F(TrainE2E, ASignalDuringSetUpStopsWithACheckpointBeforeTheFirstStep) {
  const fs::path dir = run_dir("early_signal");
  const fs::path log = root() / "early_signal.log";
  const pid_t child =
      start_in_background(train_command(2, dir, "--set train.steps=100000 --set data.verify_checksums=true"), log);
  ASSERT_GE(child, 0);
  // Signal rank 1 as soon as it catches SIGUSR1 (before its set-up; its log file does not exist yet).
  const pid_t rank1 = wait_for_rank(dir, 1, std::chrono::milliseconds(2), [] { return true; });
  ASSERT_GT(rank1, 0) << log_of(log);
  ASSERT_EQ(kill(rank1, SIGUSR1), 0);
  ASSERT_EQ(exit_code_of(child), 3) << log_of(log);
  EXPECT_NE(read_text(log).find("rank 1: SIGUSR1), before the first step"), std::string::npos) << log_of(log);
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "ckpt-00000000.h5")) << log_of(log);
  EXPECT_TRUE(read_metrics(dir).empty());

  // Resumed, its first steps are those of a run never stopped.
  const fs::path log2 = root() / "early_signal2.log";
  ASSERT_EQ(run(train_command(2, dir, "--set train.steps=100000 --stop-after 3"), log2), 3) << log_of(log2);
  const fs::path straight = run_dir("early_signal_straight");
  const fs::path log3 = root() / "early_signal3.log";
  ASSERT_EQ(run(train_command(2, straight, "--set train.steps=100000 --stop-after 3"), log3), 3) << log_of(log3);
  expect_same_trajectory(read_metrics(straight), read_metrics(dir), 0, "resumed after a stop during set-up");
}

// Settings that can only be wrong are refused at set-up (exit 2), before the data is read and before
// anything in the run directory is written: train.step_timeout <= 0 used to fail with exit 1 after
// config.json was rewritten; --max-time and --stop-after <= 0 were accepted; an unwritable --output failed
// with exit 1 after loading the data; "train.steps=3.7" said "expects number".
// The ranks of a run must train the same run. Started with other shards, another setting or another run
// directory's checkpoints on one rank (what node-local copies that differ give), the job is refused at
// set-up on every rank (exit 2, nothing written), naming the rank, its host and the difference. An equal
// copy of the shards at another path trains, and so do other thread counts and cache sizes.
TEST_F(TrainE2E, RanksThatWouldTrainDifferentRunsAreRefusedAtSetUp) {
  const auto two_ranks = [](const fs::path& run_dir0, const fs::path& shards1, const fs::path& run_dir1,
                            const std::string& settings1) {
    const std::string settings = "--set train.steps=4 --set train.checkpoint_every=4 ";
    return mpirun(1) + electra::test::small_train_command("", root() / "shards", run_dir0, settings) + " : -np 1 " +
           electra::test::small_train_command("", shards1, run_dir1, settings + settings1);
  };
  const fs::path log = root() / "ranks_differ.log";
  const fs::path copy = root() / "shards_copy";
  fs::copy(root() / "shards", copy, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const fs::path same = run_dir("same_data");
  // Per-node resources may differ too.
  ASSERT_EQ(run(two_ranks(same, copy, same, "--set train.threads=1 --set data.cache_mb=64"), log), 0) << log_of(log);

  ASSERT_NO_FATAL_FAILURE(electra::test::preprocess(root(), "corpus", "shards_other", mpirun(1), "--seed 2"));
  const fs::path refused = root() / "refused";
  fs::remove_all(refused);
  const struct {
    fs::path shards1, run_dir1;
    std::string settings1, difference;
  } cases[] = {
      {root() / "shards_other", refused, "", "data.shards: rank 0 2, rank 1 1"},
      {copy, refused, "--set optim.lr=0.01", "config.optim.lr: rank 0 "},
      {copy, refused, "--set model.hidden_dropout=0", "config.model.hidden_dropout: rank 0 0.1, rank 1 0"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(run(two_ranks(refused, c.shards1, c.run_dir1, c.settings1), log), 2) << c.difference << log_of(log);
    const std::string text = read_text(log);
    EXPECT_NE(text.find("the ranks would not train the same run"), std::string::npos) << log_of(log);
    EXPECT_NE(text.find("rank 1 on "), std::string::npos) << log_of(log);
    EXPECT_NE(text.find(c.difference), std::string::npos) << c.difference << log_of(log);
    EXPECT_FALSE(fs::exists(refused)) << c.difference << ": the refused run wrote its directory";
  }
  // Rank 1 sees a run directory whose checkpoints rank 0's does not have.
  const auto listing_before = read_text(same / "metrics.jsonl");
  EXPECT_EQ(run(two_ranks(refused, copy, same, "--resume auto --set train.steps=8"), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("resumed_step: rank 0 0, rank 1 4"), std::string::npos) << log_of(log);
  EXPECT_EQ(read_text(same / "metrics.jsonl"), listing_before);
  EXPECT_FALSE(fs::exists(refused));
}

TEST_F(TrainE2E, BadSettingsAreRefusedBeforeAnythingIsWritten) {
  const fs::path dir = run_dir("bad_settings");
  const fs::path log = root() / "bad_settings.log";
  ASSERT_EQ(run(train_command(1, dir, "--set train.steps=2"), log), 0) << log_of(log);
  const std::string config_before = read_text(dir / "config.json");
  const auto config_time = fs::last_write_time(dir / "config.json");
  const auto metrics_time = fs::last_write_time(dir / "metrics.jsonl");
  const struct {
    std::string flags, message;
  } cases[] = {
      {"--set train.step_timeout=0",
       "config key 'train.step_timeout' must be a positive number of seconds up to a year (31557600), got 0"},
      {"--set train.step_timeout=-5",
       "config key 'train.step_timeout' must be a positive number of seconds up to a year (31557600), got -5"},
      {"--set train.checkpoint_timeout=0",
       "config key 'train.checkpoint_timeout' must be a positive number of seconds up to a year (31557600), got 0"},
      {"--max-time 0", "--max-time must be a positive number of seconds, got 0"},
      {"--stop-after 0", "--stop-after must be a positive number of steps, got 0"},
      {"--set train.steps=3.7", "config key 'train.steps' expects an integer, got 3.7"},
      {"--set model.num_token_predictions=100000", "config key 'model.num_token_predictions' (100000) exceeds"},
      {"--set model.type_vocab_size=1", "config key 'model.type_vocab_size' (1) must be at least 2"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(run(train_command(1, dir, "--set train.steps=4 " + c.flags), log), 2) << c.flags << log_of(log);
    EXPECT_NE(read_text(log).find(c.message), std::string::npos) << c.flags << log_of(log);
    EXPECT_EQ(read_text(log).find("examples,"), std::string::npos) << c.flags << ": the data was read" << log_of(log);
  }
  EXPECT_EQ(read_text(dir / "config.json"), config_before);
  EXPECT_EQ(fs::last_write_time(dir / "config.json"), config_time);
  EXPECT_EQ(fs::last_write_time(dir / "metrics.jsonl"), metrics_time);
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "ckpt-00000004.h5"));

  // An --output that cannot be created (under a regular file): exit 2 naming it, at set-up.
  const fs::path file = root() / "a_file";
  std::ofstream(file) << "not a directory\n";
  const fs::path unwritable = file / "run";
  EXPECT_EQ(run(train_command(2, unwritable, ""), log), 2) << log_of(log);
  EXPECT_NE(read_text(log).find("--output " + unwritable.string() + " cannot be created: " + file.string() +
                                " is not a directory"),
            std::string::npos)
      << log_of(log);

  // Entries of an existing --output that the run could not write: refused at set-up, not at the first save
  // after the steps before it (checkpoints) or after config.json and the logs (metrics.jsonl).
  for (const auto& [name, make_dir] : {std::pair{"checkpoints", false}, std::pair{"metrics.jsonl", true}}) {
    const fs::path odd = run_dir(std::string("odd_") + name);
    fs::create_directories(odd);
    if (make_dir) {
      fs::create_directories(odd / name);
    } else {
      std::ofstream(odd / name) << "a file\n";
    }
    EXPECT_EQ(run(train_command(2, odd, "--set train.steps=2"), log), 2) << name << log_of(log);
    EXPECT_NE(read_text(log).find((odd / name).string() + " exists and is not a "), std::string::npos)
        << name << log_of(log);
    EXPECT_FALSE(fs::exists(odd / "config.json")) << name;
    EXPECT_FALSE(fs::exists(odd / "logs")) << name;
  }
}

}  // namespace
