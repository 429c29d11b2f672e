// cuDNN SDPA through the backend API: tensor descriptors over our buffers, one SDPA operation per graph,
// heuristics, execution plans cached per shape, a variant pack per call. Layout and rules: sdpa_cudnn.h.
#include "lib/backend/cuda/sdpa_cudnn.h"

#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lib/backend/cuda/cuda_check.h"
#include "lib/backend/cuda/cudnn_check.h"
#include "lib/backend/cuda/kernels.h"
#include "lib/core/error.h"
#include "lib/core/log.h"

namespace electra::cuda {

// ---- pure logic ----
namespace sdpa {

int64_t element_offset(const TensorView& view, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return view.offset + i0 * view.strides[0] + i1 * view.strides[1] + i2 * view.strides[2] + i3 * view.strides[3];
}

TensorView packed_qkv_view(Operand operand, int B, int S, int H, int D) {
  const int64_t hd = static_cast<int64_t>(H) * D, token = 3 * hd;
  TensorView v;
  v.dims = {B, H, S, D};
  v.strides = {S * token, D, token, 1};
  v.offset = static_cast<int64_t>(operand) * hd;
  return v;
}

TensorView context_view(int B, int S, int H, int D) {
  const int64_t hd = static_cast<int64_t>(H) * D;
  TensorView v;
  v.dims = {B, H, S, D};
  v.strides = {S * hd, D, hd, 1};
  return v;
}

TensorView stats_view(int B, int S, int H) {
  TensorView v;
  v.dims = {B, H, S, 1};
  v.strides = {static_cast<int64_t>(H) * S, S, 1, 1};
  return v;
}

TensorView sequence_lengths_view(int B) {
  TensorView v;
  v.dims = {B, 1, 1, 1};
  v.strides = {1, 1, 1, 1};
  return v;
}

std::string unsupported_reason(CudaPrecision precision, int compute_major, int B, int S, int H, int D, float dropout) {
  if (precision != CudaPrecision::kBf16 && precision != CudaPrecision::kFp16) {
    return "precision " + to_string(precision) + " (cuDNN SDPA runs in bf16 or fp16)";
  }
  if (!(dropout == 0.0f)) {
    return "dropout " + std::to_string(dropout) + " (the unified SDPA operation of cuDNN 9.19 has no dropout)";
  }
  if (B <= 0 || S <= 0 || H <= 0 || D <= 0) {
    return "empty or negative shape B=" + std::to_string(B) + " S=" + std::to_string(S) + " H=" + std::to_string(H) +
           " D=" + std::to_string(D);
  }
  if (D % kHeadSizeMultiple != 0 || D > kMaxHeadSize) {
    return "head size " + std::to_string(D) + " (cuDNN SDPA needs a multiple of " + std::to_string(kHeadSizeMultiple) +
           " up to " + std::to_string(kMaxHeadSize) + ")";
  }
  if (compute_major < kMinComputeMajor) {
    return "compute capability " + std::to_string(compute_major) + ".x (cuDNN SDPA needs 8.0 or newer)";
  }
  // cuDNN takes int64 dims, our kernels index with size_t; the lengths tensor is int32.
  const double elements = 3.0 * B * S * H * D;
  if (elements >= 9.0e18) return "qkv of " + std::to_string(elements) + " elements";
  return "";
}

std::string to_string(const PlanKey& key) {
  return std::string(key.backward ? "backward" : "forward") + " B=" + std::to_string(key.B) +
         " S=" + std::to_string(key.S) + " H=" + std::to_string(key.H) + " D=" + std::to_string(key.D) + " " +
         electra::to_string(key.precision);
}

}  // namespace sdpa

// ---- cuDNN descriptors ----
namespace {

// Unique ids of the graph tensors (the variant pack binds pointers to them).
enum Uid : int64_t {
  kUidQ = 1,
  kUidK,
  kUidV,
  kUidO,
  kUidStats,
  kUidScale,
  kUidSeqLenQ,
  kUidSeqLenKv,
  kUidDo,
  kUidDq,
  kUidDk,
  kUidDv,
};

constexpr int64_t kAlignment = 16;  // bytes: cuDNN's SDPA engines need 16-byte aligned tensors

// One backend descriptor, destroyed with its owner.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) {
    ELECTRA_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &descriptor_));
  }
  ~Descriptor() {
    if (descriptor_ != nullptr) cudnnBackendDestroyDescriptor(descriptor_);
  }
  Descriptor(Descriptor&& other) noexcept : descriptor_(std::exchange(other.descriptor_, nullptr)) {}
  Descriptor& operator=(Descriptor&&) = delete;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  cudnnBackendDescriptor_t get() const { return descriptor_; }

 private:
  cudnnBackendDescriptor_t descriptor_ = nullptr;
};

