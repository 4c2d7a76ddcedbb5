// Tests of the OpenAI response rendering: the objects' fields as OpenAI's SDKs read them.

#include "server/openai_render.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using Json = nlohmann::json;

OpenAiReplyInfo Info(OpenAiEndpoint endpoint) {
  return {endpoint, endpoint == OpenAiEndpoint::kChat ? "chatcmpl-1" : "cmpl-1", 1700000000, "m"};
}

Json ParseEvent(const std::string& event) {
  EXPECT_EQ(event.rfind("data: ", 0), 0u);
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  return Json::parse(event.substr(6, event.size() - 8));
}

TEST(OpenAiRenderTest, CompletionResponse) {
  const Json j = Json::parse(
      RenderResponse(Info(OpenAiEndpoint::kCompletions),
                     {{0, "abc", FinishReason::kLength}, {1, "d", FinishReason::kEos}}, {7, 4}));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["model"], "m");
  EXPECT_EQ(j["created"], 1700000000);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], "abc");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j["usage"]["total_tokens"], 11);
}

TEST(OpenAiRenderTest, ChatResponse) {
  const Json j = Json::parse(
      RenderResponse(Info(OpenAiEndpoint::kChat), {{0, "hi", FinishReason::kStop}}, {3, 1}));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(j["choices"][0].contains("text"));
}

TEST(OpenAiRenderTest, Chunks) {
  const OpenAiReplyInfo chat = Info(OpenAiEndpoint::kChat);
  Json first = ParseEvent(SseEvent(RenderChunk(chat, 0, "", FinishReason::kNone, true, false)));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(first.contains("usage"));
  Json mid = ParseEvent(SseEvent(RenderChunk(chat, 0, "tok", FinishReason::kNone, false, true)));
  EXPECT_EQ(mid["choices"][0]["delta"]["content"], "tok");
  EXPECT_FALSE(mid["choices"][0]["delta"].contains("role"));
  EXPECT_TRUE(mid.contains("usage"));
  EXPECT_TRUE(mid["usage"].is_null());
  Json last = ParseEvent(SseEvent(RenderChunk(chat, 0, "", FinishReason::kLength, false, false)));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());

  Json text = ParseEvent(SseEvent(
      RenderChunk(Info(OpenAiEndpoint::kCompletions), 2, "x", FinishReason::kNone, false, false)));
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["index"], 2);
  EXPECT_EQ(text["choices"][0]["text"], "x");

  Json usage = ParseEvent(SseEvent(RenderUsageChunk(chat, {5, 6})));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 11);
  EXPECT_STREQ(kSseDone, "data: [DONE]\n\n");
}

// Two tokens: " a" with alternatives, then the first byte of a 2-byte character alone.
std::vector<OpenAiLogprob> TwoLogprobs() {
  return {{" a", -0.25f, 0, {{" a", -0.25f}, {" b", -1.5f}}}, {"\xC3", -2.0f, 2, {}}};
}

TEST(OpenAiRenderTest, CompletionLogprobs) {
  OpenAiReplyInfo info = Info(OpenAiEndpoint::kCompletions);
  info.logprobs = true;
  const Json j = Json::parse(
      RenderResponse(info, {{0, " a\xEF\xBF\xBD", FinishReason::kLength, TwoLogprobs()}}, {1, 2}));
  const Json& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], Json({" a", "\xEF\xBF\xBD"}));  // Valid UTF-8, as the text is.
  EXPECT_EQ(lp["token_logprobs"], Json({-0.25, -2.0}));
  EXPECT_EQ(lp["text_offset"], Json({0, 2}));
  ASSERT_EQ(lp["top_logprobs"].size(), 2u);
  EXPECT_EQ(lp["top_logprobs"][0], Json({{" a", -0.25}, {" b", -1.5}}));
  EXPECT_TRUE(lp["top_logprobs"][1].empty());
  // Not asked for: null, as OpenAI sends it.
  info.logprobs = false;
  const Json off =
      Json::parse(RenderResponse(info, {{0, " a", FinishReason::kLength, TwoLogprobs()}}, {1, 2}));
  EXPECT_TRUE(off["choices"][0]["logprobs"].is_null());
}

TEST(OpenAiRenderTest, ChatLogprobsWholeAndStreamed) {
  OpenAiReplyInfo info = Info(OpenAiEndpoint::kChat);
  info.logprobs = true;
  const std::vector<OpenAiLogprob> logprobs = TwoLogprobs();
  const Json j = Json::parse(
      RenderResponse(info, {{0, " a\xEF\xBF\xBD", FinishReason::kStop, logprobs}}, {1, 2}));
  const Json& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], " a");
  EXPECT_EQ(content[0]["logprob"], -0.25);
  EXPECT_EQ(content[0]["bytes"], Json({32, 97}));
  ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1],
            Json({{"token", " b"}, {"logprob", -1.5}, {"bytes", {32, 98}}}));
  EXPECT_EQ(content[1]["token"], "\xEF\xBF\xBD");
  EXPECT_EQ(content[1]["bytes"], Json({0xC3}));  // The raw byte.
  EXPECT_TRUE(content[1]["top_logprobs"].empty());

  const std::vector<OpenAiLogprob> one(logprobs.begin(), logprobs.begin() + 1);
  const Json chunk =
      ParseEvent(SseEvent(RenderChunk(info, 1, " a", FinishReason::kNone, false, false, &one)));
  EXPECT_EQ(chunk["choices"][0]["index"], 1);
  ASSERT_EQ(chunk["choices"][0]["logprobs"]["content"].size(), 1u);
  EXPECT_EQ(chunk["choices"][0]["logprobs"]["content"][0]["token"], " a");
  // The role chunk has no tokens: null.
  EXPECT_TRUE(ParseEvent(SseEvent(
      RenderChunk(info, 0, "", FinishReason::kNone, true, false)))["choices"][0]["logprobs"]
                  .is_null());
}

TEST(OpenAiRenderTest, FinishReasons) {
  EXPECT_STREQ(OpenAiFinishReason(FinishReason::kLength), "length");
  EXPECT_STREQ(OpenAiFinishReason(FinishReason::kStop), "stop");
  EXPECT_STREQ(OpenAiFinishReason(FinishReason::kEos), "stop");
  EXPECT_STREQ(OpenAiFinishReason(FinishReason::kAborted), "abort");
  EXPECT_EQ(OpenAiFinishReason(FinishReason::kNone), nullptr);
}

TEST(OpenAiRenderTest, ErrorsAndStatuses) {
  const Json e = Json::parse(RenderError(404, "no such model \xff"));
  EXPECT_EQ(e["error"]["code"], 404);
  EXPECT_EQ(e["error"]["type"], "not_found_error");
  EXPECT_EQ(e["error"]["message"], "no such model \xEF\xBF\xBD");  // Bad bytes replaced.
  EXPECT_TRUE(e["error"].contains("param"));
  EXPECT_EQ(HttpStatusOf(absl::InvalidArgumentError(""), true), 400);
  EXPECT_EQ(HttpStatusOf(absl::NotFoundError(""), false), 404);
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError("queue full"), true), 429);
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError("never fits"), false), 400);
  EXPECT_EQ(HttpStatusOf(absl::UnavailableError("draining"), true), 503);
  EXPECT_EQ(HttpStatusOf(absl::UnimplementedError("adakv on cuda"), true), 400);
  EXPECT_EQ(HttpStatusOf(absl::InternalError("device"), false), 500);
  EXPECT_EQ(HttpStatusOf(absl::UnknownError("?"), false), 500);
}

}  // namespace
}  // namespace hkv
