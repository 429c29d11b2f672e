#include "lib/interop/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "lib/core/atomic_file.h"
#include "lib/core/error.h"

namespace electra::interop {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; so is this code");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // safetensors' own limit (MAX_HEADER_SIZE)
constexpr int kMaxJsonDepth = 4;                   // {name: {shape: [..]}} is 3 levels deep

struct DtypeName {
  SafetensorsDtype dtype;
  const char* name;
  size_t bytes;
};

constexpr DtypeName kDtypes[] = {
    {SafetensorsDtype::kBool, "BOOL", 1},      {SafetensorsDtype::kU8, "U8", 1},
    {SafetensorsDtype::kI8, "I8", 1},          {SafetensorsDtype::kI16, "I16", 2},
    {SafetensorsDtype::kU16, "U16", 2},        {SafetensorsDtype::kF16, "F16", 2},
    {SafetensorsDtype::kBF16, "BF16", 2},      {SafetensorsDtype::kI32, "I32", 4},
    {SafetensorsDtype::kU32, "U32", 4},        {SafetensorsDtype::kF32, "F32", 4},
    {SafetensorsDtype::kF64, "F64", 8},        {SafetensorsDtype::kI64, "I64", 8},
    {SafetensorsDtype::kU64, "U64", 8},        {SafetensorsDtype::kF8E4M3, "F8_E4M3", 1},
    {SafetensorsDtype::kF8E5M2, "F8_E5M2", 1},
};

const DtypeName& info(SafetensorsDtype dtype) {
  for (const DtypeName& d : kDtypes) {
    if (d.dtype == dtype) return d;
  }
  fail("safetensors: invalid dtype value ", static_cast<int>(dtype));
}

uint64_t read_u64_le(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// IEEE half -> float, exact (subnormals, infinities and NaNs included).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise into a float.
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

// A non-negative JSON integer, or an error naming what it is.
uint64_t json_uint(const nlohmann::json& v, const std::string& origin, const std::string& what) {
  if (!v.is_number_unsigned()) fail(origin, ": ", what, " must be a non-negative integer, got ", v.dump());
  return v.get<uint64_t>();
}

}  // namespace

std::optional<SafetensorsDtype> parse_safetensors_dtype(std::string_view name) {
  for (const DtypeName& d : kDtypes) {
    if (name == d.name) return d.dtype;
  }
  return std::nullopt;
}

const char* to_string(SafetensorsDtype dtype) { return info(dtype).name; }
size_t dtype_bytes(SafetensorsDtype dtype) { return info(dtype).bytes; }

uint64_t SafetensorsEntry::elements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafetensorsFile SafetensorsFile::load(const std::filesystem::path& path) {
  // A directory opens, then fails the read with a message that names no file.
  if (std::filesystem::is_directory(path)) fail("safetensors file ", path.string(), ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("safetensors file ", path.string(), ": cannot open");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("safetensors file ", path.string(), ": read error");
  return parse(std::move(bytes), path.string());
}

SafetensorsFile SafetensorsFile::parse(std::string bytes, std::string origin) {
  SafetensorsFile file;
  file.origin_ = "safetensors file " + origin;
  const std::string& where = file.origin_;
  if (bytes.size() < 8) fail(where, ": ", bytes.size(), " bytes is too short for the 8-byte header length");
  const uint64_t header_len = read_u64_le(bytes.data());
  if (header_len > kMaxHeaderBytes) {
    fail(where, ": header length ", header_len, " exceeds the format's limit of ", kMaxHeaderBytes, " bytes");
  }
  if (header_len > bytes.size() - 8) {
    fail(where, ": header length ", header_len, " runs past the end of the file (", bytes.size(), " bytes)");
  }
  const std::string_view header(bytes.data() + 8, header_len);
  if (header.empty() || header.front() != '{') fail(where, ": header is not a JSON object");

  nlohmann::json root;
  try {
    // Depth limit: no legitimate header nests deeper, and it bounds the work on hostile input.
    const nlohmann::json::parser_callback_t limit_depth = [&](int depth, nlohmann::json::parse_event_t,
                                                              nlohmann::json&) {
      if (depth > kMaxJsonDepth) fail(where, ": header JSON nests deeper than ", kMaxJsonDepth, " levels");
      return true;
    };
    root = nlohmann::json::parse(header.begin(), header.end(), limit_depth);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": header is not valid JSON: ", e.what());
  }
  if (!root.is_object()) fail(where, ": header is not a JSON object");

  const uint64_t data_len = bytes.size() - 8 - header_len;
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail(where, ": __metadata__ must be an object of strings");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) fail(where, ": __metadata__ value of '", key, "' is not a string");
        file.metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (name.empty()) fail(where, ": a tensor has an empty name");
    if (!value.is_object()) fail(where, ": ", what, " is not a JSON object");
    for (const auto& [key, ignored] : value.items()) {
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        fail(where, ": ", what, " has an unknown field '", key, "'");
      }
    }
    if (!value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets")) {
      fail(where, ": ", what, " needs dtype, shape and data_offsets");
    }
    SafetensorsEntry entry;
    entry.name = name;
    const nlohmann::json& dtype = value.at("dtype");
    if (!dtype.is_string()) fail(where, ": ", what, " has a non-string dtype ", dtype.dump());
    const auto parsed = parse_safetensors_dtype(dtype.get<std::string>());
    if (!parsed) fail(where, ": ", what, " has unknown dtype '", dtype.get<std::string>(), "'");
    entry.dtype = *parsed;

    const nlohmann::json& shape = value.at("shape");
    if (!shape.is_array()) fail(where, ": ", what, " shape is not an array");
    // Byte size with overflow checks: a hostile shape must not wrap around to a small number.
    uint64_t nbytes = dtype_bytes(entry.dtype);
    bool overflow = false;
    for (const nlohmann::json& d : shape) {
      const uint64_t dim = json_uint(d, where, what + " shape entry");
      if (dim > static_cast<uint64_t>(INT64_MAX)) fail(where, ": ", what, " dimension ", dim, " is too large");
      entry.shape.push_back(static_cast<int64_t>(dim));
      overflow = overflow || __builtin_mul_overflow(nbytes, dim, &nbytes);
    }
    const nlohmann::json& offsets = value.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2) fail(where, ": ", what, " data_offsets must be [begin, end]");
    entry.begin = json_uint(offsets[0], where, what + " data_offsets begin");
    entry.end = json_uint(offsets[1], where, what + " data_offsets end");
    if (entry.end < entry.begin) {
      fail(where, ": ", what, " data_offsets [", entry.begin, ", ", entry.end, "] end before they begin");
    }
    if (entry.end > data_len) {
      fail(where, ": ", what, " data_offsets [", entry.begin, ", ", entry.end, "] reach past the data buffer (",
           data_len, " bytes)");
    }
    if (overflow || nbytes != entry.end - entry.begin) {
      fail(where, ": ", what, " of dtype ", to_string(entry.dtype), " and shape ", shape.dump(), " needs ",
           overflow ? std::string("more than 2^64") : std::to_string(nbytes), " bytes, but data_offsets [", entry.begin,
           ", ", entry.end, "] hold ", entry.end - entry.begin);
    }
    file.entries_.push_back(std::move(entry));
  }

  // The tensors must tile the buffer exactly: no overlap, no gap, nothing after the last one.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const SafetensorsEntry& e : file.entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin < covered) {
      fail(where, ": tensor '", e->name, "' data_offsets [", e->begin, ", ", e->end, "] overlap tensor '",
           previous->name, "' [", previous->begin, ", ", previous->end, "]");
    }
    if (e->begin > covered) {
      fail(where, ": bytes [", covered, ", ", e->begin, ") of the data buffer belong to no tensor (before tensor '",
           e->name, "')");
    }
    covered = e->end;
    previous = e;
  }
  if (covered != data_len) {
    fail(where, ": the tensors cover ", covered, " bytes of the data buffer, but it has ", data_len, " bytes");
  }

  std::sort(file.entries_.begin(), file.entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.name < b.name; });
  file.data_start_ = 8 + header_len;
  file.bytes_ = std::move(bytes);
  return file;
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const SafetensorsEntry& e, std::string_view n) { return e.name < n; });
  return it != entries_.end() && it->name == name ? &*it : nullptr;
}

