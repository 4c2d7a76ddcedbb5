// Tests of the OpenAI request parsing and its conversion to engine requests (stories260K's
// tokenizer; a Llama-3 chat format for chats).

#include "server/openai_request.h"

#include <memory>
#include <string>

#include "common/paths.h"
#include "common/sampling_params.h"
#include "gtest/gtest.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace hkv {
namespace {

absl::StatusOr<OpenAiRequest> Completions(const std::string& body, OpenAiParseLimits limits = {}) {
  return ParseOpenAiRequest(body, OpenAiEndpoint::kCompletions, limits);
}
absl::StatusOr<OpenAiRequest> Chat(const std::string& body) {
  return ParseOpenAiRequest(body, OpenAiEndpoint::kChat, {});
}

// The error message of a refused body (which must be INVALID_ARGUMENT).
std::string Refusal(const absl::StatusOr<OpenAiRequest>& r) {
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  return std::string(r.status().message());
}

TEST(OpenAiRequestTest, PromptForms) {
  auto text = Completions(R"({"prompt": "Once upon", "max_tokens": 8, "user": "u1"})");
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_EQ(text->prompts.size(), 1u);
  EXPECT_EQ(text->prompts[0].text, "Once upon");
  EXPECT_EQ(text->max_tokens, 8);

  auto ids = Completions(R"({"prompt": [1, 403, 407]})");
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->prompts.size(), 1u);
  EXPECT_TRUE(ids->prompts[0].is_ids);
  EXPECT_EQ(ids->prompts[0].ids, (std::vector<TokenId>{1, 403, 407}));

  auto many = Completions(R"({"prompt": ["a", [5, 6], "b"]})");
  ASSERT_TRUE(many.ok()) << many.status();
  ASSERT_EQ(many->prompts.size(), 3u);
  EXPECT_EQ(many->prompts[1].ids, (std::vector<TokenId>{5, 6}));
  EXPECT_EQ(many->prompts[2].text, "b");
}

TEST(OpenAiRequestTest, FieldsAndAliases) {
  auto r = Completions(R"({"prompt": "x", "max_completion_tokens": 3.0, "temperature": 0,
      "top_p": 0.5, "top_k": -1, "seed": 7, "stop": "\n", "stop_token_ids": [2],
      "ignore_eos": true, "priority": -3, "stream": true,
      "stream_options": {"include_usage": true}, "unknown_field": {"a": [1]},
      "kv_policy": {"name": "snapkv", "budget": 16, "beta": 1.5},
      "n": 1, "presence_penalty": 0, "logprobs": null, "min_p": 0.0})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->max_tokens, 3);
  EXPECT_EQ(r->temperature, 0.0);
  EXPECT_EQ(r->top_p, 0.5);
  EXPECT_EQ(r->top_k, -1);
  EXPECT_EQ(r->seed, 7);
  EXPECT_EQ(r->stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r->stop_token_ids, std::vector<TokenId>{2});
  EXPECT_TRUE(r->ignore_eos);
  EXPECT_EQ(r->priority, -3);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->kv_policy, "snapkv");
  EXPECT_EQ(r->kv_budget, 16);
  EXPECT_EQ(r->kv_beta, 1.5);
}

TEST(OpenAiRequestTest, WrongTypesNameTheField) {
  EXPECT_NE(Refusal(Completions(R"({"prompt": 5})")).find("prompt"), std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "temperature": "hot"})")).find("temperature"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "max_tokens": 1.5})")).find("max_tokens"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "stream": "yes"})")).find("stream"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "stop": [1]})")).find("stop"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": [1, -2]})")).find("token ids"), std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "model": 3})")).find("model"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "user": 3})")).find("user"), std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "seed": 1e30})")).find("seed"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "max_tokens": 0})")).find("max_tokens"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"prompt": "x", "kv_policy": 3})")).find("kv_policy"),
            std::string::npos);
  EXPECT_NE(Refusal(Completions(R"({"max_tokens": 3})")).find("prompt"), std::string::npos);
}