void set_descriptor(cudnnBackendDescriptor_t owner, cudnnBackendAttributeName_t name, const Descriptor& value) {
  cudnnBackendDescriptor_t raw = value.get();
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(owner, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw));
}

cudnnDataType_t half_type(CudaPrecision precision) {
  return precision == CudaPrecision::kBf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
}

// A finalized tensor descriptor of `view`'s dims and strides (its offset goes into the data pointer).
Descriptor make_tensor(int64_t uid, cudnnDataType_t type, const sdpa::TensorView& view, bool by_value = false) {
  Descriptor tensor(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const cudnnBackendDescriptor_t t = tensor.get();
  const bool is_virtual = false;
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, view.dims.data()));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, view.strides.data()));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &kAlignment));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value));
  ELECTRA_CUDNN_CHECK(cudnnBackendFinalize(t));
  return tensor;
}

// A status that means "cuDNN declines" (an answer for supported()), or a failure to report as a bug.
struct Declined {
  std::string why;
};
void check_or_decline(cudnnStatus_t status, const char* call) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  if (cudnn_not_supported(status)) {
    throw Declined{std::string(call) + ": " + cudnnGetErrorString(status) + ": " + cudnn_last_error()};
  }
  fail_cudnn(call, __FILE__, __LINE__, status);
}

// Runs `plan` on `handle` with graph tensor uids[i] at pointers[i]; the arrays' common length is the count.
template <size_t N>
void execute_plan(cudnnHandle_t handle, cudnnBackendDescriptor_t plan, const int64_t (&uids)[N], void* (&pointers)[N],
                  void* workspace) {
  const int64_t count = static_cast<int64_t>(N);
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  ELECTRA_CUDNN_CHECK(
      cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, count, uids));
  ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                               count, pointers));
  ELECTRA_CUDNN_CHECK(
      cudnnBackendSetAttribute(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace));
  ELECTRA_CUDNN_CHECK(cudnnBackendFinalize(pack.get()));
  ELECTRA_CUDNN_CHECK(cudnnBackendExecute(handle, plan, pack.get()));
}

// Whether cuDNN marks the engine behind `config` non-deterministic (false when it cannot say).
bool nondeterministic(cudnnBackendDescriptor_t config) {
  Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t raw = engine.get();
  int64_t count = 0;
  if (cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &raw) !=
          CUDNN_STATUS_SUCCESS ||
      count != 1) {
    return false;
  }
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  if (cudnnBackendGetAttribute(raw, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, notes) != CUDNN_STATUS_SUCCESS) {
    return false;
  }
  for (int64_t i = 0; i < std::min<int64_t>(count, CUDNN_NUMERICAL_NOTE_TYPE_COUNT); ++i) {
    if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) return true;
  }
  return false;
}

}  // namespace

struct CudnnSdpa::Plan {
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    while (!keep.empty()) keep.pop_back();  // the plan first, the tensors last
  }
  std::vector<Descriptor> keep;  // tensors, operation, graph, heuristics, engine configs, plan: in build order
  cudnnBackendDescriptor_t plan = nullptr;  // owned by `keep`
  size_t workspace_bytes = 0;
  bool deterministic = true;
};

// ---- CudnnSdpa ----

