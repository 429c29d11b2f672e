#include "data_pipeline/tokenizer/bert_tokenizer.h"

#include <algorithm>
#include <cstring>

#include "lib/core/error.h"

namespace electra::text {
namespace {

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

uint64_t load64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
uint64_t load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

uint64_t mix(uint64_t a, uint64_t b) {
  const __uint128_t r = static_cast<__uint128_t>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

// A word-at-a-time hash for the piece tables (wyhash-style reads: never past the key, no loops for keys
// of up to 16 bytes). Internal only: Vocab::hash() is the stable, documented FNV-1a.
uint64_t piece_hash(const char* p, size_t n) {
  constexpr uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull, k2 = 0x8ebc6af09c88c6e3ull;
  uint64_t a, b;
  if (n <= 16) {
    if (n >= 4) {
      a = (load32(p) << 32) | load32(p + ((n >> 3) << 2));
      b = (load32(p + n - 4) << 32) | load32(p + n - 4 - ((n >> 3) << 2));
    } else if (n > 0) {
      a = (static_cast<uint64_t>(static_cast<unsigned char>(p[0])) << 16) |
          (static_cast<uint64_t>(static_cast<unsigned char>(p[n >> 1])) << 8) | static_cast<unsigned char>(p[n - 1]);
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    uint64_t seed = k0;
    size_t i = n;
    const char* q = p;
    while (i > 16) {
      seed = mix(load64(q) ^ k1, load64(q + 8) ^ seed);
      q += 16;
      i -= 16;
    }
    a = load64(p + n - 16) ^ seed;
    b = load64(p + n - 8);
  }
  return mix(k1 ^ n, mix(a ^ k1, b ^ k2));
}

uint64_t slot_of(uint64_t hash, uint64_t mask) { return hash & mask; }

// Equality of short keys without a call to memcmp.
bool same_bytes(const char* a, const char* b, size_t n) {
  while (n >= 8) {
    if (load64(a) != load64(b)) return false;
    a += 8;
    b += 8;
    n -= 8;
  }
  if (n >= 4) return load32(a) == load32(b) && load32(a + n - 4) == load32(b + n - 4);
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

}  // namespace

void BertTokenizer::PieceTable::build(const std::vector<std::pair<std::string_view, int32_t>>& entries) {
  uint64_t capacity = 16;
  while (capacity < 2 * entries.size()) capacity *= 2;
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  arena_.clear();
  max_key_bytes_ = 0;
  for (const auto& [key, id] : entries) {
    const uint64_t hash = piece_hash(key.data(), key.size());
    uint64_t slot = slot_of(hash, mask_);
    while (slots_[slot].id >= 0) slot = (slot + 1) & mask_;  // keys are unique (Vocab checks)
    Slot& s = slots_[slot];
    s.hash = hash;
    s.id = id;
    s.len = static_cast<uint32_t>(key.size());
    if (key.size() <= kInline) {
      std::memcpy(s.inline_key, key.data(), key.size());
    } else {
      s.offset = static_cast<uint32_t>(arena_.size());
      arena_.append(key);
    }
    max_key_bytes_ = std::max(max_key_bytes_, key.size());
  }
}

int32_t BertTokenizer::PieceTable::find(const char* key, size_t len) const {
  const uint64_t hash = piece_hash(key, len);
  uint64_t slot = slot_of(hash, mask_);
  while (true) {
    const Slot& s = slots_[slot];
    if (s.id < 0) return -1;
    if (s.hash == hash && s.len == len &&
        same_bytes(len <= kInline ? s.inline_key : arena_.data() + s.offset, key, len)) {
      return s.id;
    }
    slot = (slot + 1) & mask_;
  }
}

BertTokenizer::BertTokenizer(const Vocab& vocab, TokenizerOptions options)
    : vocab_(&vocab), basic_(options), unk_id_(vocab.unk_id()), pad_id_(vocab.id(kPadToken)) {
  std::vector<std::pair<std::string_view, int32_t>> initial, continuation;
  initial.reserve(vocab.size());
  for (size_t i = 0; i < vocab.size(); ++i) {
    const std::string& token = vocab.tokens()[i];
    initial.emplace_back(token, static_cast<int32_t>(i));
    if (token.size() > 2 && token.compare(0, 2, "##") == 0) {
      continuation.emplace_back(std::string_view(token).substr(2), static_cast<int32_t>(i));
    }
  }
  initial_.build(initial);
  continuation_.build(continuation);
}

bool BertTokenizer::wordpiece(std::string_view word, uint32_t chars, std::vector<int32_t>& out) const {
  if (chars > basic_.options().max_input_chars_per_word || word.empty()) {
    out.push_back(unk_id_);
    return false;
  }
  const size_t n = word.size();
  const bool ascii = n == chars;
  const size_t mark = out.size();
  size_t start = 0;
  while (start < n) {
    const PieceTable& table = start == 0 ? initial_ : continuation_;
    // Longest candidate first; most words are found whole on the first probe.
    int32_t found = -1;
    size_t end = std::min(n, start + table.max_key_bytes());
    for (; end > start; --end) {
      if (!ascii && end < n && is_continuation_byte(word[end])) continue;  // not a character boundary
      found = table.find(word.data() + start, end - start);
      if (found >= 0) break;
    }
    if (found < 0) {
      out.resize(mark);
      out.push_back(unk_id_);
      return false;
    }
    out.push_back(found);
    start = end;
  }
  return true;
}

void BertTokenizer::encode_append(std::string_view text, std::vector<int32_t>& out, TokenizeStats* stats) const {
  uint64_t unknown = 0;
  basic_.for_each_word(
      text,
      [&](std::string_view word, uint32_t chars) {
        if (!wordpiece(word, chars, out)) ++unknown;
      },
      stats);
  if (stats) stats->unknown_tokens += unknown;
}

std::vector<int32_t> BertTokenizer::encode(std::string_view text, TokenizeStats* stats) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 4);
  encode_append(text, out, stats);
  return out;
}

std::vector<std::string> BertTokenizer::tokenize(std::string_view text, TokenizeStats* stats) const {
  const std::vector<int32_t> ids = encode(text, stats);
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  for (int32_t id : ids) pieces.push_back(vocab_->token(id));
  return pieces;
}

std::string BertTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id == pad_id_) continue;
    const std::string& token = vocab_->token(id);
    if (!out.empty() && token.compare(0, 2, "##") == 0) {
      out.append(token, 2);
    } else {
      if (!out.empty()) out += ' ';
      out += token;
    }
  }
  return out;
}

}  // namespace electra::text
