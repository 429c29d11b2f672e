// TensorBoard event files written without TensorFlow: TFRecord framing around hand-encoded Event
// protobufs (tensorflow/core/util/event.proto, summary.proto), scalars as Summary.Value.simple_value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lib/train/metrics.h"

namespace electra::train {

namespace tfevents {
// TFRecord: u64 length (little-endian), masked CRC-32C of those 8 bytes, data, masked CRC-32C of data.
std::string encode_record(std::string_view data);
// Event{wall_time = 1 (double), file_version = 3 (string)}: the first record of every file.
std::string encode_file_version_event(double wall_time);
// Event{wall_time, step = 2, summary = 5 {value = 1 repeated {tag = 1, simple_value = 2 (float)}}}.
std::string encode_scalars_event(double wall_time, int64_t step, std::span<const std::pair<std::string, float>> values);
// Event{wall_time, step, session_log = 7 {status = 1: START}}: TensorBoard drops the events of this run
// directory with a step >= `step` read before it (the steps a crashed run logged after its checkpoint).
std::string encode_session_start_event(double wall_time, int64_t step);

// The events (record data) of a file of encode_record framing, in order. Reading stops at a torn or damaged
// record: a crash mid-write leaves at most the last one so.
std::vector<std::string> read_events(const std::filesystem::path& file);
// Of an Event: its step (field 2; 0 when absent), and whether it holds a summary (field 5).
struct EventFields {
  int64_t step = 0;
  bool summary = false;
};
EventFields parse_event(std::string_view event);
}  // namespace tfevents

class TensorBoardWriter {
 public:
  // Creates `dir` and a new file events.out.tfevents.<unix time>.<host>.<pid> in it, starting with the
  // file_version event. With `resume_step`, the steps an earlier course logged after that checkpoint (a
  // crash, or a resume of an earlier checkpoint) leave the directory: when `dir` holds any, its event files
  // move to abandoned_name(dir) (RUN_DIR/tensorboard.abandoned, as metrics.jsonl's lines go aside) and the
  // new file starts with their summaries of steps <= resume_step. TensorBoard's session START marker alone
  // is not enough: its Rust loader ignores it, and its Python loader ignores the first one in a directory.
  // A session START at resume_step + 1 still follows, for older TensorBoards reading a copy.
  explicit TensorBoardWriter(const std::filesystem::path& dir, std::optional<int64_t> resume_step = std::nullopt);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Each call writes one event (one write(), visible to TensorBoard immediately).
  void add_scalar(const std::string& tag, int64_t step, float value);
  void add_scalars(int64_t step, std::span<const std::pair<std::string, float>> values);
  // The metrics' set fields as "<prefix><name>" scalars, in one event.
  void add_step_metrics(const MetricsRecord& metrics, const std::string& prefix = "train/");

  const std::filesystem::path& file() const { return file_; }

  // Whether `dir`'s event files hold a summary of a step after `step`: what a writer opened with
  // resume_step = step sets aside. A run with train.tensorboard=false opens one only then, so that turning
  // TensorBoard on again later does not show the steps of a course that run left.
  static bool holds_steps_after(const std::filesystem::path& dir, int64_t step);

 private:
  void append(const std::string& record);

  std::filesystem::path file_;
  int fd_ = -1;
};

}  // namespace electra::train
