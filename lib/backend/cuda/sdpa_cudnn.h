// Fused attention through cuDNN's scaled-dot-product attention (cuDNN 9 backend API: the unified
// CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR / SDPA_BWD_DESCRIPTOR operations), for the CUDA backend's
// bf16 and fp16 modes. Internal to lib/backend/cuda; plain C++ (includes no cuDNN header).
//
// What it computes: Backend<float>::fused_attention_forward / fused_attention_backward (backend.h) with
// dropout 0 (the unified SDPA operation of cuDNN 9.19 has no dropout attribute; supported() says no to
// dropout > 0, and the caller uses its own kernels then). With fp32 storage (forward / backward) qkv is
// converted into a bf16/fp16 copy, Q, K and V are strided [B,H,S,D] views of that packed [B,S,3,H,D] copy
// (no transposes), and O, dO, dQ, dK, dV are strided views of [B,S,H,D] / [B,S,3,H,D] half buffers
// converted back to fp32. With bf16 storage (forward_bf16 / backward_bf16, the bf16 backend's entry) the
// same views lie over the caller's own bf16 qkv, context, dcontext and dqkv: no conversion, no copy (a
// tensor whose address is not 16-byte aligned goes through an aligned copy); the tensors, their types and
// strides are the fp32-storage path's half copies', so both entries share one cached plan per shape.
// The scale is 1/sqrt(D); stats are fp32 [B,H,S], the natural-log log-sum-exp of each query row's masked,
// scaled scores, written and read in the caller's buffer.
//
// Masks: cuDNN takes padding as per-sequence lengths, so a mask row must be right padding of one example:
// a run of one non-zero value (1), then zeros, with at least one key. Every query row is computed
// (SEQ_LEN_Q = S), as the CPU backend does for padding queries. A kernel derives the lengths from the mask
// on the device; a row that is not right padding sets kErrorAttentionMask in the device error word
// (kernels.h), and a packed row (several examples: values 1, 2, ..., whose block-diagonal attention no
// sequence length expresses) sets kErrorPackedMask; the backend's next waiting call turns either into an
// electra::Error (results of that call are wrong). Packed masks are refused rather than routed to the
// backend's own kernels because the mask is on the device: choosing per call would stall the stream on a
// copy of it in every attention call. Packed batches run with train.attention = materialized (our own
// kernels in every mode), or in the fp32/tf32 modes, or with attention dropout > 0. A null mask attends
// to every key. dK and dV of padding keys are exactly 0, as on the CPU.
//
// Accuracy: inputs rounded to bf16/fp16, fp32 accumulation and softmax inside cuDNN; tested to 1e-2
// norm-wise relative error against the fp32 CPU backend (tests/cuda/sdpa_test.cpp). Engines that cuDNN
// marks non-deterministic are used only when no deterministic engine serves the shape (logged once).
//
// Trimmed batches (data.trim_padding: S below the untrimmed length, DropoutKey::key_seq_length): with
// dropout 0 nothing random is drawn, so a trimmed call is the untrimmed one to rounding. cuDNN's own
// dropout (were supported() to accept it) would draw bits by the call's S, not by our key: trimmed and
// untrimmed steps would then differ. Each trimmed length is its own shape, so its plan is built the first
// time that length occurs (at most S/8 lengths, kTrimMultiple).
//
// Plans (operation graph, heuristics CUDNN_HEUR_MODE_A with a fallback mode, execution plan, workspace
// size) are built once per (B, S, H, D, precision, direction) and cached; the workspace and the half
// buffers grow and are never shrunk. Memory (cudaMalloc, outside the backend's arena, like cuBLAS's and
// cuDNN's own): 16 bytes per element of [B,S,H,D] for the half copies (bf16 storage: none, unless a
// tensor is misaligned), plus cuDNN's workspace. All work
// is enqueued on the stream given at construction; nothing here waits for the stream except buffer
// growth (the old buffer may still be in use) and check_errors().
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "lib/backend/backend.h"
#include "lib/backend/cuda/cuda_backend.h"
#include "lib/core/philox.h"  // ELECTRA_HD

struct cudnnContext;  // cudnnHandle_t is cudnnContext*

