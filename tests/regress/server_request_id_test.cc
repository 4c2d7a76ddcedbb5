// Regression: server-made request ids were `req-<counter>` in the clients' namespace, so a
// client that named its requests `req-<next>` made other clients' anonymous requests fail with
// ALREADY_EXISTS, and anyone could Abort anyone's request by enumerating ids. Server ids are now
// "hkv-" + 128 random bits in hex, and clients may not use the "hkv-" prefix.

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::HasSubstr;

bool IsServerIdFormat(const std::string& id) {
  if (!absl::StartsWith(id, "hkv-") || id.size() != 4 + 32) return false;
  return std::all_of(id.begin() + 4, id.end(),
                     [](char c) { return std::isdigit(c) || (c >= 'a' && c <= 'f'); });
}

// What an attacker guesses for the ids the server makes after `seen`: the same text with its
// trailing number (if any) counted up by `k`, else the reserved prefix with `k` in hex.
std::string GuessNext(const std::string& seen, int k) {
  size_t digits = seen.size();
  while (digits > 0 && std::isdigit(static_cast<unsigned char>(seen[digits - 1]))) --digits;
  if (digits < seen.size() && seen.size() - digits < 18) {
    return seen.substr(0, digits) + std::to_string(std::stoll(seen.substr(digits)) + k);
  }
  char hex[40];
  std::snprintf(hex, sizeof(hex), "%032x", k);
  return seen.substr(0, seen.find('-') + 1) + hex;
}

EngineRequest Long(std::string request_id) {
  EngineRequest r;
  r.request_id = std::move(request_id);
  r.prompt = {1};
  r.sampling.max_tokens = 400;  // Hundreds of engine steps: long in flight.
  r.sampling.ignore_eos = true;
  return r;
}

class ServerRequestIdTest : public SharedServerTest {};

TEST_F(ServerRequestIdTest, ServerIdsAreUnguessableAndReturnedToTheClient) {
  auto stub = server_->NewStub();
  std::set<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    StreamResult r = RunStream(stub.get(), GreedyIds({1}, 2));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    grpc::ClientContext context;
    hkv::v1::GenerateResponse unary;
    ASSERT_TRUE(stub->Complete(&context, GreedyIds({1}, 2), &unary).ok());
    EXPECT_TRUE(IsServerIdFormat(unary.request_id())) << unary.request_id();
    ids.insert(unary.request_id());
  }
  EXPECT_EQ(ids.size(), 3u);
}

TEST_F(ServerRequestIdTest, ClientIdsInTheReservedNamespaceAreRefused) {
  auto stub = server_->NewStub();
  hkv::v1::GenerateRequest r = GreedyIds({1}, 2);
  r.set_request_id("hkv-00000000000000000000000000000001");
  StreamResult refused = RunStream(stub.get(), r);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("reserved"));
  // Any other name is the client's to choose, and comes back as sent.
  r.set_request_id("client-7");
  grpc::ClientContext context;
  hkv::v1::GenerateResponse unary;
  ASSERT_TRUE(stub->Complete(&context, r, &unary).ok());
  EXPECT_EQ(unary.request_id(), "client-7");
}

// Reads `stream` to its end; the finish reason (kNone after `timeout`).
FinishReason Finish(RequestStream& stream, absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    std::optional<StreamChunk> chunk = stream.Next(absl::Milliseconds(100));
    if (chunk.has_value() && chunk->finished) return chunk->finish;
  }
  return FinishReason::kNone;
}

TEST_F(ServerRequestIdTest, ASquattingClientCannotFailOrAbortAnonymousRequests) {
  Engine& engine = server_->engine();
  // The attacker learns one server id, then names its own requests after ids the server will
  // make next: each named request uses up one server number, so it squats 41..80 ahead.
  auto probe = engine.Submit(Long(""));
  ASSERT_TRUE(probe.ok()) << probe.status();
  const std::string seen = (*probe)->request_id();
  std::vector<std::shared_ptr<RequestStream>> squatters;
  for (int k = 41; k <= 80; ++k) {
    auto s = engine.Submit(Long(GuessNext(seen, k)));
    if (s.ok()) squatters.push_back(*s);
  }
  // Victims: anonymous requests while every squatter is still in flight.
  std::vector<std::shared_ptr<RequestStream>> victims;
  for (int i = 0; i < 10; ++i) {
    auto v = engine.Submit(Long(""));
    ASSERT_TRUE(v.ok()) << "anonymous request " << i << ": " << v.status();
    victims.push_back(*v);
  }
  // The attacker aborts every id it can guess while the victims run.
  auto stub = server_->NewStub();
  for (int k = 1; k <= 100; ++k) {
    grpc::ClientContext context;
    hkv::v1::AbortRequest abort;
    abort.set_request_id(GuessNext(seen, k));
    hkv::v1::AbortResponse response;
    ASSERT_TRUE(stub->Abort(&context, abort, &response).ok()) << abort.request_id();
  }
  for (auto& s : squatters) engine.Abort(s->request_id());
  engine.Abort(seen);
  for (auto& v : victims) {
    EXPECT_EQ(Finish(*v), FinishReason::kLength) << "victim " << v->request_id();
  }
}

}  // namespace
}  // namespace hkv::testing
