#include "data_pipeline/tokenizer/basic_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "data_pipeline/tokenizer/unicode.h"

namespace electra::text {
namespace {

using unicode::CharClass;

enum AsciiClass : uint8_t { kWordByte = 0, kSpaceByte = 1, kDropByte = 2, kPunctByte = 3 };

// Cleanup class of ASCII bytes; punctuation is a word byte during cleanup and splits afterwards.
constexpr std::array<uint8_t, 128> make_ascii_class() {
  std::array<uint8_t, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      t[c] = kSpaceByte;
    } else if (c < 32 || c == 127) {
      t[c] = kDropByte;  // Cc
    } else if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) {
      t[c] = kPunctByte;
    } else {
      t[c] = kWordByte;
    }
  }
  return t;
}
constexpr std::array<uint8_t, 128> kAsciiClass = make_ascii_class();

constexpr std::array<char, 128> make_lower(bool lower) {
  std::array<char, 128> t{};
  for (int c = 0; c < 128; ++c) t[c] = static_cast<char>(lower && c >= 'A' && c <= 'Z' ? c + 32 : c);
  return t;
}
constexpr std::array<char, 128> kLower = make_lower(true);
constexpr std::array<char, 128> kIdentity = make_lower(false);

// Per-thread buffers so that splitting allocates nothing once they have grown to the longest line seen.
struct Scratch {
  std::string chunk;  // the current whitespace-delimited chunk after cleanup (bytes)
  std::u32string cps, tmp;
  std::string piece;
  bool busy = false;
};

// Hands out the thread's scratch, or a fresh one when a callback re-enters split() on the same thread.
class ScratchLease {
 public:
  ScratchLease() {
    thread_local Scratch shared;
    if (!shared.busy) {
      scratch_ = &shared;
    } else {
      own_ = std::make_unique<Scratch>();
      scratch_ = own_.get();
    }
    scratch_->busy = true;
  }
  ~ScratchLease() { scratch_->busy = false; }
  Scratch& get() { return *scratch_; }

 private:
  Scratch* scratch_;
  std::unique_ptr<Scratch> own_;
};

struct Emitter {
  BasicTokenizer::WordCallback callback;
  void* context;
  uint64_t words = 0;
  void operator()(const char* data, size_t len, uint32_t chars) {
    ++words;
    callback(context, std::string_view(data, len), chars);
  }
};

// A chunk with non-ASCII characters (valid UTF-8): normalize, lowercase, strip accents, split on punctuation.
void emit_unicode_chunk(const char* data, size_t len, const TokenizerOptions& options, Scratch& s, Emitter& emit) {
  std::u32string& cps = s.cps;
  cps.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  const auto* end = p + len;
  char32_t max_cp = 0;
  while (p < end) {
    const unicode::Decoded d = unicode::decode_utf8(p, end);
    p += d.len;
    cps.push_back(d.cp);
    max_cp = std::max(max_cp, d.cp);
  }
  const bool strip = options.strips_accents();
  // Nothing below U+0300 changes under NFC; NFC is redundant before NFD.
  if (!strip && max_cp >= 0x300) unicode::nfc(cps, s.tmp);
  if (options.lower_case) {
    s.tmp.clear();
    char32_t lowered[2];
    for (char32_t cp : cps) {
      const int n = unicode::lower_full(cp, lowered);
      s.tmp.append(lowered, static_cast<size_t>(n));
    }
    cps.swap(s.tmp);
  }
  if (strip) {
    unicode::nfd(cps, s.tmp);
    size_t kept = 0;
    for (char32_t cp : cps) {
      if (!unicode::is_nonspacing_mark(cp)) cps[kept++] = cp;
    }
    cps.resize(kept);
  }
  // Split on punctuation and re-encode each piece.
  std::string& piece = s.piece;
  piece.clear();
  uint32_t piece_chars = 0;
  char buf[4];
  for (char32_t cp : cps) {
    if (unicode::is_punctuation(cp)) {
      if (piece_chars > 0) emit(piece.data(), piece.size(), piece_chars);
      piece.clear();
      piece_chars = 0;
      emit(buf, unicode::encode_utf8(cp, buf), 1);
    } else {
      piece.append(buf, unicode::encode_utf8(cp, buf));
      ++piece_chars;
    }
  }
  if (piece_chars > 0) emit(piece.data(), piece.size(), piece_chars);
}

}  // namespace