TEST(OpenAiRequestTest, BadBodies) {
  EXPECT_NE(Refusal(Completions("{not json")).find("not valid JSON"), std::string::npos);
  EXPECT_NE(Refusal(Completions("[1, 2]")).find("object"), std::string::npos);
  EXPECT_NE(Refusal(Completions("")).find("not valid JSON"), std::string::npos);
  const std::string deep = std::string(10000, '[') + std::string(10000, ']');
  EXPECT_NE(Refusal(Completions(R"({"prompt": )" + deep + "}")).find("nests deeper"),
            std::string::npos);
  // Brackets inside strings are not nesting.
  EXPECT_TRUE(Completions(R"({"prompt": ")" + std::string(100, '[') + R"("})").ok());
}

TEST(OpenAiRequestTest, PendingFeaturesRefusedOnlyWhenUsed) {
  for (const char* field : {R"("best_of": 3)", R"("n": 2, "best_of": 3)", R"("echo": true)"}) {
    const std::string message =
        Refusal(Completions(std::string(R"({"prompt": "x", )") + field + "}"));
    EXPECT_NE(message.find("not supported by this server"), std::string::npos) << field;
  }
  EXPECT_TRUE(Completions(R"({"prompt": "x", "n": 3, "best_of": 3, "echo": false})").ok());
}

// Fields this server does not apply are refused rather than ignored, unless neutral.
TEST(OpenAiRequestTest, UnservedFieldsAreRefusedUnlessNeutral) {
  for (const char* field : {R"("logit_bias": {"50": 100})", R"("suffix": "end")",
                            R"("response_format": {"type": "json_object"})",
                            R"("tools": [{"type": "function"}])", R"("tool_choice": "auto")"}) {
    const std::string message =
        Refusal(Chat(std::string(R"({"messages": [{"role": "user", "content": "x"}], )") + field +
                     "}"));
    EXPECT_NE(message.find("is not supported by this server"), std::string::npos) << field;
  }
  EXPECT_TRUE(Chat(R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {},
      "suffix": "", "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
      "functions": null})")
                  .ok());
}

TEST(OpenAiRequestTest, SamplingFieldsParse) {
  auto c = Completions(R"({"prompt": "x", "n": 3, "logprobs": 4, "presence_penalty": 0.5,
      "frequency_penalty": -1, "repetition_penalty": 1.2, "min_p": 0.1, "min_tokens": 4})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n, 3);
  EXPECT_TRUE(c->logprobs);
  EXPECT_EQ(c->top_logprobs, 4);
  EXPECT_DOUBLE_EQ(c->presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(c->frequency_penalty, -1);
  EXPECT_DOUBLE_EQ(c->repetition_penalty, 1.2);
  EXPECT_DOUBLE_EQ(c->min_p, 0.1);
  EXPECT_EQ(c->min_tokens, 4);
  auto zero = Completions(R"({"prompt": "x", "logprobs": 0})");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_TRUE(zero->logprobs);  // 0: the sampled token's logprob only.
  EXPECT_EQ(zero->top_logprobs, 0);
  EXPECT_FALSE(Completions(R"({"prompt": "x"})")->logprobs);

  const std::string hi = R"({"messages": [{"role": "user", "content": "hi"}], )";
  auto chat = Chat(hi + R"("logprobs": true, "top_logprobs": 20})");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_TRUE(chat->logprobs);
  EXPECT_EQ(chat->top_logprobs, 20);
  EXPECT_FALSE(Chat(hi + R"("logprobs": false})")->logprobs);
}

