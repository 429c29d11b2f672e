// safetensors reader/writer: round trips, determinism, dtype conversion, and malformed files (hand-made
// and fuzzed) that must all end in electra::Error.
#include "lib/interop/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "lib/core/error.h"
#include "lib/core/philox.h"
#include "tests/interop/interop_test_util.h"

namespace electra::interop {
namespace {

using testing::TempDir;

std::vector<float> iota_floats(size_t n, float start) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + 0.25f * static_cast<float>(i);
  return v;
}

// A file from a header JSON object and a data buffer, the way a foreign writer could produce it.
std::string make_file(const nlohmann::json& header, const std::string& data, bool pad = true) {
  std::string json = header.dump();
  if (pad) json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + data;
}

template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// Parses `bytes` and expects an electra::Error whose message contains `needle`.
void expect_rejected(const std::string& bytes, const std::string& needle) {
  try {
    SafetensorsFile::parse(bytes, "test.safetensors");
    ADD_FAILURE() << "accepted a malformed file; expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("test.safetensors"), std::string::npos) << e.what();
  }
}

struct Valid {
  std::vector<float> a = iota_floats(6, -1.0f), b = iota_floats(4, 3.0f), c = iota_floats(1, 9.0f);
  std::string bytes() const {
    return serialize_safetensors({{"layer.b", {4}, b}, {"layer.a", {2, 3}, a}, {"scalar", {}, c}});
  }
};

TEST(Safetensors, RoundTripSortedDeterministicAndPadded) {
  Valid v;
  const std::string bytes = v.bytes();
  // Input order does not matter: tensors are sorted by name.
  EXPECT_EQ(bytes, serialize_safetensors({{"scalar", {}, v.c}, {"layer.a", {2, 3}, v.a}, {"layer.b", {4}, v.b}}));
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_len + 4 * (6 + 4 + 1));
  const std::string header = bytes.substr(8, header_len);
  EXPECT_LT(header.find("\"layer.a\""), header.find("\"layer.b\""));
  EXPECT_NE(header.find("\"__metadata__\":{\"format\":\"pt\"}"), std::string::npos) << header;

  const SafetensorsFile file = SafetensorsFile::parse(bytes, "x");
  ASSERT_EQ(file.entries().size(), 3u);
  EXPECT_EQ(file.entries()[0].name, "layer.a");
  EXPECT_EQ(file.entries()[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(file.entries()[0].begin, 0u);  // sorted order in the buffer too
  EXPECT_EQ(file.entries()[2].shape, std::vector<int64_t>{});
  EXPECT_EQ(file.read_floats("layer.a"), v.a);
  EXPECT_EQ(file.read_floats("layer.b"), v.b);
  EXPECT_EQ(file.read_floats("scalar"), v.c);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_THROW(file.read_floats("nope"), Error);

  TempDir dir;
  write_safetensors(dir.path() / "m.safetensors",
                    {{"layer.a", {2, 3}, v.a}, {"layer.b", {4}, v.b}, {"scalar", {}, v.c}});
  EXPECT_EQ(testing::read_bytes(dir.path() / "m.safetensors"), bytes);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / ".m.safetensors.tmp"));
  EXPECT_EQ(SafetensorsFile::load(dir.path() / "m.safetensors").read_floats("layer.b"), v.b);
  EXPECT_THROW(SafetensorsFile::load(dir.path() / "missing.safetensors"), Error);
}

TEST(Safetensors, WriterRejectsBadTensors) {
  const std::vector<float> x(4, 1.0f);
  EXPECT_THROW(serialize_safetensors({{"a", {3}, x}}), Error);
  EXPECT_THROW(serialize_safetensors({{"a", {4}, x}, {"a", {2, 2}, x}}), Error);
  EXPECT_THROW(serialize_safetensors({{"", {4}, x}}), Error);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", {4}, x}}), Error);
}

