// Async scheduling end to end on the CPU engine (stories260K): the same requests, submitted
// before the engine starts, served one step at a time and with step N+1 planned and launched
// before step N's results (pending tokens resolved by the worker). The CPU worker's results do
// not depend on the batch, so every token, finish reason and usage count must be equal:
// every KV policy (one-step and chunked compressed prefills sit out a step), sampled n > 1
// requests (forks), penalties and min_tokens (their tokens must be known), EOS and stop tokens
// (a request that ends ran one step too many), and a pool small enough to preempt (ahead steps
// never preempt; Schedule does it after). Aborts while two steps are in flight end cleanly.

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "server/engine.h"
#include "server/model_setup.h"
#include "server/server_config.h"

namespace hkv {
namespace {

struct Ended {
  std::vector<TokenId> tokens;
  FinishReason finish = FinishReason::kNone;
  int32_t completion_tokens = 0;
  int64_t kv_tokens_kept = 0;
  bool ok = false;
};

struct Served {
  std::map<std::pair<int, int>, Ended> samples;  // (request, sample)
  int64_t steps = 0, ahead_steps = 0, preemptions = 0;
};

ServerConfig Config(bool async, int32_t pool_blocks) {
  ServerConfig c;
  c.model = DefaultModelPath();
  c.tokenizer = DefaultTokenizerPath();
  c.device = "cpu";
  c.num_threads = 2;
  c.kv_pool_blocks = pool_blocks;
  c.block_size = 4;
  c.max_batch_tokens = 96;
  c.max_seqs = 16;
  c.max_queue = 64;
  c.async_scheduling = async;
  return c;
}

EngineRequest Request(int i) {
  static const char* kPolicies[] = {"full", "snapkv", "pyramidkv", "adakv"};
  EngineRequest r;
  for (int t = 0; t < 12 + (i * 29) % 150; ++t) r.prompt.push_back(1 + (t * 17 + i * 5) % 500);
  r.sampling.max_tokens = 10 + i % 13;
  r.sampling.ignore_eos = i % 4 != 3;  // some end on EOS, which may come at any step
  r.sampling.temperature = i % 3 == 0 ? 0.9f : 0.0f;
  r.sampling.n = i % 6 == 0 ? 3 : 1;
  if (i % 7 == 2) r.sampling.repetition_penalty = 1.3f;
  if (i % 7 == 4) r.sampling.min_tokens = 4;
  if (i % 9 == 5) r.sampling.stop_token_ids = {13, 29};
  r.seed = 1000 + i;
  r.kv_policy = kPolicies[i % 4];
  r.kv_budget = r.kv_policy == "full" ? 0 : 16 + i % 3 * 8;
  return r;
}

Served Serve(bool async, int32_t pool_blocks, int num_requests) {
  Served out;
  auto bundle = BuildEngine(Config(async, pool_blocks));
  EXPECT_TRUE(bundle.ok()) << bundle.status();
  if (!bundle.ok()) return out;
  Engine& engine = *bundle->engine;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < num_requests; ++i) {
    auto s = engine.Submit(Request(i));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return out;
    streams.push_back(*s);
  }
  engine.Start();
  for (int i = 0; i < num_requests; ++i) {
    const int samples = Request(i).sampling.n;
    int finished = 0;
    const absl::Time end = absl::Now() + absl::Seconds(120);
    while (finished < samples && absl::Now() < end) {
      std::optional<StreamChunk> c = streams[i]->Next(absl::Milliseconds(100));
      if (!c.has_value()) continue;
      Ended& e = out.samples[{i, c->index}];
      e.tokens.insert(e.tokens.end(), c->token_ids.begin(), c->token_ids.end());
      if (c->finished) {
        ++finished;
        e.ok = c->status.ok();
        e.finish = c->finish;
        e.completion_tokens = c->usage.generated_tokens;
        e.kv_tokens_kept = c->usage.kv_tokens_kept;
        EXPECT_TRUE(c->status.ok()) << c->status;
      }
    }
    EXPECT_EQ(finished, samples) << "request " << i;
  }
  out.steps = engine.metrics().engine_steps_total.load();
  out.ahead_steps = engine.metrics().engine_ahead_steps_total.load();
  out.preemptions = engine.metrics().preemptions_total.load();
  engine.Stop();
  return out;
}

void ExpectSameOutputs(const Served& sync, const Served& async) {
  ASSERT_EQ(async.samples.size(), sync.samples.size());
  for (const auto& [key, want] : sync.samples) {
    SCOPED_TRACE("request " + std::to_string(key.first) + " sample " + std::to_string(key.second));
    const Ended& got = async.samples.at(key);
    EXPECT_TRUE(got.ok && want.ok);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.finish, want.finish);
    EXPECT_EQ(got.completion_tokens, want.completion_tokens);
    EXPECT_EQ(got.kv_tokens_kept, want.kv_tokens_kept);
  }
}

