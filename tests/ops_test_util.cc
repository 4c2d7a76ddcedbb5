#include "tests/ops_test_util.h"

#include <stdlib.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/logging.h"
#include "server/auth/tenant_limiter.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

bool Run(const std::string& command) {
  return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
}

constexpr char kEcKey[] = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

}  // namespace

CertDir::CertDir() {
  char tmpl[] = "/tmp/hkv-certs-XXXXXX";
  HKV_CHECK(mkdtemp(tmpl) != nullptr);
  path_ = tmpl;
}

CertDir::~CertDir() { std::filesystem::remove_all(path_); }

bool CertDir::MakeCa(const std::string& name) {
  return Run("openssl req -x509 " + std::string(kEcKey) + " -keyout " + File(name + ".key") +
             " -out " + File(name + ".pem") + " -days 2 -subj /CN=" + name);
}

bool CertDir::MakeLeaf(const std::string& name, const std::string& ca) {
  {
    std::ofstream ext(File(name + ".ext"));
    ext << "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n";
  }
  return Run("openssl req " + std::string(kEcKey) + " -keyout " + File(name + ".key") + " -out " +
             File(name + ".csr") + " -subj /CN=localhost") &&
         Run("openssl x509 -req -in " + File(name + ".csr") + " -CA " + File(ca + ".pem") +
             " -CAkey " + File(ca + ".key") + " -CAcreateserial -days 2 -out " +
             File(name + ".pem") + " -extfile " + File(name + ".ext"));
}

std::string CertDir::Read(const std::string& name) const {
  std::ifstream in(File(name));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::shared_ptr<grpc::Channel> TlsChannel(int port, const std::string& ca_pem,
                                          const std::string& client_key_pem,
                                          const std::string& client_cert_pem) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ca_pem;
  options.pem_private_key = client_key_pem;
  options.pem_cert_chain = client_cert_pem;
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  // A connection (and handshake) of its own: a new channel must see the server's current cert.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::SslCredentials(options), args);
}

EngineBundle& SharedEngine() {
  static EngineBundle* bundle = [] {
    auto built = BuildEngine(TestServerConfig());
    HKV_CHECK(built.ok()) << built.status();
    auto* b = new EngineBundle(std::move(*built));
    b->engine->mutable_metrics()->SetModelInfo("stories260K", {{"block_size", "16"}});
    b->engine->Start();
    return b;
  }();
  return *bundle;
}

OpsServer StartOpsServer(EngineBundle& bundle, const GrpcServerOptions& options,
                         std::shared_ptr<const ApiKeySet> keys, int max_requests_per_key) {
  hkv::v1::ModelInfo info;
  info.set_model_name("stories260K");
  auto service = std::make_unique<GenerationService>(bundle.engine.get(), bundle.loaded.tokenizer,
                                                     bundle.loaded.chat, info);
  if (keys != nullptr) {
    service->SetApiKeys(std::move(keys), std::make_shared<TenantLimiter>(max_requests_per_key));
  }
  OpsServer s;
  s.service = service.get();
  s.server = std::make_unique<GrpcServer>(bundle.engine.get(), std::move(service));
  auto port = s.server->Start("127.0.0.1", 0, options);
  HKV_CHECK(port.ok()) << port.status();
  s.port = *port;
  return s;
}

bool CanCall(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = hkv::v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  hkv::v1::ModelInfo info;
  return stub->GetModelInfo(&context, hkv::v1::GetModelInfoRequest(), &info).ok();
}

}  // namespace hkv::testing