TEST(Safetensors, ReadsHalfBfloatAndDoubleAsFloat) {
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000, 0x3555};
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC0A0, 0x0000, 0x7F80};
  const std::vector<double> f64 = {0.1, -3.5, 1e-30};
  const std::vector<int64_t> i64 = {1, 2};
  std::string data = bytes_of(f16) + bytes_of(bf16) + bytes_of(f64) + bytes_of(i64);
  size_t o = 0;
  auto range = [&](size_t n) {
    nlohmann::json r = {o, o + n};
    o += n;
    return r;
  };
  nlohmann::json header;
  header["h"] = {{"dtype", "F16"}, {"shape", {7}}, {"data_offsets", range(14)}};
  header["bf"] = {{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", range(8)}};
  header["d"] = {{"dtype", "F64"}, {"shape", {3}}, {"data_offsets", range(24)}};
  header["i"] = {{"dtype", "I64"}, {"shape", {2}}, {"data_offsets", range(16)}};
  const SafetensorsFile file = SafetensorsFile::parse(make_file(header, data, /*pad=*/false), "typed");
  const std::vector<float> h = file.read_floats("h");
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], 65504.0f);
  EXPECT_EQ(h[3], std::ldexp(1.0f, -24));  // smallest subnormal half
  EXPECT_TRUE(std::isinf(h[4]) && h[4] > 0);
  EXPECT_TRUE(h[5] == 0.0f && std::signbit(h[5]));
  EXPECT_FLOAT_EQ(h[6], 0.33325195f);
  EXPECT_EQ(file.read_floats("bf"), (std::vector<float>{1.0f, -5.0f, 0.0f, std::numeric_limits<float>::infinity()}));
  EXPECT_EQ(file.read_floats("d"), (std::vector<float>{0.1f, -3.5f, 1e-30f}));
  try {
    file.read_floats("i");
    ADD_FAILURE() << "read I64 as float";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'i' has dtype I64"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RejectsMalformedFiles) {
  Valid v;
  const std::string good = v.bytes();
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  const nlohmann::json header = nlohmann::json::parse(good.substr(8, header_len));
  const std::string data = good.substr(8 + header_len);
  auto with = [&](const std::string& name, const nlohmann::json& entry) {
    nlohmann::json h = header;
    h[name] = entry;
    return make_file(h, data);
  };
  auto entry = [](const char* dtype, nlohmann::json shape, uint64_t b, uint64_t e) {
    return nlohmann::json{{"dtype", dtype}, {"shape", shape}, {"data_offsets", {b, e}}};
  };

  expect_rejected("", "too short");
  expect_rejected(good.substr(0, 5), "too short");
  expect_rejected(good.substr(0, 8 + header_len / 2), "past the end of the file");  // truncated in the header
  expect_rejected(good.substr(0, good.size() - 4), "past the data buffer");         // truncated in the data
  std::string huge = good;
  const uint64_t absurd = 1ull << 62;
  std::memcpy(huge.data(), &absurd, 8);
  expect_rejected(huge, "exceeds the format's limit");
  std::string longer = good;
  const uint64_t past = good.size();
  std::memcpy(longer.data(), &past, 8);
  expect_rejected(longer, "past the end of the file");
  std::string shorter = good;
  const uint64_t cut = header_len - 8;
  std::memcpy(shorter.data(), &cut, 8);
  expect_rejected(shorter, "not valid JSON");
  expect_rejected(make_file(nlohmann::json::array({1, 2}), ""), "not a JSON object");
  std::string bad_json = good;
  bad_json[8 + 1] = '!';
  expect_rejected(bad_json, "not valid JSON");
  expect_rejected(with("layer.a", entry("F33", {2, 3}, 0, 24)), "unknown dtype 'F33'");
  expect_rejected(with("layer.a", entry("F32", {2, 4}, 0, 24)), "needs 32 bytes");
  expect_rejected(with("layer.a", entry("F32", {2, -3}, 0, 24)), "non-negative integer");
  expect_rejected(with("layer.a", entry("F32", {2.5, 3}, 0, 24)), "non-negative integer");
  expect_rejected(with("layer.b", entry("F32", {4}, 16, 32)), "overlap");
  expect_rejected(with("layer.b", entry("F32", {4}, 40, 56)), "past the data buffer");
  expect_rejected(with("layer.b", entry("F32", {4}, 30, 14)), "end before they begin");
  // Shapes whose byte count wraps around 2^64 to the right size must not pass.
  expect_rejected(with("layer.a", entry("F32", {uint64_t{1} << 62, 4, 2, 3}, 0, 24)), "more than 2^64");
  nlohmann::json missing = header;
  missing["layer.a"].erase("dtype");
  expect_rejected(make_file(missing, data), "needs dtype, shape and data_offsets");
  nlohmann::json extra = header;
  extra["layer.a"]["offset"] = 3;
  expect_rejected(make_file(extra, data), "unknown field 'offset'");
  nlohmann::json meta = header;
  meta["__metadata__"]["format"] = 3;
  expect_rejected(make_file(meta, data), "__metadata__");
  // A gap between tensors, and bytes after the last one.
  nlohmann::json gap = header;
  gap.erase("layer.b");
  expect_rejected(make_file(gap, data), "belong to no tensor");
  expect_rejected(make_file(header, data + std::string(4, '\0')), "cover");
  // Too deep to be a safetensors header.
  expect_rejected(make_file(nlohmann::json::parse(R"({"a":{"shape":[[[[[1]]]]]}})"), ""), "nests deeper");
}

// Random byte flips, overwrites and truncations of a valid file: every outcome is a parsed file (a
// flip in the data bytes, or in the header padding) or an electra::Error — never a crash or another
// exception type.
TEST(Safetensors, FuzzedFilesNeverCrash) {
  Valid v;
  const std::string good = v.bytes();
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  PhiloxSequence rng(2024, RandomPurpose::kTest, 0, 1);
  int rejected = 0, accepted = 0;
  for (int iter = 0; iter < 600; ++iter) {
    std::string bytes = good;
    const uint32_t kind = rng.next_below(4);
    if (kind == 0) {
      bytes.resize(rng.next_below(static_cast<uint32_t>(good.size())));
    } else {
      const uint32_t edits = 1 + rng.next_below(4);
      for (uint32_t e = 0; e < edits; ++e) {
        // Mostly inside the length prefix and header, where the parser does its work.
        const uint32_t limit =
            rng.next_below(4) == 0 ? static_cast<uint32_t>(bytes.size()) : static_cast<uint32_t>(8 + header_len);
        const uint32_t at = rng.next_below(limit);
        if (kind == 1) {
          bytes[at] = static_cast<char>(bytes[at] ^ (1u << rng.next_below(8)));
        } else if (kind == 2) {
          bytes[at] = static_cast<char>(rng.next_below(256));
        } else {
          const char chars[] = "{}[]\":,0123456789-. eE";
          bytes[at] = chars[rng.next_below(sizeof(chars) - 1)];
        }
      }
    }
    try {
      const SafetensorsFile file = SafetensorsFile::parse(bytes, "fuzz");
      for (const SafetensorsEntry& e : file.entries()) {
        try {
          (void)file.read_floats(e.name);
        } catch (const Error&) {
          // A non-float dtype after a flip: a clean error is fine.
        }
      }
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": exception other than electra::Error: " << e.what();
    }
  }
  EXPECT_GT(rejected, 300);  // the mutations do hit the structure
  RecordProperty("accepted", accepted);
}

}  // namespace
}  // namespace electra::interop
