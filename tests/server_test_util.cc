#include "tests/server_test_util.h"

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "common/logging.h"
#include "common/paths.h"
#include "tests/health_client.h"

namespace hkv::testing {

ServerConfig TestServerConfig() {
  ServerConfig c;
  c.model = DefaultModelPath();
  c.tokenizer = DefaultTokenizerPath();
  c.host = "127.0.0.1";
  c.port = 0;
  c.metrics_port = 0;
  c.kv_pool_blocks = 4096;
  c.num_threads = 2;
  c.head_scores = SourceDir() + "/tests/data/stories260K_head_scores.json";
  return c;
}

TestServer::TestServer(const ServerConfig& config) {
  auto bundle = BuildEngine(config);
  HKV_CHECK(bundle.ok()) << bundle.status();
  bundle_ = std::move(*bundle);
  bundle_.engine->Start();
  hkv::v1::ModelInfo info;
  info.set_model_name("stories260K");
  info.set_vocab_size(bundle_.loaded.model->config.vocab_size);
  auto service = std::make_unique<GenerationService>(bundle_.engine.get(), bundle_.loaded.tokenizer,
                                                     bundle_.loaded.chat, info);
  server_ = std::make_unique<GrpcServer>(bundle_.engine.get(), std::move(service));
  auto port = server_->Start(config.host, config.port);
  HKV_CHECK(port.ok()) << port.status();
  port_ = *port;
  channel_ =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
}

TestServer::~TestServer() {
  server_->Shutdown();
  bundle_.engine->Stop();
}

std::unique_ptr<hkv::v1::Generation::Stub> TestServer::NewStub() const {
  return hkv::v1::Generation::NewStub(channel_);
}

StreamResult RunStream(hkv::v1::Generation::Stub* stub, const hkv::v1::GenerateRequest& request,
                       int timeout_s) {
  StreamResult result;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  auto reader = stub->Generate(&context, request);
  hkv::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ++result.messages;
    result.ids.insert(result.ids.end(), response.token_ids().begin(), response.token_ids().end());
    result.text += response.text();
    if (response.finish_reason() != hkv::v1::FINISH_REASON_UNSPECIFIED) {
      result.finish = response.finish_reason();
      result.usage = response.usage();
    }
  }
  result.status = reader->Finish();
  return result;
}

hkv::v1::GenerateRequest GreedyIds(std::vector<int32_t> ids, int max_tokens) {
  hkv::v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_prompt_token_ids()->add_ids(id);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  return r;
}

std::shared_ptr<grpc::Channel> LoopbackChannel(int port) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureChannelCredentials());
}

bool WaitServing(int port, int timeout_s, pid_t pid) {
  auto channel = LoopbackChannel(port);
  for (int i = 0; i < timeout_s * 10; ++i) {
    if (CheckHealth(channel, kReadinessService, 500) == kServing) return true;
    if (pid > 0 && waitpid(pid, nullptr, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

int WaitExit(pid_t pid, int timeout_s) {
  for (int i = 0; i < timeout_s * 100; ++i) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

}  // namespace hkv::testing
