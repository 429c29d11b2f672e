// A WordPiece vocabulary: token strings with dense ids 0..size()-1, in file order (BERT vocab.txt, one
// token per line). Immutable once built; copies are independent and cheap enough to pass by value.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace electra::text {

// Special tokens, looked up by name (never by position).
inline constexpr std::string_view kPadToken = "[PAD]";
inline constexpr std::string_view kUnkToken = "[UNK]";
inline constexpr std::string_view kClsToken = "[CLS]";
inline constexpr std::string_view kSepToken = "[SEP]";
inline constexpr std::string_view kMaskToken = "[MASK]";

class Vocab {
 public:
  Vocab() = default;  // empty; only useful as a placeholder to assign to

  // Reads one token per line (a trailing "\r" is removed, a final line without "\n" counts). Empty
  // files and duplicate tokens are errors naming the file (and both line numbers for duplicates).
  static Vocab load(const std::string& path);
  // Builds a vocabulary from tokens in id order; duplicates are errors. `origin` names it in errors.
  static Vocab from_tokens(std::vector<std::string> tokens, std::string origin = "<in-memory vocab>");

  // Id of `token`, -1 when absent.
  int32_t id(std::string_view token) const;
  // Token of `id`; an id outside [0, size()) is an error.
  const std::string& token(int32_t id) const;
  size_t size() const { return tokens_.size(); }
  const std::vector<std::string>& tokens() const { return tokens_; }
  // The file it was loaded from (or the origin given to from_tokens); used in error messages.
  const std::string& origin() const { return origin_; }

  // FNV-1a 64 (offset 0xcbf29ce484222325, prime 0x100000001b3) over the tokens joined by '\n' (no
  // trailing '\n'). Stable across platforms and releases; shards record it to detect vocab mismatches.
  uint64_t hash() const { return hash_; }

  // Ids of the special tokens, by name; fail() naming the vocab file when one is missing.
  int32_t pad_id() const { return special(pad_id_, kPadToken); }
  int32_t unk_id() const { return special(unk_id_, kUnkToken); }
  int32_t cls_id() const { return special(cls_id_, kClsToken); }
  int32_t sep_id() const { return special(sep_id_, kSepToken); }
  int32_t mask_id() const { return special(mask_id_, kMaskToken); }
  bool has(std::string_view token) const { return id(token) >= 0; }

  // Writes one token per line to `path` via a temporary name in the same directory, fsynced and renamed,
  // so readers never see a half-written file. Tokens containing '\n' or '\r' are an error.
  void save(const std::string& path) const;

 private:
  int32_t special(int32_t cached, std::string_view name) const;
  void build_index();

  std::vector<std::string> tokens_;
  std::string origin_;
  bool from_file_ = false;      // errors then name line numbers
  std::vector<int32_t> slots_;  // open addressing over tokens_: id, or -1 for an empty slot
  uint64_t slot_mask_ = 0;
  uint64_t hash_ = 0;
  int32_t pad_id_ = -1, unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, mask_id_ = -1;
};

// FNV-1a 64 of `bytes` continuing from `state` (start with kFnvOffset).
inline constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
inline constexpr uint64_t kFnvPrime = 0x100000001b3ull;
inline uint64_t fnv1a64(std::string_view bytes, uint64_t state = kFnvOffset) {
  for (unsigned char c : bytes) state = (state ^ c) * kFnvPrime;
  return state;
}

}  // namespace electra::text
