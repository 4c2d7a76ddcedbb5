// Operations on the OpenAI-compatible HTTP API (issue 21 for the HTTP port): HTTPS from
// certificates made here with openssl, checked by cpp-httplib's SSL client (a client nobody
// here wrote); mutual TLS refusing clients without a certificate from the client CA; rotated
// certificates reaching new connections; API keys (401 with OpenAI's error object and no engine
// work, health and metrics without a key); the per-key limit (429 for that key only); and
// X-Request-Id round trips with the request's finished log line.

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "server/auth/tenant_limiter.h"
#include "server/openai_api.h"
#include "server/streaming_http_server.h"
#include "server/tls/tls_config.h"
#include "tests/http_test_client.h"
#include "tests/ops_test_util.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kAlphaKey[] = "alpha-key-0123456789";
constexpr char kBetaKey[] = "beta-key-0123456789";
constexpr char kCompletion[] = R"({"prompt": "Once upon a time", "max_tokens": 4})";

std::shared_ptr<const ApiKeySet> TwoTenants() {
  auto keys = ApiKeySet::FromEntries({{kAlphaKey, "alpha"}, {kBetaKey, "beta"}});
  HKV_CHECK(keys.ok()) << keys.status();
  return std::make_shared<const ApiKeySet>(*std::move(keys));
}

std::string Bearer(const std::string& key) { return "Authorization: Bearer " + key + "\r\n"; }

// OpenAiApi and its StreamingHttpServer on 127.0.0.1:0 over `bundle`'s engine, optionally with
// TLS and API keys, wired as `hkv serve` wires them.
class HttpApi {
 public:
  HttpApi(EngineBundle& bundle, TlsContextSource* tls = nullptr,
          std::shared_ptr<const ApiKeySet> keys = nullptr, int max_requests_per_key = 0) {
    ServerConfig config = TestServerConfig();
    api_ = std::make_unique<OpenAiApi>(bundle.engine.get(), bundle.loaded.tokenizer,
                                       bundle.loaded.chat, OpenAiApiOptionsFrom(config));
    api_->SetApiKeys(std::move(keys), std::make_shared<TenantLimiter>(max_requests_per_key));
    http_ = std::make_unique<StreamingHttpServer>(
        [this](const HttpRequest& r, const std::function<void()>& wake) {
          return api_->Handle(r, wake);
        });
    if (tls != nullptr) http_->UseTls(tls);
    auto port = http_->Start("127.0.0.1", 0, "--http-port");
    HKV_CHECK(port.ok()) << port.status();
    port_ = *port;
  }
  ~HttpApi() { http_->Stop(); }
  int port() const { return port_; }

 private:
  std::unique_ptr<OpenAiApi> api_;
  std::unique_ptr<StreamingHttpServer> http_;
  int port_ = 0;
};

class HttpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.MakeCa("ca") && certs_.MakeCa("other-ca"));
    ASSERT_TRUE(certs_.MakeLeaf("server", "ca") && certs_.MakeLeaf("client", "ca") &&
                certs_.MakeLeaf("stranger", "other-ca"));
  }
  std::unique_ptr<TlsContextSource> Source(bool mutual) {
    TlsConfig c;
    c.cert = certs_.File("server.pem");
    c.key = certs_.File("server.key");
    if (mutual) c.client_ca = certs_.File("ca.pem");
    c.reload_interval = absl::Milliseconds(200);
    auto source = TlsContextSource::Create(c);
    HKV_CHECK(source.ok()) << source.status();
    return *std::move(source);
  }
  // POST /v1/completions over HTTPS trusting `ca` (a CertDir name), presenting `client` (a
  // leaf name) when set. The status, or -1 when no TLS session came up.
  int Complete(int port, const std::string& ca, const std::string& client = "",
               std::string* body = nullptr) {
    std::unique_ptr<httplib::SSLClient> cli =
        client.empty()
            ? std::make_unique<httplib::SSLClient>("127.0.0.1", port)
            : std::make_unique<httplib::SSLClient>("127.0.0.1", port, certs_.File(client + ".pem"),
                                                   certs_.File(client + ".key"));
    cli->set_ca_cert_path(certs_.File(ca + ".pem"));
    cli->enable_server_certificate_verification(true);
    cli->set_connection_timeout(5);
    cli->set_read_timeout(20);
    httplib::Result res = cli->Post("/v1/completions", kCompletion, "application/json");
    if (!res) return -1;
    if (body != nullptr) *body = res->body;
    return res->status;
  }
  CertDir certs_;
};