CudnnSdpa::CudnnSdpa(cudaStream_t stream, CudaPrecision precision, unsigned* device_errors)
    : stream_(stream), precision_(precision), device_errors_(device_errors) {
  ELECTRA_CHECK(precision == CudaPrecision::kBf16 || precision == CudaPrecision::kFp16, "CudnnSdpa: precision ",
                to_string(precision), " is not bf16 or fp16");
  ELECTRA_CUDA_CHECK(cudaGetDevice(&device_));
  ELECTRA_CUDA_CHECK(cudaDeviceGetAttribute(&compute_major_, cudaDevAttrComputeCapabilityMajor, device_));
  ELECTRA_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_));
  try {
    if (device_errors_ == nullptr) {
      ELECTRA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&own_errors_), sizeof(unsigned)));
      ELECTRA_CUDA_CHECK(cudaMemsetAsync(own_errors_, 0, sizeof(unsigned), stream_));
      device_errors_ = own_errors_;
    }
    cudnnHandle_t handle = nullptr;
    ELECTRA_CUDNN_CHECK(cudnnCreate(&handle));
    handle_ = handle;
    ELECTRA_CUDNN_CHECK(cudnnSetStream(handle_, stream_));
  } catch (...) {
    release();
    throw;
  }
}

CudnnSdpa::~CudnnSdpa() { release(); }

void CudnnSdpa::release() noexcept {
  // No throwing: release everything once queued work that may use the buffers is done.
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  plans_.clear();
  for (Scratch* s : {&qkv_half_, &out_half_, &dout_half_, &dqkv_half_, &lengths_, &stats_copy_, &workspace_}) {
    if (s->data != nullptr) cudaFree(s->data);
    *s = Scratch{};
  }
  if (own_errors_ != nullptr) cudaFree(own_errors_);
  own_errors_ = nullptr;
  if (handle_ != nullptr) cudnnDestroy(handle_);
  handle_ = nullptr;
}

void CudnnSdpa::activate() {
  int current = -1;
  ELECTRA_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device_) ELECTRA_CUDA_CHECK(cudaSetDevice(device_));
}

Stream CudnnSdpa::stream_struct() const { return Stream{stream_, device_errors_, sms_}; }

void* CudnnSdpa::grow(Scratch& scratch, size_t bytes) {
  bytes = std::max<size_t>(bytes, 256);
  if (bytes > scratch.bytes) {
    const size_t grown = std::max(bytes, scratch.bytes + scratch.bytes / 2);
    ELECTRA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued work may still use the old buffer
    if (scratch.data != nullptr) ELECTRA_CUDA_CHECK(cudaFree(scratch.data));
    scratch.data = nullptr;
    scratch.bytes = 0;
    const cudaError_t error = cudaMalloc(&scratch.data, grown);
    if (error != cudaSuccess) {
      cudaGetLastError();  // out of memory is not sticky
      fail("CudnnSdpa: cudaMalloc of ", grown, " bytes on device ", device_, " failed: ", cudaGetErrorName(error));
    }
    scratch.bytes = grown;
  }
  return scratch.data;
}

float* CudnnSdpa::aligned_stats(float* stats, size_t n) {
  if (reinterpret_cast<uintptr_t>(stats) % kAlignment == 0) return stats;
  return static_cast<float*>(grow(stats_copy_, n * sizeof(float)));
}

const void* CudnnSdpa::aligned_input(const void* data, size_t bytes, Scratch& staging) {
  if (reinterpret_cast<uintptr_t>(data) % kAlignment == 0) return data;
  void* copy = grow(staging, bytes);
  ELECTRA_CUDA_CHECK(cudaMemcpyAsync(copy, data, bytes, cudaMemcpyDeviceToDevice, stream_));
  return copy;
}

void* CudnnSdpa::aligned_output(void* data, size_t bytes, Scratch& staging) {
  if (reinterpret_cast<uintptr_t>(data) % kAlignment == 0) return data;
  return grow(staging, bytes);
}

void CudnnSdpa::copy_back(void* data, const void* used, size_t bytes) {
  if (data != used) ELECTRA_CUDA_CHECK(cudaMemcpyAsync(data, used, bytes, cudaMemcpyDeviceToDevice, stream_));
}

int32_t* CudnnSdpa::sequence_lengths_for(const int32_t* mask, int B, int S) {
  const size_t kv_at = sdpa::kv_lengths_offset(B);
  auto* lengths = static_cast<int32_t*>(grow(lengths_, 2 * kv_at * sizeof(int32_t)));
  sdpa::sequence_lengths(stream_struct(), lengths, lengths + kv_at, mask, B, S);
  return lengths;
}

