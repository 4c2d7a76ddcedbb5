// TLS on the gRPC API: server certificates made here with openssl, mutual TLS, a wrong CA
// refused, certificate rotation picked up by new connections without a restart, and the
// plaintext health-only port for the kubelet.

#include <chrono>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "server/server_config.h"
#include "server/tls/tls_config.h"
#include "tests/health_client.h"
#include "tests/ops_test_util.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.MakeCa("ca") && certs_.MakeCa("other-ca"));
    ASSERT_TRUE(certs_.MakeLeaf("server", "ca") && certs_.MakeLeaf("client", "ca") &&
                certs_.MakeLeaf("stranger", "other-ca"));
  }

  TlsConfig Config(bool mutual) {
    TlsConfig c;
    c.cert = certs_.File("server.pem");
    c.key = certs_.File("server.key");
    if (mutual) c.client_ca = certs_.File("ca.pem");
    c.reload_interval = absl::Seconds(1);
    return c;
  }

  CertDir certs_;
};

TEST_F(TlsTest, ServesTlsToClientsTrustingItsCaOnly) {
  const TlsConfig tls = Config(false);
  ASSERT_TRUE(ValidateTlsConfig(tls).ok()) << ValidateTlsConfig(tls);
  GrpcServerOptions options;
  options.credentials = GrpcServerTlsCredentials(tls);
  OpsServer s = StartOpsServer(SharedEngine(), options);
  EXPECT_TRUE(CanCall(TlsChannel(s.port, certs_.Read("ca.pem"))));
  EXPECT_FALSE(CanCall(TlsChannel(s.port, certs_.Read("other-ca.pem"))))
      << "a client trusting another CA must refuse the server";
  EXPECT_FALSE(CanCall(grpc::CreateChannel("127.0.0.1:" + std::to_string(s.port),
                                           grpc::InsecureChannelCredentials())))
      << "the TLS port must not speak plaintext";
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  GrpcServerOptions options;
  options.credentials = GrpcServerTlsCredentials(Config(true));
  OpsServer s = StartOpsServer(SharedEngine(), options);
  const std::string ca = certs_.Read("ca.pem");
  EXPECT_TRUE(CanCall(TlsChannel(s.port, ca, certs_.Read("client.key"), certs_.Read("client.pem"))));
  EXPECT_FALSE(CanCall(TlsChannel(s.port, ca))) << "no client certificate";
  EXPECT_FALSE(
      CanCall(TlsChannel(s.port, ca, certs_.Read("stranger.key"), certs_.Read("stranger.pem"))))
      << "a client certificate from another CA";
}

TEST_F(TlsTest, RotatedCertificateReachesNewConnectionsWithoutRestart) {
  GrpcServerOptions options;
  options.credentials = GrpcServerTlsCredentials(Config(false));
  OpsServer s = StartOpsServer(SharedEngine(), options);
  ASSERT_TRUE(CanCall(TlsChannel(s.port, certs_.Read("ca.pem"))));
  // cert-manager's rotation: the secret's files are replaced in place (here each by a rename).
  ASSERT_TRUE(certs_.MakeLeaf("rotated", "other-ca"));
  std::filesystem::rename(certs_.File("rotated.key"), certs_.File("server.key"));
  std::filesystem::rename(certs_.File("rotated.pem"), certs_.File("server.pem"));
  bool rotated = false;
  for (int attempt = 0; attempt < 60 && !rotated; ++attempt) {
    rotated = CanCall(TlsChannel(s.port, certs_.Read("other-ca.pem")));
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_TRUE(rotated) << "new connections never saw the rotated certificate";
  EXPECT_FALSE(CanCall(TlsChannel(s.port, certs_.Read("ca.pem"))))
      << "new connections must no longer get the old certificate";
}

TEST_F(TlsTest, HealthPortAnswersPlaintextBesideTheTlsPort) {
  GrpcServerOptions options;
  options.credentials = GrpcServerTlsCredentials(Config(true));
  options.health_port = 0;
  options.health_host = "127.0.0.1";
  OpsServer s = StartOpsServer(SharedEngine(), options);
  ASSERT_GT(s.server->health_port(), 0);
  auto plain = LoopbackChannel(s.server->health_port());
  EXPECT_EQ(CheckHealth(plain, kReadinessService), kServing);
  EXPECT_EQ(CheckHealth(plain, kLivenessService), kServing);
  EXPECT_FALSE(CanCall(plain)) << "the health port must serve nothing but health";
  EXPECT_EQ(CheckHealth(LoopbackChannel(s.port), kReadinessService), kRpcError)
      << "the API port stays TLS-only";
}

TEST_F(TlsTest, BadFilesAreRefusedWithTheFileNamed) {
  TlsConfig c = Config(false);
  c.key = certs_.File("client.key");  // another certificate's key
  absl::Status s = ValidateTlsConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("client.key"), std::string::npos) << s;
  EXPECT_NE(s.message().find("match"), std::string::npos) << s;
  c = Config(false);
  c.cert = certs_.File("missing.pem");
  s = ValidateTlsConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("missing.pem"), std::string::npos) << s;
  c = Config(true);
  c.client_ca = certs_.File("server.key");  // not a CA bundle
  EXPECT_EQ(ValidateTlsConfig(c).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TlsTest, OpenSslContextSourceReloadsChangedFiles) {
  auto source = TlsContextSource::Create(Config(false));
  ASSERT_TRUE(source.ok()) << source.status();
  std::shared_ptr<SSL_CTX> first = (*source)->Current();
  EXPECT_EQ((*source)->Current(), first) << "unchanged files keep the context";
  ASSERT_TRUE(certs_.MakeLeaf("rotated", "other-ca"));
  std::filesystem::rename(certs_.File("rotated.key"), certs_.File("server.key"));
  std::filesystem::rename(certs_.File("rotated.pem"), certs_.File("server.pem"));
  std::shared_ptr<SSL_CTX> next = first;
  for (int attempt = 0; attempt < 40 && next == first; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    next = (*source)->Current();
  }
  EXPECT_NE(next, first) << "the rotated files were not loaded";
}

}  // namespace
}  // namespace hkv::testing
