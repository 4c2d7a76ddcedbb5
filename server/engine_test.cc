// Engine with the CPU reference worker and the embedded stories260K model: what a request's
// stream carries (tokens, text, finish reason, usage) and how each way of ending it reports.
// Each test builds its own small engine; every wait on a stream is bounded.

#include "server/engine.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "server/model_setup.h"
#include "server/server_config.h"

namespace hkv {
namespace {

ServerConfig SmallConfig() {
  ServerConfig c;
  c.model = DefaultModelPath();
  c.tokenizer = DefaultTokenizerPath();
  c.device = "cpu";
  c.kv_pool_blocks = 2048;
  c.num_threads = 1;
  c.max_queue = 4;
  return c;
}

std::unique_ptr<Engine> MakeEngine(const ServerConfig& config = SmallConfig()) {
  auto bundle = BuildEngine(config);
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  if (!bundle.ok()) return nullptr;
  return std::move(bundle->engine);
}

EngineRequest Greedy(std::vector<TokenId> prompt, int32_t max_tokens, std::string id = "") {
  EngineRequest r;
  r.request_id = std::move(id);
  r.prompt = std::move(prompt);
  r.sampling.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.sampling.ignore_eos = true;
  r.seed = 1;
  return r;
}

// Everything a stream delivered, read until its finished chunk (or 30 s, then finished=false).
struct Collected {
  std::vector<TokenId> tokens;
  std::string text;
  int chunks = 0;
  bool finished = false;
  FinishReason finish = FinishReason::kNone;
  absl::Status status;
  StreamUsage usage;
};

Collected Collect(RequestStream& stream) {
  Collected c;
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while (!c.finished && absl::Now() < end) {
    std::optional<StreamChunk> chunk = stream.Next(absl::Milliseconds(100));
    if (!chunk.has_value()) continue;
    ++c.chunks;
    c.tokens.insert(c.tokens.end(), chunk->token_ids.begin(), chunk->token_ids.end());
    c.text += chunk->text;
    if (chunk->finished) {
      c.finished = true;
      c.finish = chunk->finish;
      c.status = chunk->status;
      c.usage = chunk->usage;
    }
  }
  return c;
}

TEST(EngineTest, StreamsTokensTextAndUsageThenLength) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  engine->Start();
  auto stream = engine->Submit(Greedy({1}, 24));
  ASSERT_TRUE(stream.ok()) << stream.status();
  Collected c = Collect(**stream);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finish, FinishReason::kLength);
  EXPECT_TRUE(c.status.ok());
  EXPECT_EQ(c.tokens.size(), 24u);
  EXPECT_GT(c.chunks, 1) << "tokens stream, one step at a time";
  EXPECT_FALSE(c.text.empty());
  EXPECT_EQ(c.usage.prompt_tokens, 1);
  EXPECT_EQ(c.usage.generated_tokens, 24);
  EXPECT_EQ(c.usage.seed, 1u);
  EXPECT_GT(c.usage.kv_bytes_kept, 0);
  // Greedy decoding is deterministic.
  auto again = engine->Submit(Greedy({1}, 24));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Collect(**again).tokens, c.tokens);
}

TEST(EngineTest, StopTokenAndStopStringEndWithStop) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  engine->Start();
  auto probe = engine->Submit(Greedy({1}, 12));
  ASSERT_TRUE(probe.ok());
  const Collected full = Collect(**probe);
  ASSERT_EQ(full.tokens.size(), 12u);

  EngineRequest by_token = Greedy({1}, 12);
  by_token.sampling.stop_token_ids = {full.tokens[5]};
  auto token_stream = engine->Submit(by_token);
  ASSERT_TRUE(token_stream.ok());
  const Collected t = Collect(**token_stream);
  EXPECT_EQ(t.finish, FinishReason::kStop);
  EXPECT_LE(t.tokens.size(), 6u);

  ASSERT_GT(full.text.size(), 8u);
  EngineRequest by_string = Greedy({1}, 12);
  by_string.sampling.stop = {full.text.substr(full.text.size() / 2, 3)};
  auto string_stream = engine->Submit(by_string);
  ASSERT_TRUE(string_stream.ok());
  const Collected s = Collect(**string_stream);
  EXPECT_EQ(s.finish, FinishReason::kStop);
  EXPECT_EQ(s.text.find(by_string.sampling.stop[0]), std::string::npos) << "stop text is cut";
}

