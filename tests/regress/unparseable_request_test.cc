// Guards "unparseable request bytes answer INTERNAL with an empty message": bytes that are not a
// valid request get INVALID_ARGUMENT naming the method and the message type, on every method of
// hkv.v1.Generation; the same channel then serves normal requests, and health and reflection
// are untouched.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/health_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using ::testing::HasSubstr;

struct RawResult {
  grpc::Status status;
  std::vector<std::string> responses;  // Serialized messages, as received.
};

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

// Sends `bytes` as the one request message of `method` through a generic stub (no client-side
// parsing) and reads every response until the status. One operation in flight at a time.
RawResult RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                  const std::string& bytes) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::CompletionQueue cq;
  void* const tag = reinterpret_cast<void*>(1);
  const auto next = [&cq] {
    void* got = nullptr;
    bool ok = false;
    return cq.Next(&got, &ok) && ok;
  };
  RawResult result;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(&context, method, &cq);
  call->StartCall(tag);
  if (next()) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    call->WriteLast(request, grpc::WriteOptions(), tag);
    next();
    grpc::ByteBuffer response;
    for (call->Read(&response, tag); next(); call->Read(&response, tag)) {
      result.responses.push_back(ToString(response));
    }
  }
  call->Finish(&result.status, tag);
  next();
  cq.Shutdown();
  void* got = nullptr;
  bool ok = false;
  while (cq.Next(&got, &ok)) {
  }
  return result;
}

struct Method {
  std::string path;
  std::string request_type;
  bool string_field_1;  // Its request's field 1 is a string (request_id).
};

const Method kMethods[] = {
    {"/hkv.v1.Generation/Generate", "hkv.v1.GenerateRequest", true},
    {"/hkv.v1.Generation/Complete", "hkv.v1.GenerateRequest", true},
    {"/hkv.v1.Generation/Abort", "hkv.v1.AbortRequest", true},
    {"/hkv.v1.Generation/GetModelInfo", "hkv.v1.GetModelInfoRequest", false},
};

// Bytes that no message parses from.
const std::string kGarbage[] = {
    std::string(6, '\xff'),                  // A varint tag that never ends.
    std::string("\x12\x10\x61\x62\x63", 5),  // Field 2, 16 bytes long, only 3 there.
};
// Field 1 as a string that is not UTF-8: no proto3 string field parses from it.
const std::string kNotUtf8("\x0a\x02\xc3\x28", 4);

class UnparseableRequestTest : public ::testing::Test {
 protected:
  UnparseableRequestTest() : server_(TestServerConfig()) {}
  TestServer server_;
};

TEST_F(UnparseableRequestTest, GarbageIsInvalidArgumentNamingTheMessageType) {
  for (const Method& method : kMethods) {
    std::vector<std::string> cases(std::begin(kGarbage), std::end(kGarbage));
    if (method.string_field_1) cases.push_back(kNotUtf8);
    for (const std::string& bytes : cases) {
      const RawResult r = RawCall(server_.channel(), method.path, bytes);
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << method.path << ": " << r.status.error_code() << " " << r.status.error_message();
      EXPECT_THAT(r.status.error_message(), HasSubstr(method.request_type)) << method.path;
      EXPECT_THAT(r.status.error_message(), HasSubstr(method.path));
      EXPECT_TRUE(r.responses.empty()) << method.path;
    }
  }
}

TEST_F(UnparseableRequestTest, TheSameChannelServesNormalRequestsAfterwards) {
  for (const Method& method : kMethods) RawCall(server_.channel(), method.path, kGarbage[0]);
  auto stub = server_.NewStub();
  const StreamResult stream = RunStream(stub.get(), GreedyIds({1}, 8));
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.ids.size(), 8u);

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  hkv::v1::GenerateResponse response;
  const grpc::Status complete = stub->Complete(&context, GreedyIds({1}, 8), &response);
  ASSERT_TRUE(complete.ok()) << complete.error_message();
  EXPECT_EQ(response.token_ids_size(), 8);

  // A request that parses but is bad keeps the service's own answer.
  hkv::v1::GenerateRequest empty;
  empty.mutable_sampling()->set_max_tokens(4);
  const StreamResult bad = RunStream(stub.get(), empty);
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.status.error_message(), ::testing::Not(HasSubstr("does not parse")));

  // The raw path itself, with valid bytes (GetModelInfoRequest is empty).
  const RawResult info = RawCall(server_.channel(), "/hkv.v1.Generation/GetModelInfo", "");
  ASSERT_TRUE(info.status.ok()) << info.status.error_message();
  ASSERT_EQ(info.responses.size(), 1u);
  EXPECT_THAT(info.responses[0], HasSubstr("stories260K"));
}

TEST_F(UnparseableRequestTest, HealthAndReflectionAreUntouched) {
  EXPECT_EQ(CheckHealth(server_.channel(), ""), kServing);
  EXPECT_EQ(CheckHealth(server_.channel(), "hkv.v1.Generation"), kServing);
  // ServerReflectionRequest { list_services = 7: "" }.
  const RawResult list =
      RawCall(server_.channel(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              std::string("\x3a\x00", 2));
  ASSERT_TRUE(list.status.ok()) << list.status.error_message();
  ASSERT_EQ(list.responses.size(), 1u);
  EXPECT_THAT(list.responses[0], HasSubstr("hkv.v1.Generation"));
}

}  // namespace
}  // namespace hkv::testing