TEST(OpenAiRequestTest, BadSamplingFieldsNameTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {R"("n": 0)", "`n`"},
      {R"("n": 1e10)", "`n`"},
      {R"("n": "2")", "`n`"},
      {R"("min_tokens": -1)", "`min_tokens`"},
      {R"("logprobs": 21)", "`logprobs`"},
      {R"("logprobs": -1)", "`logprobs`"},
      {R"("logprobs": true)", "`logprobs`"},
      {R"("logprobs": 2, "top_logprobs": 2)", "`top_logprobs`"},
      {R"("presence_penalty": "a")", "`presence_penalty`"},
  };
  for (const auto& [field, name] : cases) {
    const std::string message =
        Refusal(Completions(std::string(R"({"prompt": "x", )") + field + "}"));
    EXPECT_NE(message.find(name), std::string::npos) << field << ": " << message;
  }
  const std::string hi = R"({"messages": [{"role": "user", "content": "hi"}], )";
  EXPECT_NE(Refusal(Chat(hi + R"("top_logprobs": 3})")).find("`logprobs`"), std::string::npos);
  EXPECT_NE(Refusal(Chat(hi + R"("logprobs": true, "top_logprobs": 21})")).find("top_logprobs"),
            std::string::npos);
  EXPECT_NE(Refusal(Chat(hi + R"("logprobs": 3})")).find("`logprobs`"), std::string::npos);
}

TEST(OpenAiRequestTest, Messages) {
  auto r = Chat(R"({"messages": [{"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello, "},
                                   {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}]})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->messages.size(), 3u);
  EXPECT_EQ(r->messages[1].content, "Hello, there");
  EXPECT_EQ(r->messages[2].content, "");
  EXPECT_NE(Refusal(Chat(R"({"messages": [{"role": "user", "content": [{"type": "image_url",
      "image_url": {"url": "x"}}]}]})"))
                .find("not supported"),
            std::string::npos);
  EXPECT_NE(Refusal(Chat(R"({"messages": []})")).find("messages"), std::string::npos);
  EXPECT_NE(Refusal(Chat(R"({"messages": [{"content": "x"}]})")).find("role"), std::string::npos);
  EXPECT_NE(Refusal(Chat(R"({"messages": "hi"})")).find("messages"), std::string::npos);
}

TEST(OpenAiRequestTest, SizeLimits) {
  OpenAiParseLimits limits;
  limits.max_prompts = 2;
  limits.stop_limits.max_strings = 2;
  limits.stop_limits.max_token_ids = 1;
  EXPECT_NE(Refusal(Completions(R"({"prompt": ["a", "b", "c"]})", limits)).find("at most 2"),
            std::string::npos);
  EXPECT_EQ(Completions(R"({"prompt": "a", "stop": ["x", "y", "z"]})", limits).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Completions(R"({"prompt": "a", "stop_token_ids": [1, 2]})", limits).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Completions(R"({"prompt": ["a", "b"], "stop": ["x", "y"]})", limits).ok());
}

class ToEngineRequestsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = LoadLlama2cTokenizer(DefaultTokenizerPath(), 512);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    serving_.tokenizer = tokenizer_.get();
    serving_.max_model_len = 512;
    serving_.prompt_limit = MakePromptByteLimit(*tokenizer_, 512, 0);
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  // The real Llama-3 template (tests run from the source root).
  std::shared_ptr<const ChatTemplate> llama3_ =
      LoadChatTemplate("tests/data/chat_templates/llama3").value();
  OpenAiServing serving_;
};

TEST_F(ToEngineRequestsTest, CompletionsDefaultsAndMapping) {
  auto parsed = Completions(R"({"prompt": ["Once upon", [9, 8]], "top_k": -1, "seed": 5,
      "temperature": 0.7, "kv_policy": {"name": "snapkv", "budget": 16}})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto requests = ToEngineRequests(*parsed, serving_, {});
  ASSERT_TRUE(requests.ok()) << requests.status();
  ASSERT_EQ(requests->size(), 2u);
  const EngineRequest& text = (*requests)[0];
  EXPECT_EQ(text.prompt, tokenizer_->Encode("Once upon", /*add_bos=*/true));
  EXPECT_EQ(text.sampling.max_tokens, 16);  // OpenAI's completions default.
  EXPECT_EQ(text.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(text.sampling.temperature, 0.7f);
  EXPECT_EQ(text.seed, 5u);
  EXPECT_EQ(text.kv_policy, "snapkv");
  EXPECT_EQ(text.kv_budget, 16);
  EXPECT_EQ((*requests)[1].prompt, (std::vector<TokenId>{9, 8}));

  auto unseeded = Completions(R"({"prompt": "x"})");
  auto r = ToEngineRequests(*unseeded, serving_, {});
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE((*r)[0].seed.has_value());
  EXPECT_FLOAT_EQ((*r)[0].sampling.temperature, 1.0f);  // OpenAI's default.
}

