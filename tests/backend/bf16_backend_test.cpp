// The bfloat16 type's conversions, and the CPU Backend<bfloat16> (make_cpu_bf16_backend): every op must give
// bitwise the float CPU backend's result on the widened inputs, its bfloat16 outputs rounded to nearest-even
// and its float (W) outputs unchanged; and on arbitrary float inputs it must stay within bf16 tolerance of
// the float ops.
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

// actual == expected rounded to bfloat16, bit for bit.
::testing::AssertionResult narrowed_equal(const std::vector<bfloat16>& actual, const std::vector<float>& expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (actual[i].bits != bfloat16(expected[i]).bits && mismatches++ == 0) first = i;
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << mismatches << " of " << actual.size() << " differ; element " << first << ": "
                                       << static_cast<float>(actual[first]) << " (bits 0x" << std::hex
                                       << actual[first].bits << ") expected " << std::dec << expected[first]
                                       << " rounded (bits 0x" << std::hex << bfloat16(expected[first]).bits << ")";
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
class Dev {
 public:
  Dev(Backend<E>& be, const std::vector<E>& host) : be_(be), n_(host.size()), p_(be.allocate(n_)) {
    be_.copy_from_host(p_, host.data(), n_);
  }
  Dev(Backend<E>& be, size_t n, E value) : Dev(be, std::vector<E>(n, value)) {}
  ~Dev() { be_.deallocate(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  E* get() { return p_; }
  std::vector<E> host() const {
    std::vector<E> out(n_);
    be_.copy_to_host(out.data(), p_, n_);
    return out;
  }

 private:
  Backend<E>& be_;
  size_t n_;
  E* p_;
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

TEST_F(Bf16Backend, MemoryCopiesAndFill) {
  bfloat16* buf = bf->allocate(1001);
  int32_t* ints = bf->allocate_ints(13);
  uint8_t* bytes = bf->allocate_bytes(7);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ints) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes) % 64, 0u);
  const auto src = random_bf16(1001, 1).narrow;
  bf->copy_from_host(buf, src.data(), src.size());
  std::vector<bfloat16> back(1001);
  bf->copy_to_host(back.data(), buf, back.size());
  EXPECT_EQ(std::memcmp(back.data(), src.data(), src.size() * sizeof(bfloat16)), 0);
  bfloat16* other = bf->allocate(1001);
  bf->copy(other, buf, 1001);
  bf->copy_to_host(back.data(), other, back.size());
  EXPECT_EQ(std::memcmp(back.data(), src.data(), src.size() * sizeof(bfloat16)), 0);
  bf->fill(other, 1001, bfloat16::from_bits(0x7fc1));  // any bits, a NaN payload included
  bf->copy_to_host(back.data(), other, back.size());
  for (bfloat16 v : back) ASSERT_EQ(v.bits, 0x7fc1);
  const std::vector<int32_t> is = {1, -2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  std::vector<int32_t> is_back(13);
  bf->copy_ints_from_host(ints, is.data(), 13);
  bf->copy_ints_to_host(is_back.data(), ints, 13);
  EXPECT_EQ(is, is_back);
  bf->synchronize();
  bf->deallocate(buf);
  bf->deallocate(other);
  bf->deallocate_ints(ints);
  bf->deallocate_bytes(bytes);
  EXPECT_EQ(bf->allocate(0), nullptr);
}

TEST_F(Bf16Backend, WidenIsExactAndNarrowRoundsToNearestEven) {
  const size_t n = 100003;  // above the parallel threshold, odd tail
  auto values = random_floats(n, 2, -300.0, 300.0);
  values[0] = std::numeric_limits<float>::quiet_NaN();
  values[1] = std::numeric_limits<float>::infinity();
  values[2] = bits_float(0x3f808000u);  // a tie
  values[3] = std::numeric_limits<float>::max();
  Dev<float> src(*fp, values);
  Dev<bfloat16> narrow = bf_out(n);
  bf->narrow(narrow.get(), src.get(), n);
  const auto narrowed = narrow.host();
  EXPECT_TRUE(std::isnan(static_cast<float>(narrowed[0])));
  EXPECT_TRUE(narrowed_equal({narrowed.begin() + 1, narrowed.end()}, {values.begin() + 1, values.end()}));
  Dev<float> wide = fp_out(n);
  bf->widen(wide.get(), narrow.get(), n);
  EXPECT_TRUE(bits_equal(wide.host(), widened(narrowed)));
}

TEST_F(Bf16Backend, GemmAllTransposesLeadingDimensionsAndBeta) {
  for (auto [m, n, k] : {std::tuple{7, 9, 11}, std::tuple{70, 90, 400}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (float beta : {0.0f, -0.5f}) {
          const int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
          const auto a = random_bf16(static_cast<size_t>(ta ? k : m) * lda, 1);
          const auto b = random_bf16(static_cast<size_t>(tb ? n : k) * ldb, 2);
          auto c = random_bf16(static_cast<size_t>(m) * ldc, 3);
          if (beta == 0.0f) {  // C is not read: garbage (NaN) must not matter
            for (auto& v : c.narrow) v = bfloat16::from_bits(0x7fc0);
            for (auto& v : c.wide) v = std::numeric_limits<float>::quiet_NaN();
          }
          Dev<bfloat16> ab(*bf, a.narrow), bb(*bf, b.narrow), cb(*bf, c.narrow);
          Dev<float> af(*fp, a.wide), bff(*fp, b.wide), cf(*fp, c.wide);
          const Transpose tra = ta ? Transpose::kYes : Transpose::kNo, trb = tb ? Transpose::kYes : Transpose::kNo;
          bf->gemm(tra, trb, m, n, k, 0.75f, ab.get(), lda, bb.get(), ldb, beta, cb.get(), ldc);
          fp->gemm(tra, trb, m, n, k, 0.75f, af.get(), lda, bff.get(), ldb, beta, cf.get(), ldc);
          const auto cb_host = cb.host();
          auto expected = cf.host();
          // The gaps between rows are not the op's: they keep their bits (NaN payloads included).
          for (int r = 0; r < m; ++r) {
            for (int j = n; j < ldc && static_cast<size_t>(r) * ldc + j < expected.size(); ++j) {
              const size_t i = static_cast<size_t>(r) * ldc + j;
              ASSERT_EQ(cb_host[i].bits, c.narrow[i].bits) << "gap element " << i;
              expected[i] = static_cast<float>(cb_host[i]);
            }
          }
          EXPECT_TRUE(narrowed_equal(cb_host, expected))
              << "ta=" << ta << " tb=" << tb << " m=" << m << " beta " << beta;
        }
      }
    }
  }
}

TEST_F(Bf16Backend, GemmStridedBatched) {
  struct Shape {
    int m, n, k, batch;
    bool packed;     // C without gaps (one contiguous narrow)
    bool broadcast;  // one A for every batch (stride 0)
  };
  for (const Shape& sh : {Shape{6, 4, 7, 5, false, false}, Shape{33, 17, 20, 3, true, false},
                          Shape{70, 50, 40, 2, false, false}, Shape{9, 8, 5, 4, true, true}}) {
    const int m = sh.m, n = sh.n, k = sh.k, batch = sh.batch;
    const int lda = m, ldb = k, ldc = n;  // A and B transposed: stored [k, m] and [n, k]
    const long long sa = sh.broadcast ? 0 : static_cast<long long>(k) * lda + 7,
                    sb = static_cast<long long>(n) * ldb + 3,
                    sc = static_cast<long long>(m) * ldc + (sh.packed ? 0 : 1);
    const auto a = random_bf16(sh.broadcast ? k * lda : sa * batch, 4), b = random_bf16(sb * batch, 5);
    const auto c = random_bf16(sc * batch, 6);
    Dev<bfloat16> ab(*bf, a.narrow), bb(*bf, b.narrow), cb(*bf, c.narrow);
    Dev<float> af(*fp, a.wide), bff(*fp, b.wide), cf(*fp, c.wide);
    bf->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, 1.5f, ab.get(), lda, sa, bb.get(), ldb, sb,
                             0.25f, cb.get(), ldc, sc, batch);
    fp->gemm_strided_batched(Transpose::kYes, Transpose::kYes, m, n, k, 1.5f, af.get(), lda, sa, bff.get(), ldb, sb,
                             0.25f, cf.get(), ldc, sc, batch);
    EXPECT_TRUE(narrowed_equal(cb.host(), cf.host())) << "m " << m;  // the gaps widen and narrow exactly
  }
  Dev<bfloat16> x(*bf, 4, bfloat16(1.0f));
  EXPECT_THROW(bf->gemm_strided_batched(Transpose::kNo, Transpose::kNo, 1, 1, 1, 1.0f, x.get(), 1, -1, x.get(), 1, 0,
                                        0.0f, x.get(), 1, 1, 2),
               Error);
}

