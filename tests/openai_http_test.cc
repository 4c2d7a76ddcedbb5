// The OpenAI-compatible HTTP API end to end: the CPU engine with stories260K behind OpenAiApi
// and StreamingHttpServer on a loopback port, driven by raw HTTP requests: replies, streams,
// errors and their statuses, hostile clients (huge bodies, bad JSON, wrong types, slowloris,
// silent and non-reading clients) and clients that disconnect mid-stream.

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/model_setup.h"
#include "server/openai_api.h"
#include "server/streaming_http_server.h"
#include "tests/http_test_client.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

using Json = nlohmann::json;

// The engine, the API and its HTTP server, on a free loopback port.
class ApiServer {
 public:
  explicit ApiServer(ServerConfig config, StreamingHttpLimits limits = {}) {
    auto bundle = BuildEngine(config);
    HKV_CHECK(bundle.ok()) << bundle.status();
    bundle_ = std::move(*bundle);
    bundle_.engine->Start();
    config.served_model_name = "stories260K,tiny";
    api_ = std::make_unique<OpenAiApi>(bundle_.engine.get(), bundle_.loaded.tokenizer,
                                       bundle_.loaded.chat, OpenAiApiOptionsFrom(config));
    http_ = std::make_unique<StreamingHttpServer>(
        [this](const HttpRequest& r, const std::function<void()>& wake) {
          return api_->Handle(r, wake);
        },
        limits);
    auto port = http_->Start("127.0.0.1", 0, "--http-port");
    HKV_CHECK(port.ok()) << port.status();
    port_ = *port;
  }
  ~ApiServer() {
    http_->Stop();
    bundle_.engine->Stop();
  }
  int port() const { return port_; }
  Engine& engine() { return *bundle_.engine; }
  StreamingHttpServer& http() { return *http_; }

  // Waits (up to 20 s) until the engine runs nothing and holds no KV blocks.
  bool WaitIdle() {
    for (int i = 0; i < 2000; ++i) {
      const EngineMetrics& m = bundle_.engine->metrics();
      if (m.requests_running.load() == 0 && m.requests_waiting.load() == 0 &&
          m.kv_blocks_used.load() == 0) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

 private:
  EngineBundle bundle_;
  std::unique_ptr<OpenAiApi> api_;
  std::unique_ptr<StreamingHttpServer> http_;
  int port_ = 0;
};

class OpenAiHttpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    StreamingHttpLimits limits;
    limits.request_timeout = absl::Seconds(2);
    limits.max_body_bytes = 1 << 20;
    server_ = new ApiServer(TestServerConfig(), limits);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static HttpResult Post(const std::string& path, const std::string& body) {
    return HttpCall(server_->port(), "POST", path, body);
  }
  static inline ApiServer* server_ = nullptr;
};

TEST_F(OpenAiHttpTest, CompletionMatchesGreedyGolden) {
  // The empty prompt is BOS alone ([1]); greedy continues with the golden ids.
  const HttpResult r = Post("/v1/completions",
                            R"({"model": "tiny", "prompt": [1], "max_tokens": 12,
                                "temperature": 0})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers.at("content-type"), "application/json");
  const Json j = Json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 1);
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  // Decoded after the BOS, as the stream decodes them (SentencePiece drops the first space).
  std::vector<int> ids = {1};
  ids.insert(ids.end(), kGoldenIds, kGoldenIds + 12);
  const HttpResult text = Post("/detokenize", Json({{"tokens", ids}}).dump());
  ASSERT_EQ(text.status, 200) << text.body;
  EXPECT_EQ(j["choices"][0]["text"], Json::parse(text.body)["prompt"]);
}

TEST_F(OpenAiHttpTest, StreamedEventsAddUpToTheReply) {
  const std::string body = R"({"prompt": "Once upon a time", "max_tokens": 20,
                               "temperature": 0, "stream": %s,
                               "stream_options": {"include_usage": true}})";
  const HttpResult whole = Post("/v1/completions", absl::StrReplaceAll(body, {{"%s", "false"}}));
  const HttpResult streamed = Post("/v1/completions", absl::StrReplaceAll(body, {{"%s", "true"}}));
  ASSERT_EQ(whole.status, 200) << whole.body;
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_EQ(streamed.headers.at("content-type"), "text/event-stream");
  const std::vector<std::string> events = SseData(streamed.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const Json e = Json::parse(events[i]);
    EXPECT_TRUE(e["usage"].is_null());
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  const Json usage = Json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 20);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(text, Json::parse(whole.body)["choices"][0]["text"]);
}

