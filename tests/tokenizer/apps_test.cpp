// The programs: electra-vocab writes a vocabulary of the requested size atomically, refuses an existing
// output without --force and an input without words (exit 2); electra-tokenize
// prints one line per input line, the same ids as the library, names lines with invalid UTF-8, and exits
// 2 on bad flags or inputs and 1 when writing fails.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "data_pipeline/tokenizer/bert_tokenizer.h"
#include "tests/tokenizer/edge_lines.h"
#include "tests/tokenizer/test_util.h"

namespace electra::text {
namespace {

using testing::shell_quote;
using testing::TempDir;

// "caf ##e" -> "cafe"
std::string merge_pieces(std::string s) {
  for (size_t at; (at = s.find(" ##")) != std::string::npos;) s.erase(at, 3);
  return s;
}

std::string bin(const std::string& name) { return testing::build_dir() + "/bin/" + name; }

class Apps : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"electra-vocab", "electra-tokenize"}) {
      ASSERT_TRUE(std::filesystem::exists(bin(name))) << bin(name) << " is not built";
    }
    // A small corpus spread over a nested directory.
    std::filesystem::create_directories(dir_.path() / "corpus" / "sub");
    std::string a, b;
    for (int i = 0; i < 300; ++i) {
      a += "The quick brown fox jumps over the lazy dog number ";
      a += std::to_string(i);
      a += ".\n";
      b += "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u4e2d\u6587 tokenization, unaffable playing played plays!\n";
    }
    testing::write_file(dir_.file("corpus/a.txt"), a);
    testing::write_file(dir_.file("corpus/sub/b.txt"), b + testing::join_lines(testing::edge_lines()));
  }
  TempDir dir_;
};

TEST_F(Apps, VocabTrainerWritesTheRequestedSize) {
  const std::string out = dir_.file("vocab.txt");
  ASSERT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) +
                         " --vocab-size 150 --min-frequency 1 --output " + shell_quote(out) + " 2>" +
                         shell_quote(dir_.file("log.txt"))),
            0);
  const Vocab v = Vocab::load(out);
  EXPECT_EQ(v.size(), 150u);
  EXPECT_EQ(v.mask_id(), 4);
  const std::string log = testing::read_file(dir_.file("log.txt"));
  EXPECT_NE(log.find("MB/s"), std::string::npos) << log;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
  }
}

TEST_F(Apps, VocabTrainerFailsOnMissingInput) {
  const std::string out = dir_.file("vocab.txt");
  const std::string err = dir_.file("err.txt");
  EXPECT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("nope")) +
                         " --vocab-size 100 --output " + shell_quote(out) + " 2>" + shell_quote(err)),
            2);
  EXPECT_NE(testing::read_file(err).find("nope"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(out));
}

// Sizes outside [6, 2^31 - 1] (five special tokens and one more; token ids are int32) and negative counts
// are refused as flags (exit 2, nothing written): -5 used to be read as 2^64 - 5 and train a vocabulary.
TEST_F(Apps, VocabTrainerRefusesOutOfRangeFlags) {
  const std::string out = dir_.file("vocab.txt");
  const std::string err = dir_.file("err.txt");
  for (const std::string flags : {"--vocab-size 5", "--vocab-size 0", "--vocab-size -5", "--vocab-size 2147483648",
                                  "--vocab-size 100 --min-frequency -1", "--vocab-size 100 --limit-alphabet -2",
                                  // in range, but no room beyond the special tokens: every word would be [UNK]
                                  "--vocab-size 6"}) {
    EXPECT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) + " " +
                           flags + " --output " + shell_quote(out) + " 2>" + shell_quote(err)),
              2)
        << flags;
    const std::string message = testing::read_file(err);
    EXPECT_NE(message.find(flags.substr(flags.rfind("--"), flags.rfind(' ') - flags.rfind("--"))), std::string::npos)
        << flags << ": " << message;
    EXPECT_FALSE(std::filesystem::exists(out)) << flags;
  }
}

