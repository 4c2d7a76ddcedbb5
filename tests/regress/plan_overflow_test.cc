// Regression: pyramidkv/adakv budgets near 2^31 overflowed the planners' int32 arithmetic
// (2 * b, num_heads * b); adakv at 2^30 + 100 wrapped to a small budget and ran without error.
// Budgets are now checked against the model's context before planning, and planned in 64 bits
// (headkv/head_budget_planner_test.cc covers the arithmetic near 2^31 for every policy).

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

TEST(PlanOverflowTest, BudgetsPastTheContextAreInvalidArgument) {
  TestServer server(TestServerConfig());
  auto stub = server.NewStub();
  const int32_t context = server.engine().model_config().max_seq_len;
  for (const char* policy : {"snapkv", "pyramidkv", "adakv", "headkv"}) {
    for (int32_t budget : {context + 1, (1 << 30) + 100, 2147483647}) {
      hkv::v1::GenerateRequest r = GreedyIds({1}, 4);
      r.mutable_kv_policy()->set_name(policy);
      r.mutable_kv_policy()->set_budget(budget);
      StreamResult s = RunStream(stub.get(), r);
      EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << policy << " B=" << budget << ": " << s.status.error_message();
      EXPECT_THAT(s.status.error_message(), HasSubstr("context length"));
    }
    // The context itself is a valid budget (nothing that fits the context is compressed).
    hkv::v1::GenerateRequest r = GreedyIds({1}, 40);
    r.mutable_kv_policy()->set_name(policy);
    r.mutable_kv_policy()->set_budget(context);
    StreamResult s = RunStream(stub.get(), r);
    ASSERT_TRUE(s.status.ok()) << policy << ": " << s.status.error_message();
    EXPECT_THAT(s.ids, ElementsAreArray(kGoldenIds));
  }
  // The full policy ignores the budget.
  hkv::v1::GenerateRequest full = GreedyIds({1}, 4);
  full.mutable_kv_policy()->set_name("full");
  full.mutable_kv_policy()->set_budget(2147483647);
  EXPECT_TRUE(RunStream(stub.get(), full).status.ok());
}

}  // namespace
}  // namespace hkv::testing
