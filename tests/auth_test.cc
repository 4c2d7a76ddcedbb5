// API keys on the gRPC API (accepted, missing, wrong: UNAUTHENTICATED with no engine work),
// health without a key, tenants (Abort sees only the caller's requests, ids are per tenant,
// per-key limits refuse only that key), and request ids from x-request-id echoed back.

#include <chrono>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/tenant_limiter.h"
#include "server/request_headers.h"
#include "server/request_log.h"
#include "tests/health_client.h"
#include "tests/ops_test_util.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kAlphaKey[] = "alpha-key-0123456789";
constexpr char kBetaKey[] = "beta-key-0123456789";

std::shared_ptr<const ApiKeySet> TwoTenants() {
  auto keys = ApiKeySet::FromEntries({{kAlphaKey, "alpha"}, {kBetaKey, "beta"}});
  HKV_CHECK(keys.ok()) << keys.status();
  return std::make_shared<const ApiKeySet>(*std::move(keys));
}

void Authorize(grpc::ClientContext* context, const std::string& key) {
  context->AddMetadata("authorization", "Bearer " + key);
}

grpc::Status ModelInfo(hkv::v1::Generation::Stub* stub, const std::string& key) {
  grpc::ClientContext context;
  if (!key.empty()) Authorize(&context, key);
  hkv::v1::ModelInfo info;
  return stub->GetModelInfo(&context, hkv::v1::GetModelInfoRequest(), &info);
}