TEST_F(OpenAiHttpTest, StopStringsAndListsOfPrompts) {
  const HttpResult r = Post("/v1/completions", R"({"prompt": ["Once upon a time", [1, 403]],
      "max_tokens": 40, "temperature": 0, "stop": ["Lily"]})");
  ASSERT_EQ(r.status, 200) << r.body;
  const Json j = Json::parse(r.body);
  ASSERT_EQ(j["choices"].size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["text"].get<std::string>().find("Lily"), std::string::npos);
  }
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");  // "...named Lily" is the golden text.
}

TEST_F(OpenAiHttpTest, NGreedyChoicesAreIdenticalAndIndexedPerPrompt) {
  const HttpResult r = Post("/v1/completions", R"({"prompt": [[1], [1, 403]], "n": 3,
      "best_of": 3, "max_tokens": 12, "temperature": 0})");
  ASSERT_EQ(r.status, 200) << r.body;
  const Json j = Json::parse(r.body);
  ASSERT_EQ(j["choices"].size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);  // prompt_index * n + sample, as OpenAI numbers.
    EXPECT_EQ(j["choices"][i]["finish_reason"], "length");
    // Greedy: every sample of a prompt is that prompt's one continuation.
    EXPECT_EQ(j["choices"][i]["text"], j["choices"][i / 3 * 3]["text"]) << i;
  }
  EXPECT_NE(j["choices"][0]["text"], j["choices"][3]["text"]);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 1 + 2);  // Each prompt once, not once per sample.
  EXPECT_EQ(j["usage"]["completion_tokens"], 6 * 12);
  const HttpResult one =
      Post("/v1/completions", R"({"prompt": [1], "max_tokens": 12, "temperature": 0})");
  ASSERT_EQ(one.status, 200) << one.body;
  EXPECT_EQ(Json::parse(one.body)["choices"][0]["text"], j["choices"][0]["text"]);
}

TEST_F(OpenAiHttpTest, NSeededStreamCarriesEverySamplesIndex) {
  const std::string body = R"({"prompt": "Once upon a time", "n": 2, "max_tokens": 16,
      "temperature": 1, "seed": 7, "stream": %s, "stream_options": {"include_usage": true}})";
  const HttpResult whole = Post("/v1/completions", absl::StrReplaceAll(body, {{"%s", "false"}}));
  const HttpResult streamed = Post("/v1/completions", absl::StrReplaceAll(body, {{"%s", "true"}}));
  ASSERT_EQ(whole.status, 200) << whole.body;
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  const std::vector<std::string> events = SseData(streamed.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text[2];
  int finished[2] = {0, 0};
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const Json e = Json::parse(events[i]);
    ASSERT_EQ(e["choices"].size(), 1u);
    const int index = e["choices"][0]["index"];
    ASSERT_TRUE(index == 0 || index == 1) << events[i];
    text[index] += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) ++finished[index];
  }
  EXPECT_EQ(finished[0], 1);
  EXPECT_EQ(finished[1], 1);
  const Json usage = Json::parse(events[events.size() - 2])["usage"];
  EXPECT_EQ(usage["completion_tokens"], 32);
  // Seeded: the stream and the whole reply draw the same two samples, which differ.
  const Json j = Json::parse(whole.body);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(text[0], j["choices"][0]["text"]);
  EXPECT_EQ(text[1], j["choices"][1]["text"]);
  EXPECT_NE(text[0], text[1]);
  EXPECT_EQ(j["usage"]["prompt_tokens"], usage["prompt_tokens"]);
}