std::unique_ptr<CudnnSdpa::Plan> CudnnSdpa::build_plan(const sdpa::PlanKey& key, std::string* why) {
  auto plan = std::make_unique<Plan>();
  std::vector<Descriptor>& keep = plan->keep;
  const int B = key.B, S = key.S, H = key.H, D = key.D;
  const cudnnDataType_t io = half_type(key.precision);
  auto tensor = [&](int64_t uid, cudnnDataType_t type, const sdpa::TensorView& view, bool by_value = false) {
    keep.push_back(make_tensor(uid, type, view, by_value));
    return keep.size() - 1;
  };
  const sdpa::TensorView scalar{{1, 1, 1, 1}, {1, 1, 1, 1}, 0};
  const size_t q = tensor(kUidQ, io, sdpa::packed_qkv_view(sdpa::Operand::kQuery, B, S, H, D));
  const size_t k = tensor(kUidK, io, sdpa::packed_qkv_view(sdpa::Operand::kKey, B, S, H, D));
  const size_t v = tensor(kUidV, io, sdpa::packed_qkv_view(sdpa::Operand::kValue, B, S, H, D));
  const size_t o = tensor(kUidO, io, sdpa::context_view(B, S, H, D));
  const size_t stats = tensor(kUidStats, CUDNN_DATA_FLOAT, sdpa::stats_view(B, S, H));
  const size_t scale = tensor(kUidScale, CUDNN_DATA_FLOAT, scalar, /*by_value=*/true);
  const size_t seq_q = tensor(kUidSeqLenQ, CUDNN_DATA_INT32, sdpa::sequence_lengths_view(B));
  const size_t seq_kv = tensor(kUidSeqLenKv, CUDNN_DATA_INT32, sdpa::sequence_lengths_view(B));

  try {
    // The operation.
    if (!key.backward) {
      keep.emplace_back(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR);
      const cudnnBackendDescriptor_t op = keep.back().get();
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, keep[q]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, keep[k]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, keep[v]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, keep[o]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, keep[stats]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, keep[scale]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_QDESC, keep[seq_q]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_KVDESC, keep[seq_kv]);
      check_or_decline(cudnnBackendFinalize(op), "cudnnBackendFinalize(SDPA_FWD operation)");
    } else {
      const size_t d_o = tensor(kUidDo, io, sdpa::context_view(B, S, H, D));
      const size_t d_q = tensor(kUidDq, io, sdpa::packed_qkv_view(sdpa::Operand::kQuery, B, S, H, D));
      const size_t d_k = tensor(kUidDk, io, sdpa::packed_qkv_view(sdpa::Operand::kKey, B, S, H, D));
      const size_t d_v = tensor(kUidDv, io, sdpa::packed_qkv_view(sdpa::Operand::kValue, B, S, H, D));
      keep.emplace_back(CUDNN_BACKEND_OPERATION_SDPA_BWD_DESCRIPTOR);
      const cudnnBackendDescriptor_t op = keep.back().get();
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_QDESC, keep[q]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_KDESC, keep[k]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_VDESC, keep[v]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_ODESC, keep[o]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DODDESC, keep[d_o]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_STATSDESC, keep[stats]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_SCALEDESC, keep[scale]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_SEQ_LEN_QDESC, keep[seq_q]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_SEQ_LEN_KVDESC, keep[seq_kv]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DQDESC, keep[d_q]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DKDESC, keep[d_k]);
      set_descriptor(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DVDESC, keep[d_v]);
      check_or_decline(cudnnBackendFinalize(op), "cudnnBackendFinalize(SDPA_BWD operation)");
    }
    const cudnnBackendDescriptor_t operation = keep.back().get();

    // The graph of that one operation.
    keep.emplace_back(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    const cudnnBackendDescriptor_t graph = keep.back().get();
    cudnnHandle_t handle = handle_;
    ELECTRA_CUDNN_CHECK(
        cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle));
    ELECTRA_CUDNN_CHECK(
        cudnnBackendSetAttribute(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &operation));
    check_or_decline(cudnnBackendFinalize(graph), "cudnnBackendFinalize(operation graph)");

    // Engine configurations, best first: heuristics mode A, then the fallback list.
    std::vector<cudnnBackendDescriptor_t> configs;
    for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      keep.emplace_back(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
      const cudnnBackendDescriptor_t heuristics = keep.back().get();
      ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph));
      ELECTRA_CUDNN_CHECK(
          cudnnBackendSetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
      if (cudnnBackendFinalize(heuristics) != CUDNN_STATUS_SUCCESS) continue;
      int64_t available = 0;
      if (cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                   &available, nullptr) != CUDNN_STATUS_SUCCESS ||
          available <= 0) {
        continue;
      }
      // The results are copied into engine-config descriptors we create.
      const int64_t wanted = std::min<int64_t>(available, 16);
      std::vector<cudnnBackendDescriptor_t> raw;
      for (int64_t i = 0; i < wanted; ++i) {
        keep.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
        raw.push_back(keep.back().get());
      }
      int64_t returned = 0;
      ELECTRA_CUDNN_CHECK(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, wanted, &returned, raw.data()));
      configs.insert(configs.end(), raw.begin(), raw.begin() + std::min(returned, wanted));
      if (!configs.empty()) break;
    }
    if (configs.empty()) throw Declined{"cuDNN's heuristics offer no engine for this graph: " + cudnn_last_error()};

    // The first config that finalizes into a plan, preferring deterministic engines.
    std::string last_failure;
    for (const bool allow_nondeterministic : {false, true}) {
      for (const cudnnBackendDescriptor_t config : configs) {
        const bool nondet = nondeterministic(config);
        if (nondet != allow_nondeterministic) continue;
        Descriptor execution(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        ELECTRA_CUDNN_CHECK(
            cudnnBackendSetAttribute(execution.get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle));
        ELECTRA_CUDNN_CHECK(cudnnBackendSetAttribute(execution.get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &config));
        const cudnnStatus_t status = cudnnBackendFinalize(execution.get());
        if (status != CUDNN_STATUS_SUCCESS) {
          last_failure = std::string(cudnnGetErrorString(status)) + ": " + cudnn_last_error();
          continue;
        }
        int64_t workspace = 0, count = 0;
        ELECTRA_CUDNN_CHECK(cudnnBackendGetAttribute(execution.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                                     CUDNN_TYPE_INT64, 1, &count, &workspace));
        plan->workspace_bytes = static_cast<size_t>(std::max<int64_t>(workspace, 0));
        plan->deterministic = !nondet;
        keep.push_back(std::move(execution));
        plan->plan = keep.back().get();
        return plan;
      }
    }
    throw Declined{"no engine configuration finalizes into an execution plan (last: " + last_failure + ")"};
  } catch (const Declined& declined) {
    *why = declined.why;
    return nullptr;
  }
}

