// The parity runner: one GoogleTest test per (case, backend), Parity/<op>_<shape>.<backend>, each checking
// the backend's outputs against its reference (backends.h: Against) with the case's tolerance for that grade,
// and the backend against itself on a second run, bit for bit. A backend that cannot run here, or a case a
// backend does not take, skips saying why. With ELECTRA_PARITY_TABLE=1 the program ends by printing the op x
// backend table of what it ran (OK / FAIL with the worst error as a fraction of the tolerance, "bits" where
// every output was compared bit for bit; skip: the backend is not available here; n/a: it does not take
// the case).
#include "tests/backend/parity/parity.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "lib/core/error.h"
#include "tests/backend/parity/backends.h"

namespace electra::test::parity {
namespace {

// Every run fills its outputs with its own value first.
constexpr double kPoisonTested = 123.0, kPoisonRepeat = 55.0, kPoisonReference = -7.0;

struct Table {
  std::map<std::pair<std::string, std::string>, std::string> cells;  // (case, backend) -> text
  std::map<std::string, std::string> unavailable;                    // backend -> why
};
Table& table() {
  static Table t;
  return t;
}

std::string format_ratio(double ratio) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2g", ratio);
  return buffer;
}

const Output* find(const Outputs& outputs, const std::string& name) {
  for (const Output& o : outputs) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

// The reference outputs of a case for backend b, and the grade of the comparison.
Outputs reference_of(const Case& c, const BackendEntry& b, const void* in, Grade& grade) {
  switch (b.against) {
    case Against::kLoops:
      grade = b.traits.storage == Storage::kDouble ? Grade::kLoopsDouble : Grade::kLoopsFloat;
      return c.loops(in);
    case Against::kFloatOracle: {
      grade = Grade::kBf16Oracle;
      Outputs want = instance("cpu_float").run(c, in, kPoisonReference);
      for (Output& o : want) {
        if (o.kind == Kind::kStorage) o.values = as_storage(std::move(o.values), b.traits.storage);
      }
      return want;
    }
    case Against::kCpuFloat:
      grade = Grade::kFastFloat;
      return instance("cpu_float").run(c, in, kPoisonReference);
    case Against::kCpuBf16:
      grade = Grade::kFastBf16;
      return instance("cpu_bf16").run(c, in, kPoisonReference);
  }
  throw std::logic_error("unknown reference");
}

void check(const Case& c, const BackendEntry& b) {
  std::string& cell = table().cells[{c.name(), b.traits.name}];
  if (const std::string why = b.unavailable(); !why.empty()) {
    cell = "skip";
    table().unavailable[b.traits.name] = why;
    GTEST_SKIP() << b.traits.name << ": " << why;
  }
  if (const std::string why = c.unsupported(b.traits); !why.empty()) {
    cell = "n/a";
    GTEST_SKIP() << b.traits.name << ": " << why;
  }
  const std::shared_ptr<const void> in = c.inputs(b.traits.storage);
  Outputs got, again, want;
  Grade grade = Grade::kBf16Oracle;
  try {
    got = instance(b.traits.name).run(c, in.get(), kPoisonTested);
    again = instance(b.traits.name).run(c, in.get(), kPoisonRepeat);
    want = reference_of(c, b, in.get(), grade);
  } catch (const Unsupported& u) {
    cell = "n/a";
    GTEST_SKIP() << b.traits.name << ": " << u.reason;
  }
  // The float reduction bounds take their abs sums from the loops.
  const Outputs bounds = grade == Grade::kFastFloat ? c.loops(in.get()) : Outputs{};
  const bool all_bitwise = b.bitwise_for && b.bitwise_for(c);

  bool ok = got.size() == want.size(), every_output_bitwise = true;
  double worst = 0.0;
  EXPECT_EQ(got.size(), want.size()) << "outputs of " << b.traits.name << " and of its reference";
  for (const Output& o : got) {
    const Output* w = find(want, o.name);
    const Output* a = find(again, o.name);
    if (w == nullptr || a == nullptr) {
      ADD_FAILURE() << "output " << o.name << " missing from the reference or the second run";
      ok = false;
      continue;
    }
    const Output* bound = find(bounds, o.name);
    const Tolerance tol = all_bitwise ? bits() : c.tolerance(o, grade);
    const Verdict v = compare(o, *w, bound != nullptr ? bound->abs_sum : std::vector<double>{}, tol);
    EXPECT_TRUE(v.ok) << b.traits.name << " against " << b.against_name << ": " << v.message;
    const Verdict same = compare(*a, o, {}, bits());
    EXPECT_TRUE(same.ok) << b.traits.name << " differs from itself on a second run: " << same.message;
    ok = ok && v.ok && same.ok;
    every_output_bitwise = every_output_bitwise && v.bitwise;
    if (!(v.ratio <= worst)) worst = v.ratio;
  }
  if (!ok) {
    cell = "FAIL " + format_ratio(worst);
  } else {
    cell = every_output_bitwise ? "OK bits" : "OK " + format_ratio(worst);
  }
}

class ParityTest : public ::testing::Test {
 public:
  ParityTest(const Case& c, const BackendEntry& b) : case_(c), backend_(b) {}
  void TestBody() override { check(case_, backend_); }

 private:
  const Case& case_;
  const BackendEntry& backend_;
};

void print_table() {
  const Table& t = table();
  std::vector<std::string> columns, against;
  for (const BackendEntry& b : backend_entries()) {
    columns.push_back(b.traits.name);
    against.push_back("vs " + b.against_name);
  }
  // The rows of the cases this program ran, in the order of all_cases().
  std::vector<std::vector<std::string>> rows = {std::vector<std::string>{"case (op_shape)"}, {""}};
  rows[0].insert(rows[0].end(), columns.begin(), columns.end());
  rows[1].insert(rows[1].end(), against.begin(), against.end());
  for (const auto& c : all_cases()) {
    std::vector<std::string> row = {c->name()};
    bool ran = false;
    for (const std::string& col : columns) {
      const auto it = t.cells.find({c->name(), col});
      ran = ran || it != t.cells.end();
      row.push_back(it == t.cells.end() ? "-" : it->second);
    }
    if (ran) rows.push_back(std::move(row));
  }
  std::vector<size_t> widths(columns.size() + 1, 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::ostringstream out;
  out << "\nBackend parity: each backend against its reference on the same inputs (OK / FAIL: the worst error\n"
         "as a fraction of the tolerance; bits: compared bit for bit; skip: backend not available here; n/a: the\n"
         "backend does not take the case)\n";
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) out << row[i] << std::string(widths[i] - row[i].size() + 2, ' ');
    out << "\n";
  }
  for (const auto& [name, why] : t.unavailable) out << "skip " << name << ": " << why << "\n";
  std::fputs(out.str().c_str(), stdout);
  std::fflush(stdout);
}

class ParityEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    const char* env = std::getenv("ELECTRA_PARITY_TABLE");
    if (env != nullptr && std::string(env) != "" && std::string(env) != "0") print_table();
    release_instances();
  }
};

[[maybe_unused]] const bool kRegistered = [] {
  ::testing::AddGlobalTestEnvironment(new ParityEnvironment);
  for (const auto& c : all_cases()) {
    for (const BackendEntry& b : backend_entries()) {
      const Case* case_ptr = c.get();
      const BackendEntry* backend_ptr = &b;
      ::testing::RegisterTest(
          ("Parity/" + c->name()).c_str(), b.traits.name.c_str(), nullptr, nullptr, __FILE__, __LINE__,
          [case_ptr, backend_ptr]() -> ::testing::Test* { return new ParityTest(*case_ptr, *backend_ptr); });
    }
  }
  return true;
}();

}  // namespace
}  // namespace electra::test::parity