TEST_F(Bf16Backend, LinearForwardAndBackwardAccumulateInFloat) {
  const int rows = 37, in = 19, out = 70;
  const auto x = random_bf16(rows * in, 1), w = random_bf16(out * in, 2), bias = random_bf16(out, 3);
  const auto dy = random_bf16(rows * out, 4);
  const auto dw0 = random_floats(out * in, 5), db0 = random_floats(out, 6);  // float gradients, not bf16 values
  Dev<bfloat16> xb(*bf, x.narrow), wb(*bf, w.narrow), biasb(*bf, bias.narrow), dyb(*bf, dy.narrow);
  Dev<float> xf(*fp, x.wide), wf(*fp, w.wide), biasf(*fp, bias.wide), dyf(*fp, dy.wide);
  for (bool with_bias : {true, false}) {
    auto yb = bf_out(rows * out);
    auto yf = fp_out(rows * out);
    bf->linear_forward(yb.get(), xb.get(), wb.get(), with_bias ? biasb.get() : nullptr, rows, in, out);
    fp->linear_forward(yf.get(), xf.get(), wf.get(), with_bias ? biasf.get() : nullptr, rows, in, out);
    EXPECT_TRUE(narrowed_equal(yb.host(), yf.host())) << "bias " << with_bias;
  }
  for (bool skip : {false, true}) {  // null dx and dbias are skipped; dW still accumulates
    auto dxb = bf_out(rows * in);
    auto dxf = fp_out(rows * in);
    Dev<float> dwb(*fp, dw0), dbb(*fp, db0), dwf(*fp, dw0), dbf(*fp, db0);
    bf->linear_backward(skip ? nullptr : dxb.get(), dwb.get(), skip ? nullptr : dbb.get(), dyb.get(), xb.get(),
                        wb.get(), rows, in, out);
    fp->linear_backward(skip ? nullptr : dxf.get(), dwf.get(), skip ? nullptr : dbf.get(), dyf.get(), xf.get(),
                        wf.get(), rows, in, out);
    EXPECT_TRUE(bits_equal(dwb.host(), dwf.host()));
    EXPECT_FALSE(bits_equal(dwb.host(), dw0));
    EXPECT_TRUE(bits_equal(dbb.host(), dbf.host()));
    if (skip) {
      EXPECT_TRUE(bits_equal(dbb.host(), db0));
      for (bfloat16 v : dxb.host()) ASSERT_EQ(v.bits, kUnwrittenBf16.bits);
    } else {
      EXPECT_TRUE(narrowed_equal(dxb.host(), dxf.host()));
    }
  }
}

