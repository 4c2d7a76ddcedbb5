// GPU test: the CUDA sampling path (kernels/logits_processing, kernels/sampling with min_p, the
// worker's penalty lists) against the CPU sampler (workers/sampler.h) on the same logits.
// Skips without a GPU.

#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/logits_processing.h"
#include "kernels/sampling.h"
#include "kernels/test_util.h"
#include "workers/cuda/sampling_extras.h"
#include "workers/sampler.h"

namespace hkv {
namespace {

using kernels::testing::DeviceArray;

std::vector<float> RandomLogits(int32_t rows, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.5f);
  std::vector<float> x(static_cast<size_t>(rows) * vocab);
  for (float& v : x) v = dist(rng);
  return x;
}

TEST(SamplingGpuTest, LogprobsMatchTheCpuSampler) {
  HKV_REQUIRE_GPU();
  const int32_t rows = 5, vocab = 32000, top = 20;
  std::vector<float> logits = RandomLogits(rows, vocab, 1);
  logits[2 * vocab + 10] = logits[2 * vocab + 20] = 30.0f;  // a tie: lower id first
  const std::vector<int32_t> tokens = {0, 31999, 20, 777, 12345};
  DeviceArray<float> d_logits(logits.size()), d_lp(rows), d_top_lp(rows * top);
  DeviceArray<int32_t> d_tokens(rows), d_top_ids(rows * top);
  HKV_CUDA_OK(d_logits.Upload(logits));
  HKV_CUDA_OK(d_tokens.Upload(tokens));
  HKV_CUDA_OK(kernels::ComputeLogprobs(d_logits.get(), vocab, rows, vocab, d_tokens.get(), top,
                                       d_lp.get(), d_top_ids.get(), d_top_lp.get(), nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  const auto lp = d_lp.Download();
  const auto top_ids = d_top_ids.Download();
  const auto top_lp = d_top_lp.Download();
  for (int32_t r = 0; r < rows; ++r) {
    const absl::Span<const float> row(logits.data() + static_cast<size_t>(r) * vocab, vocab);
    const TokenLogprobs want = ComputeLogprobs(row, tokens[r], top);
    EXPECT_NEAR(lp[r], want.logprob, 1e-3) << r;
    for (int32_t j = 0; j < top; ++j) {
      EXPECT_EQ(top_ids[r * top + j], want.top_ids[j]) << r << " " << j;
      EXPECT_NEAR(top_lp[r * top + j], want.top_logprobs[j], 1e-3) << r << " " << j;
    }
  }
}

TEST(SamplingGpuTest, PenaltiesAndBansMatchTheCpuSampler) {
  HKV_REQUIRE_GPU();
  const int32_t vocab = 4096, rows = 3;
  std::vector<float> logits = RandomLogits(rows, vocab, 2);
  // Three sequences with histories: penalties only, a min_tokens ban, and nothing.
  Batch b;
  b.seqs.resize(rows);
  std::vector<StepSampling> params(rows);
  params[0].presence_penalty = 0.7f;
  params[0].frequency_penalty = 0.3f;
  params[0].repetition_penalty = 1.4f;
  params[1].repetition_penalty = 0.8f;
  params[1].min_tokens = 5;
  TokenHistories histories;
  for (int32_t i = 0; i < rows; ++i) {
    SequenceStep& s = b.seqs[i];
    s.id = 100 + i;
    s.sample = true;
    s.sampling = params[i];
    s.num_prompt_tokens = 6;
    s.tokens = {1, 2, 3, 4000, 5, 2, 9, 9, 9, 3, 17, 4095};  // prompt, then 6 generated
    s.min_tokens_banned = {4095, 0, 7};
    s.sample_step = 6;
  }
  b.seqs[1].sampling.min_tokens = 8;  // 6 generated < 8: the ban applies
  params[1].min_tokens = 8;
  histories.Observe(b);
  HostStep h;
  for (int32_t i = 0; i < rows; ++i) {
    h.order.push_back(i);
    h.sample_seq.push_back(i);
    h.sample_index.push_back(0);
    h.sample_rows.push_back(HostSamplingRow{});
  }
  const SamplingExtras x = BuildSamplingExtras(b, h, histories, vocab);
  ASSERT_TRUE(x.penalties);
  static_assert(sizeof(HostPenaltyRow) == sizeof(kernels::PenaltyRow));
  DeviceArray<float> d_logits(logits.size());
  DeviceArray<kernels::PenaltyRow> d_params(rows);
  DeviceArray<int32_t> d_indptr(x.indptr.size()), d_ids(x.ids.size()), d_counts(x.counts.size());
  HKV_CUDA_OK(d_logits.Upload(logits));
  HKV_CUDA_OK(cudaMemcpy(d_params.get(), x.params.data(), rows * sizeof(HostPenaltyRow),
                         cudaMemcpyHostToDevice));
  HKV_CUDA_OK(d_indptr.Upload(x.indptr));
  HKV_CUDA_OK(d_ids.Upload(x.ids));
  HKV_CUDA_OK(d_counts.Upload(x.counts));
  HKV_CUDA_OK(kernels::ApplyPenalties(d_logits.get(), vocab, rows, vocab, d_params.get(),
                                      d_indptr.get(), d_ids.get(), d_counts.get(), nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  const auto got = d_logits.Download();
  for (int32_t r = 0; r < rows; ++r) {
    std::vector<float> want(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    if (const TokenHistory* hist = histories.Find(b.seqs[r].id)) {
      ApplyPenalties(absl::MakeSpan(want), params[r], *hist);
    }
    for (int32_t t = 0; t < vocab; ++t) {
      EXPECT_FLOAT_EQ(got[r * vocab + t], want[t]) << r << " " << t;
    }
  }
  EXPECT_TRUE(std::isinf(got[1 * vocab + 4095]));
  EXPECT_FALSE(std::isinf(got[0 * vocab + 4095]));
}

TEST(SamplingGpuTest, MinPKeepsWhatTheCpuSamplerKeeps) {
  HKV_REQUIRE_GPU();
  const int32_t vocab = 1000, draws = 256;
  const std::vector<float> row = RandomLogits(1, vocab, 3);
  StepSampling p;
  p.temperature = 0.8f;
  p.min_p = 0.05f;
  // The CPU sampler's candidates: every token it draws over many steps.
  std::set<int32_t> cpu;
  for (int step = 0; step < 4000; ++step) cpu.insert(SampleToken(row, p, step));
  std::vector<float> logits;
  std::vector<kernels::SamplingRow> params(draws);
  for (int32_t i = 0; i < draws; ++i) {
    logits.insert(logits.end(), row.begin(), row.end());
    params[i].temperature = p.temperature;
    params[i].min_p = p.min_p;
    params[i].uniform = (i + 0.5f) / draws;
  }
  DeviceArray<float> d_logits(logits.size());
  DeviceArray<kernels::SamplingRow> d_params(draws);
  DeviceArray<int32_t> d_out(draws);
  HKV_CUDA_OK(d_logits.Upload(logits));
  HKV_CUDA_OK(d_params.Upload(params));
  HKV_CUDA_OK(kernels::SampleTokens(d_logits.get(), vocab, draws, vocab, d_params.get(),
                                    d_out.get(), nullptr));
  HKV_CUDA_OK(cudaDeviceSynchronize());
  std::set<int32_t> gpu;
  for (int32_t t : d_out.Download()) gpu.insert(t);
  for (int32_t t : gpu) EXPECT_TRUE(cpu.count(t)) << "the GPU drew " << t << " below min_p";
  EXPECT_GT(gpu.size(), 1u);
}

}  // namespace
}  // namespace hkv
