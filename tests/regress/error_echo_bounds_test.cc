// Regression: error messages echoed client strings unbounded. A 20,000-character policy name
// made a 20 KB grpc-message header: the caller got RESOURCE_EXHAUSTED instead of
// INVALID_ARGUMENT, and about 20% of other calls on the same channel failed. Echoed values are
// now quoted and cut (common/quote.h), and policy names and request ids are bounded.

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr size_t kMaxMessageBytes = 512;
const std::string kHuge(20000, 'p');

hkv::v1::GenerateRequest HugePolicyName() {
  hkv::v1::GenerateRequest r = GreedyIds({1}, 4);
  r.mutable_kv_policy()->set_name(kHuge);
  return r;
}

class ErrorEchoBoundsTest : public SharedServerTest {};

TEST_F(ErrorEchoBoundsTest, HugePolicyNameIsInvalidArgumentWithAShortMessage) {
  auto stub = server_->NewStub();
  StreamResult r = RunStream(stub.get(), HugePolicyName());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(r.status.error_message().size(), kMaxMessageBytes) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("(20000 bytes)"));
  // Just under the name bound: still unknown, still short.
  hkv::v1::GenerateRequest unknown = GreedyIds({1}, 4);
  unknown.mutable_kv_policy()->set_name(std::string(32, '\x01'));
  r = RunStream(stub.get(), unknown);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(r.status.error_message().size(), kMaxMessageBytes) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("\\x01"));
}

TEST_F(ErrorEchoBoundsTest, HugeRequestIdIsRefusedWithAShortMessage) {
  auto stub = server_->NewStub();
  hkv::v1::GenerateRequest r = GreedyIds({1}, 4);
  r.set_request_id(kHuge);
  StreamResult s = RunStream(stub.get(), r);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(s.status.error_message().size(), kMaxMessageBytes) << s.status.error_message();
  r.set_request_id(std::string(129, 'a'));
  s = RunStream(stub.get(), r);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  r.set_request_id("new\nline");
  s = RunStream(stub.get(), r);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Abort with such an id: refused too, briefly.
  grpc::ClientContext context;
  hkv::v1::AbortRequest abort;
  abort.set_request_id(kHuge);
  hkv::v1::AbortResponse response;
  grpc::Status a = stub->Abort(&context, abort, &response);
  EXPECT_EQ(a.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(a.error_message().size(), kMaxMessageBytes);
}

TEST_F(ErrorEchoBoundsTest, OtherCallsOnTheSameChannelAreUnaffected) {
  // Bad and good calls interleave on one channel (one HTTP/2 connection).
  auto stub = server_->NewStub();
  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 10;
  std::atomic<int> bad_not_invalid{0}, good_failed{0}, good_wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        if (t % 2 == 0) {
          StreamResult r = RunStream(stub.get(), HugePolicyName());
          if (r.status.error_code() != grpc::StatusCode::INVALID_ARGUMENT) ++bad_not_invalid;
        } else {
          StreamResult r = RunStream(stub.get(), GreedyIds({1}, 8));
          if (!r.status.ok()) {
            ++good_failed;
          } else if (r.ids != std::vector<int32_t>(kGoldenIds, kGoldenIds + 8)) {
            ++good_wrong;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad_not_invalid.load(), 0);
  EXPECT_EQ(good_failed.load(), 0);
  EXPECT_EQ(good_wrong.load(), 0);
  // And the channel still serves afterwards.
  StreamResult after = RunStream(stub.get(), GreedyIds({1}, 40));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_THAT(after.ids, ElementsAreArray(kGoldenIds));
}

}  // namespace
}  // namespace hkv::testing
