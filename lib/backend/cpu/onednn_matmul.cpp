#include "lib/backend/cpu/onednn_matmul.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "lib/backend/cpu/detail.h"
#include "lib/core/error.h"

#if defined(ELECTRA_HAVE_ONEDNN)
#include <oneapi/dnnl/dnnl_debug.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace electra::cpu {
namespace {

const char* transpose_name(Transpose t) { return t == Transpose::kYes ? "T" : "N"; }

// The problem in one line, for every error message.
std::string describe(const MatmulProblem& p) {
  std::ostringstream s;
  s << "matmul " << transpose_name(p.trans_a) << transpose_name(p.trans_b) << " m=" << p.m << " n=" << p.n
    << " k=" << p.k << " lda=" << p.lda << " ldb=" << p.ldb << " ldc=" << p.ldc;
  if (p.batch_outer != 1 || p.batch_inner != 1) {
    s << " batch=" << p.batch_outer << "x" << p.batch_inner << " strides a=(" << p.stride_a_outer << ","
      << p.stride_a_inner << ") b=(" << p.stride_b_outer << "," << p.stride_b_inner << ") c=(" << p.stride_c_outer
      << "," << p.stride_c_inner << ")";
  }
  s << " bf16 x bf16 -> " << (p.output == MatmulOutput::kF32 ? "f32" : "bf16") << " alpha=" << p.alpha
    << " beta=" << p.beta << (p.has_bias ? " bias=bf16" : "");
  return s.str();
}

}  // namespace

#if defined(ELECTRA_HAVE_ONEDNN)
namespace {

using dnnl::memory;

// Messages are built only on failure: this runs on every call.
void check_shape(const MatmulProblem& p) {
  ELECTRA_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0, "negative size in ", describe(p));
  ELECTRA_CHECK(p.batch_outer >= 1 && p.batch_inner >= 1, "batch counts must be >= 1 in ", describe(p));
  const int a_width = p.trans_a == Transpose::kNo ? p.k : p.m;  // row length of A as stored
  const int b_width = p.trans_b == Transpose::kNo ? p.n : p.k;
  ELECTRA_CHECK(p.lda >= std::max(a_width, 1), "lda too small in ", describe(p));
  ELECTRA_CHECK(p.ldb >= std::max(b_width, 1), "ldb too small in ", describe(p));
  ELECTRA_CHECK(p.ldc >= std::max(p.n, 1), "ldc too small in ", describe(p));
  ELECTRA_CHECK(p.stride_a_outer >= 0 && p.stride_a_inner >= 0 && p.stride_b_outer >= 0 && p.stride_b_inner >= 0 &&
                    p.stride_c_outer >= 0 && p.stride_c_inner >= 0,
                "negative batch stride in ", describe(p));
  // A zero stride shares A or B across that batch dimension; C must not be shared.
  ELECTRA_CHECK((p.batch_outer == 1 || p.stride_c_outer > 0) && (p.batch_inner == 1 || p.stride_c_inner > 0),
                "zero C batch stride in ", describe(p));
  ELECTRA_CHECK(!p.has_bias || p.alpha == 1.0f, "alpha must be 1 with a bias in ", describe(p));
}

// k == 0: no products, C = bias + beta * C (C not read when beta == 0).
template <typename C>
void bias_only(const MatmulProblem& p, const bfloat16* bias, C* c) {
  for (int o = 0; o < p.batch_outer; ++o) {
    for (int i = 0; i < p.batch_inner; ++i) {
      C* base = c + o * p.stride_c_outer + i * p.stride_c_inner;
      for (int r = 0; r < p.m; ++r) {
        for (int j = 0; j < p.n; ++j) {
          C& out = base[static_cast<size_t>(r) * p.ldc + j];
          float v = bias ? static_cast<float>(bias[j]) : 0.0f;
          if (p.beta != 0.0f) v += p.beta * static_cast<float>(out);
          out = C(v);
        }
      }
    }
  }
}

