// Helpers shared by the tokenizer tests: temporary directories, files as lines, the Python reference.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace electra::text::testing {

// A fresh directory under the system temp dir, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "electra_tok_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// Lines split at '\n'; a final '\n' does not start another line (as LineReader and hf_reference.py).
inline std::vector<std::string> split_lines(const std::string& data) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) nl = data.size();
    lines.push_back(data.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

inline std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// Runs a shell command; returns its exit status.
inline int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

inline std::string source_dir() { return ELECTRA_SOURCE_DIR; }

inline std::string build_dir() {
  const char* env = std::getenv("ELECTRA_BUILD_DIR");
  return env && *env ? env : ELECTRA_BINARY_DIR;
}

// The reference Python (ELECTRA_PYTHON) when it can import transformers and tokenizers, else "" and
// `why` says what is missing.
inline std::string reference_python(std::string* why) {
  const char* env = std::getenv("ELECTRA_PYTHON");
  if (!env || !*env) {
    *why = "ELECTRA_PYTHON is not set";
    return "";
  }
  const std::string python = env;
  const std::string script = source_dir() + "/tests/tokenizer/hf_reference.py";
  if (run(shell_quote(python) + " " + shell_quote(script) + " check >/dev/null 2>&1") != 0) {
    *why = python + " cannot import transformers/tokenizers (see tests/reference/requirements.txt)";
    return "";
  }
  return python;
}

// The Python documentation's reStructuredText sources (Debian's python3-doc), or "" when absent.
inline std::string python_docs_sources() {
  namespace fs = std::filesystem;
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/share/doc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("python3", 0) == 0 && fs::is_directory(entry.path() / "html" / "_sources", ec)) {
      found.push_back((entry.path() / "html" / "_sources").string());
    }
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? "" : found.back();
}

// Concatenates the sorted files under `dir` until `max_bytes` (cut at a line end).
inline std::string corpus_prefix(const std::string& dir, size_t max_bytes) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) {
    if (text.size() >= max_bytes) break;
    std::string data = read_file(f);
    if (!data.empty() && data.back() != '\n') data += '\n';
    text += data;
  }
  if (text.size() > max_bytes) {
    const size_t cut = text.rfind('\n', max_bytes);
    text.resize(cut == std::string::npos ? max_bytes : cut + 1);
  }
  return text;
}

}  // namespace electra::text::testing
