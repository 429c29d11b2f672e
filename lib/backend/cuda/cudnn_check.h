// Checks of cuDNN calls: a failure throws electra::Error naming the call (its source text), the file and
// line, cuDNN's status string and cuDNN's last error message (which usually says which attribute or
// shape it rejected). Internal to lib/backend/cuda.
#pragma once

#include <cudnn.h>

#include <string>

#include "lib/core/error.h"

namespace electra::cuda {

// cuDNN's description of its most recent failure on this thread ("" when it has none).
inline std::string cudnn_last_error() {
  char message[1024] = {};
  cudnnGetLastErrorString(message, sizeof(message));
  return message;
}

[[noreturn]] inline void fail_cudnn(const char* call, const char* file, int line, cudnnStatus_t status) {
  fail("cuDNN error: ", call, " failed at ", file, ":", line, ": ", cudnnGetErrorString(status), " (status ",
       static_cast<int>(status), "): ", cudnn_last_error());
}

// "Not supported" statuses (the 3000s): the library declines a graph, an engine or a shape; callers that
// probe support treat these as "no" rather than as bugs.
inline bool cudnn_not_supported(cudnnStatus_t status) {
  const int code = static_cast<int>(status);
  return code >= 3000 && code < 4000;
}

}  // namespace electra::cuda

#define ELECTRA_CUDNN_CHECK(call)                                                    \
  do {                                                                               \
    const cudnnStatus_t electra_cudnn_status_ = (call);                              \
    if (electra_cudnn_status_ != CUDNN_STATUS_SUCCESS) {                             \
      ::electra::cuda::fail_cudnn(#call, __FILE__, __LINE__, electra_cudnn_status_); \
    }                                                                                \
  } while (0)
