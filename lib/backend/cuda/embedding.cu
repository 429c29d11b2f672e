// Embedding lookups and their deterministic scatter-add gradients (segment_sum.h has the design; position
// ids of packed rows go through the same sorted scatter-add as word ids), row gathers and scatter-adds
// for the heads. Storage-typed kernels take D = float or __nv_bfloat16
// (storage.cuh; the segment passes take float or electra::bfloat16 rows); launchers are instantiated for
// float and electra::bfloat16 at the end of the file.
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "lib/backend/cuda/device_util.cuh"
#include "lib/backend/cuda/kernels.h"
#include "lib/backend/cuda/scatter_rows_math.h"
#include "lib/backend/cuda/segment_sum.h"
#include "lib/backend/cuda/storage.cuh"

namespace electra::cuda {
namespace {

constexpr int kColumnsPerBlock = 128;  // threads (columns) per block of the segment passes

template <typename D>
__global__ void embedding_forward_kernel(D* out, const int32_t* ids, const int32_t* type_ids,
                                         const int32_t* position_ids, const D* word_table, const D* position_table,
                                         const D* type_table, int S, int E, size_t n, unsigned* errors) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const size_t t = i / E;
    const int c = static_cast<int>(i - t * E);
    const int id = ids[t];
    const int type = type_ids != nullptr ? type_ids[t] : 0;
    // Packed rows restart positions per example; otherwise token t of a row sits at position t % S.
    const int position = position_ids != nullptr ? position_ids[t] : static_cast<int>(t % S);
    if (id < 0 || type < 0 || position < 0) {
      report(errors, kErrorNegativeId);
      out[i] = from_float<D>(0.0f);
      continue;
    }
    // Summed in the order word + position + type, as the CPU backend (and Hugging Face).
    float v = to_float(word_table[static_cast<size_t>(id) * E + c]);
    if (position_table != nullptr) v = v + to_float(position_table[static_cast<size_t>(position) * E + c]);
    if (type_table != nullptr) v = v + to_float(type_table[static_cast<size_t>(type) * E + c]);
    out[i] = from_float<D>(v);
  }
}

__global__ void iota_kernel(int32_t* x, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) x[i] = i;
}

__global__ void zero_ints_kernel(int32_t* x, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) x[i] = 0;
}

template <typename Row>
__global__ void chunk_pass_kernel(float* table, float* head, float* tail, const Row* rows, const int32_t* keys,
                                  const int32_t* perm, int n, int E, unsigned* errors) {
  const int q = blockIdx.x, c = blockIdx.y * kColumnsPerBlock + threadIdx.x;
  if (c >= E) return;
  if (segments::chunk_pass(table, head, tail, rows, keys, perm, n, E, q, c) && c == 0) report(errors, kErrorNegativeId);
}

__global__ void cross_pass_kernel(float* table, const float* head, const float* tail, const int32_t* keys, int n,
                                  int E) {
  const int q = blockIdx.x, c = blockIdx.y * kColumnsPerBlock + threadIdx.x;
  if (c >= E) return;
  segments::cross_pass(table, head, tail, keys, n, E, q, c);
}

template <typename Row>
__global__ void position_sum_kernel(float* dposition, const Row* dout, int B, int S, int E) {
  const size_t n = static_cast<size_t>(S) * E;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    segments::position_sum(dposition, dout, B, S, E, static_cast<int>(i / E), static_cast<int>(i % E));
  }
}

template <typename D>
__global__ void gather_rows_kernel(D* out, const D* x, const int32_t* positions, int S, int P, int C, size_t n,
                                   unsigned* errors) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const size_t row = i / C;  // b * P + p
    const int c = static_cast<int>(i - row * C);
    const int pos = positions[row];
    if (pos < 0 || pos >= S) {
      report(errors, kErrorPosition);
      out[i] = from_float<D>(0.0f);
      continue;
    }
    out[i] = x[((row / P) * S + pos) * C + c];
  }
}

