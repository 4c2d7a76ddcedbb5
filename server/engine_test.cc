// Engine with the CPU reference worker and the embedded stories260K model: what a request's
// stream carries (tokens, text, finish reason, usage) and how each way of ending it reports.
// Each test builds its own small engine; every wait on a stream is bounded.

#include "server/engine.h"

#include <iostream>
#include <map>
#include <memory>
#include <set>
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
  // A stop string ends the request mid-run, yet its usage still says what it held.
  EXPECT_GT(s.usage.generated_tokens, 0);
  EXPECT_EQ(s.usage.kv_tokens_full, s.usage.kv_tokens_kept);
  EXPECT_GT(s.usage.kv_tokens_kept, 0);
  EXPECT_GT(s.usage.kv_bytes_kept, 0);
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

namespace hkv {
namespace {

// Every sample of an n > 1 stream, read until its last chunk (or 30 s).
struct Samples {
  std::vector<Collected> of;
  bool done = false;
};

Samples CollectSamples(RequestStream& stream) {
  Samples s;
  s.of.resize(stream.num_samples());
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while (!s.done && absl::Now() < end) {
    std::optional<StreamChunk> chunk = stream.Next(absl::Milliseconds(100));
    if (!chunk.has_value()) continue;
    EXPECT_GE(chunk->index, 0);
    EXPECT_LT(chunk->index, stream.num_samples());
    Collected& c = s.of[chunk->index];
    EXPECT_FALSE(c.finished) << "sample " << chunk->index << " continues after it finished";
    ++c.chunks;
    c.tokens.insert(c.tokens.end(), chunk->token_ids.begin(), chunk->token_ids.end());
    c.text += chunk->text;
    if (chunk->finished) {
      c.finished = true;
      c.finish = chunk->finish;
      c.status = chunk->status;
      c.usage = chunk->usage;
    }
    s.done = chunk->last;
  }
  return s;
}

std::vector<TokenId> Prompt(int32_t n) {
  std::vector<TokenId> p = {1};
  for (int32_t i = 1; i < n; ++i) p.push_back(3 + (i * 37) % 400);
  return p;
}

TEST(EngineSamplingTest, NGreedySamplesEqualOneGreedySample) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  engine->Start();
  auto one = engine->Submit(Greedy(Prompt(21), 12));
  ASSERT_TRUE(one.ok());
  const Collected single = Collect(**one);
  ASSERT_EQ(single.tokens.size(), 12u);
  EngineRequest r = Greedy(Prompt(21), 12);
  r.sampling.n = 4;
  auto four = engine->Submit(r);
  ASSERT_TRUE(four.ok()) << four.status();
  const Samples s = CollectSamples(**four);
  ASSERT_TRUE(s.done);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(s.of[i].tokens, single.tokens) << "sample " << i;
    EXPECT_EQ(s.of[i].text, single.text) << "sample " << i;
    EXPECT_EQ(s.of[i].finish, FinishReason::kLength);
    EXPECT_EQ(s.of[i].usage.generated_tokens, 12);
    // The prompt is counted once, in sample 0's usage.
    EXPECT_EQ(s.of[i].usage.prompt_tokens, i == 0 ? 21 : 0);
  }
}

// Runs `requests` (submitted before the loop starts, so they are admitted together) and
// returns the most KV blocks in use at once, with each stream's samples.
int64_t PeakBlocks(const std::vector<EngineRequest>& requests, std::vector<Samples>* out) {
  std::unique_ptr<Engine> engine = MakeEngine();
  EXPECT_NE(engine, nullptr);
  if (engine == nullptr) return -1;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const EngineRequest& r : requests) {
    auto s = engine->Submit(r);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) streams.push_back(*s);
  }
  engine->Start();
  for (auto& s : streams) out->push_back(CollectSamples(*s));
  return engine->metrics().kv_blocks_used_peak.load();
}

TEST(EngineSamplingTest, SeededSamplesAreReproducibleAndShareThePromptsBlocks) {
  EngineRequest r = Greedy(Prompt(70), 6);
  r.sampling.temperature = 1.0f;
  r.sampling.n = 4;
  r.seed = 1234;
  std::vector<Samples> shared, again;
  const int64_t shared_peak = PeakBlocks({r}, &shared);
  PeakBlocks({r}, &again);
  ASSERT_EQ(shared.size(), 1u);
  ASSERT_TRUE(shared[0].done);
  std::set<std::vector<TokenId>> distinct;
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(shared[0].of[i].tokens.size(), 6u);
    EXPECT_EQ(shared[0].of[i].tokens, again[0].of[i].tokens) << "sample " << i;
    distinct.insert(shared[0].of[i].tokens);
  }
  EXPECT_GT(distinct.size(), 1u) << "samples with their own seeds differ";
  // Four separate requests with the samples' seeds: the same tokens, four prefills' blocks.
  std::vector<EngineRequest> separate;
  for (int i = 0; i < 4; ++i) {
    EngineRequest one = r;
    one.sampling.n = 1;
    one.seed = SampleSeed(1234, i);
    separate.push_back(one);
  }
  std::vector<Samples> alone;
  const int64_t separate_peak = PeakBlocks(separate, &alone);
  ASSERT_EQ(alone.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(alone[i].of[0].tokens, shared[0].of[i].tokens) << i;
  EXPECT_LT(shared_peak, separate_peak);
  std::cout << "peak KV blocks: n = 4 " << shared_peak << ", 4 requests " << separate_peak << "\n";
}

