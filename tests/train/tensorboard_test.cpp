#include "lib/train/tensorboard.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "lib/train/crc32c.h"
#include "tests/train/test_util.h"

namespace electra::train {
namespace {

using testing::read_bytes;
using testing::TempDir;

std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

TEST(TfEvents, FileVersionEventBytes) {
  // field 1 fixed64 (0x09) = 1.5 as a little-endian double; field 3 bytes (0x1a), 13 long.
  const std::string expected = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x1A, 13}) + "brain.Event:2";
  EXPECT_EQ(tfevents::encode_file_version_event(1.5), expected);
}

TEST(TfEvents, ScalarEventBytes) {
  const std::pair<std::string, float> values[] = {{"a", 2.0f}};
  // Value {tag "a" (0x0a 01 'a'), simple_value 2.0f (0x15, 00 00 00 40)} inside Summary.value (0x0a, 8),
  // inside Event.summary (0x2a, 10), after wall_time (0x09 ...) and step 3 (0x10 03).
  const std::string expected = bytes(
      {0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x10, 0x03, 0x2A, 10, 0x0A, 8, 0x0A, 1, 'a', 0x15, 0x00, 0x00, 0x00, 0x40});
  EXPECT_EQ(tfevents::encode_scalars_event(1.5, 3, values), expected);
}

TEST(TfEvents, VarintsOfLargeAndNegativeSteps) {
  const std::pair<std::string, float> none[] = {{"", 0.0f}};
  // step 300 = 0xAC 0x02
  const std::string big = tfevents::encode_scalars_event(0.0, 300, none);
  EXPECT_EQ(big.substr(9, 3), bytes({0x10, 0xAC, 0x02}));
  // -1 as int64 is ten bytes: nine 0xFF and 0x01.
  const std::string negative = tfevents::encode_scalars_event(0.0, -1, none);
  EXPECT_EQ(negative.substr(9, 11), bytes({0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
}

TEST(TfEvents, SessionStartEventBytes) {
  // session_log (field 7, 0x3a) = {status (0x08) = START (1)}.
  const std::string expected = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x10, 0x05, 0x3A, 0x02, 0x08, 0x01});
  EXPECT_EQ(tfevents::encode_session_start_event(1.5, 5), expected);
}

uint64_t load_u64(const std::string& s, size_t at) {
  uint64_t v;
  std::memcpy(&v, s.data() + at, 8);
  return v;
}
uint32_t load_u32(const std::string& s, size_t at) {
  uint32_t v;
  std::memcpy(&v, s.data() + at, 4);
  return v;
}

// Splits a TFRecord stream, checking both CRCs of every record.
std::vector<std::string> split_records(const std::string& stream) {
  std::vector<std::string> records;
  size_t at = 0;
  while (at < stream.size()) {
    EXPECT_LE(at + 12, stream.size());
    const uint64_t length = load_u64(stream, at);
    EXPECT_EQ(load_u32(stream, at + 8), mask_crc32c(crc32c(stream.data() + at, 8))) << "length CRC at " << at;
    EXPECT_LE(at + 16 + length, stream.size());
    records.push_back(stream.substr(at + 12, length));
    EXPECT_EQ(load_u32(stream, at + 12 + length), mask_crc32c(crc32c(stream.data() + at + 12, length)))
        << "data CRC at " << at;
    at += 16 + length;
  }
  return records;
}

TEST(TfEvents, RecordFraming) {
  const std::string data = "hello event";
  const std::string record = tfevents::encode_record(data);
  ASSERT_EQ(record.size(), data.size() + 16);
  const auto records = split_records(record);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0], data);
  EXPECT_EQ(tfevents::encode_record("").size(), 16u);
}

