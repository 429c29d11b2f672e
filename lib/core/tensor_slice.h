// A named slice of a flat buffer: the one description of "tensor `name` is elements [offset, offset + size)
// of the buffer, shaped `shape`". The model's parameter layout (ParameterSlice adds what training needs),
// the checkpoint sections, the optimizer moments and the Hugging Face export/import all use it; the
// parameters, gradients and both optimizer moments share one list of slices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace electra {

struct TensorSlice {
  std::string name;            // a Hugging Face state-dict name: dots, never slashes
  std::vector<int64_t> shape;  // row-major; linear weights [out, in]
  size_t offset = 0;           // first element in the flat buffer
  size_t size = 0;             // elements, the product of shape
};

}  // namespace electra