// Inside an active OpenMP parallel region oneDNN does not nest: it walks the work split of a primitive on
// the calling thread alone. Making the primitive for one thread there (this thread's nthreads ICV) keys
// the cache by the threads that really run and gives the blocking and the bits of a one-thread call.
class OneThreadInsideParallel {
 public:
  OneThreadInsideParallel() : saved_(omp_in_parallel() ? omp_get_max_threads() : 0) {
    if (saved_ > 0) omp_set_num_threads(1);
  }
  ~OneThreadInsideParallel() {
    if (saved_ > 0) omp_set_num_threads(saved_);
  }
  OneThreadInsideParallel(const OneThreadInsideParallel&) = delete;
  OneThreadInsideParallel& operator=(const OneThreadInsideParallel&) = delete;

 private:
  int saved_;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

uint32_t float_bits(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// Every field of the problem (alpha and beta by their bits) plus the thread count the primitive is made for.
auto cache_key(const MatmulProblem& p, int threads) {
  return std::make_tuple(p.trans_a, p.trans_b, p.m, p.n, p.k, p.lda, p.ldb, p.ldc, p.batch_outer, p.batch_inner,
                         p.stride_a_outer, p.stride_a_inner, p.stride_b_outer, p.stride_b_inner, p.stride_c_outer,
                         p.stride_c_inner, p.output, p.has_bias, float_bits(p.alpha), float_bits(p.beta), threads);
}
using Key = decltype(cache_key(MatmulProblem{}, 0));
struct KeyHash {
  size_t operator()(const Key& key) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    std::apply([&h](auto... field) { ((h = (h ^ static_cast<uint64_t>(field)) * 1099511628211ull), ...); }, key);
    return static_cast<size_t>(h);
  }
};

// A primitive with its memory objects (no buffers of their own: each call points them at its operands).
struct Entry {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
  memory a, b, bias, c, scratchpad;
  std::unordered_map<int, memory> args;
};

// The per-thread scratchpad every cached primitive of the thread shares (user scratchpad mode, so a call
// never asks oneDNN for memory). Grown only when a primitive is made.
struct Scratchpad {
  std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};
  size_t bytes = 0;
};

struct ThreadState {
  std::unordered_map<Key, Entry, KeyHash> cache;
  Scratchpad scratchpad;
  dnnl::stream stream{cpu_engine()};
};
ThreadState& thread_state() {
  thread_local ThreadState state;
  return state;
}

// Operand [rows, cols] of each batch element with element strides (row_stride, col_stride). 4D with
// the batch dimensions when batched; a zero batch stride becomes a broadcast dimension of size 1.
memory::desc operand_desc(const MatmulProblem& p, memory::data_type type, long long rows, long long cols,
                          long long row_stride, long long col_stride, long long stride_outer, long long stride_inner,
                          bool may_broadcast) {
  if (p.batch_outer == 1 && p.batch_inner == 1) return memory::desc({rows, cols}, type, {row_stride, col_stride});
  long long outer = p.batch_outer, inner = p.batch_inner;
  if (may_broadcast && stride_outer == 0) outer = 1;
  if (may_broadcast && stride_inner == 0) inner = 1;
  // The stride of a size-1 dimension is never used; give it the dense value oneDNN's layout checks expect.
  const long long matrix_span = std::max(rows * row_stride, cols * col_stride);
  if (inner == 1) stride_inner = matrix_span;
  if (outer == 1) stride_outer = inner * stride_inner;
  return memory::desc({outer, inner, rows, cols}, type, {stride_outer, stride_inner, row_stride, col_stride});
}