TEST_F(Bf16Backend, Activations) {
  const size_t n = 70001;
  const auto x = random_bf16(n, 1, -6.0, 6.0), dy = random_bf16(n, 2);
  Dev<bfloat16> xb(*bf, x.narrow), dyb(*bf, dy.narrow);
  Dev<float> xf(*fp, x.wide), dyf(*fp, dy.wide);
  for (Activation act : {Activation::kNone, Activation::kGelu, Activation::kRelu, Activation::kTanh}) {
    auto yb = bf_out(n), dxb = bf_out(n);
    auto yf = fp_out(n), dxf = fp_out(n);
    bf->activation_forward(act, yb.get(), xb.get(), n);
    fp->activation_forward(act, yf.get(), xf.get(), n);
    bf->activation_backward(act, dxb.get(), dyb.get(), xb.get(), n);
    fp->activation_backward(act, dxf.get(), dyf.get(), xf.get(), n);
    EXPECT_TRUE(narrowed_equal(yb.host(), yf.host())) << to_string(act);
    EXPECT_TRUE(narrowed_equal(dxb.host(), dxf.host())) << to_string(act);
  }
}

TEST_F(Bf16Backend, AddWithAliasingAccumulateAndScale) {
  const size_t n = 70001;
  const auto a = random_bf16(n, 1), b = random_bf16(n, 2);
  std::vector<float> sum(n);
  fp->add(sum.data(), a.wide.data(), b.wide.data(), n);
  {
    auto out = bf_out(n);
    Dev<bfloat16> ab(*bf, a.narrow), bb(*bf, b.narrow);
    bf->add(out.get(), ab.get(), bb.get(), n);
    EXPECT_TRUE(narrowed_equal(out.host(), sum));
    bf->add(ab.get(), ab.get(), bb.get(), n);  // out aliases a
    EXPECT_TRUE(narrowed_equal(ab.host(), sum));
  }
  {
    Dev<bfloat16> ab(*bf, a.narrow), bb(*bf, b.narrow);
    bf->add(bb.get(), ab.get(), bb.get(), n);  // out aliases b
    EXPECT_TRUE(narrowed_equal(bb.host(), sum));
  }
  {
    // accumulate: the old value widened, added in float, rounded once.
    Dev<bfloat16> yb(*bf, a.narrow), xb(*bf, b.narrow);
    Dev<float> yf(*fp, a.wide), xf(*fp, b.wide);
    bf->accumulate(yb.get(), xb.get(), n);
    fp->accumulate(yf.get(), xf.get(), n);
    EXPECT_TRUE(narrowed_equal(yb.host(), yf.host()));
  }
  {
    Dev<bfloat16> xb(*bf, a.narrow);
    Dev<float> xf(*fp, a.wide);
    bf->scale(xb.get(), n, 0.3f);  // a float alpha that bfloat16 cannot hold
    fp->scale(xf.get(), n, 0.3f);
    EXPECT_TRUE(narrowed_equal(xb.host(), xf.host()));
  }
}

