// Guards "a model that emits invalid UTF-8 breaks clients": streams whose tokens form byte
// sequences that are not UTF-8 must reach a C++ gRPC client, Python's grpcio and `hkv generate`
// (plain and --json) whole, every text delta valid UTF-8, and their text equal to the repaired
// decode of their ids (invalid bytes as U+FFFD, as Hugging Face tokenizers decode them).
//
// The streams are found, not hard-coded: stories260K sampled at temperature 2 emits
// byte-fallback tokens, and the sampler is a pure function of (seed, step, logits), so a search
// over seeds finds the same ones every run. The test fails if it finds too few.

#include <sys/wait.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/logging.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server_test_util.h"
#include "tokenizer/llama2c_tokenizer.h"
#include "tokenizer/utf8.h"

namespace hkv::testing {
namespace {

constexpr int kMaxTokens = 96;
constexpr float kTemperature = 2.0f;
constexpr int kWanted = 3;       // Streams with invalid UTF-8 to check.
constexpr int kMaxSeeds = 1536;  // Search bound (about 1 in 60 streams qualifies).
constexpr int kBatch = 48;       // Streams searched at once.

struct Found {
  uint64_t seed;
  std::vector<TokenId> ids;
};

// Runs `command` and returns its stdout; `status` gets the exit code (-1 if it did not exit).
std::string RunCommand(const std::string& command, int* status) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int raw = pclose(pipe);
  *status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return out;
}

class Utf8OutputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerConfig config = TestServerConfig();
    config.kv_pool_blocks = 16384;  // kBatch streams of kMaxTokens at once.
    server_ = new TestServer(config);
    auto tok = LoadLlama2cTokenizer(DefaultTokenizerPath(), 512);
    HKV_CHECK(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    found_ = new std::vector<Found>();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete tokenizer_;
    delete found_;
  }

  static EngineRequest Sampled(uint64_t seed) {
    EngineRequest r;
    r.prompt = {1};
    r.sampling.max_tokens = kMaxTokens;
    r.sampling.temperature = kTemperature;
    r.seed = seed;
    r.sampling.ignore_eos = true;
    return r;
  }

  // The raw bytes of a stream's ids (after the prompt's BOS), before any repair.
  static std::string RawBytes(const std::vector<TokenId>& ids) {
    std::string bytes;
    TokenId prev = 1;
    for (TokenId id : ids) {
      bytes += tokenizer_->TokenBytes(prev, id);
      prev = id;
    }
    return bytes;
  }

  // The first `n` seeds (in order) whose streams hold invalid UTF-8, searched kBatch streams at
  // a time through the engine itself (not gRPC, which is under test); fewer if the search
  // bound is reached.
  static const std::vector<Found>& FirstInvalid(size_t n) {
    while (found_->size() < n && next_seed_ < kMaxSeeds) {
      std::vector<std::shared_ptr<RequestStream>> streams;
      for (int i = 0; i < kBatch; ++i) {
        auto s = server_->engine().Submit(Sampled(next_seed_ + i));
        HKV_CHECK(s.ok()) << s.status();
        streams.push_back(*s);
      }
      for (int i = 0; i < kBatch; ++i) {
        std::vector<TokenId> ids;
        while (true) {
          std::optional<StreamChunk> c = streams[i]->Next(absl::Seconds(60));
          HKV_CHECK(c.has_value()) << "stream stalled";
          ids.insert(ids.end(), c->token_ids.begin(), c->token_ids.end());
          if (c->finished) break;
        }
        if (found_->size() < n && !IsValidUtf8(RawBytes(ids))) {
          found_->push_back({next_seed_ + i, std::move(ids)});
        }
      }
      next_seed_ += kBatch;
    }
    EXPECT_GE(found_->size(), n)
        << "too few sampled streams hold invalid UTF-8: the test would prove nothing";
    return *found_;
  }

  static TestServer* server_;
  static const Tokenizer* tokenizer_;
  static std::vector<Found>* found_;
  static inline uint64_t next_seed_ = 0;
};
TestServer* Utf8OutputTest::server_ = nullptr;
const Tokenizer* Utf8OutputTest::tokenizer_ = nullptr;
std::vector<Found>* Utf8OutputTest::found_ = nullptr;