TEST_F(HttpsTest, ServesHttpsToClientsTrustingItsCaOnly) {
  auto tls = Source(false);
  HttpApi api(SharedEngine(), tls.get());
  std::string body;
  ASSERT_EQ(Complete(api.port(), "ca", "", &body), 200);
  EXPECT_EQ(Json::parse(body)["usage"]["completion_tokens"], 4);
  EXPECT_EQ(Complete(api.port(), "other-ca"), -1) << "a client trusting another CA";
  HttpResult plain = HttpCall(api.port(), "POST", "/v1/completions", kCompletion);
  EXPECT_EQ(plain.status, 0) << "the HTTPS port answered plaintext HTTP";
}

TEST_F(HttpsTest, MutualTlsRefusesClientsWithoutACertificateFromTheClientCa) {
  auto tls = Source(true);
  HttpApi api(SharedEngine(), tls.get());
  EXPECT_EQ(Complete(api.port(), "ca", "client"), 200);
  EXPECT_EQ(Complete(api.port(), "ca"), -1) << "no client certificate";
  EXPECT_EQ(Complete(api.port(), "ca", "stranger"), -1) << "a certificate from another CA";
}

TEST_F(HttpsTest, RotatedCertificateReachesNewConnectionsWithoutRestart) {
  auto tls = Source(false);
  HttpApi api(SharedEngine(), tls.get());
  ASSERT_EQ(Complete(api.port(), "ca"), 200);
  // cert-manager's rotation: the secret's files replaced in place (here each by a rename).
  ASSERT_TRUE(certs_.MakeLeaf("rotated", "other-ca"));
  std::filesystem::rename(certs_.File("rotated.key"), certs_.File("server.key"));
  std::filesystem::rename(certs_.File("rotated.pem"), certs_.File("server.pem"));
  bool rotated = false;
  for (int attempt = 0; attempt < 60 && !rotated; ++attempt) {
    rotated = Complete(api.port(), "other-ca") == 200;
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(rotated) << "new connections never got the rotated certificate";
  EXPECT_EQ(Complete(api.port(), "ca"), -1) << "new connections still get the old certificate";
}

TEST(HttpApiKeyTest, MissingOrWrongKeyIs401AndCostsNoEngineWork) {
  HttpApi api(SharedEngine(), nullptr, TwoTenants());
  const EngineMetrics& m = SharedEngine().engine->metrics();
  const int64_t refused_before = m.requests_unauthenticated_total.load();
  const int64_t prompt_before = m.prompt_tokens_total.load();
  const int64_t finished_before = m.requests_finished_total.load();
  int refusals = 0;
  for (const std::string headers :
       {std::string(), Bearer("wrong-key-0123456789"), std::string("Authorization: Basic x\r\n"),
        "Authorization: Bearer " + std::string(2000, 'k') + "\r\n"}) {
    for (const char* path : {"/v1/completions", "/v1/chat/completions", "/tokenize"}) {
      HttpResult r = HttpCall(api.port(), "POST", path, kCompletion, headers);
      EXPECT_EQ(r.status, 401) << path << " " << r.body;
      EXPECT_EQ(r.headers["www-authenticate"], "Bearer");
      const Json error = Json::parse(r.body)["error"];
      EXPECT_EQ(error["code"], "invalid_api_key");
      EXPECT_EQ(error["type"], "invalid_request_error");
      EXPECT_THAT(error["message"].get<std::string>(), HasSubstr("Authorization: Bearer"));
      ++refusals;
    }
    EXPECT_EQ(HttpCall(api.port(), "GET", "/v1/models", "", headers).status, 401);
    ++refusals;
  }
  EXPECT_EQ(m.requests_unauthenticated_total.load() - refused_before, refusals);
  EXPECT_EQ(m.prompt_tokens_total.load(), prompt_before) << "a refused request reached the engine";
  EXPECT_EQ(m.requests_finished_total.load(), finished_before);
}

TEST(HttpApiKeyTest, RightKeyIsServedAndHealthAndMetricsNeedNone) {
  HttpApi api(SharedEngine(), nullptr, TwoTenants());
  HttpResult r = HttpCall(api.port(), "POST", "/v1/completions", kCompletion, Bearer(kBetaKey));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Json::parse(r.body)["usage"]["completion_tokens"], 4);
  // The scheme's case does not matter (RFC 7235).
  EXPECT_EQ(HttpCall(api.port(), "GET", "/v1/models", "",
                     std::string("authorization: bearer ") + kAlphaKey + "\r\n")
                .status,
            200);
  EXPECT_EQ(HttpCall(api.port(), "GET", "/health").status, 200);
  HttpResult metrics = HttpCall(api.port(), "GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body, HasSubstr("vllm:num_requests_running"));
}

TEST(HttpRequestIdTest, HeaderRoundTripsIntoTheResponseIdAndTheLogLine) {
  HttpApi api(SharedEngine());
  const std::string trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  ::testing::internal::CaptureStderr();
  HttpResult r = HttpCall(api.port(), "POST", "/v1/completions", kCompletion,
                          "X-Request-Id: client-trace-42\r\ntraceparent: " + trace + "\r\n");
  HttpResult chat = HttpCall(
      api.port(), "POST", "/v1/chat/completions",
      R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true})",
      "X-Request-Id: chat-7\r\n");
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["x-request-id"], "client-trace-42");
  EXPECT_EQ(Json::parse(r.body)["id"], "cmpl-client-trace-42");
  EXPECT_THAT(log, HasSubstr("request_id=client-trace-42"));
  EXPECT_THAT(log, HasSubstr("traceparent=" + trace));
  EXPECT_THAT(log, HasSubstr("generated_tokens=4"));
  EXPECT_EQ(chat.headers["x-request-id"], "chat-7");
  if (SharedEngine().loaded.chat == nullptr) {
    EXPECT_EQ(chat.status, 400) << "chat without a chat template";
  } else {
    ASSERT_EQ(chat.status, 200) << chat.body;
    std::vector<std::string> events = SseData(chat.body);
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(Json::parse(events[0])["id"], "chatcmpl-chat-7");
  }

  HttpResult generated = HttpCall(api.port(), "POST", "/v1/completions", kCompletion);
  ASSERT_EQ(generated.status, 200);
  const std::string id = generated.headers["x-request-id"];
  EXPECT_THAT(id, StartsWith("hkv-"));
  EXPECT_EQ(Json::parse(generated.body)["id"], "cmpl-" + id) << "the generated id is echoed";

  // gRPC's rules: no "hkv-" prefix (the server's own ids), printable ASCII without spaces.
  for (const char* bad : {"hkv-mine", "two words", "tab\tid"}) {
    const std::string header = std::string("X-Request-Id: ") + bad + "\r\n";
    HttpResult refused = HttpCall(api.port(), "POST", "/v1/completions", kCompletion, header);
    EXPECT_EQ(refused.status, 400) << bad;
    EXPECT_THAT(refused.body, HasSubstr("x-request-id"));
  }
}

