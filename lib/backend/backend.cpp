// The names of backend.h's enums: the words flags, config keys, logs and metrics use.
#include "lib/backend/backend.h"

#include "lib/core/error.h"

namespace electra {

DeviceKind parse_device_kind(const std::string& name, const std::string& what) {
  if (name == "cpu") return DeviceKind::kCpu;
  if (name == "cuda") return DeviceKind::kCuda;
  fail(what, " must be cpu or cuda, got '", name, "'");
}

std::string to_string(DeviceKind device) {
  switch (device) {
    case DeviceKind::kCpu:
      return "cpu";
    case DeviceKind::kCuda:
      return "cuda";
  }
  fail("to_string: unknown device ", static_cast<int>(device));
}

CudaPrecision parse_cuda_precision(const std::string& name, const std::string& what) {
  if (name == "fp32") return CudaPrecision::kFp32;
  if (name == "tf32") return CudaPrecision::kTf32;
  if (name == "bf16") return CudaPrecision::kBf16;
  if (name == "fp16") return CudaPrecision::kFp16;
  fail(what, " must be fp32, tf32, bf16 or fp16, got '", name, "'");
}

std::string to_string(CudaPrecision precision) {
  switch (precision) {
    case CudaPrecision::kFp32:
      return "fp32";
    case CudaPrecision::kTf32:
      return "tf32";
    case CudaPrecision::kBf16:
      return "bf16";
    case CudaPrecision::kFp16:
      return "fp16";
  }
  fail("to_string: unknown CUDA precision ", static_cast<int>(precision));
}

std::optional<StorageType> parse_storage_type(const std::string& name, const std::string& what) {
  if (name == "auto") return std::nullopt;
  if (name == "fp32") return StorageType::kFp32;
  if (name == "bf16") return StorageType::kBf16;
  fail(what, " must be auto, fp32 or bf16, got '", name, "'");
}

std::string to_string(StorageType storage) {
  switch (storage) {
    case StorageType::kFp32:
      return "fp32";
    case StorageType::kBf16:
      return "bf16";
  }
  fail("to_string: unknown storage ", static_cast<int>(storage));
}

Activation parse_activation(const std::string& name) {
  if (name == "none" || name == "linear") return Activation::kNone;
  if (name == "gelu") return Activation::kGelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "tanh") return Activation::kTanh;
  fail("unknown activation '", name, "' (expected none, linear, gelu, relu or tanh)");
}

std::string to_string(Activation activation) {
  switch (activation) {
    case Activation::kNone:
      return "none";
    case Activation::kGelu:
      return "gelu";
    case Activation::kRelu:
      return "relu";
    case Activation::kTanh:
      return "tanh";
  }
  fail("to_string: unknown activation ", static_cast<int>(activation));
}

}  // namespace electra
