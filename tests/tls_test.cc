// TLS on the gRPC API: server certificates made here with openssl, mutual TLS, a wrong CA
// refused, certificate rotation picked up by new connections without a restart, and the
// plaintext health-only port for the kubelet.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "httplib.h"
#include "server/metrics.h"
#include "server/server_config.h"
#include "server/tls/tls_config.h"
#include "tests/health_client.h"
#include "tests/ops_test_util.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

// GET `path` over HTTPS from 127.0.0.1:port, verifying the server against `ca_file` (blocking
// OpenSSL client). Returns the whole response, or "" when the connection or handshake failed.
std::string HttpsGet(int port, const std::string& ca_file, const std::string& path) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        SSL_CTX_free);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) return "";
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string out;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
    SSL* ssl = SSL_new(ctx.get());
    SSL_set_fd(ssl, fd);
    SSL_set1_host(ssl, "localhost");
    if (SSL_connect(ssl) == 1) {
      const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
      SSL_write(ssl, request.data(), static_cast<int>(request.size()));
      char buf[4096];
      int n;
      while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) out.append(buf, n);
    }
    SSL_free(ssl);
  }
  ERR_clear_error();
  ::close(fd);
  return out;
}

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
  EXPECT_TRUE(
      CanCall(TlsChannel(s.port, ca, certs_.Read("client.key"), certs_.Read("client.pem"))));
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

TEST_F(TlsTest, MetricsServeHttpsOnly) {
  auto source = TlsContextSource::Create(Config(false));
  ASSERT_TRUE(source.ok()) << source.status();
  MetricsServer metrics(&SharedEngine().engine->metrics());
  metrics.UseTls(source->get());
  ASSERT_TRUE(metrics.Start("127.0.0.1", 0).ok());
  const std::string response = HttpsGet(metrics.port(), certs_.File("ca.pem"), "/metrics");
  EXPECT_EQ(response.rfind("HTTP/1.1 200 OK", 0), 0u) << response.substr(0, 200);
  EXPECT_NE(response.find("vllm:num_requests_running"), std::string::npos);
  EXPECT_EQ(HttpsGet(metrics.port(), certs_.File("other-ca.pem"), "/metrics"), "")
      << "a client trusting another CA must refuse the server";
  httplib::Client plain("127.0.0.1", metrics.port());
  plain.set_read_timeout(5, 0);
  auto res = plain.Get("/metrics");
  EXPECT_TRUE(!res || res->status != 200) << "plaintext must get no metrics";
  // The server still answers TLS after the plaintext client's failed handshake.
  EXPECT_EQ(HttpsGet(metrics.port(), certs_.File("ca.pem"), "/healthz").rfind("HTTP/1.1 200", 0),
            0u);
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