// An engine whose loop stalls 5 s after its first step (HKV_FAULT_ENGINE_STALL_MS), so that a
// request stays in flight while the test sends others.
class StalledHttpTest : public ::testing::Test {
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

TEST_F(StalledHttpTest, PerKeyLimitIs429ForThatKeyOnly) {
  HttpApi api(*bundle_, nullptr, TwoTenants(), /*max_requests_per_key=*/1);
  // Alpha's streamed request stays in flight (the engine stalls) while its connection is open.
  const int alpha = ConnectLoopback(api.port());
  ASSERT_GE(alpha, 0);
  const std::string stream_body = R"({"prompt": "Once", "max_tokens": 64, "stream": true})";
  ASSERT_TRUE(SendAll(alpha, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + Bearer(kAlphaKey) +
                                 "Content-Length: " + std::to_string(stream_body.size()) +
                                 "\r\n\r\n" + stream_body));
  // Its first event comes after the first step: the request holds its place from then on.
  std::string head;
  char buf[4096];
  while (head.find("data:") == std::string::npos) {
    const ssize_t n = ::recv(alpha, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << head;
    head.append(buf, static_cast<size_t>(n));
  }
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200"));

  HttpResult second =
      HttpCall(api.port(), "POST", "/v1/completions", kCompletion, Bearer(kAlphaKey));
  EXPECT_EQ(second.status, 429) << second.body;
  EXPECT_EQ(second.headers["retry-after"], "1");
  EXPECT_EQ(Json::parse(second.body)["error"]["type"], "rate_limit_error");
  EXPECT_THAT(second.body, HasSubstr("--max-requests-per-key"));

  // Beta is under its own limit (its request waits out the stall, then runs).
  HttpResult beta = HttpCall(api.port(), "POST", "/v1/completions", kCompletion, Bearer(kBetaKey));
  EXPECT_EQ(beta.status, 200) << beta.body;

  // Alpha leaves: its place is given back, and its next request is served.
  ::close(alpha);
  int status = 0;
  for (int attempt = 0; attempt < 100 && status != 200; ++attempt) {
    status = HttpCall(api.port(), "POST", "/v1/completions", kCompletion, Bearer(kAlphaKey)).status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status, 200) << "alpha's place was not given back when it left";
}

}  // namespace
}  // namespace hkv::testing