TEST(TensorBoardWriter, FileNameAndRecords) {
  TempDir dir;
  std::filesystem::path file;
  {
    TensorBoardWriter writer(dir.path() / "tensorboard");
    file = writer.file();
    writer.add_scalar("train/loss", 1, 3.0f);
    MetricsRecord m;
    m.step = 2;
    m.loss = 2.5;
    m.lr = 1e-4;
    writer.add_step_metrics(m);
  }
  EXPECT_EQ(file.parent_path(), dir.path() / "tensorboard");
  EXPECT_TRUE(file.filename().string().starts_with("events.out.tfevents.")) << file;
  const auto records = split_records(read_bytes(file));
  ASSERT_EQ(records.size(), 3u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_NE(records[1].find("train/loss"), std::string::npos);
  EXPECT_NE(records[2].find("train/lr"), std::string::npos);

  // Two writers in the same second get different files.
  TensorBoardWriter a(dir.path() / "tb2");
  TensorBoardWriter b(dir.path() / "tb2");
  EXPECT_NE(a.file(), b.file());
}

// Runs tests/train/read_tensorboard.py on `dir` with ELECTRA_PYTHON; nullopt (and a reason) when the
// interpreter or its tensorboard package is not available.
std::optional<nlohmann::json> read_with_tensorboard(const std::filesystem::path& dir, std::string* skip_reason) {
  const char* python = std::getenv("ELECTRA_PYTHON");
  if (python == nullptr || !std::filesystem::exists(python)) {
    *skip_reason = "ELECTRA_PYTHON is not set or does not exist";
    return std::nullopt;
  }
  if (std::system((std::string(python) + " -c 'import tensorboard' >/dev/null 2>&1").c_str()) != 0) {
    *skip_reason = std::string(python) + " cannot import tensorboard";
    return std::nullopt;
  }
  const std::string command = std::string(python) + " " ELECTRA_TRAIN_TEST_DIR "/read_tensorboard.py " + dir.string() +
                              " 2>" + (dir / "reader.stderr").string();
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "popen failed: " << command;
    return nlohmann::json();
  }
  std::string output;
  char chunk[4096];
  while (size_t n = fread(chunk, 1, sizeof(chunk), pipe)) output.append(chunk, n);
  const int status = pclose(pipe);
  if (status != 0) {
    ADD_FAILURE() << "the reader failed (" << status << "): " << read_bytes(dir / "reader.stderr");
    return nlohmann::json();
  }
  std::filesystem::remove(dir / "reader.stderr");
  return nlohmann::json::parse(output);
}

// [[step, value], ...] of one tag.
std::vector<std::pair<int64_t, float>> series(const nlohmann::json& seen, const std::string& tag) {
  std::vector<std::pair<int64_t, float>> out;
  if (!seen["scalars"].contains(tag)) return out;
  for (const auto& event : seen["scalars"][tag]) {
    out.emplace_back(event[0].get<int64_t>(), static_cast<float>(event[1].get<double>()));
  }
  return out;
}

TEST(TensorBoardWriter, TensorBoardReadsOurFiles) {
  TempDir dir;
  const auto log_dir = dir.path() / "tensorboard";
  std::vector<std::pair<int64_t, float>> loss, lr, accuracy;
  {
    TensorBoardWriter writer(log_dir);
    for (int64_t step = 1; step <= 25; ++step) {
      MetricsRecord m;
      m.step = step * 10;
      m.loss = 11.0 / static_cast<double>(step);  // not exactly representable: checks float conversion
      m.lr = 5e-4 * static_cast<double>(step) / 25.0;
      m.extra = {{"disc_accuracy_eval", 0.5 + 0.01 * static_cast<double>(step)}};
      writer.add_step_metrics(m);
      loss.emplace_back(m.step, static_cast<float>(m.loss));
      lr.emplace_back(m.step, static_cast<float>(m.lr));
      accuracy.emplace_back(m.step, static_cast<float>(0.5 + 0.01 * static_cast<double>(step)));
    }
    writer.add_scalar("eval/loss", 250, -1.25f);
  }
  std::string reason;
  const auto seen = read_with_tensorboard(log_dir, &reason);
  if (!seen) GTEST_SKIP() << reason;
  ASSERT_FALSE(seen->is_null());
  EXPECT_EQ((*seen)["file_version"], 2.0) << "EventAccumulator parses \"brain.Event:2\" into 2.0";
  EXPECT_EQ((*seen)["scalars"].size(), 4u) << seen->dump();
  EXPECT_EQ(series(*seen, "train/loss"), loss);
  EXPECT_EQ(series(*seen, "train/lr"), lr);
  EXPECT_EQ(series(*seen, "train/disc_accuracy_eval"), accuracy);
  EXPECT_EQ(series(*seen, "eval/loss"), (std::vector<std::pair<int64_t, float>>{{250, -1.25f}}));
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double wall_time = (*seen)["scalars"]["eval/loss"][0][2].get<double>();
  EXPECT_NEAR(wall_time, now, 600.0) << "wall_time is seconds since the epoch";
}