TEST(EngineTest, AbortByClientIdEndsAborted) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  // Queued before the loop starts, so the abort lands before any step: deterministic.
  auto stream = engine->Submit(Greedy({1}, 200, "client-1"));
  ASSERT_TRUE(stream.ok());
  EXPECT_TRUE(engine->Abort("client-1"));
  EXPECT_FALSE(engine->Abort("client-2"));
  engine->Start();
  const Collected c = Collect(**stream);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finish, FinishReason::kAborted);
  EXPECT_TRUE(c.tokens.empty());
}

TEST(EngineTest, CancelKeepsItsReason) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  auto gone = engine->Submit(Greedy({1}, 200));
  auto late = engine->Submit(Greedy({1}, 200));
  ASSERT_TRUE(gone.ok());
  ASSERT_TRUE(late.ok());
  engine->Cancel((*gone)->id(), FinishReason::kAborted);
  // A deadline noticed by the caller ends as a deadline, not as an abort.
  engine->Cancel((*late)->id(), FinishReason::kDeadline);
  engine->Start();
  EXPECT_EQ(Collect(**gone).finish, FinishReason::kAborted);
  EXPECT_EQ(Collect(**late).finish, FinishReason::kDeadline);
}

TEST(EngineTest, PastDeadlineEndsWithDeadline) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  engine->Start();
  EngineRequest r = Greedy({1}, 200);
  r.deadline = absl::Now() - absl::Seconds(1);
  auto stream = engine->Submit(r);
  ASSERT_TRUE(stream.ok());
  const Collected c = Collect(**stream);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finish, FinishReason::kDeadline);
}

TEST(EngineTest, DrainAbortsWhatOutlivesItAndRefusesNewRequests) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  EngineRequest endless = Greedy({1}, 200);
  auto stream = engine->Submit(endless);
  ASSERT_TRUE(stream.ok());
  // The loop is not started, so nothing finishes within the drain: it aborts the request.
  engine->Drain(absl::Milliseconds(50));
  EXPECT_EQ(engine->Submit(Greedy({1}, 4)).status().code(), absl::StatusCode::kUnavailable);
  engine->Start();
  const Collected c = Collect(**stream);
  ASSERT_TRUE(c.finished);
  EXPECT_EQ(c.finish, FinishReason::kAborted);
}

TEST(EngineTest, FullQueueAndDuplicateIdsAreRefused) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  // Not started: every submitted request stays queued.
  ASSERT_TRUE(engine->Submit(Greedy({1}, 4, "dup")).ok());
  EXPECT_EQ(engine->Submit(Greedy({1}, 4, "dup")).status().code(),
            absl::StatusCode::kAlreadyExists);
  for (int i = 1; i < 4; ++i) ASSERT_TRUE(engine->Submit(Greedy({1}, 4)).ok()) << i;
  EXPECT_EQ(engine->Submit(Greedy({1}, 4)).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(engine->metrics().requests_rejected_total.load(), 1);
}

TEST(EngineTest, BadRequestsAreInvalidArgument) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Submit(Greedy({}, 4)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit(Greedy({100000}, 4)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit(Greedy({1}, 1 << 20)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Submit(Greedy({1}, 4, "hkv-reserved")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EngineRequest policy = Greedy({1}, 4);
  policy.kv_policy = "nope";
  EXPECT_EQ(engine->Submit(policy).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hkv