TEST(EngineSamplingTest, LogprobsAndLimits) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  engine->Start();
  EngineRequest r = Greedy(Prompt(5), 5);
  r.sampling.logprobs = 3;
  auto stream = engine->Submit(r);
  ASSERT_TRUE(stream.ok());
  int32_t seen = 0;
  for (bool last = false; !last;) {
    std::optional<StreamChunk> c = (*stream)->Next(absl::Seconds(30));
    ASSERT_TRUE(c.has_value());
    ASSERT_EQ(c->logprobs.size(), c->token_ids.size());
    for (size_t i = 0; i < c->token_ids.size(); ++i) {
      const TokenLogprobs& l = c->logprobs[i];
      EXPECT_EQ(l.token, c->token_ids[i]);
      ASSERT_EQ(l.top_ids.size(), 3u);
      EXPECT_EQ(l.top_ids[0], l.token) << "greedy samples the most likely token";
      EXPECT_FLOAT_EQ(l.top_logprobs[0], l.logprob);
      EXPECT_LE(l.logprob, 0.0f);
      EXPECT_GE(l.top_logprobs[1], l.top_logprobs[2]);
      ++seen;
    }
    last = c->last;
  }
  EXPECT_EQ(seen, 5);
  EngineRequest too_many = Greedy(Prompt(5), 5);
  too_many.sampling.n = 17;  // --max-n 16
  EXPECT_EQ(engine->Submit(too_many).status().code(), absl::StatusCode::kInvalidArgument);
  EngineRequest too_wide = Greedy(Prompt(5), 5);
  too_wide.sampling.logprobs = kMaxTopLogprobs + 1;
  EXPECT_EQ(engine->Submit(too_wide).status().code(), absl::StatusCode::kInvalidArgument);
  EngineRequest bad_penalty = Greedy(Prompt(5), 5);
  bad_penalty.sampling.presence_penalty = 2.5f;
  EXPECT_EQ(engine->Submit(bad_penalty).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineSamplingTest, PenaltiesChangeGreedyOutputAndMinTokensHoldsOffEos) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  engine->Start();
  auto plain = engine->Submit(Greedy(Prompt(3), 40));
  ASSERT_TRUE(plain.ok());
  const Collected p = Collect(**plain);
  EngineRequest r = Greedy(Prompt(3), 40);
  r.sampling.frequency_penalty = 2.0f;
  auto penalised = engine->Submit(r);
  ASSERT_TRUE(penalised.ok());
  const Collected q = Collect(**penalised);
  ASSERT_EQ(q.tokens.size(), 40u);
  EXPECT_NE(q.tokens, p.tokens);
  // Fewer repeats: the most frequent token occurs less often.
  auto max_count = [](const std::vector<TokenId>& t) {
    std::map<TokenId, int> c;
    int m = 0;
    for (TokenId x : t) m = std::max(m, ++c[x]);
    return m;
  };
  EXPECT_LT(max_count(q.tokens), max_count(p.tokens));
  // min_tokens: a stop token that greedy decoding hits first is not sampled before it.
  EngineRequest stop = Greedy(Prompt(3), 40);
  stop.sampling.stop_token_ids = {p.tokens[2]};
  stop.sampling.min_tokens = 10;
  auto held = engine->Submit(stop);
  ASSERT_TRUE(held.ok());
  const Collected h = Collect(**held);
  ASSERT_GE(h.tokens.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_NE(h.tokens[i], p.tokens[2]) << i;
}

TEST(EngineSamplingTest, CancellingARequestEndsEverySample) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  EngineRequest r = Greedy(Prompt(9), 200, "group-1");
  r.sampling.n = 3;
  auto stream = engine->Submit(r);
  ASSERT_TRUE(stream.ok());
  // Before the loop starts: the abort lands before the prefill, so before the fork.
  EXPECT_TRUE(engine->Abort("group-1"));
  engine->Start();
  const Samples s = CollectSamples(**stream);
  ASSERT_TRUE(s.done);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(s.of[i].finished) << i;
    EXPECT_EQ(s.of[i].finish, FinishReason::kAborted) << i;
    EXPECT_TRUE(s.of[i].tokens.empty()) << i;
  }
  // Another request runs normally afterwards.
  auto next = engine->Submit(Greedy(Prompt(9), 2));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(Collect(**next).tokens.size(), 2u);
}

}  // namespace
}  // namespace hkv
