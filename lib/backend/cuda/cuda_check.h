// Checks of CUDA runtime calls and kernel launches: a failure throws electra::Error naming the call (its
// source text), the file and line, and CUDA's error name and description. Internal to lib/backend/cuda.
#pragma once

#include <cuda_runtime_api.h>

#include "lib/core/error.h"

namespace electra::cuda {

[[noreturn]] inline void fail_cuda(const char* call, const char* file, int line, cudaError_t error) {
  fail("CUDA error: ", call, " failed at ", file, ":", line, ": ", cudaGetErrorName(error), " (",
       cudaGetErrorString(error), ")");
}

// After a <<<...>>> launch: a bad configuration (or an earlier asynchronous fault) is reported here.
inline void check_launch(const char* kernel, const char* file, int line) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    fail("CUDA error: launch of ", kernel, " failed at ", file, ":", line, ": ", cudaGetErrorName(error), " (",
         cudaGetErrorString(error), ")");
  }
}

}  // namespace electra::cuda

#define ELECTRA_CUDA_CHECK(call)                                                  \
  do {                                                                            \
    const cudaError_t electra_cuda_error_ = (call);                               \
    if (electra_cuda_error_ != cudaSuccess) {                                     \
      ::electra::cuda::fail_cuda(#call, __FILE__, __LINE__, electra_cuda_error_); \
    }                                                                             \
  } while (0)

#define ELECTRA_CUDA_CHECK_LAUNCH(kernel) ::electra::cuda::check_launch(kernel, __FILE__, __LINE__)
