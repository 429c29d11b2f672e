#include "lib/dist/gradient_transport.h"

#include <gtest/gtest.h>

#include <string>

#include "lib/core/error.h"

namespace electra::dist {
namespace {

std::string error_of(GradientTransport configured, const TransportSituation& situation) {
  try {
    resolve_gradient_transport(configured, situation);
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

TEST(GradientTransport, ParsesEveryNameAndRejectsOthersNamingTheKey) {
  for (GradientTransport t : {GradientTransport::kAuto, GradientTransport::kHost, GradientTransport::kNccl,
                              GradientTransport::kCudaAwareMpi}) {
    EXPECT_EQ(parse_gradient_transport(to_string(t)), t) << to_string(t);
  }
  try {
    parse_gradient_transport("gloo");
    ADD_FAILURE() << "unknown transport accepted";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("dist.gradient_transport"), std::string::npos) << message;
    EXPECT_NE(message.find("'gloo'"), std::string::npos) << message;
    EXPECT_NE(message.find("cuda_aware_mpi"), std::string::npos) << message;
  }
  EXPECT_THROW(parse_gradient_transport("NCCL"), Error);
  EXPECT_THROW(parse_gradient_transport(""), Error);
}

TEST(GradientTransport, AutoIsNcclOnOwnGpusAndHostOtherwise) {
  const std::string shared = "ranks 0 and 1 share GPU 0000:3b:00.0 on a";
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = false, .shared_gpu = ""}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = true, .shared_gpu = ""}),
            GradientTransport::kNccl);
  // NCCL refuses two ranks on one GPU: auto falls back to the host path.
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = true, .shared_gpu = shared}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kHost, {.gpu = true, .shared_gpu = ""}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kHost, {.gpu = false, .shared_gpu = ""}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kNccl, {.gpu = true, .shared_gpu = ""}),
            GradientTransport::kNccl);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kCudaAwareMpi, {.gpu = true, .shared_gpu = shared}),
            GradientTransport::kCudaAwareMpi);
}

TEST(GradientTransport, DeviceTransportsOnTheCpuOrSharedGpusFailNamingTheKey) {
  for (GradientTransport t : {GradientTransport::kNccl, GradientTransport::kCudaAwareMpi}) {
    const std::string message = error_of(t, {.gpu = false, .shared_gpu = ""});
    EXPECT_NE(message.find("dist.gradient_transport"), std::string::npos) << message;
    EXPECT_NE(message.find(to_string(t)), std::string::npos) << message;
    EXPECT_NE(message.find("--device cuda"), std::string::npos) << message;
  }
  const std::string message =
      error_of(GradientTransport::kNccl, {.gpu = true, .shared_gpu = "ranks 0 and 1 share GPU 0000:3b:00.0 on a"});
  EXPECT_NE(message.find("dist.gradient_transport"), std::string::npos) << message;
  EXPECT_NE(message.find("ranks 0 and 1 share GPU 0000:3b:00.0 on a"), std::string::npos) << message;
}

TEST(GradientTransport, DescribesTheFirstSharedGpu) {
  EXPECT_EQ(describe_shared_gpu({}), "");
  EXPECT_EQ(describe_shared_gpu({"0000:3b:00.0 on a"}), "");
  // The same bus id on two nodes is two GPUs.
  EXPECT_EQ(describe_shared_gpu({"0000:3b:00.0 on a", "0000:3b:00.0 on b", "0000:5e:00.0 on a"}), "");
  EXPECT_EQ(describe_shared_gpu({"x on a", "y on a", "z on a", "y on a", "x on a"}), "ranks 1 and 3 share GPU y on a");
}

}  // namespace
}  // namespace electra::dist