namespace electra::cuda {

struct Stream;

namespace sdpa {

// ---- pure logic (tests/cuda/sdpa_layout_test.cpp runs it on the CPU) ----

// A 4-D cuDNN tensor over a buffer: element (i0, i1, i2, i3) lives at offset + sum(i_k * strides[k]).
struct TensorView {
  std::array<int64_t, 4> dims{};
  std::array<int64_t, 4> strides{};
  int64_t offset = 0;  // elements from the start of the buffer
};
int64_t element_offset(const TensorView& view, int64_t i0, int64_t i1, int64_t i2, int64_t i3);

enum class Operand { kQuery = 0, kKey = 1, kValue = 2 };
// Query, key or value as [B,H,S,D] over the packed [B,S,3,H,D] qkv (or dqkv) buffer.
TensorView packed_qkv_view(Operand operand, int B, int S, int H, int D);
// [B,S,H,D] (context, dcontext) as [B,H,S,D].
TensorView context_view(int B, int S, int H, int D);
// Contiguous [B,H,S] stats as cuDNN's [B,H,S,1].
TensorView stats_view(int B, int S, int H);
// Per-sequence lengths, int32 [B] as [B,1,1,1].
TensorView sequence_lengths_view(int B);
// One buffer holds both length arrays: q lengths at 0, kv lengths from this element on (16-byte aligned,
// as cuDNN wants every tensor).
inline size_t kv_lengths_offset(int B) { return (static_cast<size_t>(B) + 3) / 4 * 4; }

inline constexpr int kMaxHeadSize = 128;     // cuDNN's fp16/bf16 SDPA limit on Ampere (Hopper allows 256)
inline constexpr int kHeadSizeMultiple = 8;  // 16-byte rows of bf16/fp16
inline constexpr int kMinComputeMajor = 8;   // SDPA needs Ampere or newer

// Why cuDNN SDPA cannot serve this call by the documented rules, or "" when the rules allow it (the
// graph may still fail to finalize on a given GPU; CudnnSdpa::supported tries that).
std::string unsupported_reason(CudaPrecision precision, int compute_major, int B, int S, int H, int D, float dropout);

// What a cached execution plan depends on.
struct PlanKey {
  int B = 0, S = 0, H = 0, D = 0;
  CudaPrecision precision = CudaPrecision::kBf16;
  bool backward = false;
  auto operator<=>(const PlanKey&) const = default;
};
std::string to_string(const PlanKey& key);

// What a mask row is to cuDNN's per-sequence lengths.
enum class MaskRow {
  kRightPadded,     // one example's keys, then padding: a key length expresses it
  kNotRightPadded,  // a key after padding, or no key at all
  kPacked,          // several examples (different non-zero values): block-diagonal, no length expresses it
};

// Number of keys a mask row attends to: the length of its leading run of entries equal to its first,
// non-zero entry (0 when the row starts with padding). *kind says whether that length expresses the row;
// kPacked wins over kNotRightPadded.
ELECTRA_HD inline int key_length(const int32_t* mask_row, int S, MaskRow* kind) {
  const int32_t example = S > 0 ? mask_row[0] : 0;
  int length = 0;
  if (example != 0) {
    while (length < S && mask_row[length] == example) ++length;
  }
  bool packed = false, key_after_padding = false;
  int32_t seen = example;  // the first non-zero value of the row (0: none yet)
  for (int j = length; j < S; ++j) {
    if (mask_row[j] == 0) continue;
    if (seen == 0) seen = mask_row[j];
    packed = packed || mask_row[j] != seen;
    key_after_padding = true;
  }
  if (packed) {
    *kind = MaskRow::kPacked;
  } else if (key_after_padding || length == 0) {
    *kind = MaskRow::kNotRightPadded;
  } else {
    *kind = MaskRow::kRightPadded;
  }
  return length;
}

// Whether element `index` of a dqkv [B,S,3,H,D] buffer is the key or value gradient of a padding key
// (position >= kv_lengths[b]); those are 0 in the result.
ELECTRA_HD inline bool is_padding_key_gradient(size_t index, int S, int H, int D, const int32_t* kv_lengths) {
  const size_t hd = static_cast<size_t>(H) * D;
  const size_t operand = index / hd % 3;
  const size_t token = index / (3 * hd);
  const size_t b = token / S, s = token % S;
  return operand != 0 && static_cast<int64_t>(s) >= kv_lengths[b];
}

// ---- kernel launchers (sdpa_convert.cu); enqueue on s.stream, return without waiting ----
// q_lengths[b] = S; kv_lengths[b] = key_length(mask row b) (S for a null mask); a row that is not right
// padding sets kErrorAttentionMask in s.errors, a packed row kErrorPackedMask (its length is then taken
// as at least 1).
void sequence_lengths(const Stream& s, int32_t* q_lengths, int32_t* kv_lengths, const int32_t* mask, int B, int S);
// n floats to bf16 (kBf16) or fp16 (kFp16), round to nearest even, and back.
void to_half(const Stream& s, void* out, const float* in, size_t n, CudaPrecision precision);
void from_half(const Stream& s, float* out, const void* in, size_t n, CudaPrecision precision);
// dqkv [B,S,3,H,D] fp32 from its half copy, with the gradients of padding keys set to 0.
void dqkv_from_half(const Stream& s, float* dqkv, const void* dqkv_half, const int32_t* kv_lengths, int B, int S, int H,
                    int D, CudaPrecision precision);
// In a bf16 dqkv [B,S,3,H,D] that cuDNN wrote: the gradients of padding keys set to 0 (cuDNN may leave
// them unwritten), the rest untouched.
void zero_padding_key_gradients(const Stream& s, bfloat16* dqkv, const int32_t* kv_lengths, int B, int S, int H, int D);

}  // namespace sdpa

class CudnnSdpa {
 public:
  // A cuDNN handle on the current CUDA device, bound to `stream`; precision kBf16 or kFp16.
  // device_errors: the backend's device error word (kernels.h); null: this object keeps its own, read by
  // check_errors().
  CudnnSdpa(cudaStream_t stream, CudaPrecision precision, unsigned* device_errors = nullptr);
  ~CudnnSdpa();
  CudnnSdpa(const CudnnSdpa&) = delete;
  CudnnSdpa& operator=(const CudnnSdpa&) = delete;

