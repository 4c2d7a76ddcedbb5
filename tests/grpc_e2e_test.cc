// End-to-end tests of the gRPC service with the real CPU engine and stories260K, on loopback.

#include <atomic>
#include <chrono>
#include <map>
#include <numeric>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/health_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Waits until the engine has no running request and no block in use.
bool WaitForIdlePool(Engine& engine, int timeout_ms = 10000) {
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    const EngineMetrics& m = engine.metrics();
    if (m.kv_blocks_used.load() == 0 && m.requests_running.load() == 0 &&
        m.requests_waiting.load() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class GrpcE2eTest : public SharedServerTest {};

TEST_F(GrpcE2eTest, StreamedGreedyGenerateReturnsGoldenText) {
  auto stub = server_->NewStub();
  StreamResult r = RunStream(stub.get(), GreedyIds({1}, 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.ids, ElementsAreArray(kGoldenIds));
  EXPECT_THAT(r.text, ::testing::StartsWith("Once upon a time, there was a little girl named Lily"));
  EXPECT_EQ(r.finish, hkv::v1::FINISH_REASON_LENGTH);
  EXPECT_GT(r.messages, 1) << "tokens must stream, not arrive in one message";
  EXPECT_EQ(r.usage.prompt_tokens(), 1);
  EXPECT_EQ(r.usage.generated_tokens(), 40);
  EXPECT_GT(r.usage.kv_bytes_kept(), 0);
}

TEST_F(GrpcE2eTest, TextPromptAndCompleteAgree) {
  auto stub = server_->NewStub();
  hkv::v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.mutable_sampling()->set_max_tokens(20);
  StreamResult streamed = RunStream(stub.get(), request);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  grpc::ClientContext context;
  hkv::v1::GenerateResponse unary;
  grpc::Status s = stub->Complete(&context, request, &unary);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_THAT(std::vector<int32_t>(unary.token_ids().begin(), unary.token_ids().end()),
              ElementsAreArray(streamed.ids));
  EXPECT_EQ(unary.text(), streamed.text);
  EXPECT_EQ(unary.finish_reason(), hkv::v1::FINISH_REASON_LENGTH);
}

TEST_F(GrpcE2eTest, StopStringEndsWithStopReason) {
  auto stub = server_->NewStub();
  hkv::v1::GenerateRequest request = GreedyIds({1}, 40);
  request.mutable_sampling()->add_stop("little girl");
  StreamResult r = RunStream(stub.get(), request);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.finish, hkv::v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.text, "Once upon a time, there was a ");
  ASSERT_TRUE(WaitForIdlePool(server_->engine()));
}

// Prompts long enough that every compressing policy at budget 16 really compresses.
std::vector<int32_t> PromptFor(int i) {
  std::vector<int32_t> p = {1};
  for (int t = 0; t < 30 + (i % 7) * 5; ++t) p.push_back(kGoldenIds[(t + i) % 40]);
  return p;
}

TEST_F(GrpcE2eTest, ConcurrentMixedPoliciesMatchRunningAlone) {
  const char* policies[] = {"full", "snapkv", "pyramidkv", "adakv", "headkv"};
  constexpr int kStreams = 64;
  std::vector<hkv::v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    hkv::v1::GenerateRequest r = GreedyIds(PromptFor(i), 24);
    r.mutable_sampling()->set_ignore_eos(true);
    r.mutable_kv_policy()->set_name(policies[i % 5]);
    r.mutable_kv_policy()->set_budget(16);
    requests.push_back(r);
  }
  auto stub = server_->NewStub();
  std::vector<StreamResult> alone(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    alone[i] = RunStream(stub.get(), requests[i]);
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
  }
  std::vector<StreamResult> together(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { together[i] = RunStream(stub.get(), requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].ids, alone[i].ids) << "stream " << i << " policy " << policies[i % 5];
    EXPECT_EQ(together[i].ids.size(), 24u);
  }
  // Compressing policies keep fewer KV bytes than full.
  EXPECT_LT(alone[1].usage.kv_bytes_kept(), alone[1].usage.kv_bytes_full());
  EXPECT_EQ(alone[0].usage.kv_bytes_kept(), alone[0].usage.kv_bytes_full());
  ASSERT_TRUE(WaitForIdlePool(server_->engine()));
}

TEST_F(GrpcE2eTest, AbortingHalfMidStreamFreesTheirBlocks) {
  constexpr int kStreams = 16;
  auto stub = server_->NewStub();
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      hkv::v1::GenerateRequest r = GreedyIds(PromptFor(i), 400);
      r.set_request_id("abort-" + std::to_string(i));
      r.mutable_sampling()->set_ignore_eos(true);
      results[i] = RunStream(stub.get(), r);
    });
  }
  // Abort the even ones once they have started.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  int found = 0;
  for (int i = 0; i < kStreams; i += 2) {
    grpc::ClientContext context;
    hkv::v1::AbortRequest abort;
    abort.set_request_id("abort-" + std::to_string(i));
    hkv::v1::AbortResponse response;
    ASSERT_TRUE(stub->Abort(&context, abort, &response).ok());
    found += response.found();
  }
  for (auto& t : threads) t.join();
  int aborted = 0;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    if (results[i].finish == hkv::v1::FINISH_REASON_ABORTED) ++aborted;
    if (i % 2 == 1) EXPECT_EQ(results[i].ids.size(), 400u);
  }
  EXPECT_EQ(aborted, found);
  EXPECT_GT(found, 0);
  EXPECT_TRUE(WaitForIdlePool(server_->engine()));
  EXPECT_EQ(server_->engine().metrics().kv_blocks_used.load(), 0);
}

