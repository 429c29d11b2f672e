// The bfloat16 type's conversions, and the CPU Backend<bfloat16> (make_cpu_bf16_backend) beyond parity: that
// every op gives bitwise the float CPU backend's result on the widened inputs (bfloat16 outputs rounded to
// nearest-even, float (W) outputs unchanged) is the parity table's cpu_bf16 column (tests/backend/parity).
// Here: name and wide(), memory, refused calls and their messages, thread-count independence, concurrent
// callers, and on arbitrary float inputs the distance to the float ops (bf16 tolerance).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "lib/backend/backend.h"
#include "lib/core/bfloat16.h"
#include "lib/core/error.h"
#include "lib/model/device_buffer.h"
#include "tests/backend/test_util.h"

namespace electra::test {
namespace {

uint32_t float_bits(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
float bits_float(uint32_t u) {
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
uint16_t rne_bits(float f) { return bfloat16(f).bits; }

// ---- conversions ----

// Round to nearest even by distances in double, without the bit trick of bfloat16::round_bits: the two
// bfloat16 neighbours of a finite f are its truncation toward zero and the next value away from zero.
uint16_t reference_rounding(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t toward_zero = static_cast<uint16_t>(u >> 16);
  const uint16_t away = static_cast<uint16_t>(toward_zero + 1);  // may become infinity: IEEE overflow
  const auto magnitude = [](uint16_t bits) {
    if ((bits & 0x7fffu) == 0x7f80u) return std::ldexp(1.0, 128);  // infinity rounds like 2^128
    return std::abs(static_cast<double>(bfloat16::to_float(bits)));
  };
  const double x = std::abs(static_cast<double>(f));
  const double below = x - magnitude(toward_zero), above = magnitude(away) - x;
  if (below < above) return toward_zero;
  if (above < below) return away;
  return (toward_zero & 1u) == 0 ? toward_zero : away;
}

TEST(Bf16Conversion, TiesRoundToEvenBothWays) {
  // 1 + 2^-8 lies halfway between 1 (even) and 1 + 2^-7 (odd): down. 1 + 3 * 2^-8 lies halfway between
  // 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  EXPECT_EQ(rne_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(rne_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(rne_bits(-(1.0f + std::ldexp(1.0f, -8))), 0xbf80);
  EXPECT_EQ(rne_bits(-(1.0f + 3 * std::ldexp(1.0f, -8))), 0xbf82);
  // Just off the ties: nearest, whichever way.
  EXPECT_EQ(rne_bits(bits_float(0x3f808001u)), 0x3f81);
  EXPECT_EQ(rne_bits(bits_float(0x3f817fffu)), 0x3f81);
  EXPECT_EQ(rne_bits(bits_float(0x3f807fffu)), 0x3f80);
  // A tie whose rounding carries into the exponent: (2 - 2^-8) rounds up to 2.
  EXPECT_EQ(rne_bits(bits_float(0x3fff8000u)), 0x4000);
}

TEST(Bf16Conversion, ExactValuesAndSignedZero) {
  for (float v : {0.0f, 1.0f, -1.0f, 0.5f, 2.0f, 3.0f, 255.0f, -256.0f, 1.0f / 64, std::ldexp(1.0f, 100),
                  std::ldexp(-1.0f, -100), 1.5f, -0.75f}) {
    EXPECT_EQ(static_cast<float>(bfloat16(v)), v) << v;
    EXPECT_EQ(round_to_bfloat16(v), v) << v;
  }
  EXPECT_EQ(rne_bits(-0.0f), 0x8000);
  EXPECT_EQ(rne_bits(0.0f), 0x0000);
  EXPECT_TRUE(std::signbit(static_cast<float>(bfloat16::from_bits(0x8000))));
  // 3.14159 -> 3.140625 (0x4049): the nearest of 3.140625 and 3.15625.
  EXPECT_EQ(rne_bits(3.14159f), 0x4049);
  EXPECT_EQ(static_cast<float>(bfloat16::from_bits(0x4049)), 3.140625f);
}

TEST(Bf16Conversion, Denormals) {
  // Float denormals keep their top 16 bits exactly; the rest rounds like any other value.
  EXPECT_EQ(rne_bits(bits_float(0x00080000u)), 0x0008);
  EXPECT_EQ(static_cast<float>(bfloat16::from_bits(0x0008)), bits_float(0x00080000u));
  EXPECT_EQ(rne_bits(bits_float(0x00000001u)), 0x0000);  // the smallest denormal rounds to zero
  EXPECT_EQ(rne_bits(bits_float(0x00008000u)), 0x0000);  // tie to even (zero)
  EXPECT_EQ(rne_bits(bits_float(0x00018000u)), 0x0002);  // tie to even (up)
  EXPECT_EQ(rne_bits(bits_float(0x80008001u)), 0x8001);  // negative, above the tie
  EXPECT_EQ(rne_bits(bits_float(0x007fffffu)), 0x0080);  // the largest denormal rounds up to the smallest normal
  EXPECT_GT(static_cast<float>(bfloat16::from_bits(0x0001)), 0.0f);
}

TEST(Bf16Conversion, OverflowAndInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(rne_bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(rne_bits(-std::numeric_limits<float>::max()), 0xff80);
  EXPECT_EQ(rne_bits(bits_float(0x7f7f8000u)), 0x7f80);  // tie above the largest finite (odd): infinity
  EXPECT_EQ(rne_bits(bits_float(0x7f7f7fffu)), 0x7f7f);  // below the tie: the largest finite
  EXPECT_EQ(rne_bits(bits_float(0x7f7e8000u)), 0x7f7e);  // tie below an even mantissa stays finite
  EXPECT_EQ(rne_bits(inf), 0x7f80);
  EXPECT_EQ(rne_bits(-inf), 0xff80);
  EXPECT_EQ(static_cast<float>(bfloat16::from_bits(0x7f80)), inf);
  EXPECT_EQ(static_cast<float>(bfloat16::from_bits(0xff80)), -inf);
}

TEST(Bf16Conversion, NanStaysNan) {
  // Payloads only in the low 16 bits (signalling NaNs) would truncate to infinity: they must not.
  for (uint32_t u : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7f80ffffu, 0x7fffffffu, 0x7fa00000u}) {
    const bfloat16 b(bits_float(u));
    EXPECT_TRUE(std::isnan(static_cast<float>(b))) << std::hex << u;
    EXPECT_EQ(b.bits & 0x8000u, (u >> 16) & 0x8000u) << std::hex << u;  // sign kept
  }
}

TEST(Bf16Conversion, EveryBitPatternRoundTrips) {
  int nans = 0;
  for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const float f = bfloat16::to_float(static_cast<uint16_t>(bits));
    ASSERT_EQ(float_bits(f), bits << 16);  // widening is exact: the bits move up
    if (std::isnan(f)) {
      ++nans;
      ASSERT_TRUE(std::isnan(static_cast<float>(bfloat16(f)))) << std::hex << bits;
      continue;
    }
    ASSERT_EQ(bfloat16(f).bits, bits) << std::hex << bits;
  }
  EXPECT_EQ(nans, 2 * 127);  // exponent all ones, mantissa non-zero, either sign
}

TEST(Bf16Conversion, MatchesRoundingByDistance) {
  // Random bit patterns (every exponent), plus patterns near ties and near the top of the range.
  PhiloxSequence rng(7, RandomPurpose::kTest, 0, 0);
  size_t checked = 0;
  for (int i = 0; i < 1 << 20; ++i) {
    uint32_t u = rng.next_u32();
    if (i % 4 == 1) u = (u & 0xffff0000u) | 0x8000u;               // exact tie
    if (i % 4 == 2) u = (u & 0xffff0000u) | (0x7ffeu + (u & 3u));  // around the tie
    const float f = bits_float(u);
    if (std::isnan(f) || std::isinf(f)) continue;
    ASSERT_EQ(rne_bits(f), reference_rounding(f)) << std::hex << u;
    ++checked;
  }
  EXPECT_GT(checked, 1000000u);
  // Bulk conversions agree with the scalar ones.
  std::vector<float> values(1000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = bits_float(rng.next_u32());
  std::vector<bfloat16> narrow(values.size());
  std::vector<float> wide(values.size());
  narrow_to_bfloat16(narrow.data(), values.data(), values.size());
  widen_bfloat16(wide.data(), narrow.data(), narrow.size());
  for (size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(narrow[i].bits, bfloat16(values[i]).bits);
    ASSERT_EQ(float_bits(wide[i]), static_cast<uint32_t>(narrow[i].bits) << 16);
  }
}

// ---- the backend ----

// Random bfloat16 values and their exact float widening.
struct Bf16Values {
  std::vector<bfloat16> narrow;
  std::vector<float> wide;
};
Bf16Values random_bf16(size_t n, uint64_t id, double lo = -1.0, double hi = 1.0) {
  const auto v = random_values(n, id, lo, hi);
  Bf16Values out{std::vector<bfloat16>(n), std::vector<float>(n)};
  for (size_t i = 0; i < n; ++i) {
    out.narrow[i] = bfloat16(static_cast<float>(v[i]));
    out.wide[i] = static_cast<float>(out.narrow[i]);
  }
  return out;
}
// Floats with all their mantissa bits (what W inputs and gradients hold).
std::vector<float> random_floats(size_t n, uint64_t id, double lo = -1.0, double hi = 1.0) {
  return cast<float>(random_values(n, id, lo, hi));
}
std::vector<float> widened(const std::vector<bfloat16>& x) {
  std::vector<float> out(x.size());
  widen_bfloat16(out.data(), x.data(), x.size());
  return out;
}

// Bitwise equal floats (NaNs included).
::testing::AssertionResult bits_equal(const std::vector<float>& actual, const std::vector<float>& expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  for (size_t i = 0; i < actual.size(); ++i) {
    if (float_bits(actual[i]) != float_bits(expected[i])) {
      return ::testing::AssertionFailure() << "element " << i << ": " << actual[i] << " != " << expected[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// A buffer allocated by a backend (so both backends see equally aligned memory), filled from the host.
template <typename E>
struct Dev : DeviceBuffer<E> {
  Dev(Backend<E>& be, const std::vector<E>& host) : DeviceBuffer<E>(be, host.size()), backend(&be) {
    be.copy_from_host(this->data(), host.data(), host.size());
  }
  Dev(Backend<E>& be, size_t n, E value) : Dev(be, std::vector<E>(n, value)) {}
  E* get() { return this->data(); }
  std::vector<E> host() const {
    std::vector<E> out(this->size());
    backend->copy_to_host(out.data(), this->data(), out.size());
    return out;
  }
  Backend<E>* backend;
};

// Outputs start from different values in the two backends, so an output an op fails to write shows.
const bfloat16 kUnwrittenBf16 = bfloat16(123.0f);
constexpr float kUnwrittenFloat = -7.0f;

class Bf16Backend : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<float>> fp = make_cpu_backend<float>();
  std::unique_ptr<Backend<bfloat16>> bf = make_cpu_bf16_backend(*fp);

  Dev<bfloat16> bf_out(size_t n) { return Dev<bfloat16>(*bf, n, kUnwrittenBf16); }
  Dev<float> fp_out(size_t n) { return Dev<float>(*fp, n, kUnwrittenFloat); }
};

TEST_F(Bf16Backend, NameDeviceAndWide) {
  EXPECT_EQ(bf->name(), "cpu-bf16");
  EXPECT_EQ(bf->device(), DeviceKind::kCpu);
  EXPECT_EQ(&bf->wide(), fp.get());
  // Buffers of wide() go into the W arguments: a float buffer from it holds a LayerNorm's statistics.
  Dev<float> mean(bf->wide(), 2, 0.0f), rstd(bf->wide(), 2, 0.0f);
  const auto x = random_bf16(8, 1);
  Dev<bfloat16> xb(*bf, x.narrow), y(*bf, 8, bfloat16(0.0f)), gamma(*bf, 4, bfloat16(1.0f));
  bf->layernorm_forward(y.get(), mean.get(), rstd.get(), xb.get(), gamma.get(), gamma.get(), 2, 4, 1e-5f);
  EXPECT_NEAR(mean.host()[0], (x.wide[0] + x.wide[1] + x.wide[2] + x.wide[3]) / 4, 1e-6);
}

TEST_F(Bf16Backend, MemoryIsAlignedAndFillKeepsAnyBits) {
  bfloat16* buf = bf->allocate(1001);
  int32_t* ints = bf->allocate_ints(13);
  uint8_t* bytes = bf->allocate_bytes(7);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ints) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes) % 64, 0u);
  bf->fill(buf, 1001, bfloat16::from_bits(0x7fc1));  // any bits, a NaN payload included
  std::vector<bfloat16> back(1001);
  bf->copy_to_host(back.data(), buf, back.size());
  for (bfloat16 v : back) ASSERT_EQ(v.bits, 0x7fc1);
  bf->deallocate(buf);
  bf->deallocate_ints(ints);
  bf->deallocate_bytes(bytes);
  EXPECT_EQ(bf->allocate(0), nullptr);
}

// Without a GPU's fused kernels the reference takes the float backend's answer, shape by shape.
TEST_F(Bf16Backend, FusedAttentionSupportIsTheFloatBackends) {
  for (auto [b, s, h, d, p] : {std::tuple{2, 13, 3, 8, 0.1f}, std::tuple{0, 4, 1, 8, 0.0f},
                               std::tuple{2, 0, 1, 8, 0.0f}, std::tuple{2, 4, 1, 8, 1.0f}}) {
    EXPECT_EQ(bf->fused_attention_supported(b, s, h, d, p), fp->fused_attention_supported(b, s, h, d, p));
  }
}

TEST_F(Bf16Backend, NoOptimizerAndBadStridesAreRefused) {
  Dev<bfloat16> p(*bf, 4, bfloat16(1.0f));
  const auto expect_wide_hint = [](const std::function<void()>& call) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("wide()"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cpu-bf16"), std::string::npos) << e.what();
    }
  };
  expect_wide_hint(
      [&] { bf->adamw_step(p.get(), p.get(), p.get(), p.get(), 4, 1e-3f, 0.9f, 0.999f, 1e-6f, 0.01f, 1, 1.0f, true); });
  const Backend<bfloat16>::AdamWRun run{0, 4, 0.01f};
  expect_wide_hint([&] {
    bf->adamw_step_runs(p.get(), p.get(), p.get(), p.get(), &run, 1, 1e-3f, 0.9f, 0.999f, 1e-6f, 1, 1.0f, true);
  });
  EXPECT_THROW(bf->gemm_strided_batched(Transpose::kNo, Transpose::kNo, 1, 1, 1, 1.0f, p.get(), 1, -1, p.get(), 1, 0,
                                        0.0f, p.get(), 1, 1, 2),
               Error);
}

// Errors of invalid arguments are the float kernels', word for word.
TEST_F(Bf16Backend, ValidationErrorsAreTheFloatBackends) {
  const auto message = [](const std::function<void()>& call) -> std::string {
    try {
      call();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  const int B = 2, S = 3, E = 4, V = 5;
  Dev<bfloat16> tb(*bf, V * E, bfloat16(0.5f)), outb(*bf, B * S * E, bfloat16(0.0f));
  Dev<float> tf(*fp, V * E, 0.5f), outf(*fp, B * S * E, 0.0f), dtab(*fp, V * E, 0.0f);
  std::vector<int32_t> ids = {0, 1, -3, 2, 4, 1};
  const std::string embedding = message(
      [&] { bf->embedding_forward(outb.get(), ids.data(), nullptr, nullptr, tb.get(), nullptr, nullptr, B, S, E); });
  EXPECT_EQ(embedding, message([&] {
              fp->embedding_forward(outf.get(), ids.data(), nullptr, nullptr, tf.get(), nullptr, nullptr, B, S, E);
            }));
  EXPECT_NE(embedding.find("is negative"), std::string::npos) << embedding;
  EXPECT_EQ(message([&] {
              bf->embedding_backward(dtab.get(), nullptr, nullptr, outb.get(), ids.data(), nullptr, nullptr, B, S, E);
            }),
            message([&] {
              fp->embedding_backward(dtab.get(), nullptr, nullptr, outf.get(), ids.data(), nullptr, nullptr, B, S, E);
            }));
  const std::vector<int32_t> labels = {0, V};
  const std::string ce =
      message([&] { bf->softmax_cross_entropy(nullptr, nullptr, nullptr, tb.get(), labels.data(), nullptr, 2, V); });
  EXPECT_EQ(ce, message([&] {
              fp->softmax_cross_entropy(nullptr, nullptr, nullptr, tf.get(), labels.data(), nullptr, 2, V);
            }));
  EXPECT_NE(ce, "no error");
  const std::vector<int32_t> positions = {0, S};
  EXPECT_EQ(message([&] { bf->gather_rows(outb.get(), tb.get(), positions.data(), 1, S, 2, E); }),
            message([&] { fp->gather_rows(outf.get(), tf.get(), positions.data(), 1, S, 2, E); }));
  EXPECT_EQ(message([&] { bf->linear_forward(outb.get(), tb.get(), tb.get(), nullptr, -1, 2, 2); }),
            message([&] { fp->linear_forward(outf.get(), tf.get(), tf.get(), nullptr, -1, 2, 2); }));
  EXPECT_EQ(message([&] {
              bf->gemm(Transpose::kNo, Transpose::kNo, 2, 2, 3, 1.0f, tb.get(), 2, tb.get(), 2, 0.0f, outb.get(), 2);
            }),
            message([&] {
              fp->gemm(Transpose::kNo, Transpose::kNo, 2, 2, 3, 1.0f, tf.get(), 2, tf.get(), 2, 0.0f, outf.get(), 2);
            }));
  EXPECT_EQ(message([&] { bf->dropout_forward(outb.get(), nullptr, tb.get(), 4, 1.5f, DropoutKey{}); }),
            message([&] { fp->dropout_forward(outf.get(), nullptr, tf.get(), 4, 1.5f, DropoutKey{}); }));
}

// The conversions are elementwise and the float kernels thread-count independent: so is the whole backend.
TEST_F(Bf16Backend, SameBitsForAnyThreadCount) {
  const int rows = 300, in = 96, out = 128;
  const auto x = random_bf16(rows * in, 1), w = random_bf16(out * in, 2), g = random_bf16(out, 3, 0.5, 1.5);
  const auto labels = random_ints(rows, 4, 0, out);
  Dev<bfloat16> xb(*bf, x.narrow), wb(*bf, w.narrow), gb(*bf, g.narrow);
  const int saved_threads = omp_get_max_threads();
  std::vector<bfloat16> first_y;
  std::vector<float> first_loss, first_dw;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    Dev<bfloat16> y(*bf, rows * out, bfloat16(0.0f)), yn(*bf, rows * out, bfloat16(0.0f)),
        dy(*bf, rows * out, bfloat16(0.0f));
    Dev<float> mean(*fp, rows, 0.0f), rstd(*fp, rows, 0.0f), loss(*fp, rows, 0.0f), dw(*fp, out * in, 0.0f);
    bf->linear_forward(y.get(), xb.get(), wb.get(), gb.get(), rows, in, out);
    bf->layernorm_forward(yn.get(), mean.get(), rstd.get(), y.get(), gb.get(), gb.get(), rows, out, 1e-5f);
    bf->softmax_cross_entropy(loss.get(), dy.get(), nullptr, yn.get(), labels.data(), nullptr, rows, out);
    bf->linear_backward(nullptr, dw.get(), nullptr, dy.get(), xb.get(), wb.get(), rows, in, out);
    if (threads == 1) {
      first_y = yn.host();
      first_loss = loss.host();
      first_dw = dw.host();
    } else {
      const auto y_now = yn.host();
      EXPECT_EQ(std::memcmp(y_now.data(), first_y.data(), y_now.size() * sizeof(bfloat16)), 0) << threads;
      EXPECT_TRUE(bits_equal(loss.host(), first_loss)) << threads;
      EXPECT_TRUE(bits_equal(dw.host(), first_dw)) << threads;
    }
  }
  omp_set_num_threads(saved_threads);
}

// The model's parallel chunks call one backend from several OpenMP threads at once (each thread's ops then
// single-threaded): the float scratch must not be shared between threads.
TEST_F(Bf16Backend, ConcurrentCallsFromSeveralThreads) {
  constexpr int kThreads = 2;
  const int rows = 200, in = 64, out = 96;
  const auto w = random_bf16(out * in, 1), bias = random_bf16(out, 2);
  Dev<bfloat16> wb(*bf, w.narrow), biasb(*bf, bias.narrow);
  std::vector<Bf16Values> inputs;
  for (int t = 0; t < kThreads; ++t) inputs.push_back(random_bf16(rows * in, 10 + t, -2.0, 2.0));
  std::vector<std::vector<bfloat16>> sequential;
  for (int t = 0; t < kThreads; ++t) {
    Dev<bfloat16> x(*bf, inputs[t].narrow), y(*bf, rows * out, bfloat16(0.0f));
    bf->linear_forward(y.get(), x.get(), wb.get(), biasb.get(), rows, in, out);
    bf->activation_forward(Activation::kGelu, y.get(), y.get(), static_cast<size_t>(rows) * out);
    sequential.push_back(y.host());
  }
  std::vector<int> mismatches(kThreads, 0);
#pragma omp parallel for num_threads(kThreads) schedule(static, 1)
  for (int t = 0; t < kThreads; ++t) {
    omp_set_num_threads(1);
    for (int repeat = 0; repeat < 200; ++repeat) {
      Dev<bfloat16> x(*bf, inputs[t].narrow), y(*bf, rows * out, bfloat16(0.0f));
      bf->linear_forward(y.get(), x.get(), wb.get(), biasb.get(), rows, in, out);
      bf->activation_forward(Activation::kGelu, y.get(), y.get(), static_cast<size_t>(rows) * out);
      const auto result = y.host();
      if (std::memcmp(result.data(), sequential[t].data(), result.size() * sizeof(bfloat16)) != 0) ++mismatches[t];
    }
  }
  EXPECT_EQ(mismatches, std::vector<int>(kThreads, 0));
}

// ---- bf16 vs fp32: the reference stays close to fp32 on arbitrary inputs ----

// rel 1e-2 of each element, plus 1e-2 of the largest magnitude (cancellation makes small elements noisy).
::testing::AssertionResult within_bf16_tolerance(const std::vector<float>& actual, const std::vector<float>& fp32) {
  const auto expected = to_double(fp32);
  return all_near(actual, expected, 1e-2, 1e-2 * max_abs(expected));
}
std::vector<bfloat16> rounded(const std::vector<float>& x) {
  std::vector<bfloat16> out(x.size());
  narrow_to_bfloat16(out.data(), x.data(), x.size());
  return out;
}

TEST_F(Bf16Backend, ToleranceLinearLayerNormSoftmaxAgainstFp32) {
  const int rows = 64, in = 256, out = 96;
  const auto x = random_floats(rows * in, 1, -2.0, 2.0), w = random_floats(out * in, 2, -0.2, 0.2);
  const auto bias = random_floats(out, 3);
  Dev<bfloat16> xb(*bf, rounded(x)), wb(*bf, rounded(w)), biasb(*bf, rounded(bias));
  Dev<float> xf(*fp, x), wf(*fp, w), biasf(*fp, bias);
  auto yb = bf_out(rows * out);
  auto yf = fp_out(rows * out);
  bf->linear_forward(yb.get(), xb.get(), wb.get(), biasb.get(), rows, in, out);
  fp->linear_forward(yf.get(), xf.get(), wf.get(), biasf.get(), rows, in, out);
  const auto y32 = yf.host();
  EXPECT_TRUE(within_bf16_tolerance(widened(yb.host()), y32));

  const auto gamma = random_floats(out, 4, 0.5, 1.5), beta = random_floats(out, 5);
  Dev<bfloat16> gb(*bf, rounded(gamma)), bb(*bf, rounded(beta)), y_in(*bf, rounded(y32));
  Dev<float> gf(*fp, gamma), bff(*fp, beta);
  auto nb = bf_out(rows * out);
  auto nf = fp_out(rows * out);
  Dev<float> mean_b(*fp, rows, 0.0f), rstd_b(*fp, rows, 0.0f), mean_f(*fp, rows, 0.0f), rstd_f(*fp, rows, 0.0f);
  bf->layernorm_forward(nb.get(), mean_b.get(), rstd_b.get(), y_in.get(), gb.get(), bb.get(), rows, out, 1e-12f);
  fp->layernorm_forward(nf.get(), mean_f.get(), rstd_f.get(), yf.get(), gf.get(), bff.get(), rows, out, 1e-12f);
  const auto n32 = nf.host();
  EXPECT_TRUE(within_bf16_tolerance(widened(nb.host()), n32));
  EXPECT_TRUE(within_bf16_tolerance(rstd_b.host(), rstd_f.host()));

  const auto labels = random_ints(rows, 6, 0, out);
  Dev<bfloat16> logits_b(*bf, rounded(n32));
  auto db = bf_out(rows * out);
  auto df = fp_out(rows * out);
  Dev<float> loss_b(*fp, rows, 0.0f), loss_f(*fp, rows, 0.0f);
  bf->softmax_cross_entropy(loss_b.get(), db.get(), nullptr, logits_b.get(), labels.data(), nullptr, rows, out);
  fp->softmax_cross_entropy(loss_f.get(), df.get(), nullptr, nf.get(), labels.data(), nullptr, rows, out);
  EXPECT_TRUE(within_bf16_tolerance(loss_b.host(), loss_f.host()));
  EXPECT_TRUE(within_bf16_tolerance(widened(db.host()), df.host()));
}

}  // namespace
}  // namespace electra::test