std::string_view SafetensorsFile::raw(const SafetensorsEntry& entry) const {
  return std::string_view(bytes_).substr(data_start_ + entry.begin, entry.end - entry.begin);
}

std::vector<float> SafetensorsFile::read_floats(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) fail(origin_, ": no tensor '", name, "'");
  const std::string_view data = raw(*e);
  const size_t n = e->elements();
  std::vector<float> out(n);
  const char* p = data.data();
  switch (e->dtype) {
    case SafetensorsDtype::kF32:
      std::memcpy(out.data(), p, n * 4);
      break;
    case SafetensorsDtype::kF64:
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, p + 8 * i, 8);
        out[i] = static_cast<float>(v);
      }
      break;
    case SafetensorsDtype::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        out[i] = half_to_float(v);
      }
      break;
    case SafetensorsDtype::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        out[i] = std::bit_cast<float>(static_cast<uint32_t>(v) << 16);
      }
      break;
    default:
      fail(origin_, ": tensor '", name, "' has dtype ", to_string(e->dtype),
           "; only F32, F16, BF16 and F64 can be read as float");
  }
  return out;
}

std::string safetensors_header(std::vector<SafetensorsTensorRef> tensors,
                               const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(),
            [](const SafetensorsTensorRef& a, const SafetensorsTensorRef& b) { return a.name < b.name; });
  // nlohmann's object is a std::map: keys are dumped sorted, so the header bytes are deterministic.
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsTensorRef& t = tensors[i];
    if (t.name.empty() || t.name == "__metadata__") fail("safetensors writer: invalid tensor name '", t.name, "'");
    if (i > 0 && tensors[i - 1].name == t.name) fail("safetensors writer: duplicate tensor name '", t.name, "'");
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("safetensors writer: tensor '", t.name, "' has a negative dimension");
      n *= static_cast<uint64_t>(d);
    }
    if (n != t.data.size()) {
      fail("safetensors writer: tensor '", t.name, "' has ", t.data.size(), " elements, its shape needs ", n);
    }
    const uint64_t bytes = n * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t len = json.size();
  std::memcpy(out.data(), &len, 8);
  return out + json;
}

std::string serialize_safetensors(std::vector<SafetensorsTensorRef> tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(),
            [](const SafetensorsTensorRef& a, const SafetensorsTensorRef& b) { return a.name < b.name; });
  std::string out = safetensors_header(tensors, metadata);
  for (const SafetensorsTensorRef& t : tensors) {
    out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size_bytes());
  }
  return out;
}

void write_safetensors(const std::filesystem::path& path, std::vector<SafetensorsTensorRef> tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(),
            [](const SafetensorsTensorRef& a, const SafetensorsTensorRef& b) { return a.name < b.name; });
  const std::string header = safetensors_header(tensors, metadata);
  const std::filesystem::path temp = temp_path_for(path);
  try {
    {
      std::ofstream out(temp, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot create ", temp.string());
      out.write(header.data(), static_cast<std::streamsize>(header.size()));
      for (const SafetensorsTensorRef& t : tensors) {
        out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size_bytes()));
      }
      out.flush();
      if (!out) fail("write error on ", temp.string(), " (disk full?)");
    }
    commit_file(temp, path);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw;
  }
}

}  // namespace electra::interop
