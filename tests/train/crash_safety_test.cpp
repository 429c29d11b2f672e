// A child process saves checkpoints in a loop and is killed with SIGKILL at random moments. After every
// kill the directory must hold only complete checkpoints under final names, and latest_complete() must
// return the newest one, readable, with the data of its step.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "lib/train/checkpoint_manager.h"
#include "tests/train/test_util.h"

namespace electra::train {
namespace {

using testing::TempDir;

constexpr int kKeepLast = 3;

std::vector<TensorSlice> crash_layout() {
  // ~0.8 M floats, 3 sections: ~10 MB per checkpoint, so a save takes long enough to be hit mid-way.
  std::vector<TensorSlice> layout;
  size_t offset = 0;
  for (int i = 0; i < 4; ++i) {
    const size_t size = 200000 + 1000 * i;
    layout.push_back(TensorSlice{"layer." + std::to_string(i) + ".weight", {static_cast<int64_t>(size)}, offset, size});
    offset += size;
  }
  return layout;
}

float value_for(int64_t step, size_t i) { return static_cast<float>(step) + static_cast<float>(i % 1000) * 1e-3f; }

// The child: resume after the newest complete checkpoint and save forever, reporting each durable
// step on `report_fd`. Never returns.
[[noreturn]] void save_forever(const std::filesystem::path& dir, int report_fd) {
  try {
    CheckpointManager manager(dir, kKeepLast);
    manager.remove_temp_files();
    const auto latest = manager.latest_complete();
    const std::vector<TensorSlice> layout = crash_layout();
    const size_t n = layout.back().offset + layout.back().size;
    std::vector<float> params(n);
    for (int64_t step = latest ? latest->step + 1 : 1;; ++step) {
      for (size_t i = 0; i < n; ++i) params[i] = value_for(step, i);
      CheckpointContent content;
      content.layout = layout;
      content.params = params;
      content.adam_m = params;
      content.adam_v = params;
      content.state = {{"step", step}};
      content.loader = {{"cursor", step * 10}};
      manager.save(content);
      if (::write(report_fd, &step, sizeof(step)) != sizeof(step)) _exit(3);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "child: %s\n", error.what());
    _exit(2);
  }
}

TEST(CheckpointCrashSafety, SigkillAtRandomMomentsNeverLosesTheNewestComplete) {
  TempDir dir;
  const std::vector<TensorSlice> layout = crash_layout();
  const size_t n = layout.back().offset + layout.back().size;
  std::mt19937 rng(20240611);
  std::uniform_int_distribution<int> delay_ms(0, 250);
  int64_t newest = 0;  // step of the newest complete checkpoint after the previous round
  int rounds_with_temp = 0;

  for (int round = 0; round < 20; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(fds[0]);
      save_forever(dir.path(), fds[1]);
    }
    ::close(fds[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    ASSERT_EQ(kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "round " << round << ": the child ended on its own (status " << status << ")";
    int64_t reported = newest;  // the last step the child saw saved
    int64_t step = 0;
    while (::read(fds[0], &step, sizeof(step)) == sizeof(step)) reported = step;
    ::close(fds[0]);

    CheckpointManager manager(dir.path(), kKeepLast);
    bool temp_left = false;
    for (const auto& item : std::filesystem::directory_iterator(dir.path())) {
      temp_left |= item.path().filename().string().ends_with(".tmp");
    }
    rounds_with_temp += temp_left;
    // Every file under a final name is complete.
    for (const CheckpointEntry& entry : manager.list()) {
      EXPECT_FALSE(CheckpointFile::check(entry.path).has_value())
          << "round " << round << ": " << *CheckpointFile::check(entry.path);
    }
    // A save that completed pruned to kKeepLast; an interrupted one after it adds at most one file.
    // (Rounds without a completed save may each add one; the next completed save prunes them.)
    if (reported > newest) {
      EXPECT_LE(manager.list().size(), static_cast<size_t>(kKeepLast + 1)) << "round " << round;
    }

    const auto latest = manager.latest_complete();
    if (reported == 0 && !latest) continue;  // killed before the first save finished
    ASSERT_TRUE(latest.has_value()) << "round " << round << ": no checkpoint after step " << reported << " was saved";
    // The newest complete one is the last reported, or one more when the kill came between the rename
    // and the report.
    EXPECT_TRUE(latest->step == reported || latest->step == reported + 1)
        << "round " << round << ": latest_complete() is step " << latest->step << ", last saved " << reported;
    EXPECT_GE(latest->step, newest) << "round " << round << ": went back in time";

    const CheckpointFile file = read_checkpoint(latest->path);
    EXPECT_EQ(file.step(), latest->step);
    EXPECT_EQ(file.loader()["cursor"], latest->step * 10);
    std::vector<float> buffer(n);
    for (Section section : {Section::kParams, Section::kAdamM, Section::kAdamV}) {
      file.read_into(section, layout, buffer);
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i) wrong += buffer[i] != value_for(latest->step, i);
      EXPECT_EQ(wrong, 0u) << "round " << round << " section " << section_name(section);
    }
    newest = latest->step;
  }
  EXPECT_GT(newest, 0) << "no round got a checkpoint saved";
  std::printf("crash test: %lld checkpoints saved in 20 rounds; %d rounds left a temporary behind\n",
              static_cast<long long>(newest), rounds_with_temp);
}

}  // namespace
}  // namespace electra::train