// One thread per (b, c) adds the example's predictions in order: duplicates add up as on the CPU.
// float: straight into dx. bf16: scatter_rows_math.h (each destination rounded once).
template <typename T>
__global__ void scatter_add_rows_kernel(T* dx, const T* dout, const int32_t* positions, int S, int P, int C, size_t n,
                                        unsigned* errors) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const size_t b = i / C;
    const int c = static_cast<int>(i - b * C);
    if constexpr (std::is_same_v<T, float>) {
      for (int p = 0; p < P; ++p) {
        const size_t row = b * P + p;
        const int pos = positions[row];
        if (pos < 0 || pos >= S) {
          if (c == 0) report(errors, kErrorPosition);
          continue;
        }
        dx[(b * S + pos) * C + c] += dout[row * C + c];
      }
    } else {
      if (rows::scatter_add_column(dx, dout, positions, S, P, C, b, c) && c == 0) report(errors, kErrorPosition);
    }
  }
}

// Workspace layout of embedding_backward (each piece 256-byte aligned).
struct BackwardWorkspace {
  int32_t *sorted_keys, *perm, *iota, *zeros;
  float *head, *tail;
  void* sort_temp;
  size_t sort_temp_bytes;
  size_t total;
};

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

size_t sort_temp_bytes(int tokens) {
  size_t bytes = 0;
  ELECTRA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), tokens));
  return bytes;
}

BackwardWorkspace carve(void* base, int tokens, int E) {
  BackwardWorkspace w{};
  char* p = static_cast<char*>(base);
  size_t used = 0;
  auto take = [&](size_t bytes) {
    char* at = p == nullptr ? nullptr : p + used;
    used += align256(bytes);
    return at;
  };
  const size_t ints = static_cast<size_t>(tokens) * sizeof(int32_t);
  const size_t partial = static_cast<size_t>(segments::chunk_count(tokens)) * E * sizeof(float);
  w.sorted_keys = reinterpret_cast<int32_t*>(take(ints));
  w.perm = reinterpret_cast<int32_t*>(take(ints));
  w.iota = reinterpret_cast<int32_t*>(take(ints));
  w.zeros = reinterpret_cast<int32_t*>(take(ints));
  w.head = reinterpret_cast<float*>(take(partial));
  w.tail = reinterpret_cast<float*>(take(partial));
  w.sort_temp_bytes = sort_temp_bytes(tokens);
  w.sort_temp = take(w.sort_temp_bytes);
  w.total = used;
  return w;
}

// table[keys[t]] += rows[t] for t < n (keys null: all 0), deterministically.
template <typename Row>
void sorted_scatter_add(const Stream& s, float* table, const Row* rows, const int32_t* keys, int n, int E,
                        const BackwardWorkspace& w) {
  const int32_t* sorted_keys = w.zeros;
  const int32_t* perm = w.iota;
  if (keys != nullptr) {
    size_t temp_bytes = w.sort_temp_bytes;
    // Radix sort is stable: tokens of one key keep their order.
    ELECTRA_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w.sort_temp, temp_bytes, keys, w.sorted_keys, w.iota, w.perm, n,
                                                       0, static_cast<int>(sizeof(int32_t) * 8), s.stream));
    sorted_keys = w.sorted_keys;
    perm = w.perm;
  }
  const dim3 grid(segments::chunk_count(n), (E + kColumnsPerBlock - 1) / kColumnsPerBlock);
  chunk_pass_kernel<<<grid, kColumnsPerBlock, 0, s.stream>>>(table, w.head, w.tail, rows, sorted_keys, perm, n, E,
                                                             s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("chunk_pass_kernel");
  cross_pass_kernel<<<grid, kColumnsPerBlock, 0, s.stream>>>(table, w.head, w.tail, sorted_keys, n, E);
  ELECTRA_CUDA_CHECK_LAUNCH("cross_pass_kernel");
}

}  // namespace