TEST_F(Bf16Backend, DropoutSameKeepBits) {
  const size_t n = 50001;
  const auto x = random_bf16(n, 1), dy = random_bf16(n, 2);
  const DropoutKey key{99, 4, 3, 10, 1000};
  for (float p : {0.0f, 0.1f}) {
    Dev<bfloat16> xb(*bf, x.narrow), dyb(*bf, dy.narrow);
    Dev<float> xf(*fp, x.wide), dyf(*fp, dy.wide);
    auto yb = bf_out(n), dxb = bf_out(n);
    auto yf = fp_out(n), dxf = fp_out(n);
    std::vector<uint8_t> keep_b(n, 7), keep_f(n, 9);
    bf->dropout_forward(yb.get(), keep_b.data(), xb.get(), n, p, key);
    fp->dropout_forward(yf.get(), keep_f.data(), xf.get(), n, p, key);
    EXPECT_EQ(keep_b, keep_f) << "p " << p;
    EXPECT_TRUE(narrowed_equal(yb.host(), yf.host())) << "p " << p;
    bf->dropout_backward(dxb.get(), dyb.get(), keep_b.data(), n, p);
    fp->dropout_backward(dxf.get(), dyf.get(), keep_f.data(), n, p);
    EXPECT_TRUE(narrowed_equal(dxb.host(), dxf.host())) << "p " << p;
    // In place (the kernel allows y == x).
    std::vector<uint8_t> keep_in_place(n);
    bf->dropout_forward(xb.get(), keep_in_place.data(), xb.get(), n, p, key);
    EXPECT_TRUE(narrowed_equal(xb.host(), yf.host())) << "p " << p;
  }
}

TEST_F(Bf16Backend, LayerNormStatisticsAndGradientsStayFloat) {
  const int rows = 67, cols = 130;
  const auto x = random_bf16(rows * cols, 1, -3.0, 3.0), gamma = random_bf16(cols, 2, 0.5, 1.5);
  const auto beta = random_bf16(cols, 3), dy = random_bf16(rows * cols, 4);
  const auto dgamma0 = random_floats(cols, 5), dbeta0 = random_floats(cols, 6);
  Dev<bfloat16> xb(*bf, x.narrow), gb(*bf, gamma.narrow), bb(*bf, beta.narrow), dyb(*bf, dy.narrow);
  Dev<float> xf(*fp, x.wide), gf(*fp, gamma.wide), bff(*fp, beta.wide), dyf(*fp, dy.wide);
  auto yb = bf_out(rows * cols);
  auto yf = fp_out(rows * cols);
  Dev<float> mean_b(*fp, rows, 0.0f), rstd_b(*fp, rows, 0.0f), mean_f(*fp, rows, 1.0f), rstd_f(*fp, rows, 1.0f);
  bf->layernorm_forward(yb.get(), mean_b.get(), rstd_b.get(), xb.get(), gb.get(), bb.get(), rows, cols, 1e-12f);
  fp->layernorm_forward(yf.get(), mean_f.get(), rstd_f.get(), xf.get(), gf.get(), bff.get(), rows, cols, 1e-12f);
  EXPECT_TRUE(narrowed_equal(yb.host(), yf.host()));
  EXPECT_TRUE(bits_equal(mean_b.host(), mean_f.host()));
  EXPECT_TRUE(bits_equal(rstd_b.host(), rstd_f.host()));
  for (bool with_dx : {true, false}) {
    auto dxb = bf_out(rows * cols);
    auto dxf = fp_out(rows * cols);
    Dev<float> dgb(*fp, dgamma0), dbb(*fp, dbeta0), dgf(*fp, dgamma0), dbf(*fp, dbeta0);
    bf->layernorm_backward(with_dx ? dxb.get() : nullptr, dgb.get(), dbb.get(), dyb.get(), xb.get(), mean_b.get(),
                           rstd_b.get(), gb.get(), rows, cols);
    fp->layernorm_backward(with_dx ? dxf.get() : nullptr, dgf.get(), dbf.get(), dyf.get(), xf.get(), mean_f.get(),
                           rstd_f.get(), gf.get(), rows, cols);
    EXPECT_TRUE(bits_equal(dgb.host(), dgf.host()));
    EXPECT_TRUE(bits_equal(dbb.host(), dbf.host()));
    EXPECT_FALSE(bits_equal(dgb.host(), dgamma0));
    if (with_dx) {
      EXPECT_TRUE(narrowed_equal(dxb.host(), dxf.host()));
    }
  }
}

