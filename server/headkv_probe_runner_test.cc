// RunProbes / PrepareProbe on the trained needle fixture (tests/data/needle): token spans as
// the fixture recorded them, and R2 / R scores equal to the formula computed with nested loops
// over a dense reference forward pass (workers/cpu/dense_reference_testing.h), greedy step by
// step, independent of the worker, its paged cache, probes and top-N.

#include "server/headkv_probe_runner.h"

#include <fstream>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "headkv/answer_metrics.h"
#include "nlohmann/json.hpp"
#include "server/model_setup.h"
#include "workers/cpu/cpu_worker.h"
#include "workers/cpu/dense_reference_testing.h"

namespace hkv {
namespace {

std::string Dir() { return SourceDir() + "/tests/data/needle"; }

const LoadedModel& Needle() {
  static const LoadedModel* loaded = [] {
    auto m = LoadModelAndTokenizer(Dir(), "");
    EXPECT_TRUE(m.ok()) << m.status();
    return new LoadedModel(std::move(*m));
  }();
  return *loaded;
}

std::vector<nlohmann::json> FixtureProbes() {
  std::ifstream in(Dir() + "/probes_score.jsonl");
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

// A short probe cut from a fixture probe whose needle opens the document: the first
// `chars` characters of its prompt, then its question.
Probe ShortProbe(const nlohmann::json& j, size_t chars) {
  Probe p;
  p.id = j["id"].get<std::string>() + "-short";
  const std::string prompt = j["prompt"].get<std::string>();
  const size_t cut = prompt.rfind(". ", chars) + 1;
  p.question = j["question"].get<std::string>();
  p.prompt = prompt.substr(0, cut) + " " + p.question;
  p.answer = j["answer"].get<std::string>();
  p.span_begin = j["answer_char_span"][0].get<int64_t>();
  p.span_end = j["answer_char_span"][1].get<int64_t>();
  EXPECT_LT(p.span_end, static_cast<int64_t>(cut));
  return p;
}

std::unique_ptr<CpuWorker> Worker() {
  return std::make_unique<CpuWorker>(Needle().model, /*num_blocks=*/0, 16, 2);
}

TEST(HeadkvProbeRunnerTest, TokenSpansAreTheFixturesAnswerSpans) {
  const LoadedModel& m = Needle();
  for (const nlohmann::json& j : FixtureProbes()) {
    Probe p;
    p.id = j["id"].get<std::string>();
    p.prompt = j["prompt"].get<std::string>();
    p.answer = j["answer"].get<std::string>();
    p.span_begin = j["answer_char_span"][0].get<int64_t>();
    p.span_end = j["answer_char_span"][1].get<int64_t>();
    auto prepared = PrepareProbe(p, *m.tokenizer, 0, m.model->config.max_seq_len);
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    EXPECT_EQ(prepared->prompt.size(), j["prompt_tokens"].get<size_t>()) << p.id;
    EXPECT_EQ(prepared->span.begin, j["answer_token_span"][0].get<int32_t>()) << p.id;
    EXPECT_EQ(prepared->span.end, j["answer_token_span"][1].get<int32_t>()) << p.id;
    EXPECT_GE(prepared->max_new_tokens, 2) << p.id;
  }
}

TEST(HeadkvProbeRunnerTest, AppendsTheQuestionUnlessThePromptEndsWithIt) {
  const LoadedModel& m = Needle();
  auto parsed = ParseProbeFile(
      R"({"haystack": "The sky is blue. The sea is wide.", "needle": "The code of Zoe is 275316.", )"
      R"("depth": 0.5, "question": "Question: What is the code of Zoe? Answer:", "answer": "275316"})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto p = PrepareProbe((*parsed)[0], *m.tokenizer, 0, 4096);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string text = m.tokenizer->Decode(absl::MakeConstSpan(p->prompt).subspan(1));
  EXPECT_EQ(text,
            "The sky is blue. The code of Zoe is 275316. The sea is wide. Question: What is "
            "the code of Zoe? Answer:");
  // The span is the inserted needle's tokens.
  EXPECT_EQ(
      m.tokenizer->Decode(absl::MakeConstSpan(p->prompt).subspan(p->span.begin, p->span.size())),
      " The code of Zoe is 275316.");
}

// The formula, with nested loops, over dense rows of each greedy step.
struct Reference {
  std::vector<TokenId> output;
  std::vector<double> r2, r;  // [L * Hq]
};

Reference ReferenceScores(const PreparedProbe& p) {
  const Model& model = *Needle().model;
  const ModelConfig& c = model.config;
  const Tokenizer& tok = *Needle().tokenizer;
  const int32_t n = static_cast<int32_t>(p.prompt.size()), N = p.span.size();
  Reference ref;
  ref.r2.assign(c.num_layers * c.num_heads, 0);
  ref.r.assign(ref.r2.size(), 0);
  std::vector<TokenId> tokens = p.prompt;
  while (static_cast<int32_t>(ref.output.size()) < p.max_new_tokens) {
    const testing::DenseStep step = testing::DenseForward(model, tokens);
    const TokenId next = static_cast<TokenId>(
        std::max_element(step.logits.begin(), step.logits.end()) - step.logits.begin());
    for (int32_t l = 0; l < c.num_layers; ++l) {
      for (int32_t h = 0; h < c.num_heads; ++h) {
        const std::vector<double>& row = step.rows[l][h];
        std::vector<bool> taken(n, false);
        double in_span = 0;
        for (int32_t round = 0; round < std::min(N, n); ++round) {
          int32_t best = -1;
          for (int32_t j = 0; j < n; ++j) {
            if (!taken[j] && (best < 0 || row[j] > row[best])) best = j;
          }
          taken[best] = true;
          if (best >= p.span.begin && best < p.span.end) in_span += row[best];
          if (round == 0 && best >= p.span.begin && best < p.span.end && p.prompt[best] == next) {
            ref.r[l * c.num_heads + h] += 1.0 / N;
          }
        }
        ref.r2[l * c.num_heads + h] += in_span / N;
      }
    }
    ref.output.push_back(next);
    tokens.push_back(next);
    if (next == tok.eos_ids()[0] ||
        tok.TokenBytes(tokens[tokens.size() - 2], next).find('\n') != std::string::npos) {
      break;
    }
  }
  return ref;
}

TEST(HeadkvProbeRunnerTest, ScoresEqualTheFormulaOverDenseRows) {
  const LoadedModel& m = Needle();
  const std::vector<nlohmann::json> fixture = FixtureProbes();
  std::vector<PreparedProbe> probes;
  for (int i : {0, 20}) {  // probe-single-1024-0, probe-fav-1024-0: needles at depth 0.
    auto p =
        PrepareProbe(ShortProbe(fixture[i], 600), *m.tokenizer, 0, m.model->config.max_seq_len);
    ASSERT_TRUE(p.ok()) << p.status();
    probes.push_back(std::move(*p));
  }
  std::vector<Reference> refs;
  for (const PreparedProbe& p : probes) refs.push_back(ReferenceScores(p));
  for (ProbeMethod method : {ProbeMethod::kR2, ProbeMethod::kR}) {
    ProbeRunOptions o;
    o.method = method;
    o.max_step_tokens = 64;  // Several prefill chunks, two probes a step.
    auto worker = Worker();
    auto report = RunProbes(worker.get(), *m.tokenizer, probes, o);
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_EQ(report->probes.size(), probes.size());
    int accepted = 0;
    for (size_t i = 0; i < probes.size(); ++i) {
      const Reference& ref = refs[i];
      const ProbeOutcome& got = report->probes[i];
      EXPECT_EQ(got.output, ref.output) << got.id;
      const std::vector<double>& want = method == ProbeMethod::kR2 ? ref.r2 : ref.r;
      ASSERT_EQ(got.scores.size(), want.size());
      double total = 0;
      for (size_t k = 0; k < want.size(); ++k) {
        EXPECT_NEAR(got.scores[k], want[k], 1e-5) << got.id << " head " << k;
        total += want[k];
      }
      if (i == 0) EXPECT_GT(total, 0) << got.id;  // Some head retrieves the code.
      const double metric = method == ProbeMethod::kR2
                                ? QaF1(got.response, probes[i].answer)
                                : Rouge1Recall(got.response, probes[i].answer);
      EXPECT_EQ(got.metric, metric);
      EXPECT_EQ(got.accepted, metric > 0.5);
      accepted += got.accepted;
    }
    EXPECT_EQ(report->num_accepted, accepted);
    EXPECT_TRUE(report->probes[0].accepted) << report->probes[0].response;  // Single retrieval.
  }
}

TEST(HeadkvProbeRunnerTest, BatchingAndChunkingDoNotChangeScores) {
  const LoadedModel& m = Needle();
  const std::vector<nlohmann::json> fixture = FixtureProbes();
  std::vector<PreparedProbe> probes;
  for (int i : {0, 5, 20}) {
    auto p =
        PrepareProbe(ShortProbe(fixture[i], 400), *m.tokenizer, 3, m.model->config.max_seq_len);
    ASSERT_TRUE(p.ok()) << p.status();
    probes.push_back(std::move(*p));
  }
  ProbeRunOptions one;
  one.max_seqs = 1;
  ProbeRunOptions many;
  many.max_seqs = 3;
  many.max_step_tokens = 50;
  auto w1 = Worker();
  auto w2 = Worker();
  auto a = RunProbes(w1.get(), *m.tokenizer, probes, one);
  auto b = RunProbes(w2.get(), *m.tokenizer, probes, many);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  for (size_t i = 0; i < probes.size(); ++i) {
    EXPECT_EQ(a->probes[i].output, b->probes[i].output);
    EXPECT_LE(a->probes[i].output.size(), 3u);
    ASSERT_EQ(a->probes[i].scores.size(), b->probes[i].scores.size());
    for (size_t k = 0; k < a->probes[i].scores.size(); ++k) {
      EXPECT_NEAR(a->probes[i].scores[k], b->probes[i].scores[k], 1e-6);
    }
  }
}

TEST(HeadkvProbeRunnerTest, ProbesTheModelCannotTakeAreRefused) {
  const LoadedModel& m = Needle();
  Probe p = ShortProbe(FixtureProbes()[0], 300);
  EXPECT_EQ(PrepareProbe(p, *m.tokenizer, 0, 20).status().code(),
            absl::StatusCode::kInvalidArgument);      // Past the context length.
  Probe wide = ShortProbe(FixtureProbes()[0], 2000);  // Over 256 tokens.
  wide.span_begin = 0;
  wide.span_end = static_cast<int64_t>(wide.prompt.size());
  auto prepared = PrepareProbe(wide, *m.tokenizer, 0, 4096);
  EXPECT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument);  // > kMaxProbeTopN
  auto ok = PrepareProbe(p, *m.tokenizer, 0, 4096);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ProbeRunOptions o;
  o.max_pool_blocks = 4;  // Less than one probe's KV.
  auto worker = Worker();
  EXPECT_EQ(RunProbes(worker.get(), *m.tokenizer, {*ok}, o).status().code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace hkv