template <typename T>
void embedding_forward(const Stream& s, T* out, const int32_t* ids, const int32_t* type_ids,
                       const int32_t* position_ids, const T* word_table, const T* position_table, const T* type_table,
                       int B, int S, int E) {
  const size_t n = static_cast<size_t>(B) * S * E;
  if (n == 0) return;
  embedding_forward_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(out), ids, type_ids, position_ids,
                                                                    device_ptr(word_table), device_ptr(position_table),
                                                                    device_ptr(type_table), S, E, n, s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

size_t embedding_backward_workspace(int tokens, int E) { return carve(nullptr, tokens, E).total; }

template <typename T>
void embedding_backward(const Stream& s, float* dword, float* dposition, float* dtype, const T* dout,
                        const int32_t* ids, const int32_t* type_ids, const int32_t* position_ids, int B, int S, int E,
                        void* workspace, size_t workspace_bytes) {
  const int tokens = B * S;
  if (tokens == 0) return;
  if (embedding_backward_sorts(dword, dposition, dtype, position_ids)) {
    const BackwardWorkspace w = carve(workspace, tokens, E);
    ELECTRA_CHECK(w.total <= workspace_bytes, "embedding_backward: workspace of ", workspace_bytes, " bytes, need ",
                  w.total);
    iota_kernel<<<grid_for(tokens, s), kBlock, 0, s.stream>>>(w.iota, tokens);
    ELECTRA_CUDA_CHECK_LAUNCH("iota_kernel");
    if (dword != nullptr) sorted_scatter_add(s, dword, dout, ids, tokens, E, w);
    if (dtype != nullptr) {
      if (type_ids == nullptr) {  // every token has type 0: already sorted
        zero_ints_kernel<<<grid_for(tokens, s), kBlock, 0, s.stream>>>(w.zeros, tokens);
        ELECTRA_CUDA_CHECK_LAUNCH("zero_ints_kernel");
      }
      sorted_scatter_add(s, dtype, dout, type_ids, tokens, E, w);
    }
    // Packed rows: a position occurs anywhere in the batch, so it is a table key like a word id.
    if (dposition != nullptr && position_ids != nullptr)
      sorted_scatter_add(s, dposition, dout, position_ids, tokens, E, w);
  }
  if (dposition != nullptr && position_ids == nullptr) {
    const size_t n = static_cast<size_t>(S) * E;
    position_sum_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dposition, dout, B, S, E);
    ELECTRA_CUDA_CHECK_LAUNCH("position_sum_kernel");
  }
}

template <typename T>
void gather_rows(const Stream& s, T* out, const T* x, const int32_t* positions, int B, int S, int P, int C) {
  const size_t n = static_cast<size_t>(B) * P * C;
  if (n == 0) return;
  gather_rows_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(device_ptr(out), device_ptr(x), positions, S, P, C, n,
                                                              s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

template <typename T>
void scatter_add_rows(const Stream& s, T* dx, const T* dout, const int32_t* positions, int B, int S, int P, int C) {
  const size_t n = static_cast<size_t>(B) * C;
  if (n == 0 || P == 0) return;
  scatter_add_rows_kernel<<<grid_for(n, s), kBlock, 0, s.stream>>>(dx, dout, positions, S, P, C, n, s.errors);
  ELECTRA_CUDA_CHECK_LAUNCH("scatter_add_rows_kernel");
}

#define ELECTRA_INSTANTIATE_EMBEDDING(T)                                                                               \
  template void embedding_forward<T>(const Stream&, T*, const int32_t*, const int32_t*, const int32_t*, const T*,      \
                                     const T*, const T*, int, int, int);                                               \
  template void embedding_backward<T>(const Stream&, float*, float*, float*, const T*, const int32_t*, const int32_t*, \
                                      const int32_t*, int, int, int, void*, size_t);                                   \
  template void gather_rows<T>(const Stream&, T*, const T*, const int32_t*, int, int, int, int);                       \
  template void scatter_add_rows<T>(const Stream&, T*, const T*, const int32_t*, int, int, int, int);
ELECTRA_INSTANTIATE_EMBEDDING(float)
ELECTRA_INSTANTIATE_EMBEDDING(bfloat16)
#undef ELECTRA_INSTANTIATE_EMBEDDING

}  // namespace electra::cuda