TEST_F(Bf16Backend, EmbeddingsGatherAndScatter) {
  const int B = 3, S = 11, E = 40, V = 50, P = 4;
  const auto ids = random_ints(B * S, 1, 0, V), type_ids = random_ints(B * S, 2, 0, 2);
  const auto word = random_bf16(V * E, 3), position = random_bf16(S * E, 4), type = random_bf16(2 * E, 5);
  Dev<bfloat16> wordb(*bf, word.narrow), posb(*bf, position.narrow), typeb(*bf, type.narrow);
  Dev<float> wordf(*fp, word.wide), posf(*fp, position.wide), typef(*fp, type.wide);
  // All terms, no type ids (type 0), no position table, no type table.
  for (int variant = 0; variant < 4; ++variant) {
    auto outb = bf_out(B * S * E);
    auto outf = fp_out(B * S * E);
    const int32_t* tids = variant == 1 ? nullptr : type_ids.data();
    bf->embedding_forward(outb.get(), ids.data(), tids, wordb.get(), variant == 2 ? nullptr : posb.get(),
                          variant == 3 ? nullptr : typeb.get(), B, S, E);
    fp->embedding_forward(outf.get(), ids.data(), tids, wordf.get(), variant == 2 ? nullptr : posf.get(),
                          variant == 3 ? nullptr : typef.get(), B, S, E);
    EXPECT_TRUE(narrowed_equal(outb.host(), outf.host())) << "variant " << variant;
  }
  const auto dout = random_bf16(B * S * E, 6);
  const auto dword0 = random_floats(V * E, 7), dpos0 = random_floats(S * E, 8), dtype0 = random_floats(2 * E, 9);
  Dev<bfloat16> doutb(*bf, dout.narrow);
  Dev<float> doutf(*fp, dout.wide);
  Dev<float> dwb(*fp, dword0), dpb(*fp, dpos0), dtb(*fp, dtype0), dwf(*fp, dword0), dpf(*fp, dpos0), dtf(*fp, dtype0);
  bf->embedding_backward(dwb.get(), dpb.get(), dtb.get(), doutb.get(), ids.data(), type_ids.data(), B, S, E);
  fp->embedding_backward(dwf.get(), dpf.get(), dtf.get(), doutf.get(), ids.data(), type_ids.data(), B, S, E);
  EXPECT_TRUE(bits_equal(dwb.host(), dwf.host()));
  EXPECT_TRUE(bits_equal(dpb.host(), dpf.host()));
  EXPECT_TRUE(bits_equal(dtb.host(), dtf.host()));
  EXPECT_FALSE(bits_equal(dwb.host(), dword0));
  bf->embedding_backward(nullptr, nullptr, dtb.get(), doutb.get(), ids.data(), type_ids.data(), B, S, E);
  fp->embedding_backward(nullptr, nullptr, dtf.get(), doutf.get(), ids.data(), type_ids.data(), B, S, E);
  EXPECT_TRUE(bits_equal(dtb.host(), dtf.host()));

  // Rows gathered and scatter-added back (duplicate positions add up).
  std::vector<int32_t> positions = random_ints(B * P, 10, 0, S);
  positions[1] = positions[0];
  const auto x = random_bf16(B * S * E, 11), g = random_bf16(B * P * E, 12);
  Dev<bfloat16> xb(*bf, x.narrow), gb(*bf, g.narrow);
  Dev<float> xf(*fp, x.wide), gf(*fp, g.wide);
  auto gathered_b = bf_out(B * P * E);
  auto gathered_f = fp_out(B * P * E);
  bf->gather_rows(gathered_b.get(), xb.get(), positions.data(), B, S, P, E);
  fp->gather_rows(gathered_f.get(), xf.get(), positions.data(), B, S, P, E);
  EXPECT_TRUE(narrowed_equal(gathered_b.host(), gathered_f.host()));
  bf->scatter_add_rows(xb.get(), gb.get(), positions.data(), B, S, P, E);
  fp->scatter_add_rows(xf.get(), gf.get(), positions.data(), B, S, P, E);
  EXPECT_TRUE(narrowed_equal(xb.host(), xf.host()));
  EXPECT_FALSE(narrowed_equal(xb.host(), x.wide));
}

