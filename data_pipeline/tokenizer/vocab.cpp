#include "data_pipeline/tokenizer/vocab.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"

namespace electra::text {
namespace {

uint64_t slot_of(uint64_t hash, uint64_t mask) { return (hash * 0x9E3779B97F4A7C15ull >> 17) & mask; }

}  // namespace

Vocab Vocab::load(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) fail("vocab ", path, ": is a directory (expected vocab.txt)");
  // A FIFO (or a device) would block the open below, or never end: every program reads vocab.txt here.
  if (std::filesystem::exists(path, error) && !std::filesystem::is_regular_file(path, error))
    fail("vocab ", path, ": not a regular file (expected vocab.txt)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("vocab ", path, ": cannot open: ", std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("vocab ", path, ": read error");
  const std::string data = buffer.str();
  if (data.empty()) fail("vocab ", path, ": empty file (expected one token per line)");

  std::vector<std::string> tokens;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) nl = data.size();
    size_t len = nl - pos;
    if (len > 0 && data[pos + len - 1] == '\r') --len;  // CRLF files
    tokens.emplace_back(data, pos, len);
    pos = nl + 1;
  }
  Vocab vocab;
  vocab.tokens_ = std::move(tokens);
  vocab.origin_ = path;
  vocab.from_file_ = true;
  vocab.build_index();
  return vocab;
}

Vocab Vocab::from_tokens(std::vector<std::string> tokens, std::string origin) {
  if (tokens.empty()) fail("vocab ", origin, ": no tokens");
  Vocab vocab;
  vocab.tokens_ = std::move(tokens);
  vocab.origin_ = std::move(origin);
  vocab.build_index();
  return vocab;
}

void Vocab::build_index() {
  if (tokens_.size() >= static_cast<size_t>(INT32_MAX)) fail("vocab ", origin_, ": too many tokens");
  uint64_t capacity = 16;
  while (capacity < 2 * tokens_.size()) capacity *= 2;
  slots_.assign(capacity, -1);
  slot_mask_ = capacity - 1;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const std::string& token = tokens_[i];
    uint64_t slot = slot_of(fnv1a64(token), slot_mask_);
    while (slots_[slot] >= 0) {
      const int32_t other = slots_[slot];
      if (tokens_[other] == token) {
        // Line numbers are 1-based ids.
        if (from_file_) {
          fail("vocab ", origin_, ":", i + 1, ": duplicate token '", token, "' (first on line ", other + 1, ")");
        }
        fail("vocab ", origin_, ": duplicate token '", token, "' at index ", i, " (first at index ", other, ")");
      }
      slot = (slot + 1) & slot_mask_;
    }
    slots_[slot] = static_cast<int32_t>(i);
  }
  uint64_t h = kFnvOffset;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (i > 0) h = (h ^ static_cast<unsigned char>('\n')) * kFnvPrime;
    h = fnv1a64(tokens_[i], h);
  }
  hash_ = h;
  pad_id_ = id(kPadToken);
  unk_id_ = id(kUnkToken);
  cls_id_ = id(kClsToken);
  sep_id_ = id(kSepToken);
  mask_id_ = id(kMaskToken);
}

int32_t Vocab::id(std::string_view token) const {
  if (slots_.empty()) return -1;
  uint64_t slot = slot_of(fnv1a64(token), slot_mask_);
  while (true) {
    const int32_t candidate = slots_[slot];
    if (candidate < 0) return -1;
    if (tokens_[candidate] == token) return candidate;
    slot = (slot + 1) & slot_mask_;
  }
}

const std::string& Vocab::token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size()) {
    fail("vocab ", origin_, ": id ", id, " out of range [0, ", tokens_.size(), ")");
  }
  return tokens_[id];
}

int32_t Vocab::special(int32_t cached, std::string_view name) const {
  if (cached < 0) fail("vocab ", origin_, ": missing special token ", name);
  return cached;
}

void Vocab::save(const std::string& path) const {
  std::string data;
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].find_first_of("\r\n") != std::string::npos) {
      fail("vocab ", path, ": token ", i, " contains a line break and cannot be saved");
    }
    data += tokens_[i];
    data += '\n';
  }
  write_file_atomically(path, data);  // a reader sees the old vocabulary or the whole new one
}

}  // namespace electra::text