  // Whether cuDNN serves this shape: bf16/fp16, dropout == 0, D a multiple of 8 and <= 128, compute
  // capability >= 8.0, and both the forward and the backward graph finalize with some engine (tried once
  // per shape; the answer and the plans are cached). Never throws; a "no" is logged once with cuDNN's
  // reason.
  bool supported(int B, int S, int H, int D, float dropout) noexcept;
  // The same for one direction. forward's stats are the plain natural-log log-sum-exp, so a caller may
  // pair a cuDNN forward with its own fused backward (or the reverse) when cuDNN serves only one.
  bool forward_supported(int B, int S, int H, int D, float dropout) noexcept;
  bool backward_supported(int B, int S, int H, int D, float dropout) noexcept;
  // Why a direction is not served: the broken rule or cuDNN's own message ("" when it is served).
  std::string why_unsupported(bool backward, int B, int S, int H, int D, float dropout) noexcept;

  // Backend<float>::fused_attention_forward / _backward (backend.h) for shapes forward_supported() /
  // backward_supported() accept (fail naming the shape and cuDNN's reason otherwise). `key` is unused: no
  // dropout.
  void forward(float* context, float* stats, const float* qkv, const int32_t* mask, int B, int S, int H, int D,
               float dropout, const DropoutKey& key);
  void backward(float* dqkv, const float* dcontext, const float* qkv, const float* context, const float* stats,
                const int32_t* mask, int B, int S, int H, int D, float dropout, const DropoutKey& key);
  // The same on bf16 storage (Backend<bfloat16>'s fused_attention_*; precision must be kBf16): cuDNN reads
  // qkv, context and dcontext and writes context and dqkv where they are (stats stay fp32), so the results
  // are the fp32-storage entries' on the widened inputs, narrowed.
  void forward_bf16(bfloat16* context, float* stats, const bfloat16* qkv, const int32_t* mask, int B, int S, int H,
                    int D, float dropout, const DropoutKey& key);
  void backward_bf16(bfloat16* dqkv, const bfloat16* dcontext, const bfloat16* qkv, const bfloat16* context,
                     const float* stats, const int32_t* mask, int B, int S, int H, int D, float dropout,
                     const DropoutKey& key);

  // Waits for the stream; throws when a mask since the last check was not right padding or was packed.
  // Only reads the word this object owns (no device_errors given); with the backend's word, the backend
  // reports.
  void check_errors();

 private:
  struct Plan;
  struct PlanEntry {
    std::unique_ptr<Plan> plan;  // null: cuDNN declined, `why` says why
    std::string why;
  };
  // Grow-only device memory.
  struct Scratch {
    void* data = nullptr;
    size_t bytes = 0;
  };

  const PlanEntry& plan_entry(const sdpa::PlanKey& key);
  std::unique_ptr<Plan> build_plan(const sdpa::PlanKey& key, std::string* why);
  void* grow(Scratch& scratch, size_t bytes);
  void activate();
  void release() noexcept;
  bool direction_supported(bool backward, int B, int S, int H, int D, float dropout) noexcept;
  // The plan of this call; fails naming op, the shape and why cuDNN does not serve it.
  const Plan& plan_for(const char* op, bool backward, int B, int S, int H, int D, float dropout);
  Stream stream_struct() const;
  // Stats go through an aligned copy when the caller's pointer is not 16-byte aligned (cuDNN's rule).
  float* aligned_stats(float* stats, size_t n);
  // A caller's tensor of `bytes` as cuDNN may read it: `data` itself when 16-byte aligned, else a copy
  // into `staging`. An output goes through `staging` likewise; copy_back moves it to the caller after.
  const void* aligned_input(const void* data, size_t bytes, Scratch& staging);
  void* aligned_output(void* data, size_t bytes, Scratch& staging);
  void copy_back(void* data, const void* used, size_t bytes);
  // The sequence-length buffer filled from the mask (q lengths, then kv lengths at kv_lengths_offset(B)).
  int32_t* sequence_lengths_for(const int32_t* mask, int B, int S);

  cudaStream_t stream_ = nullptr;
  CudaPrecision precision_;
  int device_ = 0;
  int compute_major_ = 0;
  int sms_ = 1;
  cudnnContext* handle_ = nullptr;
  unsigned* device_errors_ = nullptr;
  unsigned* own_errors_ = nullptr;  // device word when none was given
  alignas(16) float scale_ = 1.0f;  // by-value SDPA scale, read by cudnnBackendExecute
  std::map<sdpa::PlanKey, PlanEntry> plans_;
  Scratch qkv_half_, out_half_, dout_half_, dqkv_half_, lengths_, stats_copy_, workspace_;
};

}  // namespace electra::cuda
