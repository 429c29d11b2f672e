// electra-tokenize: BERT WordPiece tokenization of text, one output line per input line (space-separated
// ids, or the word pieces with --tokens). Reads stdin (or --input), writes stdout; warnings go to stderr.
// Exit codes: 0 done; 1 error while reading or writing (output may be partial); 2 bad flags, or a
// vocabulary or input that cannot be opened or read as one (nothing written).
#include <CLI/CLI.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>

#include "apps/cli_checks.h"
#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "data_pipeline/tokenizer/text_files.h"
#include "lib/core/error.h"
#include "lib/core/host.h"
#include "lib/core/log.h"

namespace {

// Buffered stdout without iostream formatting overhead. The owner calls flush() at the end: a destructor
// that flushed would throw again while a write error unwinds.
class Output {
 public:
  void put(std::string_view s) {
    if (buffer_.size() + s.size() > kFlushAt) flush();
    buffer_.append(s);
  }
  void put(char c) { buffer_.push_back(c); }
  void put(int32_t v) {
    char tmp[16];
    const auto r = std::to_chars(tmp, tmp + sizeof(tmp), v);
    buffer_.append(tmp, r.ptr);
  }
  void end_line() {
    buffer_.push_back('\n');
    if (buffer_.size() > kFlushAt) flush();
  }
  void flush() {
    if (!buffer_.empty() && std::fwrite(buffer_.data(), 1, buffer_.size(), stdout) != buffer_.size()) {
      electra::fail("stdout: write failed: ", std::strerror(errno));
    }
    buffer_.clear();
  }

 private:
  static constexpr size_t kFlushAt = 1 << 20;
  std::string buffer_;
};

}  // namespace

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  CLI::App app{"Tokenizes text with a BERT WordPiece vocabulary: one output line per input line."};
  std::string vocab_path, input = "-";
  bool no_lower_case = false, tokens = false;
  app.add_option("--vocab", vocab_path, "vocab.txt (one token per line)")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--input", input, "text file (default: stdin)")->check(electra::cli::checked_path());
  app.add_flag("--no-lower-case", no_lower_case, "keep case and accents (cased vocabularies)");
  app.add_flag("--tokens", tokens, "print word pieces instead of ids");
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  electra::log::init({});
  // Bad input: refused before anything is written.
  std::optional<electra::text::Vocab> vocab;
  std::optional<electra::text::LineReader> reader;
  std::optional<electra::text::BertTokenizer> tokenizer_slot;
  try {
    vocab.emplace(electra::text::Vocab::load(vocab_path));
    electra::text::TokenizerOptions options;
    options.lower_case = !no_lower_case;
    tokenizer_slot.emplace(*vocab, options);  // a vocabulary without [UNK] is refused here
    reader.emplace(input);
  } catch (const electra::Error& e) {
    std::cerr << "electra-tokenize: error: " << e.what() << "\n";
    return 2;
  }

  try {
    const electra::text::BertTokenizer& tokenizer = *tokenizer_slot;

    Output out;
    std::vector<int32_t> ids;
    std::string_view line;
    electra::text::TokenizeStats total;
    uint64_t bad_lines = 0;
    constexpr uint64_t kMaxWarnings = 20;
    while (reader->next(line)) {
      electra::text::TokenizeStats stats;
      ids.clear();
      tokenizer.encode_append(line, ids, &stats);
      if (stats.invalid_utf8 > 0 && ++bad_lines <= kMaxWarnings) {
        ELECTRA_LOG(warning) << reader->name() << ":" << reader->line_number() << ": " << stats.invalid_utf8
                             << " invalid UTF-8 sequence(s) replaced and dropped";
      }
      total += stats;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i > 0) out.put(' ');
        if (tokens) {
          out.put(std::string_view(vocab->token(ids[i])));
        } else {
          out.put(ids[i]);
        }
      }
      out.end_line();
    }
    out.flush();
    // stdio buffers too: a full disk shows only here (a reader that closed the pipe ends the
    // program with SIGPIPE first, as any Unix filter).
    if (std::fflush(stdout) != 0) electra::fail("stdout: write failed: ", std::strerror(errno));
    if (bad_lines > kMaxWarnings) {
      ELECTRA_LOG(warning) << reader->name() << ": " << bad_lines << " lines had invalid UTF-8 (" << total.invalid_utf8
                           << " sequences); only the first " << kMaxWarnings << " were named";
    }
    ELECTRA_LOG(debug) << reader->line_number() << " lines, " << total.words << " words, " << total.unknown_tokens
                       << " [UNK]";
  } catch (const electra::Error& e) {
    std::cerr << "electra-tokenize: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