TEST(ApiKeySetTest, ParsesFlagAndFileAndChecksBearerTokens) {
  const std::string path = ::testing::TempDir() + "/keys.txt";
  {
    std::ofstream f(path);
    f << "# comment\n\nfile-key-00000001 team-a\nfile-key-00000002\n";
  }
  auto keys = ApiKeySet::Load("flag-key-0000001, flag-key-0000002", path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 4u);
  EXPECT_EQ(*keys->Authenticate("Bearer flag-key-0000002"), "key2");
  EXPECT_EQ(*keys->Authenticate("bearer file-key-00000001"), "team-a");
  EXPECT_EQ(*keys->Authenticate("Bearer file-key-00000002"), "file-line4");
  for (const char* bad :
       {"", "flag-key-0000001", "Basic flag-key-0000001", "Bearer flag-key-0000003", "Bearer "}) {
    EXPECT_EQ(keys->Authenticate(bad).status().code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  EXPECT_EQ(keys->Authenticate("Bearer " + std::string(5000, 'k')).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ApiKeySet::Load("short", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKeySet::Load("same-key-000001,same-key-000001", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiKeySet::Load("", "/nonexistent/keys").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ApiKeySet().enabled());
}

TEST(TenantLimiterTest, CapsEachTenantOnItsOwn) {
  TenantLimiter limiter(2);
  auto a1 = limiter.Acquire("a");
  auto a2 = limiter.Acquire("a");
  ASSERT_TRUE(a1.ok() && a2.ok());
  EXPECT_EQ(limiter.Acquire("a").status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(limiter.Acquire("b").ok());
  { auto released = std::move(*a1); }
  EXPECT_EQ(limiter.in_flight("a"), 1);
  EXPECT_TRUE(limiter.Acquire("a").ok());
}

TEST(RequestHeadersTest, RequestIdAndTraceparent) {
  std::map<std::string, std::string> h;
  HeaderLookup lookup = [&h](std::string_view name) -> std::optional<std::string_view> {
    auto it = h.find(std::string(name));
    if (it == h.end()) return std::nullopt;
    return std::string_view(it->second);
  };
  EXPECT_EQ(*RequestIdFromHeaders(lookup), "");
  EXPECT_EQ(TraceparentFromHeaders(lookup), "");
  h["x-request-id"] = "abc-123";
  h["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  EXPECT_EQ(*RequestIdFromHeaders(lookup), "abc-123");
  EXPECT_EQ(TraceparentFromHeaders(lookup), h["traceparent"]);
  for (const char* bad : {"has space", "hkv-reserved", ""}) {
    h["x-request-id"] = bad;
    EXPECT_EQ(RequestIdFromHeaders(lookup).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  h["x-request-id"] = std::string(129, 'a');
  EXPECT_EQ(RequestIdFromHeaders(lookup).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* bad : {"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                          "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "garbage"}) {
    h["traceparent"] = bad;
    EXPECT_EQ(TraceparentFromHeaders(lookup), "") << bad;
  }
}

TEST(RequestLogTest, FinishedLineHasEveryField) {
  FinishedRequest r;
  r.request_id = "id-1";
  r.tenant = "alpha";
  r.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  r.prompt_tokens = 5;
  r.generated_tokens = 7;
  r.kv_tokens_kept = 10;
  r.kv_tokens_full = 40;
  r.finish_reason = "length";
  const std::string line = FormatLogLine(LogFormat::kText, LogSeverity::kInfo, "x.cc", 1,
                                         "request finished", FinishedRequestFields(r));
  for (const char* want :
       {"request_id=id-1", "tenant=alpha", "traceparent=00-4bf9", "prompt_tokens=5",
        "generated_tokens=7", "queue_ms=", "ttft_ms=", "e2e_ms=", "kv_tokens_kept=10",
        "kv_tokens_full=40", "preemptions=0", "finish_reason=length", "status=OK"}) {
    EXPECT_THAT(line, HasSubstr(want));
  }
}

class AuthTest : public ::testing::Test {};

TEST_F(AuthTest, MissingOrWrongKeyIsUnauthenticatedAndCostsNoEngineWork) {
  OpsServer s = StartOpsServer(SharedEngine(), {}, TwoTenants());
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(s.port));
  const EngineMetrics& m = SharedEngine().engine->metrics();
  const int64_t refused_before = m.requests_unauthenticated_total.load();
  const int64_t prompt_before = m.prompt_tokens_total.load();
  const int64_t finished_before = m.requests_finished_total.load();
  for (const std::string key : {std::string(), std::string("wrong-key-0123456789")}) {
    grpc::ClientContext context;
    if (!key.empty()) Authorize(&context, key);
    auto reader = stub->Generate(&context, GreedyIds({1, 2, 3}, 8));
    hkv::v1::GenerateResponse response;
    EXPECT_FALSE(reader->Read(&response));
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("authorization: Bearer"));
    EXPECT_EQ(ModelInfo(stub.get(), key).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(m.requests_unauthenticated_total.load() - refused_before, 4);
  EXPECT_EQ(m.prompt_tokens_total.load(), prompt_before) << "a refused call reached the engine";
  EXPECT_EQ(m.requests_finished_total.load(), finished_before);
  EXPECT_EQ(s.service->calls_in_flight(), 0);
}

TEST_F(AuthTest, RightKeyIsServedAndHealthNeedsNone) {
  OpsServer s = StartOpsServer(SharedEngine(), {}, TwoTenants());
  auto channel = LoopbackChannel(s.port);
  auto stub = hkv::v1::Generation::NewStub(channel);
  EXPECT_TRUE(ModelInfo(stub.get(), kAlphaKey).ok());
  grpc::ClientContext context;
  Authorize(&context, kBetaKey);
  hkv::v1::GenerateResponse response;
  grpc::Status status = stub->Complete(&context, GreedyIds({1}, 8), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.usage().generated_tokens(), 8);
  EXPECT_EQ(CheckHealth(channel, kReadinessService), kServing);
  EXPECT_EQ(CheckHealth(channel, kLivenessService), kServing);
}

TEST_F(AuthTest, RequestIdFromMetadataRoundTrips) {
  OpsServer s = StartOpsServer(SharedEngine(), {});
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(s.port));
  auto run = [&](const std::string& header, std::string* echoed) {
    grpc::ClientContext context;
    if (!header.empty()) context.AddMetadata("x-request-id", header);
    context.AddMetadata("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    auto reader = stub->Generate(&context, GreedyIds({1}, 4));
    hkv::v1::GenerateResponse response;
    std::string id;
    while (reader->Read(&response)) id = response.request_id();
    grpc::Status status = reader->Finish();
    auto it = context.GetServerInitialMetadata().find("x-request-id");
    *echoed = it == context.GetServerInitialMetadata().end()
                  ? ""
                  : std::string(it->second.data(), it->second.size());
    return std::make_pair(status, id);
  };
  std::string echoed;
  auto [status, id] = run("client-trace-42", &echoed);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(id, "client-trace-42");
  EXPECT_EQ(echoed, "client-trace-42");
  std::tie(status, id) = run("", &echoed);
  ASSERT_TRUE(status.ok());
  EXPECT_THAT(id, StartsWith("hkv-"));
  EXPECT_EQ(echoed, id) << "the generated id is echoed too";
  std::tie(status, id) = run("bad id", &echoed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("x-request-id"));
}

// An engine whose loop stalls 5 s after its first step (HKV_FAULT_ENGINE_STALL_MS), so that a
// request stays in flight while the test makes its other calls.
class StalledEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("HKV_FAULT_ENGINE_STALL_MS", "5000", 1);
    auto built = BuildEngine(TestServerConfig());
    unsetenv("HKV_FAULT_ENGINE_STALL_MS");
    HKV_CHECK(built.ok()) << built.status();
    bundle_ = new EngineBundle(std::move(*built));
    bundle_->engine->Start();
  }
  static void TearDownTestSuite() {
    bundle_->engine->Stop();
    delete bundle_;
  }
  static inline EngineBundle* bundle_ = nullptr;
};

TEST_F(StalledEngineTest, PerKeyLimitAndAbortStayWithinTheTenant) {
  OpsServer s = StartOpsServer(*bundle_, {}, TwoTenants(), /*max_requests_per_key=*/1);
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(s.port));
  // Alpha's request runs one step, then the loop stalls with it in flight.
  grpc::ClientContext alpha_context;
  Authorize(&alpha_context, kAlphaKey);
  hkv::v1::GenerateRequest alpha_request = GreedyIds({1}, 32);
  alpha_request.set_request_id("job-a");
  auto alpha = stub->Generate(&alpha_context, alpha_request);
  hkv::v1::GenerateResponse response;
  ASSERT_TRUE(alpha->Read(&response));
  EXPECT_EQ(response.request_id(), "job-a");

  // Alpha's second request is over its limit of 1.
  {
    grpc::ClientContext context;
    Authorize(&context, kAlphaKey);
    hkv::v1::GenerateResponse r;
    grpc::Status st = stub->Complete(&context, GreedyIds({1}, 4), &r);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("--max-requests-per-key"));
  }
  // Beta cannot see (or abort) alpha's request.
  hkv::v1::AbortRequest abort;
  abort.set_request_id("job-a");
  {
    grpc::ClientContext context;
    Authorize(&context, kBetaKey);
    hkv::v1::AbortResponse r;
    ASSERT_TRUE(stub->Abort(&context, abort, &r).ok());
    EXPECT_FALSE(r.found()) << "beta aborted alpha's request";
  }
  // Beta is under its own limit, and may even use the same request id.
  grpc::ClientContext beta_context;
  Authorize(&beta_context, kBetaKey);
  hkv::v1::GenerateRequest beta_request = GreedyIds({1}, 8);
  beta_request.set_request_id("job-a");
  auto beta = stub->Generate(&beta_context, beta_request);
  // Alpha aborts its own.
  {
    grpc::ClientContext context;
    Authorize(&context, kAlphaKey);
    hkv::v1::AbortResponse r;
    ASSERT_TRUE(stub->Abort(&context, abort, &r).ok());
    EXPECT_TRUE(r.found());
  }
  hkv::v1::FinishReason alpha_finish = hkv::v1::FINISH_REASON_UNSPECIFIED;
  while (alpha->Read(&response)) {
    if (response.finish_reason() != hkv::v1::FINISH_REASON_UNSPECIFIED) {
      alpha_finish = response.finish_reason();
    }
  }
  EXPECT_TRUE(alpha->Finish().ok());
  EXPECT_EQ(alpha_finish, hkv::v1::FINISH_REASON_ABORTED);
  hkv::v1::FinishReason beta_finish = hkv::v1::FINISH_REASON_UNSPECIFIED;
  int beta_tokens = 0;
  while (beta->Read(&response)) {
    beta_tokens += response.token_ids_size();
    if (response.finish_reason() != hkv::v1::FINISH_REASON_UNSPECIFIED) {
      beta_finish = response.finish_reason();
    }
  }
  grpc::Status beta_status = beta->Finish();
  ASSERT_TRUE(beta_status.ok()) << beta_status.error_message();
  EXPECT_EQ(beta_finish, hkv::v1::FINISH_REASON_LENGTH) << "alpha's abort reached beta's job-a";
  EXPECT_EQ(beta_tokens, 8);
}

}  // namespace
}  // namespace hkv::testing