TEST_F(Apps, VocabTrainerRefusesAnExistingOutputUnlessForced) {
  const std::string out = dir_.file("vocab.txt");
  const std::string err = dir_.file("err.txt");
  const std::string train = shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) +
                            " --min-frequency 1 --output " + shell_quote(out);
  ASSERT_EQ(testing::run(train + " --vocab-size 150 2>/dev/null"), 0);
  const std::string first = testing::read_file(out);

  EXPECT_EQ(testing::run(train + " --vocab-size 120 2>" + shell_quote(err)), 2);
  const std::string message = testing::read_file(err);
  EXPECT_NE(message.find(out), std::string::npos) << message;
  EXPECT_NE(message.find("--force"), std::string::npos) << message;
  EXPECT_EQ(testing::read_file(out), first);

  ASSERT_EQ(testing::run(train + " --vocab-size 120 --force 2>/dev/null"), 0);
  EXPECT_EQ(Vocab::load(out).size(), 120u);

  // An empty --output, or a directory, is refused before the corpus is read (it was exit 1 after it).
  const std::string base = shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) +
                           " --vocab-size 120 --force --output ";
  EXPECT_EQ(testing::run(base + "'' 2>" + shell_quote(err)), 2);
  EXPECT_NE(testing::read_file(err).find("--output: is empty"), std::string::npos) << testing::read_file(err);
  EXPECT_EQ(testing::run(base + shell_quote(dir_.file("corpus")) + " 2>" + shell_quote(err)), 2);
  EXPECT_NE(testing::read_file(err).find("--output is a directory"), std::string::npos) << testing::read_file(err);
}

TEST_F(Apps, VocabTrainerRefusesAnInputWithoutWords) {
  const std::string out = dir_.file("vocab.txt");
  const std::string err = dir_.file("err.txt");
  std::filesystem::create_directories(dir_.path() / "empty_dir");
  testing::write_file(dir_.file("empty.txt"), "");
  testing::write_file(dir_.file("blank.txt"), "\n  \n\t\n");
  for (const char* input : {"empty.txt", "blank.txt", "empty_dir"}) {
    EXPECT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file(input)) +
                           " --vocab-size 100 --output " + shell_quote(out) + " 2>" + shell_quote(err)),
              2)
        << input;
    const std::string message = testing::read_file(err);
    EXPECT_NE(message.find(dir_.file(input)), std::string::npos) << message;
    const bool is_directory = std::string(input) == "empty_dir";  // "directory has no files"
    EXPECT_NE(message.find(is_directory ? "no files" : "no words"), std::string::npos) << message;
    EXPECT_FALSE(std::filesystem::exists(out)) << input;
  }
}

TEST_F(Apps, TokenizePrintsOneLinePerInputLine) {
  const std::string vocab_path = dir_.file("vocab.txt");
  ASSERT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) +
                         " --vocab-size 200 --min-frequency 1 --output " + shell_quote(vocab_path) + " 2>/dev/null"),
            0);
  // Line 3 has invalid UTF-8, line 2 is empty, the last line has no '\n'.
  const std::vector<std::string> lines = {"The lazy fox.", "", "Caf\xc3\xa9 \xff na\xc3\xafve",
                                          "\u4e2d\u6587 unaffable"};
  const std::string input = dir_.file("in.txt");
  testing::write_file(input, lines[0] + "\n" + lines[1] + "\n" + lines[2] + "\n" + lines[3]);
  const std::string ids_out = dir_.file("ids.txt"), tok_out = dir_.file("tokens.txt"), err = dir_.file("err.txt");
  ASSERT_EQ(testing::run(shell_quote(bin("electra-tokenize")) + " --vocab " + shell_quote(vocab_path) + " < " +
                         shell_quote(input) + " > " + shell_quote(ids_out) + " 2>" + shell_quote(err)),
            0);
  ASSERT_EQ(testing::run(shell_quote(bin("electra-tokenize")) + " --vocab " + shell_quote(vocab_path) +
                         " --tokens --input " + shell_quote(input) + " > " + shell_quote(tok_out) + " 2>/dev/null"),
            0);
  const std::string warnings = testing::read_file(err);
  EXPECT_NE(warnings.find("stdin:3"), std::string::npos) << warnings;
  EXPECT_EQ(warnings.find("stdin:1"), std::string::npos) << warnings;

  const Vocab vocab = Vocab::load(vocab_path);
  const BertTokenizer tok(vocab, TokenizerOptions{});
  std::vector<std::string> expected_ids, expected_tokens;
  for (const auto& line : lines) {
    std::string ids, pieces;
    for (int32_t id : tok.encode(line)) {
      if (!ids.empty()) ids += ' ';
      ids += std::to_string(id);
      if (!pieces.empty()) pieces += ' ';
      pieces += vocab.token(id);
    }
    expected_ids.push_back(ids);
    expected_tokens.push_back(pieces);
  }
  EXPECT_EQ(testing::split_lines(testing::read_file(ids_out)), expected_ids);
  EXPECT_EQ(testing::split_lines(testing::read_file(tok_out)), expected_tokens);
  EXPECT_EQ(merge_pieces(expected_tokens[2]), "cafe naive");
}