TEST_F(OpenAiHttpTest, PenaltiesAndMinTokensChangeTheOutput) {
  const std::string greedy = R"({"prompt": [1], "max_tokens": 40, "temperature": 0)";
  auto text = [&](const std::string& extra) {
    const HttpResult r = Post("/v1/completions", greedy + extra + "}");
    EXPECT_EQ(r.status, 200) << r.body;
    return Json::parse(r.body)["choices"][0]["text"].get<std::string>();
  };
  const std::string plain = text("");
  for (const char* extra : {R"(, "presence_penalty": 1.5)", R"(, "frequency_penalty": 1.5)",
                            R"(, "repetition_penalty": 1.8)"}) {
    const std::string penalized = text(extra);
    EXPECT_NE(penalized, plain) << extra;
    EXPECT_EQ(text(extra), penalized) << extra;  // Still deterministic.
  }
  // min_p keeps the greedy token (the top one is never below min_p x itself).
  EXPECT_EQ(text(R"(, "min_p": 0.5)"), plain);
  // The third golden token as a stop token ends the reply after 3 tokens; min_tokens 6 forbids
  // it before the 6th, so the reply runs past it.
  const std::string stop = absl::StrCat(R"(, "stop_token_ids": [)", kGoldenIds[2], "]");
  const HttpResult early = Post("/v1/completions", greedy + stop + "}");
  const HttpResult held = Post("/v1/completions", greedy + stop + R"(, "min_tokens": 6})");
  ASSERT_EQ(early.status, 200) << early.body;
  ASSERT_EQ(held.status, 200) << held.body;
  EXPECT_EQ(Json::parse(early.body)["usage"]["completion_tokens"], 3);
  EXPECT_GE(Json::parse(held.body)["usage"]["completion_tokens"].get<int>(), 6);
}

// The logprobs the engine (what gRPC renders) gives a request, one per generated token.
std::vector<TokenLogprobs> EngineLogprobs(Engine& engine, EngineRequest r) {
  auto stream = engine.Submit(std::move(r));
  EXPECT_TRUE(stream.ok()) << stream.status();
  std::vector<TokenLogprobs> out;
  if (!stream.ok()) return out;
  for (int i = 0; i < 1000; ++i) {
    std::optional<StreamChunk> chunk = (*stream)->Next(absl::Seconds(10));
    if (!chunk.has_value()) break;
    for (TokenLogprobs& l : chunk->logprobs) out.push_back(std::move(l));
    if (chunk->finished) break;
  }
  return out;
}

TEST_F(OpenAiHttpTest, CompletionLogprobsMatchTheEngineAndAreConsistent) {
  const std::string body = R"({"prompt": [1], "max_tokens": 10, "temperature": 0,
      "logprobs": 5, "stream": %s})";
  const HttpResult r = Post("/v1/completions", absl::StrReplaceAll(body, {{"%s", "false"}}));
  ASSERT_EQ(r.status, 200) << r.body;
  const Json j = Json::parse(r.body);
  const Json& lp = j["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.is_object()) << r.body;
  ASSERT_EQ(lp["tokens"].size(), 10u);
  ASSERT_EQ(lp["token_logprobs"].size(), 10u);
  ASSERT_EQ(lp["top_logprobs"].size(), 10u);
  ASSERT_EQ(lp["text_offset"].size(), 10u);
  std::string joined;
  EngineRequest same;
  same.prompt = {1};
  same.sampling.max_tokens = 10;
  same.sampling.temperature = 0;
  same.sampling.logprobs = 5;
  const std::vector<TokenLogprobs> engine = EngineLogprobs(server_->engine(), std::move(same));
  ASSERT_EQ(engine.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(lp["text_offset"][i], joined.size()) << i;
    joined += lp["tokens"][i].get<std::string>();
    const float value = lp["token_logprobs"][i].get<float>();
    EXPECT_LE(value, 0.0f);
    EXPECT_FLOAT_EQ(value, engine[i].logprob) << i;
    const Json& top = lp["top_logprobs"][i];
    ASSERT_GE(top.size(), 1u);
    ASSERT_LE(top.size(), 5u);
    // Greedy: the sampled token is the most likely one, and is in the top list as itself.
    float best = -1e30f;
    for (const auto& [token, v] : top.items()) best = std::max(best, v.get<float>());
    EXPECT_FLOAT_EQ(best, value) << i;
    ASSERT_TRUE(top.contains(lp["tokens"][i].get<std::string>())) << top;
    EXPECT_FLOAT_EQ(top[lp["tokens"][i].get<std::string>()].get<float>(), value);
    EXPECT_FLOAT_EQ(best, engine[i].top_logprobs[0]);
  }
  EXPECT_EQ(joined, j["choices"][0]["text"]);  // Token strings spell the text.

  // Streamed: each chunk carries its own tokens' logprobs, adding up to the same lists.
  const HttpResult streamed = Post("/v1/completions", absl::StrReplaceAll(body, {{"%s", "true"}}));
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  Json tokens = Json::array(), values = Json::array();
  for (const std::string& e : SseData(streamed.body)) {
    if (e == "[DONE]") continue;
    const Json c = Json::parse(e)["choices"][0];
    ASSERT_TRUE(c["logprobs"].is_object()) << e;
    for (const Json& t : c["logprobs"]["tokens"]) tokens.push_back(t);
    for (const Json& v : c["logprobs"]["token_logprobs"]) values.push_back(v);
  }
  EXPECT_EQ(tokens, lp["tokens"]);
  EXPECT_EQ(values, lp["token_logprobs"]);

  // logprobs: 0 is the sampled token's only; no logprobs field is null.
  const HttpResult zero = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 3,
      "temperature": 0, "logprobs": 0})");
  ASSERT_EQ(zero.status, 200) << zero.body;
  const Json z = Json::parse(zero.body)["choices"][0]["logprobs"];
  ASSERT_EQ(z["token_logprobs"].size(), 3u);
  EXPECT_TRUE(z["top_logprobs"][0].empty());
  const HttpResult none = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 3})");
  EXPECT_TRUE(Json::parse(none.body)["choices"][0]["logprobs"].is_null());
}