TEST_F(GrpcE2eTest, ClientDisconnectCancelsTheRequest) {
  auto stub = server_->NewStub();
  grpc::ClientContext context;
  hkv::v1::GenerateRequest request = GreedyIds({1}, 450);
  request.mutable_sampling()->set_ignore_eos(true);
  auto reader = stub->Generate(&context, request);
  hkv::v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitForIdlePool(server_->engine()));
}

TEST_F(GrpcE2eTest, DeadlineExceededFreesTheRequest) {
  auto stub = server_->NewStub();
  hkv::v1::GenerateRequest request = GreedyIds({1}, 450);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(2));
  hkv::v1::GenerateResponse response;
  grpc::Status s = stub->Complete(&context, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitForIdlePool(server_->engine()));
}

TEST_F(GrpcE2eTest, BadRequestsGetTheRightCodeAndServerKeepsServing) {
  auto stub = server_->NewStub();
  struct Case {
    const char* name;
    hkv::v1::GenerateRequest request;
    grpc::StatusCode code;
    const char* message;
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, auto mutate, grpc::StatusCode code, const char* message) {
    hkv::v1::GenerateRequest r = GreedyIds({1, 403}, 4);
    mutate(r);
    cases.push_back({name, r, code, message});
  };
  const auto kInvalid = grpc::StatusCode::INVALID_ARGUMENT;
  add("no input", [](auto& r) { r.clear_prompt_token_ids(); }, kInvalid, "no input");
  add("empty prompt", [](auto& r) { r.set_prompt(""); }, kInvalid, "empty");
  add("empty ids", [](auto& r) { r.mutable_prompt_token_ids()->clear_ids(); }, kInvalid, "empty");
  add("id out of vocab", [](auto& r) { r.mutable_prompt_token_ids()->add_ids(99999); }, kInvalid,
      "vocabulary");
  add("negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-1); },
      kInvalid, "temperature");
  add("top_p > 1", [](auto& r) { r.mutable_sampling()->set_top_p(2); }, kInvalid, "top_p");
  add("negative top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-5); }, kInvalid, "top_k");
  add("negative max_tokens", [](auto& r) { r.mutable_sampling()->set_max_tokens(-1); }, kInvalid,
      "max_tokens");
  add("huge max_tokens", [](auto& r) { r.mutable_sampling()->set_max_tokens(1 << 30); },
      kInvalid, "context length");
  add("too-long prompt",
      [](auto& r) {
        for (int i = 0; i < 600; ++i) r.mutable_prompt_token_ids()->add_ids(300);
      },
      kInvalid, "context length");
  add("unknown policy", [](auto& r) { r.mutable_kv_policy()->set_name("lru"); }, kInvalid, "lru");
  add("budget < window",
      [](auto& r) {
        r.mutable_kv_policy()->set_name("snapkv");
        r.mutable_kv_policy()->set_budget(4);
      },
      kInvalid, "budget");
  add("beta <= 1",
      [](auto& r) {
        r.mutable_kv_policy()->set_name("headkv");
        r.mutable_kv_policy()->set_beta(0.5);
      },
      kInvalid, "beta");
  add("chat without format",
      [](auto& r) {
        auto* m = r.mutable_chat()->add_messages();
        m->set_role("user");
        m->set_content("hi");
      },
      kInvalid, "chat");
  add("bad stop token", [](auto& r) { r.mutable_sampling()->add_stop_token_ids(-2); }, kInvalid,
      "stop token");
  for (const Case& c : cases) {
    StreamResult r = RunStream(stub.get(), c.request);
    EXPECT_EQ(r.status.error_code(), c.code) << c.name << ": " << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.message)) << c.name;
  }
  // Malformed protobuf bytes on the wire.
  grpc::GenericStub generic(server_->channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::string garbage = "\x12\xff\xff\xff\xff\x0f\x01";
  grpc::Slice slice(garbage);
  grpc::ByteBuffer send(&slice, 1), receive;
  std::atomic<bool> done{false};
  grpc::Status generic_status;
  generic.UnaryCall(&context, "/hkv.v1.Generation/Complete", grpc::StubOptions(), &send, &receive,
                    [&](grpc::Status s) {
                      generic_status = s;
                      done = true;
                    });
  while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_FALSE(generic_status.ok());
  // Still serving.
  StreamResult ok = RunStream(stub.get(), GreedyIds({1}, 40));
  ASSERT_TRUE(ok.status.ok());
  EXPECT_THAT(ok.ids, ElementsAreArray(kGoldenIds));
}

