// CpuWorker's attention probes (SequenceStep::probe_*) against a dense reference forward pass
// written from the model's weights with plain loops: the softmax of q.k over every cached
// position, per layer and query head, of the probed token. On stories260K and on the trained
// needle fixture (GQA: 8 query heads over 2 KV heads).

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/batch_validation.h"
#include "common/paths.h"
#include "gtest/gtest.h"
#include "model/hf_loader.h"
#include "model/llama2c_loader.h"
#include "workers/cpu/cpu_worker.h"
#include "workers/cpu/dense_reference_testing.h"

namespace hkv {
namespace {

constexpr int32_t kBlock = 16;

std::shared_ptr<const Model> Load(bool needle) {
  auto m = needle ? LoadHfModel(SourceDir() + "/tests/data/needle")
                  : LoadLlama2cCheckpoint(DefaultModelPath());
  EXPECT_TRUE(m.ok()) << m.status();
  return std::make_shared<const Model>(std::move(*m));
}

using testing::Rows;
Rows DenseRows(const Model& model, const std::vector<TokenId>& tokens) {
  return testing::DenseForward(model, tokens).rows;
}

// A batch of plain steps; sequence i owns blocks [i * rows * per_row, ...), rows contiguous.
struct Steps {
  Steps(const ModelConfig& c, int32_t per_row) : c(c), per_row(per_row) {
    b.num_layers = c.num_layers;
    b.num_kv_heads = c.num_kv_heads;
    b.block_size = kBlock;
    b.kv_indptr = {0};
  }
  SequenceStep& Add(int32_t slot, std::vector<TokenId> tokens, int32_t start) {
    const int32_t rows = c.num_layers * c.num_kv_heads;
    const int32_t after = start + static_cast<int32_t>(tokens.size());
    for (int32_t r = 0; r < rows; ++r) {
      for (int32_t k = 0; k < (after + kBlock - 1) / kBlock; ++k) {
        b.kv_indices.push_back((slot * rows + r) * per_row + k);
      }
      b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
      b.kv_len_before.push_back(start);
      b.kv_len_after.push_back(after);
    }
    SequenceStep s;
    s.id = slot;
    s.tokens = std::move(tokens);
    s.start_pos = start;
    s.sample = true;
    b.seqs.push_back(std::move(s));
    return b.seqs.back();
  }
  const ModelConfig& c;
  int32_t per_row;
  Batch b;
};

std::vector<TokenId> RandomTokens(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<TokenId> t(n);
  for (TokenId& id : t) id = static_cast<TokenId>(rng() % vocab);
  return t;
}

// The probe of result `r` ([L, Hq, k]) agrees with the dense rows: each reported weight is the
// reference weight of its position, they fall, and they are the reference's k largest.
void ExpectProbeMatches(const ModelConfig& c, const SequenceResult& r, const Rows& ref,
                        int32_t prompt_len, int32_t top_n) {
  const int32_t k = std::min(top_n, prompt_len);
  ASSERT_EQ(r.probe_positions.size(), static_cast<size_t>(c.num_layers) * c.num_heads * k);
  ASSERT_EQ(r.probe_weights.size(), r.probe_positions.size());
  for (int32_t l = 0; l < c.num_layers; ++l) {
    for (int32_t h = 0; h < c.num_heads; ++h) {
      std::vector<double> want(ref[l][h].begin(), ref[l][h].begin() + prompt_len);
      std::sort(want.rbegin(), want.rend());
      for (int32_t i = 0; i < k; ++i) {
        const size_t at = (static_cast<size_t>(l) * c.num_heads + h) * k + i;
        const int32_t p = r.probe_positions[at];
        ASSERT_GE(p, 0);
        ASSERT_LT(p, prompt_len);
        EXPECT_NEAR(r.probe_weights[at], ref[l][h][p], 1e-5) << l << " " << h << " " << i;
        EXPECT_NEAR(r.probe_weights[at], want[i], 1e-5) << l << " " << h << " " << i;
        if (i > 0) EXPECT_LE(r.probe_weights[at], r.probe_weights[at - 1]);
      }
    }
  }
}

// Prefills `prompt` but its last token in `slot`, then probes the last token's decode step.
void CheckProbe(bool needle, int32_t n, int32_t top_n, int32_t prompt_len) {
  const std::shared_ptr<const Model> model = Load(needle);
  const ModelConfig& c = model->config;
  const int32_t per_row = (n + kBlock) / kBlock;
  CpuWorker worker(model, 2 * c.num_layers * c.num_kv_heads * per_row, kBlock, 2);
  const std::vector<TokenId> tokens = RandomTokens(n, c.vocab_size, 7 + n);
  Steps prefill(c, per_row);
  prefill.Add(0, {tokens.begin(), tokens.end() - 1}, 0).sample = false;
  prefill.Add(1, {tokens.begin(), tokens.end() - 1}, 0).sample = false;
  ASSERT_TRUE(worker.Execute(prefill.b).ok());
  Steps decode(c, per_row);
  SequenceStep& probed = decode.Add(0, {tokens.back()}, n - 1);
  probed.probe_top_n = top_n;
  probed.probe_prompt_len = prompt_len;
  decode.Add(1, {tokens.back()}, n - 1);  // The same step without a probe.
  auto result = worker.Execute(decode.b);
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectProbeMatches(c, result->seqs[0], DenseRows(*model, tokens), prompt_len, top_n);
  EXPECT_TRUE(result->seqs[1].probe_positions.empty());
  EXPECT_EQ(result->seqs[0].token, result->seqs[1].token);  // Probing changes nothing else.
}

TEST(CpuAttentionProbeTest, StoriesMatchesDenseReference) { CheckProbe(false, 120, 5, 100); }

TEST(CpuAttentionProbeTest, StoriesTopNLongerThanPromptTakesEveryPosition) {
  CheckProbe(false, 40, 64, 30);
}

TEST(CpuAttentionProbeTest, NeedleGqaMatchesDenseReference) { CheckProbe(true, 200, 8, 200); }

TEST(CpuAttentionProbeTest, MalformedProbesAreInvalidArgument) {
  const ModelConfig c = Load(false)->config;
  auto probe = [&c](int32_t tokens, int32_t start, int32_t top_n, int32_t prompt_len) {
    Steps s(c, 8);
    SequenceStep& st = s.Add(0, RandomTokens(tokens, c.vocab_size, 1), start);
    st.probe_top_n = top_n;
    st.probe_prompt_len = prompt_len;
    return ValidateProbes(s.b).code();
  };
  EXPECT_EQ(probe(1, 10, 4, 10), absl::StatusCode::kOk);
  EXPECT_EQ(probe(1, 10, 4, 11), absl::StatusCode::kOk);               // The probed token itself.
  EXPECT_EQ(probe(2, 10, 4, 10), absl::StatusCode::kInvalidArgument);  // Not one decode.
  EXPECT_EQ(probe(1, 10, 4, 12), absl::StatusCode::kInvalidArgument);  // Past the row.
  EXPECT_EQ(probe(1, 10, 4, 0), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(probe(1, 10, kMaxProbeTopN + 1, 10), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(probe(1, 10, -1, 10), absl::StatusCode::kInvalidArgument);
  Steps compressed(c, 8);  // A row shorter than the position: a compressed cache.
  SequenceStep& st = compressed.Add(0, {1}, 10);
  st.probe_top_n = 2;
  st.probe_prompt_len = 5;
  compressed.b.kv_len_before[3] = 4;
  compressed.b.kv_len_after[3] = 5;
  EXPECT_EQ(ValidateProbes(compressed.b).code(), absl::StatusCode::kInvalidArgument);
  CpuWorker worker(Load(false), 64 * c.num_layers * c.num_kv_heads, kBlock, 1);
  EXPECT_EQ(worker.Execute(compressed.b).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hkv
