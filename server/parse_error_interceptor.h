#pragma once
// Request bytes that do not parse get INVALID_ARGUMENT naming the message type, not INTERNAL.
//
// gRPC C++'s synchronous server parses a call's request before any handler runs and, when the
// bytes are not a valid message (malformed or truncated wire format, a proto3 string that is not
// UTF-8), answers INTERNAL with an empty message: to the client that reads as a server fault.
// This server interceptor sees the missing message at POST_RECV_MESSAGE and rewrites that
// INTERNAL at PRE_SEND_STATUS (any other status stays, e.g. RESOURCE_EXHAUSTED from a server out
// of threads, which also drops the message). It acts only on the methods of one proto service
// whose client sends a single message (unary and server-streaming), where the message is parsed
// once before the handler; every other method (health, reflection) gets no interceptor at all.
//
// NOTE(newcomer): chosen over receiving raw ByteBuffers and parsing them ourselves, which needs
// the async or callback API for every method (a rewrite of GenerationService) and would bypass
// the typed sync handlers; the interceptor API is in Debian 12's gRPC 1.51 and leaves the normal
// path untouched (one small object per call).
//
// Thread-safety: the factory is immutable and called by gRPC from any thread; each interceptor
// belongs to one call and gRPC runs its hooks one batch at a time.

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "grpcpp/support/server_interceptor.h"

namespace hkv {

class ParseErrorInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `service`: the full name of a generated proto service to cover, e.g. "hkv.v1.Generation".
  // REQUIRES: the service is linked into this binary.
  explicit ParseErrorInterceptorFactory(const std::string& service);

  // Returns an interceptor for a covered method, nullptr (no interception) for any other.
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  // "/pkg.Service/Method" -> the full name of its request message, for the covered methods.
  absl::flat_hash_map<std::string, std::string> request_types_;
};

// The interceptor list for ServerBuilder::experimental().SetInterceptorCreators: covers every
// method of hkv.v1.Generation.
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
ParseErrorInterceptors();

}  // namespace hkv