const CudnnSdpa::PlanEntry& CudnnSdpa::plan_entry(const sdpa::PlanKey& key) {
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  PlanEntry entry;
  try {
    activate();
    entry.plan = build_plan(key, &entry.why);
  } catch (const std::exception& error) {
    // A bug in the graph (BAD_PARAM and the like), not a "no" from cuDNN: say so loudly, serve nothing.
    entry.plan.reset();
    entry.why = error.what();
    ELECTRA_LOG(warning) << "cuDNN SDPA: building the " << sdpa::to_string(key) << " plan failed: " << entry.why;
  }
  // Engines cuDNN tried and rejected may leave a non-sticky CUDA error behind; the next kernel launch check
  // would blame our kernel for it. (A sticky error stays and is reported by the next call.)
  cudaGetLastError();
  if (entry.plan == nullptr) {
    ELECTRA_LOG(info) << "cuDNN SDPA does not serve " << sdpa::to_string(key) << ": " << entry.why;
  } else if (!entry.plan->deterministic) {
    ELECTRA_LOG(warning) << "cuDNN SDPA " << sdpa::to_string(key)
                         << ": only non-deterministic engines serve this shape; results may differ between runs";
  }
  return plans_.emplace(key, std::move(entry)).first->second;
}

bool CudnnSdpa::direction_supported(bool backward, int B, int S, int H, int D, float dropout) noexcept {
  try {
    if (!sdpa::unsupported_reason(precision_, compute_major_, B, S, H, D, dropout).empty()) return false;
    return plan_entry({B, S, H, D, precision_, backward}).plan != nullptr;
  } catch (...) {
    return false;
  }
}

bool CudnnSdpa::forward_supported(int B, int S, int H, int D, float dropout) noexcept {
  return direction_supported(false, B, S, H, D, dropout);
}