void BasicTokenizer::split(std::string_view text, WordCallback callback, void* context, TokenizeStats* stats) const {
  ScratchLease lease;
  Scratch& s = lease.get();
  // A cleaned chunk is never longer than the text it came from.
  if (s.chunk.size() < text.size()) s.chunk.resize(text.size());
  char* const chunk = s.chunk.data();
  size_t chunk_len = 0;
  bool chunk_ascii = true;
  const std::array<char, 128>& lower = options_.lower_case ? kLower : kIdentity;
  const bool chinese = options_.tokenize_chinese_chars;
  Emitter emit{callback, context};
  uint64_t invalid = 0;

  auto flush = [&] {
    if (chunk_len == 0) return;
    if (chunk_ascii) {
      emit(chunk, chunk_len, static_cast<uint32_t>(chunk_len));  // punctuation was split off already
    } else {
      emit_unicode_chunk(chunk, chunk_len, options_, s, emit);
    }
    chunk_len = 0;
    chunk_ascii = true;
  };

  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = p + text.size();
  const bool strip = options_.strips_accents();
  while (p < end) {
    const unsigned b = *p;
    if (b < 0x80) {
      const uint8_t cls = kAsciiClass[b];
      if (cls == kWordByte) {
        chunk[chunk_len++] = lower[b];
      } else if (cls == kSpaceByte) {
        flush();
      } else if (cls == kPunctByte) {
        // Split right away when nothing after it can change it: accent stripping works per character,
        // and otherwise only a following non-ASCII character could compose with it under NFC
        // ("=" + U+0338 -> U+2260). Dropped control bytes in between do not count.
        bool safe = strip;
        if (!safe && chunk_ascii) {
          const unsigned char* q = p + 1;
          while (q < end && *q < 0x80 && kAsciiClass[*q] == kDropByte) ++q;
          safe = q == end || *q < 0x80;
        }
        if (safe && chunk_ascii) {
          if (chunk_len > 0) emit(chunk, chunk_len, static_cast<uint32_t>(chunk_len));
          chunk_len = 0;
          emit(reinterpret_cast<const char*>(p), 1, 1);
        } else {
          chunk[chunk_len++] = static_cast<char>(b);
          chunk_ascii = false;  // the slow path splits it after normalization
        }
      }  // kDropByte: removed, the chunk continues
      ++p;
      continue;
    }
    const unicode::Decoded d = unicode::decode_utf8(p, end);
    const char* bytes = reinterpret_cast<const char*>(p);
    p += d.len;
    if (d.invalid) {
      ++invalid;  // becomes U+FFFD, which BERT drops
      continue;
    }
    switch (unicode::classify(d.cp, chinese)) {
      case CharClass::kWord:
        std::memcpy(chunk + chunk_len, bytes, d.len);
        chunk_len += d.len;
        chunk_ascii = false;
        break;
      case CharClass::kSpace:
        flush();
        break;
      case CharClass::kDrop:
        break;
      case CharClass::kChinese: {
        flush();
        // Compatibility ideographs normalize to unified ones; the others are words as they are.
        if ((d.cp >= 0xF900 && d.cp <= 0xFAFF) || (d.cp >= 0x2F800 && d.cp <= 0x2FA1F)) {
          emit_unicode_chunk(bytes, d.len, options_, s, emit);
        } else {
          emit(bytes, d.len, 1);
        }
        break;
      }
    }
  }
  flush();
  // Give back the memory of an unusually long line instead of keeping it for the thread's lifetime.
  if (s.chunk.size() > (16u << 20)) std::string().swap(s.chunk);
  if (stats) {
    stats->invalid_utf8 += invalid;
    stats->words += emit.words;
  }
}

std::vector<std::string> BasicTokenizer::words(std::string_view text, TokenizeStats* stats) const {
  std::vector<std::string> out;
  for_each_word(
      text, [&](std::string_view word, uint32_t) { out.emplace_back(word); }, stats);
  return out;
}

}  // namespace electra::text