TEST_F(ToEngineRequestsTest, SamplingFieldsMapAsOnGrpc) {
  auto parsed = Completions(R"({"prompt": ["a", "b"], "n": 3, "logprobs": 5,
      "presence_penalty": 0.5, "frequency_penalty": -1, "repetition_penalty": 1.25,
      "min_p": 0.125, "min_tokens": 4})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto requests = ToEngineRequests(*parsed, serving_, {});
  ASSERT_TRUE(requests.ok()) << requests.status();
  ASSERT_EQ(requests->size(), 2u);  // One per prompt, each of n samples.
  for (const EngineRequest& r : *requests) {
    EXPECT_EQ(r.sampling.n, 3);
    EXPECT_EQ(r.sampling.logprobs, 5);
    EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
    EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -1.0f);
    EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.25f);
    EXPECT_FLOAT_EQ(r.sampling.min_p, 0.125f);
    EXPECT_EQ(r.sampling.min_tokens, 4);
    EXPECT_TRUE(ValidateSamplingParams(r.sampling).ok());
  }
  auto plain = ToEngineRequests(*Completions(R"({"prompt": "a"})"), serving_, {});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)[0].sampling.n, 1);
  EXPECT_EQ((*plain)[0].sampling.logprobs, -1);  // None asked for.
  EXPECT_FLOAT_EQ((*plain)[0].sampling.repetition_penalty, 1.0f);
  auto sampled_only =
      ToEngineRequests(*Completions(R"({"prompt": "a", "logprobs": 0})"), serving_, {});
  ASSERT_TRUE(sampled_only.ok());
  EXPECT_EQ((*sampled_only)[0].sampling.logprobs, 0);

  // Out-of-range values pass through to the engine's check, which names the field.
  auto bad =
      ToEngineRequests(*Completions(R"({"prompt": "a", "presence_penalty": 3})"), serving_, {});
  ASSERT_TRUE(bad.ok());
  const absl::Status s = ValidateSamplingParams((*bad)[0].sampling);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("presence_penalty"), std::string::npos) << s;
}

TEST_F(ToEngineRequestsTest, RefusesWhatTheServerCannotDo) {
  auto empty = Completions(R"({"prompt": ""})");
  EXPECT_EQ(ToEngineRequests(*empty, serving_, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto chat = Chat(R"({"messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_NE(ToEngineRequests(*chat, serving_, {}).status().message().find("chat template"),
            std::string::npos);
  auto beta = Completions(R"({"prompt": "x", "kv_policy": {"name": "headkv", "beta": 0.5}})");
  EXPECT_EQ(ToEngineRequests(*beta, serving_, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto huge = Completions(R"({"prompt": ")" + std::string(100000, 'a') + R"("})");
  EXPECT_EQ(ToEngineRequests(*huge, serving_, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ToEngineRequestsTest, ChatRendersThroughTheTemplate) {
  serving_.chat = llama3_.get();
  auto chat = Chat(R"({"messages": [{"role": "user", "content": "hi"}]})");
  ASSERT_TRUE(chat.ok());
  auto text = RenderChat(chat->messages, true, serving_);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, *llama3_->Apply(chat->messages, true));
  auto requests = ToEngineRequests(*chat, serving_, {});
  ASSERT_TRUE(requests.ok()) << requests.status();
  ASSERT_EQ(requests->size(), 1u);
  EXPECT_EQ((*requests)[0].prompt, tokenizer_->Encode(*text, /*add_bos=*/false));
  // A chat's default is what is left of the context.
  EXPECT_EQ((*requests)[0].sampling.max_tokens,
            512 - static_cast<int>((*requests)[0].prompt.size()));
}

}  // namespace
}  // namespace hkv
