// Reading raw text: expanding inputs into files and reading them line by line through a reused buffer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace electra::text {

// Expands each input: a regular file is kept, a directory is searched recursively for regular files
// (sorted by path, so runs are reproducible). A missing input or an input without files is an error.
std::vector<std::string> list_text_files(const std::vector<std::string>& inputs);

// Reads a file (or stdin) line by line. Lines are split at '\n' only (a '\r' before it is kept: BERT
// treats it as whitespace); the last line counts even without a final '\n'. Memory: one buffer that grows
// to the longest line. Lines are raw bytes; nothing is decoded here.
class LineReader {
 public:
  // "-" reads stdin. Errors name the path.
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its '\n', valid until the next call; false at the end.
  bool next(std::string_view& line);
  uint64_t line_number() const { return line_number_; }  // 1-based number of the line last returned
  uint64_t bytes_read() const { return bytes_read_; }
  const std::string& name() const { return name_; }  // the path, or "stdin"

 private:
  bool fill();

  std::string name_;
  int fd_ = -1;
  bool owns_fd_ = false;
  bool eof_ = false;
  std::vector<char> buffer_;
  size_t begin_ = 0, end_ = 0;  // unread bytes are buffer_[begin_, end_)
  uint64_t line_number_ = 0;
  uint64_t bytes_read_ = 0;
};

}  // namespace electra::text
