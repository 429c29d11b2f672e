#include "lib/train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "lib/core/error.h"
#include "lib/core/host.h"
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

}  // namespace

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

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& dir, std::optional<int64_t> resume_step) {
  std::filesystem::create_directories(dir);
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
  append(tfevents::encode_record(tfevents::encode_file_version_event(wall_time)));
  if (resume_step) append(tfevents::encode_record(tfevents::encode_session_start_event(wall_time, *resume_step + 1)));
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