Entry make_entry(const MatmulProblem& p, Scratchpad& scratchpad) {
  using dt = memory::data_type;
  const bool batched = p.batch_outer != 1 || p.batch_inner != 1;
  const bool ta = p.trans_a == Transpose::kYes, tb = p.trans_b == Transpose::kYes;
  // Transposes are strides: op(A)[i, l] is A[i * lda + l], or A[l * lda + i] when A is stored [k, m].
  const memory::desc a_md =
      operand_desc(p, dt::bf16, p.m, p.k, ta ? 1 : p.lda, ta ? p.lda : 1, p.stride_a_outer, p.stride_a_inner, true);
  const memory::desc b_md =
      operand_desc(p, dt::bf16, p.k, p.n, tb ? 1 : p.ldb, tb ? p.ldb : 1, p.stride_b_outer, p.stride_b_inner, true);
  const memory::desc c_md = operand_desc(p, p.output == MatmulOutput::kF32 ? dt::f32 : dt::bf16, p.m, p.n, p.ldc, 1,
                                         p.stride_c_outer, p.stride_c_inner, false);
  memory::desc bias_md;
  if (p.has_bias) {
    bias_md = batched ? memory::desc({1, 1, 1, p.n}, dt::bf16, {p.n, p.n, p.n, 1})
                      : memory::desc({1, p.n}, dt::bf16, {p.n, 1});
  }
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (p.alpha != 1.0f) attr.set_output_scales(0, {p.alpha});
  if (p.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(p.beta);
    attr.set_post_ops(ops);
  }
  const dnnl::matmul::desc desc =
      p.has_bias ? dnnl::matmul::desc(a_md, b_md, bias_md, c_md) : dnnl::matmul::desc(a_md, b_md, c_md);
  dnnl::engine& engine = cpu_engine();
  Entry e{dnnl::matmul::primitive_desc(desc, attr, engine), {}, {}, {}, {}, {}, {}, {}};
  e.primitive = dnnl::matmul(e.pd);
  e.a = memory(a_md, engine, DNNL_MEMORY_NONE);
  e.b = memory(b_md, engine, DNNL_MEMORY_NONE);
  e.c = memory(c_md, engine, DNNL_MEMORY_NONE);
  e.args = {{DNNL_ARG_SRC, e.a}, {DNNL_ARG_WEIGHTS, e.b}, {DNNL_ARG_DST, e.c}};
  if (p.has_bias) {
    e.bias = memory(bias_md, engine, DNNL_MEMORY_NONE);
    e.args.emplace(DNNL_ARG_BIAS, e.bias);
  }
  const memory::desc scratch_md = e.pd.scratchpad_desc();
  const size_t scratch_bytes = scratch_md.get_size();
  if (scratch_bytes > 0) {
    if (scratch_bytes > scratchpad.bytes) {
      scratchpad.data.reset(detail::aligned_allocate(scratch_bytes));
      scratchpad.bytes = scratch_bytes;
    }
    e.scratchpad = memory(scratch_md, engine, DNNL_MEMORY_NONE);
    e.args.emplace(DNNL_ARG_SCRATCHPAD, e.scratchpad);
  }
  return e;
}

[[noreturn]] void fail_onednn(const MatmulProblem& p, const dnnl::error& e, const char* stage) {
  fail("oneDNN ", stage, " failed for ", describe(p), " (", omp_get_max_threads(), " threads): ", e.what(), " (status ",
       dnnl_status2str(e.status), ")");
}

// The cached entry for p at the calling thread's current OpenMP thread count, made on first use.
Entry& entry_for(const MatmulProblem& p) {
  ThreadState& state = thread_state();
  const Key key = cache_key(p, omp_get_max_threads());
  auto it = state.cache.find(key);
  if (it != state.cache.end()) return it->second;
  try {
    return state.cache.emplace(key, make_entry(p, state.scratchpad)).first->second;
  } catch (const dnnl::error& e) {
    fail_onednn(p, e, "primitive creation");
  }
}

}  // namespace

void onednn_matmul(const MatmulProblem& p, const bfloat16* a, const bfloat16* b, const bfloat16* bias, void* c) {
  check_shape(p);
  if (p.m == 0 || p.n == 0) return;
  ELECTRA_CHECK(c != nullptr, "null C in ", describe(p));
  ELECTRA_CHECK(p.has_bias == (bias != nullptr), "bias pointer ", (bias ? "given" : "null"),
                " but has_bias=", p.has_bias, " in ", describe(p));
  if (p.k == 0) {
    if (p.output == MatmulOutput::kF32) return bias_only(p, bias, static_cast<float*>(c));
    return bias_only(p, bias, static_cast<bfloat16*>(c));
  }
  ELECTRA_CHECK(a != nullptr && b != nullptr, "null operand in ", describe(p));
  OneThreadInsideParallel one_thread;
  Entry& e = entry_for(p);
  ThreadState& state = thread_state();
  try {
    e.a.set_data_handle(const_cast<bfloat16*>(a));
    e.b.set_data_handle(const_cast<bfloat16*>(b));
    e.c.set_data_handle(c);
    if (p.has_bias) e.bias.set_data_handle(const_cast<bfloat16*>(bias));
    if (e.scratchpad) e.scratchpad.set_data_handle(state.scratchpad.data.get());
    e.primitive.execute(state.stream, e.args);
    state.stream.wait();
  } catch (const dnnl::error& err) {
    fail_onednn(p, err, "execution");
  }
}