// Padding keys in example 0, a hole in example 1.
std::vector<int32_t> attention_mask(int B, int S) {
  std::vector<int32_t> mask(static_cast<size_t>(B) * S, 1);
  for (int s = S - 3; s < S; ++s) mask[s] = 0;
  if (B > 1) mask[S + 2] = 0;
  return mask;
}

TEST_F(Bf16Backend, MaterialisedAttentionWithDropout) {
  const int B = 2, S = 13, H = 3, D = 8;
  const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = static_cast<size_t>(B) * S * H * D,
               nprobs = static_cast<size_t>(B) * H * S * S;
  const auto qkv = random_bf16(nqkv, 1, -2.0, 2.0), dctx = random_bf16(nctx, 2);
  const auto mask = attention_mask(B, S);
  const DropoutKey key{5, 6, 7, 20, static_cast<uint64_t>(H) * S * S};
  for (float p : {0.0f, 0.2f}) {
    Dev<bfloat16> qkvb(*bf, qkv.narrow), dctxb(*bf, dctx.narrow);
    auto ctxb = bf_out(nctx), probsb = bf_out(nprobs), dqkvb = bf_out(nqkv), scratchb = bf_out(nprobs);
    std::vector<uint8_t> keep_b(nprobs, 3), keep_f(nprobs, 4);
    bf->attention_forward(ctxb.get(), probsb.get(), keep_b.data(), qkvb.get(), mask.data(), B, S, H, D, p, key);
    Dev<float> qkvf(*fp, qkv.wide), dctxf(*fp, dctx.wide);
    auto ctxf = fp_out(nctx), probsf = fp_out(nprobs);
    fp->attention_forward(ctxf.get(), probsf.get(), keep_f.data(), qkvf.get(), mask.data(), B, S, H, D, p, key);
    EXPECT_EQ(keep_b, keep_f);
    EXPECT_TRUE(narrowed_equal(ctxb.host(), ctxf.host())) << "p " << p;
    const auto probs_narrow = probsb.host();
    EXPECT_TRUE(narrowed_equal(probs_narrow, probsf.host())) << "p " << p;
    // Backward reads the saved bf16 probabilities: the float op on their widening.
    bf->attention_backward(dqkvb.get(), scratchb.get(), dctxb.get(), qkvb.get(), probsb.get(), keep_b.data(),
                           mask.data(), B, S, H, D, p);
    Dev<float> probs_w(*fp, widened(probs_narrow));
    auto dqkvf = fp_out(nqkv), scratchf = fp_out(nprobs);
    fp->attention_backward(dqkvf.get(), scratchf.get(), dctxf.get(), qkvf.get(), probs_w.get(), keep_f.data(),
                           mask.data(), B, S, H, D, p);
    EXPECT_TRUE(narrowed_equal(dqkvb.host(), dqkvf.host())) << "p " << p;
  }
}

TEST_F(Bf16Backend, FusedAttentionWithDropoutStatsStayFloat) {
  const int B = 2, S = 13, H = 3, D = 8;
  const size_t nqkv = static_cast<size_t>(B) * S * 3 * H * D, nctx = static_cast<size_t>(B) * S * H * D,
               nstats = static_cast<size_t>(B) * H * S;
  for (auto [b, s, h, d, p] : {std::tuple{B, S, H, D, 0.1f}, std::tuple{0, 4, 1, 8, 0.0f}, std::tuple{2, 0, 1, 8, 0.0f},
                               std::tuple{2, 4, 1, 8, 1.0f}}) {
    EXPECT_EQ(bf->fused_attention_supported(b, s, h, d, p), fp->fused_attention_supported(b, s, h, d, p));
  }
  const auto qkv = random_bf16(nqkv, 1, -2.0, 2.0), dctx = random_bf16(nctx, 2);
  const auto mask = attention_mask(B, S);
  const DropoutKey key{5, 6, 7, 20, static_cast<uint64_t>(H) * S * S};
  for (float p : {0.0f, 0.2f}) {
    Dev<bfloat16> qkvb(*bf, qkv.narrow), dctxb(*bf, dctx.narrow);
    Dev<float> qkvf(*fp, qkv.wide), dctxf(*fp, dctx.wide);
    auto ctxb = bf_out(nctx), dqkvb = bf_out(nqkv);
    auto ctxf = fp_out(nctx), dqkvf = fp_out(nqkv);
    Dev<float> stats_b(*fp, nstats, 1.0f), stats_f(*fp, nstats, 2.0f);
    bf->fused_attention_forward(ctxb.get(), stats_b.get(), qkvb.get(), mask.data(), B, S, H, D, p, key);
    fp->fused_attention_forward(ctxf.get(), stats_f.get(), qkvf.get(), mask.data(), B, S, H, D, p, key);
    const auto ctx_narrow = ctxb.host();
    EXPECT_TRUE(narrowed_equal(ctx_narrow, ctxf.host())) << "p " << p;
    EXPECT_TRUE(bits_equal(stats_b.host(), stats_f.host())) << "p " << p;
    bf->fused_attention_backward(dqkvb.get(), dctxb.get(), qkvb.get(), ctxb.get(), stats_b.get(), mask.data(), B, S, H,
                                 D, p, key);
    Dev<float> ctx_w(*fp, widened(ctx_narrow));
    fp->fused_attention_backward(dqkvf.get(), dctxf.get(), qkvf.get(), ctx_w.get(), stats_f.get(), mask.data(), B, S, H,
                                 D, p, key);
    EXPECT_TRUE(narrowed_equal(dqkvb.host(), dqkvf.host())) << "p " << p;
  }
}

