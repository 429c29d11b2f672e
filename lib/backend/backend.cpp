// The names of backend.h's enums: the words flags, config keys, logs and metrics use. One table per enum;
// parsing and printing both read it.
#include "lib/backend/backend.h"

#include <array>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "lib/core/error.h"

namespace electra {
namespace {

template <typename E>
using NameTable = std::span<const std::pair<E, const char*>>;

constexpr std::array<std::pair<DeviceKind, const char*>, 2> kDeviceNames{
    {{DeviceKind::kCpu, "cpu"}, {DeviceKind::kCuda, "cuda"}}};
constexpr std::array<std::pair<CudaPrecision, const char*>, 4> kPrecisionNames{{{CudaPrecision::kFp32, "fp32"},
                                                                                {CudaPrecision::kTf32, "tf32"},
                                                                                {CudaPrecision::kBf16, "bf16"},
                                                                                {CudaPrecision::kFp16, "fp16"}}};
constexpr std::array<std::pair<StorageType, const char*>, 2> kStorageNames{
    {{StorageType::kFp32, "fp32"}, {StorageType::kBf16, "bf16"}}};
// "linear" is accepted as another name for none; none is printed.
constexpr std::array<std::pair<Activation, const char*>, 5> kActivationNames{{{Activation::kNone, "none"},
                                                                              {Activation::kNone, "linear"},
                                                                              {Activation::kGelu, "gelu"},
                                                                              {Activation::kRelu, "relu"},
                                                                              {Activation::kTanh, "tanh"}}};

template <typename E>
std::optional<E> find_value(NameTable<E> table, const std::string& name) {
  for (const auto& [value, text] : table) {
    if (name == text) return value;
  }
  return std::nullopt;
}

// The first name of `value`; fails naming `kind` for a value outside the table.
template <typename E>
std::string name_of(NameTable<E> table, E value, const char* kind) {
  for (const auto& [entry, text] : table) {
    if (entry == value) return text;
  }
  fail("to_string: unknown ", kind, " ", static_cast<int>(value));
}

// "a, b or c" (after `first` when given): the names a message lists.
template <typename E>
std::string listed(NameTable<E> table, const char* first = nullptr) {
  std::vector<std::string> names;
  if (first != nullptr) names.emplace_back(first);
  for (const auto& entry : table) names.emplace_back(entry.second);
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

}  // namespace

DeviceKind parse_device_kind(const std::string& name, const std::string& what) {
  if (const auto value = find_value<DeviceKind>(kDeviceNames, name)) return *value;
  fail(what, " must be ", listed<DeviceKind>(kDeviceNames), ", got '", name, "'");
}

std::string to_string(DeviceKind device) { return name_of<DeviceKind>(kDeviceNames, device, "device"); }

CudaPrecision parse_cuda_precision(const std::string& name, const std::string& what) {
  if (const auto value = find_value<CudaPrecision>(kPrecisionNames, name)) return *value;
  fail(what, " must be ", listed<CudaPrecision>(kPrecisionNames), ", got '", name, "'");
}

std::string to_string(CudaPrecision precision) {
  return name_of<CudaPrecision>(kPrecisionNames, precision, "CUDA precision");
}

std::optional<StorageType> parse_storage_type(const std::string& name, const std::string& what) {
  if (name == "auto") return std::nullopt;
  if (const auto value = find_value<StorageType>(kStorageNames, name)) return *value;
  fail(what, " must be ", listed<StorageType>(kStorageNames, "auto"), ", got '", name, "'");
}

std::string to_string(StorageType storage) { return name_of<StorageType>(kStorageNames, storage, "storage"); }

Activation parse_activation(const std::string& name) {
  if (const auto value = find_value<Activation>(kActivationNames, name)) return *value;
  fail("unknown activation '", name, "' (expected ", listed<Activation>(kActivationNames), ")");
}

std::string to_string(Activation activation) { return name_of<Activation>(kActivationNames, activation, "activation"); }

}  // namespace electra
