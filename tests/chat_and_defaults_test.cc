// The model's own settings reach requests through the gRPC service: generation_config.json's
// temperature / top_k / top_p are what an unset field means (explicit values win, 0 included),
// and a chat is rendered by the model's own Jinja template before tokenizing (template
// refusals are INVALID_ARGUMENT with the template's message). In process, CPU engine.
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/generation_service.h"
#include "server/model_setup.h"
#include "tests/server_test_util.h"
#include "tokenizer/bpe_tokenizers.h"
#include "tokenizer/gguf_vocab.h"

namespace hkv::testing {
namespace {

using ::testing::HasSubstr;

// The tiny Qwen2 fixture (tests/data/hf/qwen2) in a temporary directory, with
// generation_config.json replaced by `generation_config` (none when empty).
class ModelDir {
 public:
  explicit ModelDir(const std::string& generation_config) {
    char tmpl[] = "/tmp/chat_and_defaults_test_XXXXXX";
    dir_ = mkdtemp(tmpl);
    char cwd[4096];
    const std::string src =
        std::string(getcwd(cwd, sizeof(cwd)) ? cwd : ".") + "/tests/data/hf/qwen2";
    for (const char* f : {"config.json", "model.safetensors"}) {
      EXPECT_EQ(symlink((src + "/" + f).c_str(), (dir_ + "/" + f).c_str()), 0) << f;
    }
    if (!generation_config.empty()) {
      std::ofstream(dir_ + "/generation_config.json") << generation_config;
    }
  }
  ~ModelDir() {
    for (const char* f : {"config.json", "model.safetensors", "generation_config.json"}) {
      unlink((dir_ + "/" + f).c_str());
    }
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return dir_; }

 private:
  std::string dir_;
};

absl::StatusOr<EngineRequest> Convert(const std::string& generation_config,
                                      const hkv::v1::GenerateRequest& request) {
  ModelDir dir(generation_config);
  ServerConfig config = TestServerConfig();
  config.model = dir.path();
  config.head_scores.clear();  // TestServerConfig's scores are stories260K's shape.
  auto bundle = BuildEngine(config);
  if (!bundle.ok()) return bundle.status();
  GenerationService service(bundle->engine.get(), nullptr, nullptr, hkv::v1::ModelInfo());
  return service.ToEngineRequest(request, absl::InfiniteFuture());
}

hkv::v1::GenerateRequest TokenRequest() {
  hkv::v1::GenerateRequest r;
  for (int id : {1, 17, 42}) r.mutable_prompt_token_ids()->add_ids(id);
  r.mutable_sampling()->set_max_tokens(4);
  return r;
}

TEST(SamplingDefaultsTest, GenerationConfigDecidesWhatUnsetFieldsMean) {
  const std::string qwen_like = R"({"do_sample": true, "temperature": 0.7, "top_p": 0.8,
                                    "top_k": 20, "repetition_penalty": 1.05})";
  auto r = Convert(qwen_like, TokenRequest());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FLOAT_EQ(r->sampling.temperature, 0.7f);
  EXPECT_EQ(r->sampling.top_k, 20);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.8f);

  // Without generation_config.json (or without the fields): greedy, no top-k, no top-p.
  for (const std::string& gc : {std::string(), std::string(R"({"bos_token_id": 1})")}) {
    r = Convert(gc, TokenRequest());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->sampling.temperature, 0.0f);
    EXPECT_EQ(r->sampling.top_k, 0);
    EXPECT_EQ(r->sampling.top_p, 1.0f);
  }
}

TEST(SamplingDefaultsTest, ExplicitFieldsWinZeroIncluded) {
  hkv::v1::GenerateRequest req = TokenRequest();
  req.mutable_sampling()->set_temperature(0.0f);  // Greedy, though the model samples at 0.7.
  req.mutable_sampling()->set_top_k(0);           // Off, though the model's is 20.
  req.mutable_sampling()->set_top_p(0.5f);
  auto r = Convert(R"({"temperature": 0.7, "top_p": 0.8, "top_k": 20})", req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_EQ(r->sampling.top_k, 0);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.5f);
  // An explicit top_p of 0 is now a bad value (refused when the engine is given it), not "the
  // default".
  req.mutable_sampling()->set_top_p(0.0f);
  r = Convert("", req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sampling.top_p, 0.0f);
  EXPECT_EQ(ValidateSamplingParams(r->sampling).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplingDefaultsTest, BadGenerationConfigFailsTheLoadNamingTheField) {
  auto r = Convert(R"({"top_p": 3})", TokenRequest());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("top_p"));
}

// Llama-3's vocabulary (llama.cpp's GGUF) and Meta-Llama-3-8B-Instruct's own chat template in
// front of the stories260K engine: what the service tokenizes is the template's render.
class ChatServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto bundle = BuildEngine(TestServerConfig());
    ASSERT_TRUE(bundle.ok()) << bundle.status();
    bundle_ = std::move(*bundle);
    auto vocab = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/ggml-vocab-llama-bpe.gguf");
    ASSERT_TRUE(vocab.ok()) << vocab.status();
    auto tokenizer = MakeTokenizerFromGguf(*vocab);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::shared_ptr<const Tokenizer>(std::move(*tokenizer));
  }

  absl::StatusOr<EngineRequest> Convert(const std::string& family,
                                        const hkv::v1::GenerateRequest& r) {
    auto chat = LoadChatTemplate("tests/data/chat_templates/" + family);
    if (!chat.ok()) return chat.status();
    chat_ = *chat;
    GenerationService service(bundle_.engine.get(), tokenizer_, chat_, hkv::v1::ModelInfo());
    return service.ToEngineRequest(r, absl::InfiniteFuture());
  }

  EngineBundle bundle_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<const ChatTemplate> chat_;
};

TEST_F(ChatServiceTest, ThePromptIsTheTemplatesRenderWithTheGenerationPrompt) {
  hkv::v1::GenerateRequest r;
  auto* s = r.mutable_chat()->add_messages();
  s->set_role("system");
  s->set_content("Be brief.");
  auto* u = r.mutable_chat()->add_messages();
  u->set_role("user");
  u->set_content("  Hi there  ");
  auto req = Convert("llama3", r);
  ASSERT_TRUE(req.ok()) << req.status();
  auto rendered = chat_->Apply({{"system", "Be brief."}, {"user", "  Hi there  "}}, true);
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(*rendered,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  auto ids = tokenizer_->TryEncode(*rendered, /*add_bos=*/false, EncodeControl());
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(req->prompt, *ids);  // No BOS added: the template wrote it.
}

TEST_F(ChatServiceTest, TemplateRefusalsAreInvalidArgumentWithTheirMessage) {
  hkv::v1::GenerateRequest r;
  auto* s = r.mutable_chat()->add_messages();
  s->set_role("system");
  s->set_content("Be brief.");
  auto req = Convert("gemma2", r);
  EXPECT_EQ(req.status(), absl::InvalidArgumentError("System role not supported"));
  s->set_role("user");
  r.mutable_chat()->add_messages()->set_role("user");
  req = Convert("mistral_v0_2", r);
  EXPECT_EQ(req.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(req.status().message()), HasSubstr("must alternate"));
}

}  // namespace
}  // namespace hkv::testing
