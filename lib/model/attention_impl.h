// How transformer layers run attention: materialised (probabilities and dropout keep bits [B,H,S,S]
// kept from forward to backward) or fused (only [B,H,S] log-sum-exp statistics kept; backward
// recomputes the probabilities). Both compute the same function with the same dropout bits
// (backend.h's fused_attention_* contract); they differ in memory and speed.
#pragma once

#include <string>

#include "lib/backend/backend.h"
#include "lib/core/error.h"

namespace electra {

enum class AttentionImpl {
  kAuto,          // fused on non-CPU backends that support the shape; materialised on the CPU (faster there)
  kMaterialized,  // attention_forward / attention_backward
  kFused,         // fused_attention_forward / fused_attention_backward; fails where the backend lacks them
};

// "auto" | "materialized" | "fused"; fails naming `what` (a config key or flag) and the accepted values.
inline AttentionImpl parse_attention_impl(const std::string& name, const std::string& what = "attention") {
  if (name == "auto") return AttentionImpl::kAuto;
  if (name == "materialized") return AttentionImpl::kMaterialized;
  if (name == "fused") return AttentionImpl::kFused;
  fail(what, ": unknown attention implementation '", name, "' (expected auto, materialized or fused)");
}

inline std::string to_string(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::kAuto:
      return "auto";
    case AttentionImpl::kMaterialized:
      return "materialized";
    case AttentionImpl::kFused:
      return "fused";
  }
  fail("to_string: unknown attention implementation ", static_cast<int>(impl));
}

// The attention a run asks for, given its data. Packed rows (several examples per row, block-diagonal
// masks) cannot go to cuDNN SDPA, which the CUDA backend's fused attention uses in bf16 and fp16 (its mask is a
// key length per row; lib/backend/cuda/README.md). So with packed rows there, "auto" means materialised; an
// explicit "fused" stays, and the backend refuses a packed row with a message naming train.attention.
inline AttentionImpl attention_for_data(AttentionImpl requested, DeviceKind device, CudaPrecision precision,
                                        bool packed_rows) {
  const bool cudnn_attention =
      device == DeviceKind::kCuda && (precision == CudaPrecision::kBf16 || precision == CudaPrecision::kFp16);
  return requested == AttentionImpl::kAuto && packed_rows && cudnn_attention ? AttentionImpl::kMaterialized : requested;
}

// Whether a layer of this shape runs fused attention under `impl` on `be`. dropout is the training rate
// (the one a plan must serve). kFused on a backend without fused attention for the shape fails.
template <typename T>
bool use_fused_attention(const Backend<T>& be, AttentionImpl impl, int B, int S, int H, int D, float dropout) {
  switch (impl) {
    case AttentionImpl::kMaterialized:
      return false;
    case AttentionImpl::kAuto:
      return be.device() != DeviceKind::kCpu && be.fused_attention_supported(B, S, H, D, dropout);
    case AttentionImpl::kFused:
      if (!be.fused_attention_supported(B, S, H, D, dropout)) {
        fail("attention 'fused': backend ", be.name(), " has no fused attention for B=", B, " S=", S, " H=", H,
             " D=", D, " dropout=", dropout, " (use 'auto' or 'materialized')");
      }
      return true;
  }
  fail("use_fused_attention: unknown attention implementation ", static_cast<int>(impl));
}

}  // namespace electra
