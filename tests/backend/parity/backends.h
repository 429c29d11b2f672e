// The columns of the parity table (backends.cpp) and the comparison of one output with its reference.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tests/backend/parity/parity.h"

namespace electra::test::parity {

// What a backend's outputs are checked against.
enum class Against {
  kLoops,        // the case's double loops (cpu_double, cpu_float)
  kFloatOracle,  // cpu_float on the widened inputs, bf16 outputs rounded to nearest-even (cpu_bf16)
  kCpuFloat,     // cpu_float's outputs (cuda_float)
  kCpuBf16,      // cpu_bf16's outputs (cpu_bf16_onednn, cuda_bf16)
};

// A backend made once per process (see instance()), running cases.
class Instance {
 public:
  virtual ~Instance() = default;
  virtual Outputs run(const Case& c, const void* in, double poison) = 0;
};

struct BackendEntry {
  BackendTraits traits;
  Against against = Against::kLoops;
  std::string against_name;  // the column checked against, for the table's header ("loops" for kLoops)
  // Cases it must match bit for bit where its grade would allow rounding ("" when none): oneDNN computes
  // everything but the products with the reference's arithmetic (lib/backend/cpu/bf16_kernels.h).
  std::function<bool(const Case&)> bitwise_for;
  // Why it cannot run here ("" when it can): not built, no device.
  std::function<std::string()> unavailable;
  std::function<std::unique_ptr<Instance>()> make;
};

// Every column, CUDA ones included when this build has the CUDA backend (ELECTRA_PARITY_CUDA).
const std::vector<BackendEntry>& backend_entries();
const BackendEntry& backend_entry(const std::string& name);
// The backend of `name`, made on first use and kept until release_instances() (the end of the test
// program: a GPU backend must go before the CUDA runtime does).
Instance& instance(const std::string& name);
void release_instances();

// One output against its reference.
struct Verdict {
  bool ok = true;
  bool bitwise = false;  // compared bit for bit
  double ratio = 0.0;    // the worst error as a fraction of the tolerance (0 when bit for bit)
  std::string message;   // where it failed
};
Verdict compare(const Output& got, const Output& want, const std::vector<double>& abs_sum, const Tolerance& t);

}  // namespace electra::test::parity