TEST_F(Bf16Backend, SoftmaxCrossEntropyNullAndAliasedGradients) {
  const int rows = 9, V = 301;
  const auto logits = random_bf16(rows * V, 1, -5.0, 5.0);
  const auto labels = random_ints(rows, 2, 0, V);
  const auto scale = random_floats(rows, 3, 0.0, 2.0);
  for (bool with_scale : {true, false}) {
    Dev<bfloat16> lb(*bf, logits.narrow);
    Dev<float> lf(*fp, logits.wide), scale_dev(*fp, scale);
    const float* gs = with_scale ? scale_dev.get() : nullptr;
    auto dlb = bf_out(rows * V);
    auto dlf = fp_out(rows * V);
    Dev<float> loss_b(*fp, rows, 0.0f), loss_f(*fp, rows, 1.0f);
    std::vector<int32_t> argmax_b(rows, -1), argmax_f(rows, -2);
    bf->softmax_cross_entropy(loss_b.get(), dlb.get(), argmax_b.data(), lb.get(), labels.data(), gs, rows, V);
    fp->softmax_cross_entropy(loss_f.get(), dlf.get(), argmax_f.data(), lf.get(), labels.data(), gs, rows, V);
    EXPECT_TRUE(bits_equal(loss_b.host(), loss_f.host()));
    EXPECT_TRUE(narrowed_equal(dlb.host(), dlf.host()));
    EXPECT_EQ(argmax_b, argmax_f);
    // Without dlogits: the loss only.
    Dev<float> loss_only(*fp, rows, 0.0f);
    bf->softmax_cross_entropy(loss_only.get(), nullptr, nullptr, lb.get(), labels.data(), gs, rows, V);
    EXPECT_TRUE(bits_equal(loss_only.host(), loss_f.host()));
    // dlogits in place of the logits.
    Dev<float> loss_alias(*fp, rows, 0.0f);
    bf->softmax_cross_entropy(loss_alias.get(), lb.get(), nullptr, lb.get(), labels.data(), gs, rows, V);
    EXPECT_TRUE(bits_equal(loss_alias.host(), loss_f.host()));
    EXPECT_TRUE(narrowed_equal(lb.host(), dlf.host()));
  }
}

TEST_F(Bf16Backend, LogSoftmaxInPlaceAndSigmoidCrossEntropy) {
  const int rows = 5, V = 77;
  const auto x = random_bf16(rows * V, 1, -4.0, 4.0);
  Dev<bfloat16> xb(*bf, x.narrow);
  Dev<float> xf(*fp, x.wide);
  auto yb = bf_out(rows * V);
  auto yf = fp_out(rows * V);
  bf->log_softmax(yb.get(), xb.get(), rows, V);
  fp->log_softmax(yf.get(), xf.get(), rows, V);
  EXPECT_TRUE(narrowed_equal(yb.host(), yf.host()));
  bf->log_softmax(xb.get(), xb.get(), rows, V);  // y aliases x
  EXPECT_TRUE(narrowed_equal(xb.host(), yf.host()));

  const size_t n = 1001;
  const auto logit = random_bf16(n, 2, -8.0, 8.0);
  const auto label = random_ints(n, 3, 0, 2);
  const auto scale = random_floats(n, 4, 0.0, 50.0);
  Dev<bfloat16> logit_b(*bf, logit.narrow);
  Dev<float> logit_f(*fp, logit.wide), scale_dev(*fp, scale);
  for (bool with_scale : {true, false}) {
    const float* gs = with_scale ? scale_dev.get() : nullptr;
    auto db = bf_out(n);
    auto df = fp_out(n);
    Dev<float> loss_b(*fp, n, 0.0f), loss_f(*fp, n, 1.0f);
    bf->sigmoid_cross_entropy(loss_b.get(), db.get(), logit_b.get(), label.data(), gs, n);
    fp->sigmoid_cross_entropy(loss_f.get(), df.get(), logit_f.get(), label.data(), gs, n);
    EXPECT_TRUE(bits_equal(loss_b.host(), loss_f.host()));
    EXPECT_TRUE(narrowed_equal(db.host(), df.host()));
    bf->sigmoid_cross_entropy(loss_b.get(), nullptr, logit_b.get(), label.data(), gs, n);
    EXPECT_TRUE(bits_equal(loss_b.host(), loss_f.host()));
  }
}