TEST_F(GrpcE2eTest, FootprintBeforeAdmissionFollowsThePlan) {
  // The engine admits by the scheduler's own footprint: measure it over a pool shaped like the
  // engine's (5 layers x 4 KV heads = 20 rows, 16-token blocks).
  Engine& engine = server_->engine();
  KvCacheConfig kv_config = engine.options().kv;
  kv_config.num_layers = engine.model_config().num_layers;
  kv_config.num_kv_heads = engine.model_config().num_kv_heads;
  KvCacheManager kv(kv_config);
  Scheduler scheduler(engine.options().scheduler, &kv);
  Request request;
  request.prompt = PromptFor(3);  // 46 tokens.
  request.sampling.max_tokens = 10;
  auto full = engine.PlanFor("full", 128, 1.01);
  ASSERT_TRUE(full.ok()) << full.status();
  request.plan = *full;
  EXPECT_EQ(kv.FootprintBlocks(request.plan.KeptTokens(46)), 20 * 3);
  EXPECT_EQ(scheduler.PeakBlocks(request), 20 * 4);
  auto snap = engine.PlanFor("snapkv", 16, 1.01);
  ASSERT_TRUE(snap.ok());
  request.plan = *snap;
  const std::vector<int32_t> kept = request.plan.KeptTokens(46);
  EXPECT_EQ(std::accumulate(kept.begin(), kept.end(), int64_t{0}), 20 * 16);
  EXPECT_EQ(kv.FootprintBlocks(kept), 20);
  // 16 kept + 10 new tokens per row, but a chunked prefill first holds the prompt's 46 tokens.
  EXPECT_TRUE(scheduler.ChunksCompressedPrefill(request));
  EXPECT_EQ(scheduler.PeakBlocks(request), 20 * 3);
  auto ada = engine.PlanFor("adakv", 16, 1.01);
  ASSERT_TRUE(ada.ok());
  request.plan = *ada;
  // A bound: heads round up separately.
  EXPECT_GE(scheduler.PeakBlocks(request), 20 * 2);
  EXPECT_EQ(engine.PlanFor("nope", 16, 1.01).status().code(), absl::StatusCode::kInvalidArgument);
  // Per-layer pool usage is published (and back to zero when idle).
  ASSERT_TRUE(WaitForIdlePool(server_->engine()));
  std::vector<int64_t> per_layer;
  for (int i = 0; i < 100 && per_layer.size() != 5; ++i) {
    per_layer = server_->engine().BlocksPerLayer();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(per_layer.size(), 5u);
}

TEST_F(GrpcE2eTest, HealthAndModelInfo) {
  EXPECT_EQ(CheckHealth(server_->channel(), ""), kServing);
  EXPECT_EQ(CheckHealth(server_->channel(), "hkv.v1.Generation"), kServing);
  auto stub = server_->NewStub();
  grpc::ClientContext context;
  hkv::v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, hkv::v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.vocab_size(), 512);
}

TEST(GrpcQueueTest, FullQueueIsResourceExhaustedAndAdmittedRequestsFinish) {
  ServerConfig config = TestServerConfig();
  config.max_seqs = 1;
  config.max_queue = 2;
  TestServer server(config);
  auto stub = server.NewStub();
  constexpr int kRequests = 12;
  std::vector<StreamResult> results(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      hkv::v1::GenerateRequest r = GreedyIds({1}, 200);
      r.mutable_sampling()->set_ignore_eos(true);
      results[i] = RunStream(stub.get(), r);
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (const StreamResult& r : results) {
    if (r.status.ok()) {
      ++ok;
      EXPECT_EQ(r.ids.size(), 200u);
    } else {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << r.status.error_message();
      EXPECT_THAT(r.status.error_message(), HasSubstr("queue"));
      ++exhausted;
    }
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_GE(ok, 1);
  EXPECT_EQ(ok + exhausted, kRequests);
}

TEST(GrpcPoolTest, RequestThatCanNeverFitIsResourceExhausted) {
  ServerConfig config = TestServerConfig();
  config.kv_pool_blocks = 64;  // 40 rows per sequence: a 40-token prompt can never fit.
  TestServer server(config);
  auto stub = server.NewStub();
  std::vector<int32_t> prompt(60, 300);
  prompt[0] = 1;
  StreamResult r = RunStream(stub.get(), GreedyIds(prompt, 10));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << r.status.error_message();
  StreamResult small = RunStream(stub.get(), GreedyIds({1}, 5));
  EXPECT_TRUE(small.status.ok()) << small.status.error_message();
}

}  // namespace
}  // namespace hkv::testing