TEST_F(Apps, TokenizeCasedKeepsCase) {
  const std::string vocab_path = dir_.file("vocab.txt");
  ASSERT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) +
                         " --vocab-size 200 --min-frequency 1 --no-lower-case --output " + shell_quote(vocab_path) +
                         " 2>/dev/null"),
            0);
  const std::string out = dir_.file("out.txt");
  ASSERT_EQ(testing::run("printf 'Caf\\303\\251 The\\n' | " + shell_quote(bin("electra-tokenize")) + " --vocab " +
                         shell_quote(vocab_path) + " --no-lower-case --tokens > " + shell_quote(out)),
            0);
  EXPECT_EQ(merge_pieces(testing::read_file(out)), "Caf\u00e9 The\n");
}

// Exit codes as the README's: 2 for bad flags or an input that cannot be opened (nothing written), 1 for a
// write that fails (here a full device), never CLI11's own 100+ codes.
// A path given as '' (an unset shell variable: --config "$CONFIG") is a usage error in every program, named,
// where electra-train trained its defaults without --config, ignored --init-from and started afresh for
// --resume, and electra-score/export/eval took the model's vocabulary.
TEST_F(Apps, EveryProgramRefusesAnEmptyPath) {
  const std::string err = dir_.file("err.txt");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"electra-train", "--config"},     {"electra-train", "--data"},        {"electra-train", "--output"},
      {"electra-train", "--init-from"},  {"electra-train", "--resume"},      {"electra-eval", "--checkpoint"},
      {"electra-eval", "--data"},        {"electra-eval", "--vocab"},        {"electra-export", "--checkpoint"},
      {"electra-export", "--vocab"},     {"electra-score", "--vocab"},       {"electra-preprocess", "--input"},
      {"electra-preprocess", "--vocab"}, {"electra-preprocess", "--output"}, {"electra-vocab", "--input"},
      {"electra-tokenize", "--vocab"},   {"electra-tokenize", "--input"},    {"electra-bench", "--lengths-from"},
      {"electra-score", "--model"},      {"electra-export", "--output"},     {"electra-vocab", "--output"},
      {"electra-bench", "--config"}};
  for (const auto& [program, flag] : cases) {
    ASSERT_TRUE(std::filesystem::exists(bin(program))) << bin(program) << " is not built";
    const int status =
        testing::run(shell_quote(bin(program)) + " " + flag + " '' < /dev/null > /dev/null 2>" + shell_quote(err));
    EXPECT_EQ(status, 2) << program << " " << flag;
    EXPECT_NE(testing::read_file(err).find(flag + ": is empty"), std::string::npos)
        << program << " " << flag << ": " << testing::read_file(err);
  }
  // The equals form, "--flag=": CLI11 filled it with the next argument ("--config= --print-config" read a
  // config file named --print-config).
  for (const auto& [program, flag] : std::vector<std::pair<std::string, std::string>>{
           {"electra-train", "--config"}, {"electra-export", "--vocab"}, {"electra-tokenize", "--input"}}) {
    const int status =
        testing::run(shell_quote(bin(program)) + " " + flag + "= --help < /dev/null > /dev/null 2>" + shell_quote(err));
    EXPECT_EQ(status, 2) << program << " " << flag << "=";
    EXPECT_NE(testing::read_file(err).find(flag + ": is empty"), std::string::npos)
        << program << " " << flag << "=: " << testing::read_file(err);
  }
  // A path that is not UTF-8 (Latin-1): configs, manifests and metrics are JSON. electra-train failed at its
  // first dump (exit 1, RUN_DIR/logs left), electra-eval --json after the whole evaluation.
  for (const auto& [program, flag] : std::vector<std::pair<std::string, std::string>>{{"electra-train", "--data"},
                                                                                      {"electra-eval", "--checkpoint"},
                                                                                      {"electra-vocab", "--input"},
                                                                                      {"electra-bench", "--config"}}) {
    const int status = testing::run(shell_quote(bin(program)) + " " + flag +
                                    " \"caf$(printf '\\351')\" < /dev/null > " + "/dev/null 2>" + shell_quote(err));
    EXPECT_EQ(status, 2) << program << " " << flag;
    EXPECT_NE(testing::read_file(err).find(flag + ": is not valid UTF-8"), std::string::npos)
        << program << " " << flag << ": " << testing::read_file(err);
  }
}

