#include "tests/health_client.h"

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "grpcpp/support/byte_buffer.h"

namespace hkv::testing {

HealthStatus CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int timeout_ms) {
  // HealthCheckRequest { string service = 1; }
  std::string request;
  request.push_back(0x0a);
  request.push_back(static_cast<char>(service.size()));
  request += service;
  grpc::Slice slice(request);
  grpc::ByteBuffer send(&slice, 1);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  grpc::ByteBuffer receive;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &send, &receive,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return kRpcError;
  std::vector<grpc::Slice> slices;
  if (!receive.Dump(&slices).ok()) return kRpcError;
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse { ServingStatus status = 1; } -- absent means UNKNOWN (0).
  if (bytes.size() >= 2 && bytes[0] == 0x08) return static_cast<HealthStatus>(bytes[1]);
  return kUnknown;
}

}  // namespace hkv::testing