TEST_F(OpenAiHttpTest, SampledLogprobsWithNAreEachSamplesOwn) {
  const HttpResult r = Post("/v1/completions", R"({"prompt": "Once upon a time", "n": 2,
      "max_tokens": 8, "temperature": 1, "seed": 3, "logprobs": 3})");
  ASSERT_EQ(r.status, 200) << r.body;
  const Json j = Json::parse(r.body);
  ASSERT_EQ(j["choices"].size(), 2u);
  for (const Json& c : j["choices"]) {
    const Json& lp = c["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), 8u) << c;
    std::string joined;
    for (size_t i = 0; i < 8; ++i) {
      joined += lp["tokens"][i].get<std::string>();
      const float value = lp["token_logprobs"][i].get<float>();
      EXPECT_LE(value, 0.0f);
      // Sampled, the token may be outside the top 3; inside, its entry is its logprob.
      const std::string token = lp["tokens"][i];
      if (lp["top_logprobs"][i].contains(token)) {
        EXPECT_FLOAT_EQ(lp["top_logprobs"][i][token].get<float>(), value);
      }
    }
    EXPECT_EQ(joined, c["text"]);
  }
}

TEST_F(OpenAiHttpTest, BadSamplingValuesAre400NamingTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {R"("n": 0)", "n"},
      {R"("n": 100000)", "n is 100000"},
      {R"("n": 2, "best_of": 4)", "best_of"},
      {R"("presence_penalty": 5)", "presence_penalty"},
      {R"("frequency_penalty": -3)", "frequency_penalty"},
      {R"("repetition_penalty": 0)", "repetition_penalty"},
      {R"("min_p": 1.5)", "min_p"},
      {R"("min_tokens": -2)", "min_tokens"},
      {R"("logprobs": 50)", "logprobs"},
  };
  for (const auto& [field, name] : cases) {
    const HttpResult r =
        Post("/v1/completions", std::string(R"({"prompt": [1], "max_tokens": 2, )") + field + "}");
    EXPECT_EQ(r.status, 400) << field << ": " << r.body;
    const Json j = Json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error") << r.body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(name), std::string::npos)
        << field << ": " << r.body;
  }
  EXPECT_TRUE(server_->WaitIdle());
}

