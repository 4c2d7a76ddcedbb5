#pragma once
// Fixtures for the security and observability tests: certificates made with the openssl CLI in
// a temporary directory, and gRPC servers with chosen credentials and API keys over one shared
// in-process engine (the embedded stories260K model).

#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "hkv/v1/generation.grpc.pb.h"
#include "server/auth/api_keys.h"
#include "server/grpc_server.h"
#include "server/model_setup.h"

namespace hkv::testing {

// A directory of PEM files made by openssl; removed with the object.
class CertDir {
 public:
  CertDir();
  ~CertDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Makes NAME.pem (self-signed CA) and NAME.key. False when openssl failed.
  bool MakeCa(const std::string& name);
  // Makes NAME.pem and NAME.key, a leaf for localhost / 127.0.0.1 signed by CA (a MakeCa name),
  // usable as server and client certificate.
  bool MakeLeaf(const std::string& name, const std::string& ca);
  // Reads a file whole ("" when missing).
  std::string Read(const std::string& name) const;

 private:
  std::string path_;
};

// Channel credentials trusting `ca_pem`, optionally presenting a client certificate.
std::shared_ptr<grpc::Channel> TlsChannel(int port, const std::string& ca_pem,
                                          const std::string& client_key_pem = "",
                                          const std::string& client_cert_pem = "");

// One engine for the test process, started on first use (the embedded model, 2 threads).
EngineBundle& SharedEngine();

// A GrpcServer on 127.0.0.1:0 over SharedEngine() with the given options and keys.
struct OpsServer {
  std::unique_ptr<GrpcServer> server;
  GenerationService* service = nullptr;
  int port = 0;
};
OpsServer StartOpsServer(EngineBundle& bundle, const GrpcServerOptions& options,
                         std::shared_ptr<const ApiKeySet> keys = nullptr,
                         int max_requests_per_key = 0);

// True when GetModelInfo over `channel` succeeds within 5 s.
bool CanCall(const std::shared_ptr<grpc::Channel>& channel);

}  // namespace hkv::testing