TEST(TensorBoardWriter, ResumeMakesTensorBoardForgetTheCrashedRunsLaterSteps) {
  TempDir dir;
  const auto log_dir = dir.path() / "tensorboard";
  {
    TensorBoardWriter first(log_dir);
    for (int64_t step = 1; step <= 6; ++step) first.add_scalar("train/loss", step, 100.0f + step);
  }
  {
    // Resumed from the checkpoint of step 3: steps 4.. are logged again with other values.
    TensorBoardWriter second(log_dir, int64_t{3});
    EXPECT_NE(second.file().filename(), std::filesystem::path()) << "a second file in the same directory";
    for (int64_t step = 4; step <= 5; ++step) second.add_scalar("train/loss", step, 200.0f + step);
  }
  std::string reason;
  const auto seen = read_with_tensorboard(log_dir, &reason);
  if (!seen) GTEST_SKIP() << reason;
  ASSERT_FALSE(seen->is_null());
  EXPECT_EQ(series(*seen, "train/loss"),
            (std::vector<std::pair<int64_t, float>>{{1, 101.0f}, {2, 102.0f}, {3, 103.0f}, {4, 204.0f}, {5, 205.0f}}))
      << seen->dump();
}

// A resume of an earlier checkpoint that logs nothing more (stopped at once), or a crash's later steps: the
// event files go aside and the directory keeps the steps up to the checkpoint. TensorBoard's session START
// alone left them: its Python loader takes the first START as the run's start, its Rust loader ignores it.
TEST(TensorBoardWriter, AResumeMovesTheLeftCoursesFilesAsideAndKeepsItsEarlierSteps) {
  TempDir dir;
  const auto log_dir = dir.path() / "tensorboard";
  {
    TensorBoardWriter first(log_dir);
    for (int64_t step = 1; step <= 6; ++step) first.add_scalar("train/loss", step, 100.0f + step);
    first.add_scalar("eval/disc_auc", 4, 0.75f);
  }
  // What a run with train.tensorboard=false asks before it sets a left course's steps aside all the same
  // (TensorBoard turned on again later showed them).
  EXPECT_TRUE(TensorBoardWriter::holds_steps_after(log_dir, 5));
  EXPECT_FALSE(TensorBoardWriter::holds_steps_after(log_dir, 6));
  EXPECT_FALSE(TensorBoardWriter::holds_steps_after(dir.path() / "missing", 0));
  {
    // A resume of step 6's checkpoint leaves nothing behind: the files stay as they are.
    TensorBoardWriter same_course(log_dir, int64_t{6});
  }
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(dir.path() / "tensorboard.abandoned")));
  ASSERT_EQ(std::distance(std::filesystem::directory_iterator(log_dir), std::filesystem::directory_iterator()), 2);
  std::filesystem::path resumed_file;
  // A dangling link where the first aside name would go: taken as used (exists() said free, and the resume
  // failed with its new file left behind, so a retry showed the kept steps twice).
  std::filesystem::create_symlink(dir.path() / "nowhere", dir.path() / "tensorboard.abandoned");
  {
    TensorBoardWriter earlier(log_dir, int64_t{4});
    resumed_file = earlier.file();
  }
  // The two files of the left course are kept aside whole; the directory holds the new file alone.
  const auto aside = dir.path() / "tensorboard.abandoned.1";
  ASSERT_TRUE(std::filesystem::is_directory(aside));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(aside), std::filesystem::directory_iterator()), 2);
  std::vector<std::filesystem::path> left;
  for (const auto& entry : std::filesystem::directory_iterator(log_dir)) left.push_back(entry.path());
  ASSERT_EQ(left, std::vector<std::filesystem::path>{resumed_file});
  std::vector<std::pair<int64_t, bool>> steps;  // (step, summary) of each event in the new file
  for (const std::string& event : tfevents::read_events(resumed_file)) {
    const tfevents::EventFields fields = tfevents::parse_event(event);
    steps.emplace_back(fields.step, fields.summary);
  }
  // file_version, steps 1-4 of train/loss, eval at 4, the session START at 5.
  EXPECT_EQ(steps, (std::vector<std::pair<int64_t, bool>>{
                       {0, false}, {1, true}, {2, true}, {3, true}, {4, true}, {4, true}, {5, false}}));
  // A torn last record (a crash mid-write) ends the reading there.
  const std::string bytes = read_bytes(resumed_file);
  std::ofstream(resumed_file, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 3);
  EXPECT_EQ(tfevents::read_events(resumed_file).size(), steps.size() - 1);
  std::ofstream(resumed_file, std::ios::binary | std::ios::trunc) << bytes;

  std::string reason;
  const auto seen = read_with_tensorboard(log_dir, &reason);
  if (!seen) GTEST_SKIP() << reason;
  ASSERT_FALSE(seen->is_null());
  EXPECT_EQ(series(*seen, "train/loss"),
            (std::vector<std::pair<int64_t, float>>{{1, 101.0f}, {2, 102.0f}, {3, 103.0f}, {4, 104.0f}}))
      << seen->dump();
  EXPECT_EQ(series(*seen, "eval/disc_auc"), (std::vector<std::pair<int64_t, float>>{{4, 0.75f}})) << seen->dump();
}

}  // namespace
}  // namespace electra::train
