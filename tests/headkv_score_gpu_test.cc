// `hkv headkv-score`'s engine half (server/headkv_probe_runner.h) on the CUDA worker against
// the CPU worker, on the same needle-fixture probes: the same greedy answers and acceptance,
// and per-head R2 / R scores within bf16 tolerance. Skips without a GPU.

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/headkv_probe_runner.h"
#include "server/model_setup.h"
#include "workers/cuda/cuda_worker.h"

namespace hkv {
namespace {

std::vector<Probe> FixtureProbes(const std::vector<std::string>& ids) {
  std::ifstream in(SourceDir() + "/tests/data/needle/probes_score.jsonl");
  std::stringstream text;
  text << in.rdbuf();
  auto all = ParseProbeFile(text.str());
  EXPECT_TRUE(all.ok()) << all.status();
  std::vector<Probe> out;
  for (const Probe& p : *all) {
    if (std::find(ids.begin(), ids.end(), p.id) != ids.end()) out.push_back(p);
  }
  return out;
}

absl::StatusOr<ProbeRunReport> RunOn(const std::string& device, const LoadedModel& m,
                                     const std::vector<PreparedProbe>& probes, ProbeMethod method) {
  ServerConfig config;
  config.device = device;
  config.kv_pool_gb = 1.0;
  config.num_threads = 0;
  auto worker = MakeWorker(config, m.model);
  if (!worker.ok()) return worker.status();
  ProbeRunOptions o;
  o.method = method;
  if (device == "cpu") o.max_pool_blocks = 1 << 16;
  const auto start = std::chrono::steady_clock::now();
  auto report = RunProbes(worker->get(), *m.tokenizer, probes, o);
  std::cerr << device << ": " << probes.size() << " probes in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s\n";
  return report;
}

TEST(HeadkvScoreGpuTest, CudaScoresAgreeWithCpuScores) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto m = LoadModelAndTokenizer(SourceDir() + "/tests/data/needle", "");
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<PreparedProbe> probes;
  for (const Probe& p : FixtureProbes({"probe-single-1024-0", "probe-single-2048-50",
                                       "probe-fav-1024-25", "probe-fav-1024-50"})) {
    auto prepared = PrepareProbe(p, *m->tokenizer, 0, m->model->config.max_seq_len);
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    probes.push_back(std::move(*prepared));
  }
  ASSERT_EQ(probes.size(), 4u);
  for (ProbeMethod method : {ProbeMethod::kR2, ProbeMethod::kR}) {
    auto cpu = RunOn("cpu", *m, probes, method);
    auto gpu = RunOn("cuda", *m, probes, method);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    EXPECT_EQ(cpu->num_accepted, gpu->num_accepted);
    for (size_t i = 0; i < probes.size(); ++i) {
      const ProbeOutcome& c = cpu->probes[i];
      const ProbeOutcome& g = gpu->probes[i];
      EXPECT_EQ(c.output, g.output) << c.id;
      EXPECT_EQ(c.accepted, g.accepted) << c.id;
      ASSERT_EQ(c.scores.size(), g.scores.size());
      for (size_t k = 0; k < c.scores.size(); ++k) {
        // bf16 activations: a head's score within 0.02 + 5%.
        EXPECT_NEAR(g.scores[k], c.scores[k], 0.02 + 0.05 * c.scores[k]) << c.id << " head " << k;
      }
    }
  }
}

}  // namespace
}  // namespace hkv
