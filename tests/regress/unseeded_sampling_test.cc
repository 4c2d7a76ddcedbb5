// Regression: every unseeded sampled request used seed 0, so N samples of one prompt at
// temperature > 0 were identical (across clients too). An unseeded request now gets a fresh
// random seed, reported in Usage.seed; a sent seed (0 included) is used as sent.

#include <set>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::ElementsAreArray;

hkv::v1::GenerateRequest Sampled() {
  hkv::v1::GenerateRequest r = GreedyIds({1}, 48);
  r.mutable_sampling()->set_temperature(1.0f);
  r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

class UnseededSamplingTest : public SharedServerTest {};

TEST_F(UnseededSamplingTest, UnseededSamplesDifferAndReplayFromTheReportedSeed) {
  auto stub = server_->NewStub();
  StreamResult a = RunStream(stub.get(), Sampled());
  StreamResult b = RunStream(stub.get(), Sampled());
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  ASSERT_EQ(a.ids.size(), 48u);
  ASSERT_EQ(b.ids.size(), 48u);
  // 64 random bits each: equal seeds (or 48 equal tokens at temperature 1) mean no fresh seed.
  EXPECT_NE(a.usage.seed(), b.usage.seed());
  EXPECT_NE(a.ids, b.ids) << "two unseeded samples of one prompt are identical";
  for (const StreamResult* r : {&a, &b}) {
    hkv::v1::GenerateRequest replay = Sampled();
    replay.mutable_sampling()->set_seed(r->usage.seed());
    StreamResult again = RunStream(stub.get(), replay);
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_THAT(again.ids, ElementsAreArray(r->ids)) << "seed " << r->usage.seed();
    EXPECT_EQ(again.text, r->text);
    EXPECT_EQ(again.usage.seed(), r->usage.seed());
  }
}

TEST_F(UnseededSamplingTest, SeedZeroIsASeed) {
  auto stub = server_->NewStub();
  hkv::v1::GenerateRequest zero = Sampled();
  zero.mutable_sampling()->set_seed(0);
  StreamResult first = RunStream(stub.get(), zero);
  StreamResult second = RunStream(stub.get(), zero);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(first.usage.seed(), 0u);
  EXPECT_EQ(second.usage.seed(), 0u);
  EXPECT_THAT(second.ids, ElementsAreArray(first.ids));
  // Unary Complete reports the seed too.
  grpc::ClientContext context;
  hkv::v1::GenerateResponse unary;
  ASSERT_TRUE(stub->Complete(&context, zero, &unary).ok());
  EXPECT_EQ(unary.usage().seed(), 0u);
  EXPECT_THAT(std::vector<int32_t>(unary.token_ids().begin(), unary.token_ids().end()),
              ElementsAreArray(first.ids));
}

TEST_F(UnseededSamplingTest, ClientsOnTheirOwnChannelsGetDistinctSamples) {
  constexpr int kClients = 4;
  std::vector<StreamResult> results(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([i, &results] {
      auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(server_->port()));
      results[i] = RunStream(stub.get(), Sampled());
    });
  }
  for (auto& t : threads) t.join();
  std::set<uint64_t> seeds;
  std::set<std::vector<int32_t>> outputs;
  for (const StreamResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    seeds.insert(r.usage.seed());
    outputs.insert(r.ids);
  }
  EXPECT_EQ(seeds.size(), size_t{kClients});
  EXPECT_EQ(outputs.size(), size_t{kClients});
}

}  // namespace
}  // namespace hkv::testing