bool CudnnSdpa::backward_supported(int B, int S, int H, int D, float dropout) noexcept {
  return direction_supported(true, B, S, H, D, dropout);
}

std::string CudnnSdpa::why_unsupported(bool backward, int B, int S, int H, int D, float dropout) noexcept {
  try {
    std::string why = sdpa::unsupported_reason(precision_, compute_major_, B, S, H, D, dropout);
    if (!why.empty()) return why;
    return plan_entry({B, S, H, D, precision_, backward}).why;
  } catch (...) {
    return "unknown (an exception while asking)";
  }
}

bool CudnnSdpa::supported(int B, int S, int H, int D, float dropout) noexcept {
  return forward_supported(B, S, H, D, dropout) && backward_supported(B, S, H, D, dropout);
}

const CudnnSdpa::Plan& CudnnSdpa::plan_for(const char* op, bool backward, int B, int S, int H, int D, float dropout) {
  std::string why = sdpa::unsupported_reason(precision_, compute_major_, B, S, H, D, dropout);
  if (why.empty()) {
    const PlanEntry& entry = plan_entry({B, S, H, D, precision_, backward});
    if (entry.plan != nullptr) return *entry.plan;
    why = entry.why;
  }
  fail(op, ": cuDNN SDPA does not serve B=", B, " S=", S, " H=", H, " D=", D, " dropout=", dropout, ": ", why);
}