std::string onednn_matmul_implementation(const MatmulProblem& p) {
  check_shape(p);
  ELECTRA_CHECK(p.m > 0 && p.n > 0 && p.k > 0, "no oneDNN primitive for an empty ", describe(p));
  OneThreadInsideParallel one_thread;
  return entry_for(p).pd.impl_info_str();
}

size_t onednn_matmul_cached_primitives() { return thread_state().cache.size(); }

std::vector<std::string> onednn_matmul_cached_implementations() {
  std::vector<std::string> out;
  for (const auto& [key, entry] : thread_state().cache) {
    std::string line = std::string(entry.pd.impl_info_str()) + ":";
    for (const memory::desc& md : {entry.pd.src_desc(), entry.pd.weights_desc(), entry.pd.dst_desc()}) {
      line += " ";
      const memory::dims dims = md.dims();
      for (size_t i = 0; i < dims.size(); ++i) line += std::string(i > 0 ? "x" : "") + std::to_string(dims[i]);
    }
    out.push_back(std::move(line));
  }
  std::sort(out.begin(), out.end());
  return out;
}

#else  // !ELECTRA_HAVE_ONEDNN

namespace {
[[noreturn]] void fail_no_onednn(const MatmulProblem& p) {
  fail("onednn_matmul: this build has no oneDNN (install libdnnl-dev and reconfigure CMake); asked for ", describe(p));
}
}  // namespace

void onednn_matmul(const MatmulProblem& p, const bfloat16*, const bfloat16*, const bfloat16*, void*) {
  fail_no_onednn(p);
}
std::string onednn_matmul_implementation(const MatmulProblem& p) { fail_no_onednn(p); }
size_t onednn_matmul_cached_primitives() { return 0; }
std::vector<std::string> onednn_matmul_cached_implementations() { return {}; }

#endif  // ELECTRA_HAVE_ONEDNN

namespace {

// The bf16-related flags of the first "flags" line of /proc/cpuinfo, space-separated; "none" when absent.
std::string cpu_bf16_flags() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line);
    bool found[5] = {};
    const char* names[5] = {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_fp16"};
    for (std::string w; words >> w;) {
      for (int i = 0; i < 5; ++i) found[i] = found[i] || w == names[i];
    }
    std::ostringstream out;
    for (int i = 0; i < 5; ++i) {
      if (found[i]) out << (out.tellp() > 0 ? " " : "") << names[i];
    }
    return out.tellp() > 0 ? out.str() : "none";
  }
  return "none";
}

#if defined(ELECTRA_HAVE_ONEDNN)
std::string isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::all:
      return "all";
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic:
      return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops:
      return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
  }
  return "isa_" + std::to_string(static_cast<int>(isa));  // a value newer than oneDNN 2.6
}
#endif

}  // namespace

CpuBf16Support cpu_bf16_support() {
  CpuBf16Support s;
  s.cpu_flags = cpu_bf16_flags();
#if defined(ELECTRA_HAVE_ONEDNN)
  s.onednn_built = true;
  s.onednn_isa = isa_name(dnnl::get_effective_cpu_isa());
  s.amx = s.onednn_isa.find("amx") != std::string::npos;
  s.native = s.onednn_isa == "avx512_core_bf16" || s.amx;
#endif
  return s;
}

std::string CpuBf16Support::summary() const {
  const std::string flags = "CPU flags: " + cpu_flags;
  if (!onednn_built) return "no oneDNN in this build (" + flags + "): bf16 products need libdnnl-dev";
  std::string limit;
  for (const char* var : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    if (const char* v = std::getenv(var)) limit = std::string(", ") + var + "=" + v;
  }
  const std::string head = "oneDNN ISA " + onednn_isa + " (" + flags + limit;
  if (native) return head + "; native bf16 products" + (amx ? " on AMX tiles)" : ")");
  const bool avx512 = onednn_isa.rfind("avx512_core", 0) == 0;
  if (avx512) {
    return head + "; NOT native: no avx512_bf16 or amx_bf16 in effect, oneDNN emulates bf16 products slowly)";
  }
  return head + "; NO bf16 products: oneDNN needs avx512_core, native ones avx512_bf16 or amx_bf16)";
}

}  // namespace electra::cpu
