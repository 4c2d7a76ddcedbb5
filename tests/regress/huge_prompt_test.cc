// Guards "a 1 MiB text prompt pins a core for hours": tokenizing was quadratic, ran in the gRPC
// handler before any length check, ignored cancellation, and then SIGTERM could not end the
// process. Now a text over the byte cap (context x the longest token's bytes) is refused at
// once while other clients are served, a text under the cap is tokenized and gets the usual
// context-length error, chat messages count too, and SIGTERM ends the server within
// drain_timeout_s + 10 s. Runs the real `hkv serve` (stories260K, CPU) on a loopback port, and
// the service in process for chats.

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server_test_util.h"
#include "tokenizer/bpe_tokenizers.h"
#include "tokenizer/gguf_vocab.h"

namespace hkv::testing {
namespace {

using ::testing::HasSubstr;

constexpr size_t kHugePrompt = size_t{1} << 20;

// A port nobody uses: bind port 0, read it back, close.
int FreePort() {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  auto server = builder.BuildAndStart();
  server->Shutdown();
  return port;
}

pid_t StartServer(int port, int drain_s) {
  pid_t pid = fork();
  if (pid == 0) {
    const std::string port_flag = "--port=" + std::to_string(port);
    const std::string drain_flag = "--drain-timeout-s=" + std::to_string(drain_s);
    execl(HKV_BINARY, HKV_BINARY, "serve", "--host=127.0.0.1", port_flag.c_str(),
          "--metrics-port=0", "--http-port=0", "--kv-pool-blocks=4096", "--num-threads=1",
          drain_flag.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Prose the tokenizer merges into several bytes per token, `bytes` long.
std::string Prose(size_t bytes) {
  std::string s;
  while (s.size() < bytes) s += "Once upon a time, there was a little girl named Lily. ";
  s.resize(bytes);
  return s;
}

hkv::v1::GenerateRequest TextRequest(std::string text) {
  hkv::v1::GenerateRequest r;
  r.set_prompt(std::move(text));
  r.mutable_sampling()->set_max_tokens(8);
  return r;
}

// Kills the server at the end of each test, whatever state it is in.
class HugePromptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = FreePort();
    pid_ = StartServer(port_, /*drain_s=*/1);
    ASSERT_TRUE(WaitServing(port_, 30, pid_));
    stub_ = hkv::v1::Generation::NewStub(LoopbackChannel(port_));
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      WaitExit(pid_, 10);
    }
  }

  int port_ = 0;
  pid_t pid_ = 0;
  std::unique_ptr<hkv::v1::Generation::Stub> stub_;
};

TEST_F(HugePromptTest, RefusedAtOnceWhileAnotherClientIsServed) {
  StreamResult normal;
  std::thread other([&] {
    auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(port_));
    normal = RunStream(stub.get(), GreedyIds({1}, 40));
  });
  // The refusal takes milliseconds; the deadline only keeps the test bounded before the fix.
  const StreamResult huge = RunStream(stub_.get(), TextRequest(Prose(kHugePrompt)), 20);
  other.join();
  EXPECT_EQ(huge.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << huge.status.error_message();
  EXPECT_THAT(huge.status.error_message(),
              HasSubstr("the prompt is 1048576 bytes; at most 3584 for a context of 512 tokens"));
  ASSERT_TRUE(normal.status.ok()) << normal.status.error_message();
  EXPECT_EQ(normal.ids, std::vector<int32_t>(std::begin(kGoldenIds), std::end(kGoldenIds)));
}

TEST_F(HugePromptTest, UnderTheCapIsTokenizedAndGetsTheContextLengthError) {
  // The cap, read from the refusal of a prompt one byte over it.
  const StreamResult over = RunStream(stub_.get(), TextRequest(Prose(kHugePrompt)), 20);
  ASSERT_EQ(over.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << over.status.error_message();
  const std::string message = over.status.error_message();
  const size_t at = message.find("at most ");
  ASSERT_NE(at, std::string::npos) << message;
  size_t cap = 0;
  ASSERT_TRUE(absl::SimpleAtoi(message.substr(at + 8, message.find(' ', at + 8) - at - 8), &cap))
      << message;
  const StreamResult under = RunStream(stub_.get(), TextRequest(Prose(cap)), 20);
  EXPECT_EQ(under.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(under.status.error_message(), HasSubstr("exceeds the model's context length 512"));
  const StreamResult one_more = RunStream(stub_.get(), TextRequest(Prose(cap + 1)), 20);
  EXPECT_THAT(one_more.status.error_message(), HasSubstr("at most"));
}

TEST_F(HugePromptTest, SigtermWhileItIsHandledEndsTheServerInTime) {
  StreamResult huge;
  std::thread client([&] { huge = RunStream(stub_.get(), TextRequest(Prose(kHugePrompt)), 25); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(kill(pid_, SIGTERM), 0);
  // drain_timeout_s (1) + the 10 s bound, with room to spare; before the fix it never exited.
  const int status = WaitExit(pid_, 1 + 10 + 10);
  pid_ = 0;
  client.join();
  EXPECT_EQ(status, 0) << "the server did not exit within drain_timeout_s + 10 s";
  EXPECT_FALSE(huge.status.ok());
}

// Chat messages count towards the cap too, before they are joined: stories260K's engine (512
// tokens of context) behind Llama-3's vocabulary and chat template, where no token stands for
// more than 128 bytes.
class HugeChatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto bundle = BuildEngine(TestServerConfig());
    ASSERT_TRUE(bundle.ok()) << bundle.status();
    bundle_ = std::move(*bundle);
    auto vocab = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/ggml-vocab-llama-bpe.gguf");
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    auto tokenizer = MakeTokenizerFromGguf(*vocab);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    auto chat = LoadChatTemplate("tests/data/chat_templates/llama3");  // Meta-Llama-3's own.
    ASSERT_TRUE(chat.ok()) << chat.status();
    service_ = std::make_unique<GenerationService>(
        bundle_.engine.get(), std::shared_ptr<const Tokenizer>(std::move(*tokenizer)),
        std::move(*chat), hkv::v1::ModelInfo());
  }

  absl::Status Convert(const hkv::v1::GenerateRequest& request) {
    return service_->ToEngineRequest(request, absl::InfiniteFuture()).status();
  }

  EngineBundle bundle_;
  std::unique_ptr<GenerationService> service_;
};

TEST_F(HugeChatTest, OneLongMessageIsRefused) {
  hkv::v1::GenerateRequest r;
  auto* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content(Prose(70000));
  const absl::Status status = Convert(r);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("the prompt is 70005 bytes; at most 65536 for a context of 512 tokens"));
  m->set_content("Once upon a time");
  EXPECT_TRUE(Convert(r).ok()) << Convert(r);
}

TEST_F(HugeChatTest, ManyEmptyMessagesAreRefused) {
  hkv::v1::GenerateRequest r;
  for (int i = 0; i < 14000; ++i) r.mutable_chat()->add_messages()->set_role("user");
  const absl::Status status = Convert(r);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("the prompt is 70000 bytes"));
}

}  // namespace
}  // namespace hkv::testing
