#include "lib/train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/train/crc32c.h"

namespace electra::train {
namespace tfevents {
namespace {

// Protobuf wire format: key = (field << 3) | wire type; 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_key(std::string& out, uint32_t field, uint32_t wire_type) { put_varint(out, (field << 3) | wire_type); }

template <typename T>
void put_little_endian(std::string& out, T value) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // x86-64 and aarch64 are little-endian, as the wire format
  out.append(reinterpret_cast<const char*>(bytes), sizeof(T));
}

void put_double(std::string& out, uint32_t field, double value) {
  put_key(out, field, 1);
  put_little_endian(out, value);
}

void put_float(std::string& out, uint32_t field, float value) {
  put_key(out, field, 5);
  put_little_endian(out, value);
}

void put_int64(std::string& out, uint32_t field, int64_t value) {
  put_key(out, field, 0);
  put_varint(out, static_cast<uint64_t>(value));  // negative int64 is a 10-byte varint
}

void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// Reads a varint at data[*pos]; false when it runs past the end or over 10 bytes.
bool get_varint(std::string_view data, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 70 && *pos < data.size(); shift += 7) {
    const auto byte = static_cast<unsigned char>(data[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

template <typename T>
T get_little_endian(const char* bytes) {
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

}  // namespace

std::vector<std::string> read_events(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot read TensorBoard event file ", file.string(), ": ", std::strerror(errno));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> events;
  size_t pos = 0;
  while (bytes.size() - pos >= 12) {
    const auto length = get_little_endian<uint64_t>(bytes.data() + pos);
    if (get_little_endian<uint32_t>(bytes.data() + pos + 8) != mask_crc32c(crc32c(bytes.data() + pos, 8))) break;
    if (length > bytes.size() - pos - 16) break;  // torn
    const char* data = bytes.data() + pos + 12;
    if (get_little_endian<uint32_t>(data + length) != mask_crc32c(crc32c(data, length))) break;
    events.emplace_back(data, length);
    pos += 16 + length;
  }
  return events;
}

EventFields parse_event(std::string_view event) {
  EventFields fields;
  size_t pos = 0;
  while (pos < event.size()) {
    uint64_t key = 0, value = 0;
    if (!get_varint(event, &pos, &key)) break;
    const uint64_t field = key >> 3, wire_type = key & 7;
    if (wire_type == 0) {
      if (!get_varint(event, &pos, &value)) break;
      if (field == 2) fields.step = static_cast<int64_t>(value);
    } else if (wire_type == 1 || wire_type == 5) {
      pos += wire_type == 1 ? 8 : 4;
    } else if (wire_type == 2) {
      if (!get_varint(event, &pos, &value) || value > event.size() - pos) break;
      if (field == 5) fields.summary = true;
      pos += value;
    } else {
      break;  // groups: not in an Event
    }
  }
  return fields;
}

std::string encode_record(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_little_endian(out, static_cast<uint64_t>(data.size()));
  put_little_endian(out, mask_crc32c(crc32c(out.data(), 8)));
  out.append(data);
  put_little_endian(out, mask_crc32c(crc32c(data.data(), data.size())));
  return out;
}

std::string encode_file_version_event(double wall_time) {
  std::string event;
  put_double(event, 1, wall_time);
  put_bytes(event, 3, "brain.Event:2");
  return event;
}

std::string encode_scalars_event(double wall_time, int64_t step,
                                 std::span<const std::pair<std::string, float>> values) {
  std::string summary;
  for (const auto& [tag, value] : values) {
    std::string entry;
    put_bytes(entry, 1, tag);
    put_float(entry, 2, value);
    put_bytes(summary, 1, entry);
  }
  std::string event;
  put_double(event, 1, wall_time);
  put_int64(event, 2, step);
  put_bytes(event, 5, summary);
  return event;
}

std::string encode_session_start_event(double wall_time, int64_t step) {
  std::string session_log;
  put_key(session_log, 1, 0);
  put_varint(session_log, 1);  // SessionLog.START
  std::string event;
  put_double(event, 1, wall_time);
  put_int64(event, 2, step);
  put_bytes(event, 7, session_log);
  return event;
}

}  // namespace tfevents

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

namespace {

// The event files of `dir` (names holding "tfevents", as TensorBoard takes them), in name order: by time.
std::vector<std::filesystem::path> event_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().filename().string().find("tfevents") != std::string::npos) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// What a resume of `step` finds in `dir`: its event files, their summaries of steps <= step (in order), and
// whether any summary is of a later step (then the files are set aside).
struct EventScan {
  std::vector<std::filesystem::path> files;
  std::vector<std::string> kept;
  bool later_steps = false;
};

EventScan scan_event_files(const std::filesystem::path& dir, int64_t step) {
  EventScan scan;
  scan.files = event_files(dir);
  for (const std::filesystem::path& file : scan.files) {
    for (std::string& event : tfevents::read_events(file)) {
      const tfevents::EventFields fields = tfevents::parse_event(event);
      if (!fields.summary) continue;  // file_version and session logs: a new file has its own
      if (fields.step > step) {
        scan.later_steps = true;
      } else {
        scan.kept.push_back(std::move(event));
      }
    }
  }
  return scan;
}

}  // namespace

bool TensorBoardWriter::holds_steps_after(const std::filesystem::path& dir, int64_t step) {
  std::error_code error;
  return std::filesystem::is_directory(dir, error) && scan_event_files(dir, step).later_steps;
}

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& dir, std::optional<int64_t> resume_step) {
  std::filesystem::create_directories(dir);
  // A resume: the summaries of steps <= resume_step, when the directory also holds later ones to drop.
  std::vector<std::filesystem::path> left_course;
  std::vector<std::string> kept;
  if (resume_step) {
    EventScan scan = scan_event_files(dir, *resume_step);
    if (scan.later_steps) {
      left_course = std::move(scan.files);
      kept = std::move(scan.kept);
    }
  }
  const double wall_time = now_seconds();
  const std::string base = "events.out.tfevents." + std::to_string(static_cast<int64_t>(wall_time)) + "." +
                           host_name() + "." + std::to_string(::getpid());
  // O_EXCL: a second writer in the same second and process gets its own file.
  for (int attempt = 0; fd_ < 0; ++attempt) {
    file_ = dir / (attempt == 0 ? base : base + "." + std::to_string(attempt));
    fd_ = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno != EEXIST || attempt > 100)) {
      fail("cannot create TensorBoard event file ", file_.string(), ": ", std::strerror(errno));
    }
  }
  // A failure leaves the directory as it was: the new file goes, the files already moved come back (else a
  // retry would find the kept steps twice).
  std::vector<std::filesystem::path> moved;
  try {
    append(tfevents::encode_record(tfevents::encode_file_version_event(wall_time)));
    if (!left_course.empty()) {
      std::string events;
      for (const std::string& event : kept) events += tfevents::encode_record(event);
      append(events);
      const std::filesystem::path aside = abandoned_name(dir);
      std::filesystem::create_directories(aside);
      for (const std::filesystem::path& file : left_course) {
        std::filesystem::rename(file, aside / file.filename());
        moved.push_back(aside / file.filename());
      }
      ELECTRA_LOG(info) << "TensorBoard: the steps logged after step " << *resume_step
                        << " by the course this resume leaves are dropped from " << dir.string()
                        << "; its event files are kept in " << aside.string();
    }
    if (resume_step) {
      append(tfevents::encode_record(tfevents::encode_session_start_event(wall_time, *resume_step + 1)));
    }
  } catch (const std::exception& e) {
    ::close(fd_);
    fd_ = -1;
    std::error_code ignored;
    std::filesystem::remove(file_, ignored);
    for (const std::filesystem::path& file : moved) std::filesystem::rename(file, dir / file.filename(), ignored);
    fail("TensorBoard directory ", dir.string(), ": ", e.what());
  }
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, float value) {
  const std::pair<std::string, float> values[] = {{tag, value}};
  add_scalars(step, values);
}

void TensorBoardWriter::add_scalars(int64_t step, std::span<const std::pair<std::string, float>> values) {
  append(tfevents::encode_record(tfevents::encode_scalars_event(now_seconds(), step, values)));
}

void TensorBoardWriter::add_step_metrics(const MetricsRecord& metrics, const std::string& prefix) {
  std::vector<std::pair<std::string, float>> values;
  for (const auto& [name, value] : metrics.scalars()) values.emplace_back(prefix + name, static_cast<float>(value));
  if (!values.empty()) add_scalars(metrics.step, values);
}

void TensorBoardWriter::append(const std::string& record) {
  size_t written = 0;
  while (written < record.size()) {
    const ssize_t n = ::write(fd_, record.data() + written, record.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot append to ", file_.string(), ": ", std::strerror(errno));
    written += static_cast<size_t>(n);
  }
}

}  // namespace electra::train