TEST_F(OpenAiHttpTest, ErrorsHaveTheirStatusesAndObjects) {
  struct Case {
    std::string method, path, body;
    int status;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/completions", R"({"model": "gpt-4", "prompt": "x"})", 404},
      {"POST", "/v1/completions", "{bad json", 400},
      {"POST", "/v1/completions", R"({"prompt": "x", "max_tokens": "many"})", 400},
      {"POST", "/v1/completions", R"({"prompt": "x", "echo": true})", 400},
      {"POST", "/v1/completions", R"({"prompt": [1, 99999]})", 400},
      {"POST", "/v1/completions", R"({"prompt": [1], "max_tokens": 100000})", 400},
      {"POST", "/v1/completions", R"({"prompt": "x", "kv_policy": {"name": "nope"}})", 400},
      {"POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}]})",
       400},  // stories260K has no chat template.
      {"GET", "/v1/completions", "", 405},
      {"GET", "/nothing", "", 404},
      {"POST", "/detokenize", R"({"tokens": [-1]})", 400},
  };
  for (const Case& c : cases) {
    const HttpResult r = HttpCall(server_->port(), c.method, c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.path << " " << c.body << " -> " << r.body;
    const Json j = Json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_EQ(j["error"]["code"], c.status) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string()) << r.body;
  }
  // A request that fails after it was queued (it can never fit the context) is a 400 as well.
  const HttpResult fit = Post("/v1/completions", R"({"prompt": [1], "max_tokens": 600})");
  EXPECT_EQ(fit.status, 400) << fit.body;
  // Also when streamed: the stream's head waits for its first event.
  const HttpResult streamed_fit =
      Post("/v1/completions", R"({"prompt": [1], "max_tokens": 600, "stream": true})");
  EXPECT_EQ(streamed_fit.status, 400) << streamed_fit.body;
  EXPECT_EQ(Json::parse(streamed_fit.body)["error"]["code"], 400);
}

