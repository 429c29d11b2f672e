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
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = false, .ranks_on_node = 2, .gpus_on_node = 4}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = true, .ranks_on_node = 4, .gpus_on_node = 4}),
            GradientTransport::kNccl);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = true, .ranks_on_node = 1, .gpus_on_node = 8}),
            GradientTransport::kNccl);
  // NCCL refuses two ranks on one GPU: auto falls back to the host path.
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kAuto, {.gpu = true, .ranks_on_node = 2, .gpus_on_node = 1}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kHost, {.gpu = true, .ranks_on_node = 1, .gpus_on_node = 1}),
            GradientTransport::kHost);
  EXPECT_EQ(resolve_gradient_transport(GradientTransport::kCudaAwareMpi,
                                       {.gpu = true, .ranks_on_node = 3, .gpus_on_node = 1}),
            GradientTransport::kCudaAwareMpi);
}

TEST(GradientTransport, DeviceTransportsOnTheCpuOrSharedGpusFailNamingTheKey) {
  for (GradientTransport t : {GradientTransport::kNccl, GradientTransport::kCudaAwareMpi}) {
    const std::string message = error_of(t, {.gpu = false, .ranks_on_node = 1, .gpus_on_node = 1});
    EXPECT_NE(message.find("dist.gradient_transport"), std::string::npos) << message;
    EXPECT_NE(message.find(to_string(t)), std::string::npos) << message;
    EXPECT_NE(message.find("--device cuda"), std::string::npos) << message;
  }
  const std::string shared = error_of(GradientTransport::kNccl, {.gpu = true, .ranks_on_node = 3, .gpus_on_node = 2});
  EXPECT_NE(shared.find("dist.gradient_transport"), std::string::npos) << shared;
  EXPECT_NE(shared.find("3 ranks on this node share 2 GPU(s)"), std::string::npos) << shared;
}

}  // namespace
}  // namespace electra::dist