TEST(AsyncStepsTest, SameOutputsAsOneStepAtATime) {
  const Served sync = Serve(false, 1 << 14, 24);
  const Served async = Serve(true, 1 << 14, 24);
  EXPECT_EQ(sync.ahead_steps, 0);
  // Most steps are planned ahead (a step after one that selects or forks for all is not).
  EXPECT_GT(async.ahead_steps, async.steps / 2) << async.steps << " steps";
  ExpectSameOutputs(sync, async);
}

TEST(AsyncStepsTest, SameOutputsWhenThePoolPreempts) {
  // stories260K: 5 layers x 4 KV heads = 20 rows per sequence, 4 tokens a block.
  const Served sync = Serve(false, 1500, 24);
  const Served async = Serve(true, 1500, 24);
  EXPECT_GT(sync.preemptions, 0) << "the pool should be small enough to preempt";
  EXPECT_GT(async.preemptions, 0);
  EXPECT_GT(async.ahead_steps, 0);
  ExpectSameOutputs(sync, async);
}

TEST(AsyncStepsTest, AbortsWhileStepsAreInFlightEndCleanly) {
  auto bundle = BuildEngine(Config(true, 1 << 14));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  Engine& engine = *bundle->engine;
  engine.Start();
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 8; ++i) {
    EngineRequest r = Request(i);
    r.request_id = "abort-" + std::to_string(i);
    r.sampling.max_tokens = 200;
    r.sampling.n = 1;
    r.sampling.ignore_eos = true;
    r.sampling.stop_token_ids.clear();
    auto s = engine.Submit(std::move(r));
    ASSERT_TRUE(s.ok()) << s.status();
    streams.push_back(*s);
  }
  // Abort each once it has streamed a few tokens (two steps are usually in flight then).
  for (int i = 0; i < 8; ++i) {
    int tokens = 0;
    bool finished = false;
    bool aborted = false;
    const absl::Time end = absl::Now() + absl::Seconds(60);
    while (!finished && absl::Now() < end) {
      std::optional<StreamChunk> c = streams[i]->Next(absl::Milliseconds(100));
      if (!c.has_value()) continue;
      tokens += static_cast<int>(c->token_ids.size());
      if (!aborted && tokens >= 3) {
        aborted = engine.Abort("abort-" + std::to_string(i));
        EXPECT_TRUE(aborted);
      }
      if (c->finished) {
        finished = true;
        EXPECT_EQ(c->finish, FinishReason::kAborted);
        EXPECT_EQ(c->usage.generated_tokens, tokens);
        EXPECT_LT(tokens, 200);
      }
    }
    EXPECT_TRUE(finished) << "request " << i;
  }
  // The engine serves on after the aborts.
  EngineRequest r = Request(1);
  r.sampling.n = 1;
  auto s = engine.Submit(std::move(r));
  ASSERT_TRUE(s.ok());
  bool finished = false;
  const absl::Time end = absl::Now() + absl::Seconds(60);
  while (!finished && absl::Now() < end) {
    std::optional<StreamChunk> c = (*s)->Next(absl::Milliseconds(100));
    if (c.has_value() && c->finished) {
      finished = true;
      EXPECT_TRUE(c->status.ok()) << c->status;
    }
  }
  EXPECT_TRUE(finished);
  EXPECT_GT(engine.metrics().engine_ahead_steps_total.load(), 0);
  engine.Stop();
}

}  // namespace
}  // namespace hkv