TEST_F(OpenAiHttpTest, ModelsHealthMetricsTokenize) {
  const HttpResult models = HttpCall(server_->port(), "GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  const Json m = Json::parse(models.body);
  ASSERT_EQ(m["data"].size(), 2u);
  EXPECT_EQ(m["data"][0]["id"], "stories260K");
  EXPECT_EQ(m["data"][1]["id"], "tiny");
  EXPECT_EQ(HttpCall(server_->port(), "GET", "/health").status, 200);
  const HttpResult metrics = HttpCall(server_->port(), "GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("hkv_requests_running"), std::string::npos);
  const HttpResult tok = Post("/tokenize", R"({"prompt": "Once upon a time"})");
  ASSERT_EQ(tok.status, 200) << tok.body;
  const Json t = Json::parse(tok.body);
  EXPECT_EQ(t["count"], t["tokens"].size());
  EXPECT_EQ(t["tokens"][0], 1);  // BOS.
  const HttpResult back = Post("/detokenize", Json({{"tokens", t["tokens"]}}).dump());
  EXPECT_NE(Json::parse(back.body)["prompt"].get<std::string>().find("Once upon a time"),
            std::string::npos);
}

TEST_F(OpenAiHttpTest, HostileBodiesAndHeads) {
  const int port = server_->port();
  // A declared body over the cap is refused before it is sent.
  int fd = ConnectLoopback(port);
  ASSERT_TRUE(SendAll(fd, "POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"));
  bool closed = false;
  HttpResult r = ParseHttpReply(ReadUntilClose(fd, 10, &closed));
  EXPECT_EQ(r.status, 413);
  ::close(fd);
  // Also when it is actually sent (curl's Expect: 100-continue is not waited for).
  r = HttpCall(port, "POST", "/v1/completions", std::string(2 << 20, 'x'));
  EXPECT_EQ(r.status, 413);
  // A head over the cap.
  r = HttpCall(port, "GET", "/v1/models", "", "X-Junk: " + std::string(40000, 'a') + "\r\n");
  EXPECT_EQ(r.status, 431);
  // Not HTTP at all.
  fd = ConnectLoopback(port);
  ASSERT_TRUE(SendAll(fd, "hello\r\n\r\n"));
  EXPECT_EQ(ParseHttpReply(ReadUntilClose(fd, 10, &closed)).status, 400);
  ::close(fd);
  // Chunked request bodies are refused.
  r = HttpCall(port, "POST", "/v1/completions", "", "Transfer-Encoding: chunked\r\n");
  EXPECT_EQ(r.status, 411);
  // Nesting bombs and wrong types inside the list.
  r = Post("/v1/completions", "{\"prompt\": " + std::string(100000, '[') + "}");
  EXPECT_EQ(r.status, 400);
  r = Post("/v1/completions", R"({"prompt": [[1, 2], "x", {"a": 1}]})");
  EXPECT_EQ(r.status, 400);
  // The server still serves.
  EXPECT_EQ(Post("/v1/completions", R"({"prompt": [1], "max_tokens": 2})").status, 200);
}

TEST_F(OpenAiHttpTest, SlowAndSilentClientsDoNotHoldUpOthers) {
  const int port = server_->port();
  // A slowloris (a byte of its head now and then), a silent client, and a client that asks for
  // a long stream and never reads it.
  const int slow = ConnectLoopback(port);
  ASSERT_TRUE(SendAll(slow, "POST /v1/compl"));
  const int silent = ConnectLoopback(port);
  const int deaf = ConnectLoopback(port);
  const std::string stream_body =
      R"({"prompt": [1], "max_tokens": 400, "ignore_eos": true, "stream": true})";
  ASSERT_TRUE(SendAll(deaf, absl::StrCat("POST /v1/completions HTTP/1.1\r\nContent-Length: ",
                                         stream_body.size(), "\r\n\r\n", stream_body)));
  // Meanwhile 64 concurrent clients are all answered.
  std::vector<std::thread> threads;
  std::vector<int> statuses(64);
  for (int i = 0; i < 64; ++i) {
    threads.emplace_back([&, i] {
      statuses[i] = HttpCall(port, "POST", "/v1/completions",
                             R"({"prompt": "Once", "max_tokens": 8, "stream": true})")
                        .status;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int s : statuses) EXPECT_EQ(s, 200);
  // The slowloris and the silent client are cut at the request deadline (408).
  bool closed = false;
  EXPECT_EQ(ParseHttpReply(ReadUntilClose(slow, 20, &closed)).status, 408);
  EXPECT_TRUE(closed);
  EXPECT_EQ(ParseHttpReply(ReadUntilClose(silent, 20, &closed)).status, 408);
  ::close(slow);
  ::close(silent);
  // The deaf client's whole stream is in its socket buffer; it still gets all of it.
  const HttpResult deaf_reply = ParseHttpReply(ReadUntilClose(deaf, 20, &closed));
  EXPECT_EQ(deaf_reply.status, 200);
  EXPECT_EQ(SseData(deaf_reply.body).back(), "[DONE]");
  ::close(deaf);
}

TEST_F(OpenAiHttpTest, DisconnectMidStreamAbortsAndFreesBlocks) {
  ASSERT_TRUE(server_->WaitIdle());
  const int64_t generated_before = server_->engine().metrics().generation_tokens_total.load();
  const int fd = ConnectLoopback(server_->port());
  const std::string body =
      R"({"prompt": [1], "max_tokens": 500, "ignore_eos": true, "stream": true})";
  ASSERT_TRUE(SendAll(fd, absl::StrCat("POST /v1/completions HTTP/1.1\r\nContent-Length: ",
                                       body.size(), "\r\n\r\n", body)));
  // Read until the first token's event has arrived, then hang up.
  std::string got;
  char buf[4096];
  while (got.find("\"text\"") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  struct linger hard = {1, 0};  // Reset, as a killed client's kernel would.
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
  ::close(fd);
  ASSERT_TRUE(server_->WaitIdle());
  EXPECT_LT(server_->engine().metrics().generation_tokens_total.load() - generated_before, 500);
  EXPECT_EQ(server_->engine().metrics().kv_blocks_used.load(), 0);
}

TEST(OpenAiHttpLimitsTest, QueueFullIs429AndDrainingIs503WithRetryAfter) {
  ServerConfig config = TestServerConfig();
  config.max_seqs = 1;
  config.max_queue = 1;
  ApiServer server(config);
  // Three prompts in one request: one runs, one waits, the third finds the queue full.
  const HttpResult full =
      HttpCall(server.port(), "POST", "/v1/completions",
               R"({"prompt": [[1], [1], [1]], "max_tokens": 400, "ignore_eos": true})");
  EXPECT_EQ(full.status, 429) << full.body;
  EXPECT_EQ(full.headers.count("retry-after"), 1u);
  EXPECT_TRUE(server.WaitIdle());  // The two queued before it were cancelled.
  server.engine().Drain(absl::ZeroDuration());
  const HttpResult draining =
      HttpCall(server.port(), "POST", "/v1/completions", R"({"prompt": [1]})");
  EXPECT_EQ(draining.status, 503) << draining.body;
  EXPECT_EQ(draining.headers.count("retry-after"), 1u);
  EXPECT_EQ(HttpCall(server.port(), "GET", "/health").status, 503);
}

}  // namespace
}  // namespace hkv::testing