void CudnnSdpa::forward(float* context, float* stats, const float* qkv, const int32_t* mask, int B, int S, int H, int D,
                        float dropout, const DropoutKey& key) {
  (void)key;  // no dropout
  const Plan& plan = plan_for("CudnnSdpa::forward", false, B, S, H, D, dropout);
  activate();
  const Stream s = stream_struct();
  const size_t qkv_n = 3 * static_cast<size_t>(B) * S * H * D, ctx_n = qkv_n / 3;
  const size_t stats_n = static_cast<size_t>(B) * H * S;
  const size_t half = 2;  // bytes of a bf16/fp16 element

  const size_t kv_at = sdpa::kv_lengths_offset(B);
  auto* lengths = static_cast<int32_t*>(grow(lengths_, 2 * kv_at * sizeof(int32_t)));
  auto* qkv_h = static_cast<char*>(grow(qkv_half_, qkv_n * half));
  auto* out_h = static_cast<char*>(grow(out_half_, ctx_n * half));
  void* workspace = plan.workspace_bytes > 0 ? grow(workspace_, plan.workspace_bytes) : nullptr;
  float* stats_out = aligned_stats(stats, stats_n);

  sdpa::sequence_lengths(s, lengths, lengths + kv_at, mask, B, S);
  sdpa::to_half(s, qkv_h, qkv, qkv_n, precision_);

  scale_ = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t hd_bytes = static_cast<int64_t>(H) * D * half;
  const int64_t uids[] = {kUidQ, kUidK, kUidV, kUidO, kUidStats, kUidScale, kUidSeqLenQ, kUidSeqLenKv};
  void* pointers[] = {qkv_h,   qkv_h + hd_bytes, qkv_h + 2 * hd_bytes, out_h, stats_out,
                      &scale_, lengths,          lengths + kv_at};
  execute_plan(handle_, plan.plan, uids, pointers, workspace);

  sdpa::from_half(s, context, out_h, ctx_n, precision_);
  if (stats_out != stats) {
    ELECTRA_CUDA_CHECK(cudaMemcpyAsync(stats, stats_out, stats_n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
}

void CudnnSdpa::backward(float* dqkv, const float* dcontext, const float* qkv, const float* context, const float* stats,
                         const int32_t* mask, int B, int S, int H, int D, float dropout, const DropoutKey& key) {
  (void)key;  // no dropout
  const Plan& plan = plan_for("CudnnSdpa::backward", true, B, S, H, D, dropout);
  activate();
  const Stream s = stream_struct();
  const size_t qkv_n = 3 * static_cast<size_t>(B) * S * H * D, ctx_n = qkv_n / 3;
  const size_t stats_n = static_cast<size_t>(B) * H * S;
  const size_t half = 2;

  const size_t kv_at = sdpa::kv_lengths_offset(B);
  auto* lengths = static_cast<int32_t*>(grow(lengths_, 2 * kv_at * sizeof(int32_t)));
  auto* qkv_h = static_cast<char*>(grow(qkv_half_, qkv_n * half));
  auto* out_h = static_cast<char*>(grow(out_half_, ctx_n * half));
  auto* dout_h = static_cast<char*>(grow(dout_half_, ctx_n * half));
  auto* dqkv_h = static_cast<char*>(grow(dqkv_half_, qkv_n * half));
  void* workspace = plan.workspace_bytes > 0 ? grow(workspace_, plan.workspace_bytes) : nullptr;
  float* stats_in = const_cast<float*>(stats);  // cuDNN only reads it; the variant pack takes void*
  if (reinterpret_cast<uintptr_t>(stats) % kAlignment != 0) {
    stats_in = static_cast<float*>(grow(stats_copy_, stats_n * sizeof(float)));
    ELECTRA_CUDA_CHECK(cudaMemcpyAsync(stats_in, stats, stats_n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }

  sdpa::sequence_lengths(s, lengths, lengths + kv_at, mask, B, S);
  sdpa::to_half(s, qkv_h, qkv, qkv_n, precision_);
  // context holds forward's half output widened to float, so this gives back exactly forward's O.
  sdpa::to_half(s, out_h, context, ctx_n, precision_);
  sdpa::to_half(s, dout_h, dcontext, ctx_n, precision_);

  scale_ = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t hd_bytes = static_cast<int64_t>(H) * D * half;
  const int64_t uids[] = {kUidQ,     kUidK,       kUidV,        kUidO,  kUidDo, kUidStats,
                          kUidScale, kUidSeqLenQ, kUidSeqLenKv, kUidDq, kUidDk, kUidDv};
  void* pointers[] = {
      qkv_h,  qkv_h + hd_bytes,  qkv_h + 2 * hd_bytes, out_h, dout_h, stats_in, &scale_, lengths, lengths + kv_at,
      dqkv_h, dqkv_h + hd_bytes, dqkv_h + 2 * hd_bytes};
  execute_plan(handle_, plan.plan, uids, pointers, workspace);

  // Padding keys' dK/dV may be left unwritten by cuDNN; the conversion sets them to 0.
  sdpa::dqkv_from_half(s, dqkv, dqkv_h, lengths + kv_at, B, S, H, D, precision_);
}

void CudnnSdpa::forward_bf16(bfloat16* context, float* stats, const bfloat16* qkv, const int32_t* mask, int B, int S,
                             int H, int D, float dropout, const DropoutKey& key) {
  (void)key;  // no dropout
  ELECTRA_CHECK(precision_ == CudaPrecision::kBf16, "CudnnSdpa::forward_bf16: precision ", to_string(precision_),
                " (bf16 storage needs the bf16 graph)");
  const Plan& plan = plan_for("CudnnSdpa::forward_bf16", false, B, S, H, D, dropout);
  activate();
  const size_t bf16 = sizeof(bfloat16);
  const size_t qkv_bytes = 3 * static_cast<size_t>(B) * S * H * D * bf16, ctx_bytes = qkv_bytes / 3;
  const size_t stats_n = static_cast<size_t>(B) * H * S;

  int32_t* lengths = sequence_lengths_for(mask, B, S);
  // Q, K and V are views into the caller's qkv; the head offsets H*D*2 bytes keep 16-byte alignment (D % 8 == 0).
  const char* qkv_in = static_cast<const char*>(aligned_input(qkv, qkv_bytes, qkv_half_));
  void* out = aligned_output(context, ctx_bytes, out_half_);
  void* workspace = plan.workspace_bytes > 0 ? grow(workspace_, plan.workspace_bytes) : nullptr;
  float* stats_out = aligned_stats(stats, stats_n);

  scale_ = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t hd_bytes = static_cast<int64_t>(H) * D * bf16;
  const int64_t uids[] = {kUidQ, kUidK, kUidV, kUidO, kUidStats, kUidScale, kUidSeqLenQ, kUidSeqLenKv};
  char* q = const_cast<char*>(qkv_in);  // cuDNN only reads it; the variant pack takes void*
  void* pointers[] = {q,         q + hd_bytes, q + 2 * hd_bytes, out,
                      stats_out, &scale_,      lengths,          lengths + sdpa::kv_lengths_offset(B)};
  execute_plan(handle_, plan.plan, uids, pointers, workspace);

  copy_back(context, out, ctx_bytes);
  copy_back(stats, stats_out, stats_n * sizeof(float));
}

void CudnnSdpa::backward_bf16(bfloat16* dqkv, const bfloat16* dcontext, const bfloat16* qkv, const bfloat16* context,
                              const float* stats, const int32_t* mask, int B, int S, int H, int D, float dropout,
                              const DropoutKey& key) {
  (void)key;  // no dropout
  ELECTRA_CHECK(precision_ == CudaPrecision::kBf16, "CudnnSdpa::backward_bf16: precision ", to_string(precision_),
                " (bf16 storage needs the bf16 graph)");
  const Plan& plan = plan_for("CudnnSdpa::backward_bf16", true, B, S, H, D, dropout);
  activate();
  const size_t bf16 = sizeof(bfloat16);
  const size_t qkv_bytes = 3 * static_cast<size_t>(B) * S * H * D * bf16, ctx_bytes = qkv_bytes / 3;
  const size_t stats_n = static_cast<size_t>(B) * H * S;

  int32_t* lengths = sequence_lengths_for(mask, B, S);
  int32_t* kv_lengths = lengths + sdpa::kv_lengths_offset(B);
  // cuDNN only reads the inputs; the variant pack takes void*.
  char* q = static_cast<char*>(const_cast<void*>(aligned_input(qkv, qkv_bytes, qkv_half_)));
  void* o = const_cast<void*>(aligned_input(context, ctx_bytes, out_half_));
  void* d_o = const_cast<void*>(aligned_input(dcontext, ctx_bytes, dout_half_));
  void* stats_in = const_cast<void*>(aligned_input(stats, stats_n * sizeof(float), stats_copy_));
  // dQ, dK and dV are views into dqkv (the same packed layout as qkv), written in place.
  char* dq = static_cast<char*>(aligned_output(dqkv, qkv_bytes, dqkv_half_));
  void* workspace = plan.workspace_bytes > 0 ? grow(workspace_, plan.workspace_bytes) : nullptr;

  scale_ = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t hd_bytes = static_cast<int64_t>(H) * D * bf16;
  const int64_t uids[] = {kUidQ,     kUidK,       kUidV,        kUidO,  kUidDo, kUidStats,
                          kUidScale, kUidSeqLenQ, kUidSeqLenKv, kUidDq, kUidDk, kUidDv};
  void* pointers[] = {q,       q + hd_bytes, q + 2 * hd_bytes, o,  d_o,           stats_in,
                      &scale_, lengths,      kv_lengths,       dq, dq + hd_bytes, dq + 2 * hd_bytes};
  execute_plan(handle_, plan.plan, uids, pointers, workspace);

  // Padding keys' dK/dV may be left unwritten by cuDNN: 0, as the fp32-storage path's conversion writes them.
  sdpa::zero_padding_key_gradients(stream_struct(), reinterpret_cast<bfloat16*>(dq), kv_lengths, B, S, H, D);
  copy_back(dqkv, dq, qkv_bytes);
}

void CudnnSdpa::check_errors() {
  activate();
  ELECTRA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (own_errors_ == nullptr) return;
  unsigned errors = 0;
  ELECTRA_CUDA_CHECK(cudaMemcpy(&errors, own_errors_, sizeof(unsigned), cudaMemcpyDeviceToHost));
  if (errors == 0) return;
  // On our stream: the legacy stream's cudaMemset is not ordered before later kernels on a non-blocking
  // stream, so it could wipe a flag they set.
  ELECTRA_CUDA_CHECK(cudaMemsetAsync(own_errors_, 0, sizeof(unsigned), stream_));
  if (errors & kErrorPackedMask) {
    fail(
        "CudnnSdpa: an attention mask row since the last check held several packed examples (values 1, 2, ...); "
        "cuDNN SDPA's sequence lengths cannot express block-diagonal attention and those results are wrong");
  }
  fail(
      "CudnnSdpa: an attention mask row since the last check was not right padding (ones, then zeros, at least "
      "one 1); cuDNN SDPA cannot express it and those results are wrong");
}

}  // namespace electra::cuda
