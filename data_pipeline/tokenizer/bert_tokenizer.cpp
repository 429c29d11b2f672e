#include "data_pipeline/tokenizer/bert_tokenizer.h"

#include <algorithm>
#include <cstring>

#include "lib/core/error.h"

namespace electra::text {
namespace {

uint64_t slot_of(uint64_t hash, uint64_t mask) { return (hash * 0x9E3779B97F4A7C15ull >> 17) & mask; }

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

void BertTokenizer::PieceTable::build(const std::vector<std::pair<std::string_view, int32_t>>& entries) {
  uint64_t capacity = 16;
  while (capacity < 2 * entries.size()) capacity *= 2;
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  arena_.clear();
  max_key_bytes_ = 0;
  for (const auto& [key, id] : entries) {
    const uint64_t hash = fnv1a64(key);
    uint64_t slot = slot_of(hash, mask_);
    while (slots_[slot].id >= 0) slot = (slot + 1) & mask_;  // keys are unique (Vocab checks)
    slots_[slot] = Slot{hash, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id};
    arena_.append(key);
    max_key_bytes_ = std::max(max_key_bytes_, key.size());
  }
}

int32_t BertTokenizer::PieceTable::find(const char* key, size_t len, uint64_t hash) const {
  uint64_t slot = slot_of(hash, mask_);
  while (true) {
    const Slot& s = slots_[slot];
    if (s.id < 0) return -1;
    if (s.hash == hash && s.len == len && std::memcmp(arena_.data() + s.offset, key, len) == 0) return s.id;
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
  // hashes[k] = FNV-1a of word[start, start + k): every candidate's hash in one pass per start.
  uint64_t stack_hashes[257];
  std::vector<uint64_t> heap_hashes;
  uint64_t* hashes = stack_hashes;
  size_t start = 0;
  while (start < n) {
    const PieceTable& table = start == 0 ? initial_ : continuation_;
    const size_t limit = std::min(n, start + table.max_key_bytes());
    const size_t need = limit - start + 1;
    if (need > 257) {
      if (heap_hashes.size() < need) heap_hashes.resize(need);
      hashes = heap_hashes.data();
    } else {
      hashes = stack_hashes;
    }
    uint64_t h = kFnvOffset;
    for (size_t i = start; i < limit; ++i) {
      h = (h ^ static_cast<unsigned char>(word[i])) * kFnvPrime;
      hashes[i - start + 1] = h;
    }
    int32_t found = -1;
    size_t end = limit;
    for (; end > start; --end) {
      if (!ascii && end < n && is_continuation_byte(word[end])) continue;  // not a character boundary
      found = table.find(word.data() + start, end - start, hashes[end - start]);
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