// A write past the file-size limit (ulimit -f, a batch job's limit) is an error naming the file (exit 1),
// with the temporary file gone: SIGXFSZ killed the programs without a word (exit 153) and left it.
TEST_F(Apps, AFileSizeLimitIsAnErrorNamingTheFile) {
  const std::string err = dir_.file("err.txt");
  const int status = testing::run("ulimit -f 1; " + shell_quote(bin("electra-vocab")) + " --input " +
                                  shell_quote(dir_.file("corpus")) + " --vocab-size 400 --min-frequency 1 --output " +
                                  shell_quote(dir_.file("limited.txt")) + " 2>" + shell_quote(err));
  EXPECT_EQ(status, 1) << testing::read_file(err);
  EXPECT_NE(testing::read_file(err).find("limited.txt.tmp: File too large"), std::string::npos)
      << testing::read_file(err);
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_EQ(entry.path().filename().string().find("limited"), std::string::npos) << entry.path();
  }
}

TEST_F(Apps, TokenizeExitCodes) {
  const std::string vocab_path = dir_.file("vocab.txt");
  ASSERT_EQ(testing::run(shell_quote(bin("electra-vocab")) + " --input " + shell_quote(dir_.file("corpus")) +
                         " --vocab-size 200 --min-frequency 1 --output " + shell_quote(vocab_path) + " 2>/dev/null"),
            0);
  const std::string tokenize = shell_quote(bin("electra-tokenize"));
  const std::string out = dir_.file("out.txt"), err = dir_.file("err.txt");
  const auto run = [&](const std::string& args) {
    return testing::run("echo 'The lazy fox.' | " + tokenize + args + " > " + shell_quote(out) + " 2>" +
                        shell_quote(err));
  };
  EXPECT_EQ(run(""), 2);  // no --vocab
  EXPECT_NE(testing::read_file(err).find("--vocab"), std::string::npos) << testing::read_file(err);
  EXPECT_EQ(run(" --vocab " + shell_quote(vocab_path) + " --bogus"), 2);
  EXPECT_EQ(run(" --vocab " + shell_quote(dir_.file("nope.txt"))), 2);
  EXPECT_NE(testing::read_file(err).find(dir_.file("nope.txt")), std::string::npos) << testing::read_file(err);
  EXPECT_EQ(run(" --vocab " + shell_quote(vocab_path) + " --input " + shell_quote(dir_.file("nope.txt"))), 2);
  EXPECT_NE(testing::read_file(err).find(dir_.file("nope.txt")), std::string::npos) << testing::read_file(err);
  EXPECT_EQ(run(" --vocab " + shell_quote(vocab_path) + " --input " + shell_quote(dir_.file("corpus"))), 2);
  EXPECT_NE(testing::read_file(err).find("is a directory"), std::string::npos) << testing::read_file(err);
  EXPECT_EQ(testing::read_file(out), "");
  // A vocabulary that is a directory, and one without [UNK] (the tokenizer needs it): exit 2, named.
  EXPECT_EQ(run(" --vocab " + shell_quote(dir_.file("corpus"))), 2);
  EXPECT_NE(testing::read_file(err).find("is a directory (expected vocab.txt)"), std::string::npos)
      << testing::read_file(err);
  // A FIFO without a writer (every program reads vocab.txt through Vocab::load): refused, where it hung.
  ASSERT_EQ(::mkfifo(dir_.file("fifo_vocab").c_str(), 0644), 0);
  EXPECT_EQ(run(" --vocab " + shell_quote(dir_.file("fifo_vocab"))), 2);
  EXPECT_NE(testing::read_file(err).find("not a regular file (expected vocab.txt)"), std::string::npos)
      << testing::read_file(err);
  std::string tokens = testing::read_file(vocab_path);
  tokens.erase(tokens.find("[UNK]\n"), 6);
  std::ofstream(dir_.file("no_unk.txt")) << tokens;
  EXPECT_EQ(run(" --vocab " + shell_quote(dir_.file("no_unk.txt"))), 2);
  EXPECT_NE(testing::read_file(err).find("missing special token [UNK]"), std::string::npos) << testing::read_file(err);
  EXPECT_EQ(run(" --vocab " + shell_quote(vocab_path) + " --help"), 0);

  if (std::filesystem::exists("/dev/full")) {
    // A large input fills the program's own buffer (the write fails mid-stream), a short one only stdio's
    // (it fails at the final flush): both must report it.
    for (const std::string& input : {std::string("echo 'The lazy fox.'"), std::string("seq 1 300000")}) {
      EXPECT_EQ(testing::run(input + " | " + tokenize + " --vocab " + shell_quote(vocab_path) + " > /dev/full 2>" +
                             shell_quote(err)),
                1)
          << input;
      EXPECT_NE(testing::read_file(err).find("stdout: write failed"), std::string::npos) << testing::read_file(err);
    }
  }
}

}  // namespace
}  // namespace electra::text