TEST_F(Utf8OutputTest, CppGrpcClientReadsEveryStreamWhole) {
  const std::vector<Found>& found = FirstInvalid(kWanted);
  ASSERT_FALSE(found.empty());
  auto stub = server_->NewStub();
  for (const Found& f : found) {
    ASSERT_EQ(f.ids.size(), static_cast<size_t>(kMaxTokens));
    hkv::v1::GenerateRequest request = GreedyIds({1}, kMaxTokens);
    request.mutable_sampling()->set_temperature(kTemperature);
    request.mutable_sampling()->set_seed(f.seed);
    request.mutable_sampling()->set_ignore_eos(true);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto reader = stub->Generate(&context, request);
    hkv::v1::GenerateResponse response;
    std::vector<int32_t> ids;
    std::string text;
    hkv::v1::FinishReason finish = hkv::v1::FINISH_REASON_UNSPECIFIED;
    while (reader->Read(&response)) {
      EXPECT_TRUE(IsValidUtf8(response.text())) << "seed " << f.seed;
      ids.insert(ids.end(), response.token_ids().begin(), response.token_ids().end());
      text += response.text();
      if (response.finish_reason() != hkv::v1::FINISH_REASON_UNSPECIFIED) {
        finish = response.finish_reason();
      }
    }
    const grpc::Status status = reader->Finish();
    ASSERT_TRUE(status.ok()) << "seed " << f.seed << ": " << status.error_code() << " "
                             << status.error_message();
    EXPECT_EQ(finish, hkv::v1::FINISH_REASON_LENGTH) << "seed " << f.seed;
    EXPECT_EQ(ids, f.ids) << "seed " << f.seed;
    EXPECT_EQ(text, SanitizeUtf8(RawBytes(f.ids))) << "seed " << f.seed;
    // The unary call carries the same text.
    grpc::ClientContext unary_context;
    hkv::v1::GenerateResponse unary;
    ASSERT_TRUE(stub->Complete(&unary_context, request, &unary).ok()) << "seed " << f.seed;
    EXPECT_EQ(unary.text(), text);
  }
}

TEST_F(Utf8OutputTest, PythonGrpcioReadsEveryStreamWhole) {
  const std::vector<Found>& found = FirstInvalid(kWanted);
  ASSERT_FALSE(found.empty());
  std::string command =
      "/usr/bin/python3 " + SourceDir() +
      "/tests/regress/utf8_stream_client.py 127.0.0.1:" + std::to_string(server_->port()) + " " +
      std::to_string(kMaxTokens) + " " + std::to_string(kTemperature);
  for (const Found& f : found) command += " " + std::to_string(f.seed);
  int status = 0;
  const std::string out = RunCommand(command + " 2>/dev/null", &status);
  if (status == 77) GTEST_SKIP() << "python3 grpcio or grpc_tools is not installed";
  ASSERT_EQ(status, 0) << out;
  size_t line_start = 0;
  for (const Found& f : found) {
    const size_t line_end = out.find('\n', line_start);
    ASSERT_NE(line_end, std::string::npos) << out;
    const nlohmann::json j = nlohmann::json::parse(out.substr(line_start, line_end - line_start),
                                                   nullptr, /*allow_exceptions=*/false);
    line_start = line_end + 1;
    ASSERT_FALSE(j.is_discarded()) << out;
    EXPECT_EQ(j["seed"].get<uint64_t>(), f.seed);
    ASSERT_EQ(j["status"], "OK") << "seed " << f.seed << ": " << j["details"];
    EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), f.ids);
    std::string text;
    for (const auto& t : j["texts"]) text += t.get<std::string>();
    EXPECT_EQ(text, SanitizeUtf8(RawBytes(f.ids))) << "seed " << f.seed;
  }
}

TEST_F(Utf8OutputTest, GenerateCommandPrintsValidTextAndJson) {
  const std::vector<Found>& found = FirstInvalid(1);
  ASSERT_FALSE(found.empty());
  const Found& f = found.front();
  const std::string args = std::string(HKV_BINARY) + " generate --prompt= --max-tokens " +
                           std::to_string(kMaxTokens) + " --temperature 2 --ignore-eos --seed " +
                           std::to_string(f.seed) + " --num-threads 2";
  int status = 0;
  const std::string json_out = RunCommand(args + " --json 2>/dev/null", &status);
  ASSERT_EQ(status, 0) << "hkv generate --json failed: " << json_out;
  const nlohmann::json j = nlohmann::json::parse(json_out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << "not JSON: " << json_out;
  const std::vector<TokenId> ids = j["output_ids"].get<std::vector<TokenId>>();
  EXPECT_FALSE(IsValidUtf8(RawBytes(ids))) << "the command's stream holds no invalid UTF-8";
  const std::string text = j["text"].get<std::string>();
  EXPECT_EQ(text, SanitizeUtf8(RawBytes(ids)));
  // Plain output: the (empty) prompt, the text, a newline.
  const std::string plain = RunCommand(args + " 2>/dev/null", &status);
  ASSERT_EQ(status, 0);
  EXPECT_TRUE(IsValidUtf8(plain));
  EXPECT_EQ(plain, text + "\n");
}

}  // namespace
}  // namespace hkv::testing
