#pragma once
// A minimal grpc.health.v1 client for tests: Debian ships no generated C++ health stubs, so
// the one-field messages are encoded by hand over a GenericStub.

#include <memory>
#include <string>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace hkv::testing {

// grpc.health.v1.HealthCheckResponse.ServingStatus values.
enum HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3, kRpcError = -1 };

// Calls grpc.health.v1.Health/Check for `service`; kRpcError when the call fails.
HealthStatus CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int timeout_ms = 2000);

}  // namespace hkv::testing
