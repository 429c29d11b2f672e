// electra-train's train.attention key: "auto" by default, "materialized" and "fused" accepted, anything
// else refused before training (exit 2) with a message naming the key and the value. The data
// directory does not exist, so an accepted value fails afterwards, on the data.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "lib/model/attention_impl.h"
#include "lib/train/trainer.h"
#include "tests/support/programs.h"

namespace fs = std::filesystem;

namespace electra {
namespace {

using test::bin;
using test::log_of;
using test::read_text;
using test::run;

TEST(TrainAttentionKey, DefaultIsAuto) {
  const nlohmann::json config = train::default_run_config();
  ASSERT_TRUE(config.at("train").contains("attention"));
  EXPECT_EQ(config.at("train").at("attention"), "auto");
  EXPECT_EQ(parse_attention_impl(config.at("train").at("attention").get<std::string>()), AttentionImpl::kAuto);
}

// Packed rows keep every choice except auto on CUDA bf16/fp16, whose fused attention is cuDNN's (padding masks).
TEST(TrainAttentionKey, PackedRowsAvoidCudnnAttentionUnderAuto) {
  using enum AttentionImpl;
  for (AttentionImpl requested : {kAuto, kMaterialized, kFused}) {
    for (CudaPrecision precision :
         {CudaPrecision::kFp32, CudaPrecision::kTf32, CudaPrecision::kBf16, CudaPrecision::kFp16}) {
      EXPECT_EQ(attention_for_data(requested, DeviceKind::kCuda, precision, false), requested);
      EXPECT_EQ(attention_for_data(requested, DeviceKind::kCpu, precision, true), requested);
      const bool cudnn = precision == CudaPrecision::kBf16 || precision == CudaPrecision::kFp16;
      EXPECT_EQ(attention_for_data(requested, DeviceKind::kCuda, precision, true),
                requested == kAuto && cudnn ? kMaterialized : requested)
          << to_string(requested) << " " << to_string(precision);
    }
  }
}

TEST(TrainAttentionKey, BadValuesAreRefusedNamingTheKey) {
  const fs::path root = test::fresh_temp_dir("electra_attention_key");
  const fs::path log = root / "train.log";
  auto train = [&](const std::string& value) {
    return run(bin("electra-train") + " --data '" + (root / "no-shards").string() + "' --output '" +
                   (root / "run").string() + "' --set train.threads=1 --set train.attention=" + value,
               log);
  };
  EXPECT_EQ(train("flash"), 2) << log_of(log);
  const std::string refused = read_text(log);
  EXPECT_NE(refused.find("train.attention"), std::string::npos) << refused;
  EXPECT_NE(refused.find("flash"), std::string::npos) << refused;
  for (const char* good : {"auto", "materialized", "fused"}) {
    EXPECT_EQ(train(good), 2) << log_of(log);  // the missing data, not the key
    const std::string text = read_text(log);
    EXPECT_EQ(text.find("train.attention"), std::string::npos) << good << ": " << text;
    EXPECT_NE(text.find("no-shards"), std::string::npos) << good << ": " << text;
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace electra