TEST_F(Bf16Backend, GumbelSampleAndReplaceMaskedTokens) {
  const int rows = 12, V = 97;
  // Narrow logits with many ties between tokens: the samples must still be the float op's.
  const auto logits = random_bf16(rows * V, 1, -3.0, 3.0);
  std::vector<int32_t> disallow = random_ints(rows, 2, 0, V);
  disallow[3] = -1;  // outside [0, V): disallows nothing
  Dev<bfloat16> lb(*bf, logits.narrow);
  Dev<float> lf(*fp, logits.wide);
  for (float t : {1.0f, 0.5f}) {
    std::vector<int32_t> sb(rows, -1), sf(rows, -2);
    bf->gumbel_sample(sb.data(), lb.get(), disallow.data(), rows, V, t, 11, 12, 13, 4);
    fp->gumbel_sample(sf.data(), lf.get(), disallow.data(), rows, V, t, 11, 12, 13, 4);
    EXPECT_EQ(sb, sf) << "temperature " << t;
    bf->gumbel_sample(sb.data(), lb.get(), nullptr, rows, V, t, 11, 12, 13, 4);
    fp->gumbel_sample(sf.data(), lf.get(), nullptr, rows, V, t, 11, 12, 13, 4);
    EXPECT_EQ(sb, sf) << "temperature " << t;
  }

  const int B = 3, S = 10, P = 4;
  const auto original = random_ints(B * S, 3, 0, 30), input_mask = random_ints(B * S, 4, 0, 2);
  auto positions = random_ints(B * P, 5, 0, S);
  positions[1] = positions[0];  // a later duplicate wins
  const auto samples = random_ints(B * P, 6, 0, 30);
  auto weights = random_floats(B * P, 7, 0.0, 1.0);
  weights[2] = 0.0f;
  weights[5] = -1.0f;
  positions[5] = S + 4;  // ignored: weight <= 0
  std::vector<int32_t> cb(B * S, -1), lbl_b(B * S, -1), cf(B * S, -2), lbl_f(B * S, -2);
  bf->replace_masked_tokens(cb.data(), lbl_b.data(), original.data(), input_mask.data(), positions.data(),
                            weights.data(), samples.data(), B, S, P);
  fp->replace_masked_tokens(cf.data(), lbl_f.data(), original.data(), input_mask.data(), positions.data(),
                            weights.data(), samples.data(), B, S, P);
  EXPECT_EQ(cb, cf);
  EXPECT_EQ(lbl_b, lbl_f);
}

TEST_F(Bf16Backend, SumSquaresOfWidenedValuesAndNoOptimizer) {
  const size_t n = 100003;
  const auto x = random_bf16(n, 1, -10.0, 10.0);
  Dev<bfloat16> xb(*bf, x.narrow);
  Dev<float> xf(*fp, x.wide);
  const double sb = bf->sum_squares(xb.get(), n), sf = fp->sum_squares(xf.get(), n);
  EXPECT_EQ(std::memcmp(&sb, &sf, sizeof(double)), 0) << sb << " vs " << sf;
  EXPECT_GT(sb, 0.0);

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
  const std::string embedding =
      message([&] { bf->embedding_forward(outb.get(), ids.data(), nullptr, tb.get(), nullptr, nullptr, B, S, E); });
  EXPECT_EQ(embedding, message([&] {
              fp->embedding_forward(outf.get(), ids.data(), nullptr, tf.get(), nullptr, nullptr, B, S, E);
            }));
  EXPECT_NE(embedding.find("is negative"), std::string::npos) << embedding;
  EXPECT_EQ(
      message([&] { bf->embedding_backward(dtab.get(), nullptr, nullptr, outb.get(), ids.data(), nullptr, B, S, E); }),
      message([&] { fp->embedding_backward(dtab.get(), nullptr, nullptr, outf.get(), ids.data(), nullptr, B, S, E); }));
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
