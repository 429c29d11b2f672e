#include "lib/train/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "lib/core/error.h"
#include "tests/train/test_util.h"

namespace electra::train {
namespace {

using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

std::vector<nlohmann::json> read_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> records;
  std::string line;
  while (std::getline(in, line)) records.push_back(nlohmann::json::parse(line));  // throws on a bad line
  return records;
}

MetricsRecord full_metrics(int64_t step) {
  MetricsRecord m;
  m.step = step;
  m.loss = 10.5 - step;
  m.gen_loss = 2.25;
  m.disc_loss = 0.125;
  m.mlm_accuracy = 0.5;
  m.disc_accuracy = 0.875;
  m.lr = 5e-4 * step;
  m.grad_norm = 1.75;
  m.tokens_per_s = 123456.0;
  return m;
}

TEST(MetricsWriter, OneParsableObjectPerLine) {
  TempDir dir;
  const auto run_dir = dir.path() / "run";
  {
    MetricsWriter writer(run_dir);
    EXPECT_EQ(writer.path(), run_dir / "metrics.jsonl");
    for (int64_t step = 1; step <= 3; ++step) writer.write(full_metrics(step));
    MetricsRecord partial;
    partial.step = 4;
    partial.loss = 7.0;
    partial.grad_norm = std::numeric_limits<double>::infinity();
    partial.extra = {{"loss_scale", 32768},
                     {"skipped", true},
                     {"phase", "warmup"},
                     {"nan_extra", std::numeric_limits<double>::quiet_NaN()}};
    writer.write(partial);
    // Flushed per line: visible before the writer is closed.
    EXPECT_EQ(read_lines(writer.path()).size(), 4u);
  }
  const auto records = read_lines(run_dir / "metrics.jsonl");
  ASSERT_EQ(records.size(), 4u);
  for (int64_t step = 1; step <= 3; ++step) {
    const auto& r = records[step - 1];
    EXPECT_EQ(r["step"], step);
    EXPECT_EQ(r["loss"], 10.5 - step);
    EXPECT_EQ(r["gen_loss"], 2.25);
    EXPECT_EQ(r["disc_loss"], 0.125);
    EXPECT_EQ(r["mlm_accuracy"], 0.5);
    EXPECT_EQ(r["disc_accuracy"], 0.875);
    EXPECT_EQ(r["lr"], 5e-4 * step);
    EXPECT_EQ(r["grad_norm"], 1.75);
    EXPECT_EQ(r["tokens_per_s"], 123456.0);
  }
  const auto& last = records[3];
  EXPECT_EQ(last["step"], 4);
  EXPECT_EQ(last["loss"], 7.0);
  EXPECT_FALSE(last.contains("gen_loss")) << "unset fields are left out";
  EXPECT_TRUE(last["grad_norm"].is_null()) << "JSON has no infinity";
  EXPECT_EQ(last["loss_scale"], 32768);
  EXPECT_EQ(last["skipped"], true);
  EXPECT_EQ(last["phase"], "warmup");
  EXPECT_TRUE(last["nan_extra"].is_null());
}

TEST(MetricsWriter, AppendsAcrossWritersAndDropsStepsAfterTheResumePoint) {
  TempDir dir;
  {
    MetricsWriter writer(dir.path());
    for (int64_t step = 1; step <= 6; ++step) writer.write(full_metrics(step));
  }
  // The crashed run left a torn line.
  write_bytes(dir.path() / "metrics.jsonl", read_bytes(dir.path() / "metrics.jsonl") + "{\"step\": 7, \"lo");
  {
    MetricsWriter writer(dir.path(), int64_t{4});  // resumed from the checkpoint of step 4
    writer.write(full_metrics(5));
  }
  const auto records = read_lines(dir.path() / "metrics.jsonl");
  ASSERT_EQ(records.size(), 5u);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(records[i]["step"], i + 1);
  {
    MetricsWriter writer(dir.path());  // plain append keeps everything
    writer.write(nlohmann::json{{"step", 6}, {"eval_loss", 3.5}});
  }
  EXPECT_EQ(read_lines(dir.path() / "metrics.jsonl").size(), 6u);
}

// Resuming an earlier checkpoint than the run's newest (a checkpoint past the resume step exists): the
// lines of the course it leaves are kept in metrics.jsonl.abandoned[.N] before they are cut. A resume
// after a crash (no later checkpoint) keeps no copy.
TEST(MetricsWriter, AResumeOfAnEarlierCheckpointKeepsTheLaterLinesAside) {
  TempDir dir;
  {
    MetricsWriter writer(dir.path());
    for (int64_t step = 1; step <= 6; ++step) writer.write(full_metrics(step));
  }
  const std::string all = read_bytes(dir.path() / "metrics.jsonl");
  { MetricsWriter writer(dir.path(), int64_t{4}); }  // no checkpoint past 4: a crash, nothing kept
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "metrics.jsonl.abandoned"));
  write_bytes(dir.path() / "metrics.jsonl", all);
  std::filesystem::create_directories(dir.path() / "checkpoints");
  write_bytes(dir.path() / "checkpoints" / "ckpt-00000006.h5", "the later course");
  { MetricsWriter writer(dir.path(), int64_t{2}); }
  EXPECT_EQ(read_bytes(dir.path() / "metrics.jsonl.abandoned"), all);
  EXPECT_EQ(read_lines(dir.path() / "metrics.jsonl").size(), 2u);
  write_bytes(dir.path() / "metrics.jsonl", all);
  { MetricsWriter writer(dir.path(), int64_t{3}); }
  EXPECT_EQ(read_bytes(dir.path() / "metrics.jsonl.abandoned.1"), all);
  // A fresh start (step 0) over lines: a run that died before its first checkpoint, or one whose checkpoints
  // were removed to start over. Its lines go, kept aside.
  std::filesystem::remove_all(dir.path() / "checkpoints");
  write_bytes(dir.path() / "metrics.jsonl", all);
  { MetricsWriter writer(dir.path(), int64_t{0}); }
  EXPECT_EQ(read_bytes(dir.path() / "metrics.jsonl.abandoned.2"), all);
  EXPECT_TRUE(read_lines(dir.path() / "metrics.jsonl").empty());
}

TEST(MetricsWriter, RepairsATornLastLineOnPlainAppend) {
  TempDir dir;
  write_bytes(dir.path() / "metrics.jsonl", "{\"step\": 1}\n{\"step\": 2, \"lo");
  {
    MetricsWriter writer(dir.path());
    writer.write(full_metrics(2));
  }
  const auto records = read_lines(dir.path() / "metrics.jsonl");
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1]["step"], 2);
  EXPECT_EQ(records[1]["gen_loss"], 2.25);
}

TEST(MetricsWriter, RejectsNonObjects) {
  TempDir dir;
  MetricsWriter writer(dir.path());
  EXPECT_THROW(writer.write(nlohmann::json::array({1, 2})), Error);
}

TEST(MetricsRecord, ScalarsListSetFieldsAndNumericExtras) {
  MetricsRecord m;
  m.step = 3;
  m.loss = 1.0;
  m.lr = 2e-4;
  m.extra = {{"loss_scale", 1024}, {"phase", "x"}};
  const auto scalars = m.scalars();
  ASSERT_EQ(scalars.size(), 3u);
  EXPECT_EQ(scalars[0], (std::pair<std::string, double>{"loss", 1.0}));
  EXPECT_EQ(scalars[1], (std::pair<std::string, double>{"lr", 2e-4}));
  EXPECT_EQ(scalars[2], (std::pair<std::string, double>{"loss_scale", 1024.0}));
}

}  // namespace
}  // namespace electra::train
