// The Hopper (wgmma) prefill attention kernel, both schedules (serial, pipelined), vs the CPU
// reference and vs the mma.sync kernel,
// on ragged chunks around the 64/128 tile edges, GQA groups 1/4/8, head_dim 64/128, with and
// without a paged prefix. Cases run small first; a failure prints the first mismatching
// (seq, row, head, col) with both values, so one run locates a layout or masking bug.
// Skips without an sm_90 GPU (the wgmma kernel reports cudaErrorNotSupported there).

#include "kernels/prefill_attention_sm90.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/prefill_attention.h"
#include "kernels/reference.h"
#include "kernels/test_util.h"

namespace hkv::kernels {
namespace {

using testing::DeviceArray;

struct Case {
  const char* name;
  DType dtype;
  int32_t head_dim, group, num_kv_heads;
  std::vector<int32_t> chunk;
  std::vector<int32_t> prefix;  // empty: no paged prefix
  int32_t cpu_rows;             // rows per sequence checked on the CPU (the rest vs mma.sync)
  // Each row's prefix blocks in ascending consecutive ids (the wgmma kernel then loads whole
  // tiles as one box per half); otherwise descending (one box per page).
  bool consecutive_blocks = false;
};

// gtest prints the case by name (the default dumps its bytes).
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Device inputs of one case; the host copies (as floats) for the reference.
struct Inputs {
  std::vector<int32_t> cu;
  std::vector<float> q, k, v, kp, vp;
  std::vector<int32_t> indptr, indices, last;  // compact CSR (seq * hkv + h), for the CPU
  DeviceArray<uint16_t> dq, dk, dv, dkp, dvp;
  DeviceArray<int32_t> dcu, dind, didx, dlast;
  PagedKvView view;
};

constexpr int32_t kBlock = 16;

void MakeInputs(const Case& c, Inputs* in) {
  std::mt19937 rng(1234 + c.head_dim + 7 * c.group);
  const int32_t hkv = c.num_kv_heads, hq = hkv * c.group, d = c.head_dim;
  const int32_t seqs = static_cast<int32_t>(c.chunk.size());
  in->cu = {0};
  for (int32_t n : c.chunk) in->cu.push_back(in->cu.back() + n);
  const int32_t total = in->cu.back();
  in->q = testing::RandomValues(static_cast<size_t>(total) * hq * d, 1.0f, c.dtype, rng);
  in->k = testing::RandomValues(static_cast<size_t>(total) * hkv * d, 1.0f, c.dtype, rng);
  in->v = testing::RandomValues(static_cast<size_t>(total) * hkv * d, 1.0f, c.dtype, rng);
  // Prefix pool: blocks handed out in reverse order (exercises the indirection); one spare
  // block for an unrelated CSR row per sequence, as a batch-wide CSR over layers has.
  int32_t blocks = 0;
  for (int32_t s = 0; s < seqs && !c.prefix.empty(); ++s) {
    blocks += hkv * ((c.prefix[s] + kBlock - 1) / kBlock);
  }
  in->indptr = {0};
  int32_t next = blocks, ascending = 0;
  for (int32_t s = 0; s < seqs; ++s) {
    const int32_t p = c.prefix.empty() ? 0 : c.prefix[s];
    for (int32_t h = 0; h < hkv; ++h) {
      const int32_t nb = (p + kBlock - 1) / kBlock;
      for (int32_t b = 0; b < nb; ++b) {
        in->indices.push_back(c.consecutive_blocks ? ascending++ : --next);
      }
      in->indptr.push_back(static_cast<int32_t>(in->indices.size()));
      in->last.push_back(nb == 0 ? 0 : p - (nb - 1) * kBlock);
    }
  }
  std::vector<int32_t> dev_indptr{0}, dev_indices, dev_last;
  for (int32_t s = 0; s < seqs; ++s) {
    dev_indices.push_back(blocks);  // the unrelated row: 3 tokens in the spare block
    dev_indptr.push_back(static_cast<int32_t>(dev_indices.size()));
    dev_last.push_back(3);
    for (int32_t h = 0; h < hkv; ++h) {
      const int32_t r = s * hkv + h;
      for (int32_t b = in->indptr[r]; b < in->indptr[r + 1]; ++b) {
        dev_indices.push_back(in->indices[b]);
      }
      dev_indptr.push_back(static_cast<int32_t>(dev_indices.size()));
      dev_last.push_back(in->last[r]);
    }
  }
  const size_t pool = static_cast<size_t>(blocks + 1) * kBlock * d;
  in->kp = testing::RandomValues(pool, 1.0f, c.dtype, rng);
  in->vp = testing::RandomValues(pool, 1.0f, c.dtype, rng);
  in->dq.Resize(in->q.size());
  in->dk.Resize(in->k.size());
  in->dv.Resize(in->v.size());
  in->dkp.Resize(pool);
  in->dvp.Resize(pool);
  in->dcu.Resize(in->cu.size());
  in->dind.Resize(dev_indptr.size());
  in->didx.Resize(dev_indices.size());
  in->dlast.Resize(dev_last.size());
  ASSERT_EQ(in->dq.Upload(testing::ToStorage(in->q, c.dtype)), cudaSuccess);
  ASSERT_EQ(in->dk.Upload(testing::ToStorage(in->k, c.dtype)), cudaSuccess);
  ASSERT_EQ(in->dv.Upload(testing::ToStorage(in->v, c.dtype)), cudaSuccess);
  // The slots past each row's length in its last block hold NaN, as a reused pool may hold
  // anything there: a kernel that reads them unmasked (or multiplies them by P = 0) fails.
  std::vector<uint16_t> kps = testing::ToStorage(in->kp, c.dtype),
                        vps = testing::ToStorage(in->vp, c.dtype);
  const uint16_t nan = c.dtype == DType::kBf16 ? 0x7fc0 : 0x7e00;
  for (size_t r = 0; r + 1 < in->indptr.size(); ++r) {
    if (in->indptr[r + 1] == in->indptr[r]) continue;
    const size_t blk = static_cast<size_t>(in->indices[in->indptr[r + 1] - 1]);
    for (int32_t slot = in->last[r]; slot < kBlock; ++slot) {
      for (int32_t x = 0; x < d; ++x) {
        kps[(blk * kBlock + slot) * d + x] = vps[(blk * kBlock + slot) * d + x] = nan;
      }
    }
  }
  ASSERT_EQ(in->dkp.Upload(kps), cudaSuccess);
  ASSERT_EQ(in->dvp.Upload(vps), cudaSuccess);
  ASSERT_EQ(in->dcu.Upload(in->cu), cudaSuccess);
  ASSERT_EQ(in->dind.Upload(dev_indptr), cudaSuccess);
  ASSERT_EQ(in->didx.Upload(dev_indices), cudaSuccess);
  ASSERT_EQ(in->dlast.Upload(dev_last), cudaSuccess);
  in->view = PagedKvView{in->dind.get(),
                         in->didx.get(),
                         in->dlast.get(),
                         in->dkp.get(),
                         in->dvp.get(),
                         static_cast<int64_t>(kBlock) * d,
                         kBlock,
                         hkv,
                         d};
  in->view.row_seq_stride = hkv + 1;
  in->view.row_offset = 1;
}

// Runs one kernel; the output starts as NaN so unwritten rows show.
cudaError_t RunKernel(const Case& c, Inputs& in, PrefillKernel kernel, std::vector<float>* out,
                      bool last_tile_only = false) {
  const int32_t hkv = c.num_kv_heads, hq = hkv * c.group, d = c.head_dim;
  const int32_t total = in.cu.back();
  DeviceArray<uint16_t> dout(static_cast<size_t>(total) * hq * d);
  cudaError_t e = dout.Fill(0xff);
  if (e != cudaSuccess) return e;
  PrefillAttentionArgs a;
  a.dtype = c.dtype;
  a.q = in.dq.get();
  a.k = in.dk.get();
  a.v = in.dv.get();
  a.out = dout.get();
  a.q_stride = a.out_stride = static_cast<int64_t>(hq) * d;
  a.kv_stride = static_cast<int64_t>(hkv) * d;
  a.cu_seqlens = in.dcu.get();
  a.num_seqs = static_cast<int32_t>(c.chunk.size());
  a.max_q_len = *std::max_element(c.chunk.begin(), c.chunk.end());
  a.num_q_heads = hq;
  a.num_kv_heads = hkv;
  a.head_dim = d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.prefix = c.prefix.empty() ? nullptr : &in.view;
  a.total_q = total;
  a.kernel = kernel;
  a.last_tile_only = last_tile_only;
  if ((e = RunPrefillAttention(a, nullptr)) != cudaSuccess) {
    // Tells "the shape/device checks refused it" from "the tensor maps could not be built".
    std::fprintf(stderr, "%s: kernel %d returned %s; PrefillAttentionSm90Supported = %d\n", c.name,
                 static_cast<int>(kernel), cudaGetErrorString(e),
                 PrefillAttentionSm90Supported(a) ? 1 : 0);
    return e;
  }
  // A pipeline bug (barrier phase, byte count) hangs rather than fails: say so and stop.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while ((e = cudaStreamQuery(nullptr)) == cudaErrorNotReady) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "HANG: %s kernel %d did not finish in 30 s\n", c.name,
                   static_cast<int>(kernel));
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (e != cudaSuccess) return e;
  *out = testing::FromStorage(dout.Download(), c.dtype);
  return cudaSuccess;
}

// "" when every element of rows [0, rows) of sequence s agrees within atol + rtol |want|;
// else the first mismatch as (seq, row, head, col) with both values, the mismatch count, and
// where the bad elements fall: by 8-column chunk (a swizzle or descriptor error shows as whole
// chunks), by row mod 16 (a fragment-layout error) and by 128-row tile (a pipeline error: one
// stage or tile index), which tells a layout bug from a masking or pipeline one in one run.
std::string FirstMismatch(const Case& c, const Inputs& in, int32_t s, int32_t rows,
                          const std::vector<float>& got, const std::vector<float>& want,
                          size_t want_offset, double atol, double rtol) {
  const int32_t hq = c.num_kv_heads * c.group, d = c.head_dim;
  const size_t base = static_cast<size_t>(in.cu[s]) * hq * d;
  int64_t bad = 0;
  std::vector<int64_t> by_chunk(d / 8), by_row16(16), by_tile((rows + 127) / 128);
  std::ostringstream first;
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t h = 0; h < hq; ++h) {
      for (int32_t x = 0; x < d; ++x) {
        const size_t i = (static_cast<size_t>(r) * hq + h) * d + x;
        const double g = got[base + i], w = want[want_offset + i];
        if (!(std::fabs(g - w) <= atol + rtol * std::fabs(w))) {
          if (bad++ == 0) {
            first << "seq " << s << " (chunk " << c.chunk[s] << ", prefix "
                  << (c.prefix.empty() ? 0 : c.prefix[s]) << ") row " << r << " head " << h
                  << " col " << x << ": got " << g << " want " << w;
          }
          ++by_chunk[x / 8];
          ++by_row16[r % 16];
          ++by_tile[r / 128];
        }
      }
    }
  }
  if (bad == 0) return "";
  auto list = [](const std::vector<int64_t>& v) {
    std::ostringstream o;
    for (size_t i = 0; i < v.size(); ++i) o << (i ? " " : "") << v[i];
    return o.str();
  };
  first << " (" << bad << " of " << static_cast<int64_t>(rows) * hq * d
        << " elements off; by 8-col chunk [" << list(by_chunk) << "], by row mod 16 ["
        << list(by_row16) << "], by 128-row tile [" << list(by_tile) << "])";
  return first.str();
}

// True on an sm_90 GPU, where the wgmma kernel must run (not report cudaErrorNotSupported).
bool IsSm90() {
  int dev = 0, major = 0, minor = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
         major == 9 && minor == 0;
}

class PrefillAttentionSm90Test : public ::testing::TestWithParam<Case> {};

TEST_P(PrefillAttentionSm90Test, MatchesReferenceAndMmaSync) {
  HKV_REQUIRE_GPU();
  const Case& c = GetParam();
  Inputs in;
  ASSERT_NO_FATAL_FAILURE(MakeInputs(c, &in));
  std::vector<float> mma;
  ASSERT_EQ(RunKernel(c, in, PrefillKernel::kMmaSync, &mma), cudaSuccess);
  const int32_t hkv = c.num_kv_heads, hq = hkv * c.group, d = c.head_dim;
  const double atol = c.dtype == DType::kBf16 ? 2e-2 : 4e-3, rtol = 2e-2;
  const ref::HostPagedKv host{in.indptr.data(),
                              in.indices.data(),
                              in.last.data(),
                              in.kp.data(),
                              in.vp.data(),
                              int64_t{kBlock} * d,
                              kBlock,
                              hkv,
                              d};
  // The CPU reference per sequence (causality: the first `rows` queries' reference is the
  // chunk cut to `rows`).
  std::vector<std::vector<float>> expect(c.chunk.size());
  for (size_t s = 0; s < c.chunk.size(); ++s) {
    const int32_t rows = std::min(c.chunk[s], c.cpu_rows);
    const size_t qo = static_cast<size_t>(in.cu[s]) * hq * d,
                 ko = static_cast<size_t>(in.cu[s]) * hkv * d;
    expect[s].resize(static_cast<size_t>(rows) * hq * d);
    ref::PrefillAttention(in.q.data() + qo, in.k.data() + ko, in.v.data() + ko, rows, hq, hkv, d,
                          c.prefix.empty() ? nullptr : &host, static_cast<int32_t>(s),
                          1.0f / std::sqrt(static_cast<float>(d)), expect[s].data());
  }
  // The serial schedule first (its prefix tiles all come by the cp.async gather): a failure
  // only in the pipelined one points at the pipeline or, in prefix cases, the page TMA.
  for (const PrefillKernel kernel : {PrefillKernel::kWgmmaSerial, PrefillKernel::kWgmma}) {
    SCOPED_TRACE(kernel == PrefillKernel::kWgmma ? "wgmma (pipelined, prefix pages by TMA)"
                                                 : "wgmma (serial, prefix by cp.async gather)");
    std::vector<float> got;
    const cudaError_t e = RunKernel(c, in, kernel, &got);
    if (e == cudaErrorNotSupported && !IsSm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
    ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
    for (int32_t s = 0; s < static_cast<int32_t>(c.chunk.size()); ++s) {
      const int32_t rows = std::min(c.chunk[s], c.cpu_rows);
      const size_t qo = static_cast<size_t>(in.cu[s]) * hq * d;
      const std::string cpu = FirstMismatch(c, in, s, rows, got, expect[s], 0, atol, rtol);
      EXPECT_EQ(cpu, "") << "vs CPU reference";
      const std::vector<float> g(got.begin() + qo, got.begin() + qo + expect[s].size());
      EXPECT_LT(testing::RelError(g, expect[s]), testing::Tolerance(c.dtype)) << "seq " << s;
      const std::string vs_mma = FirstMismatch(c, in, s, c.chunk[s], got, mma, qo, atol, rtol);
      EXPECT_EQ(vs_mma, "") << "vs the mma.sync kernel";
      if (!cpu.empty() || !vs_mma.empty()) break;  // the first failing sequence is enough
    }
  }
}

std::string CaseName(const ::testing::TestParamInfo<Case>& i) { return i.param.name; }

const std::vector<int32_t> kEdges{1, 7, 63, 64, 65, 127, 128, 129};

INSTANTIATE_TEST_SUITE_P(
    Sm90, PrefillAttentionSm90Test,
    ::testing::Values(
        // One tile, one head: layout bugs show here first.
        Case{"a1_bf16_d128_g1_len1_7_63_64", DType::kBf16, 128, 1, 1, {1, 7, 63, 64}, {}, 1 << 30},
        Case{"a2_bf16_d64_g1_len1_7_63_64", DType::kBf16, 64, 1, 1, {1, 7, 63, 64}, {}, 1 << 30},
        // Tile edges, GQA.
        Case{"b1_bf16_d128_g4_edges", DType::kBf16, 128, 4, 2, kEdges, {}, 1 << 30},
        Case{"b2_bf16_d64_g8_edges", DType::kBf16, 64, 8, 1, kEdges, {}, 1 << 30},
        Case{"b3_fp16_d128_g1_edges", DType::kFp16, 128, 1, 2, kEdges, {}, 1 << 30},
        Case{"b4_fp16_d64_g4_edges", DType::kFp16, 64, 4, 2, kEdges, {}, 1 << 30},
        // Paged prefix (chunked prefill): lengths around the 16-token pages and 128-key tiles.
        Case{"c1_bf16_d128_g4_prefix",
             DType::kBf16,
             128,
             4,
             2,
             kEdges,
             {0, 5, 16, 127, 128, 129, 300, 17},
             1 << 30},
        Case{"c2_bf16_d64_g8_prefix",
             DType::kBf16,
             64,
             8,
             1,
             kEdges,
             {129, 0, 1, 256, 64, 15, 700, 33},
             1 << 30},
        Case{"c3_fp16_d128_g1_prefix",
             DType::kFp16,
             128,
             1,
             2,
             kEdges,
             {3, 128, 0, 500, 1, 255, 16, 129},
             1 << 30},
        // Long chunks: many tiles, the pipeline's phases wrap; CPU on the first rows.
        Case{"d1_bf16_d128_g4_long", DType::kBf16, 128, 4, 1, {1000, 4096}, {}, 640},
        Case{"d2_bf16_d64_g8_long_prefix", DType::kBf16, 64, 8, 1, {1000, 4096}, {700, 1500}, 384},
        Case{"d3_fp16_d128_g1_long_prefix", DType::kFp16, 128, 1, 2, {4096, 1000}, {250, 0}, 256},
        // Prefix blocks in consecutive runs: whole tiles by one box per half.
        Case{"e1_bf16_d128_g4_prefix_runs",
             DType::kBf16,
             128,
             4,
             2,
             kEdges,
             {0, 5, 16, 127, 128, 129, 300, 1000},
             1 << 30,
             true},
        Case{"e2_bf16_d64_g8_long_prefix_runs",
             DType::kBf16,
             64,
             8,
             1,
             {1000, 4096},
             {700, 1500},
             384,
             true}),
    CaseName);

// kAuto runs the wgmma kernel where it can (an sm_90 GPU): same bits as kWgmma; elsewhere the
// mma.sync kernel's.
TEST(PrefillAttentionSm90DispatchTest, AutoRunsTheWgmmaKernelWhereItCan) {
  HKV_REQUIRE_GPU();
  const Case c{"auto", DType::kBf16, 128, 4, 2, {100, 300}, {}, 0};
  Inputs in;
  ASSERT_NO_FATAL_FAILURE(MakeInputs(c, &in));
  std::vector<float> want, autod;
  const PrefillKernel expected = IsSm90() ? PrefillKernel::kWgmma : PrefillKernel::kMmaSync;
  ASSERT_EQ(RunKernel(c, in, expected, &want), cudaSuccess);
  ASSERT_EQ(RunKernel(c, in, PrefillKernel::kAuto, &autod), cudaSuccess);
  ASSERT_EQ(want.size(), autod.size());
  EXPECT_EQ(0, std::memcmp(want.data(), autod.data(), want.size() * sizeof(float)));
}

// The engine's chunked prefill at Llama-3-8B's attention shape (8 KV heads, 4 queries each,
// head_dim 128): chunks of 1,024 after prefixes of 8,192 tokens (whole pages, every prefix tile
// by TMA) and 8,200 (a gathered partial tile), launched many times. A producer thread that
// waited on an mbarrier phase it could fall behind hung the kernel now and then here, never in
// one launch of the cases above. Every launch must finish (RunKernel stops the process after
// 30 s) and give the same bits as the first.
void RepeatChunks(const Case& c);

TEST(PrefillAttentionSm90DispatchTest, RepeatedChunksAfterLongPrefixesFinish) {
  HKV_REQUIRE_GPU();
  if (!IsSm90()) GTEST_SKIP() << "the wgmma kernel needs sm_90";
  for (const bool runs : {false, true}) {  // prefix tiles by page boxes, then by whole-tile boxes
    SCOPED_TRACE(runs ? "consecutive blocks" : "descending blocks");
    Case c{"chunks", DType::kBf16, 128, 4, 8, {1024, 1024}, {8192, 8200}, 0};
    c.consecutive_blocks = runs;
    ASSERT_NO_FATAL_FAILURE(RepeatChunks(c));
  }
}

// The body of RepeatedChunksAfterLongPrefixesFinish for one block order.
void RepeatChunks(const Case& c) {
  Inputs in;
  ASSERT_NO_FATAL_FAILURE(MakeInputs(c, &in));
  std::vector<float> first, out;
  ASSERT_EQ(RunKernel(c, in, PrefillKernel::kWgmma, &first), cudaSuccess);
  for (int i = 0; i < 60; ++i) {
    ASSERT_EQ(RunKernel(c, in, PrefillKernel::kWgmma, &out), cudaSuccess) << "launch " << i;
    ASSERT_EQ(0, std::memcmp(first.data(), out.data(), out.size() * sizeof(float)))
        << "launch " << i;
  }
  std::vector<float> mma;
  ASSERT_EQ(RunKernel(c, in, PrefillKernel::kMmaSync, &mma), cudaSuccess);
  double worst = 0.0;
  for (size_t x = 0; x < mma.size(); ++x) {
    worst = std::max(worst, static_cast<double>(std::fabs(mma[x] - first[x])));
  }
  EXPECT_LT(worst, 2e-2) << "wgmma vs mma.sync, max abs difference";
}

// last_tile_only (a model's last layer): each kernel writes the 128-row tile that holds each
// sequence's last row, with the bits of the full launch, and leaves every other row alone.
TEST(PrefillAttentionLastTileTest, WritesOnlyEachSequencesLastTileWithTheFullLaunchsBits) {
  HKV_REQUIRE_GPU();
  const Case c{"last_tile",
               DType::kBf16,
               128,
               4,
               2,
               {1, 127, 128, 129, 300, 1000},
               {0, 5, 16, 130, 0, 700},
               0};
  Inputs in;
  ASSERT_NO_FATAL_FAILURE(MakeInputs(c, &in));
  const int32_t hq = c.num_kv_heads * c.group, d = c.head_dim;
  for (const PrefillKernel kernel :
       {PrefillKernel::kMmaSync, PrefillKernel::kWgmmaSerial, PrefillKernel::kWgmma}) {
    if (kernel != PrefillKernel::kMmaSync && !IsSm90()) continue;
    SCOPED_TRACE(static_cast<int>(kernel));
    std::vector<float> full, tail;
    ASSERT_EQ(RunKernel(c, in, kernel, &full), cudaSuccess);
    ASSERT_EQ(RunKernel(c, in, kernel, &tail, /*last_tile_only=*/true), cudaSuccess);
    for (size_t s = 0; s < c.chunk.size(); ++s) {
      const int32_t n = c.chunk[s], first = (n - 1) / 128 * 128;
      for (int32_t r = 0; r < n; ++r) {
        const size_t at = static_cast<size_t>(in.cu[s] + r) * hq * d, len = size_t{1} * hq * d;
        if (r >= first) {
          ASSERT_EQ(0, std::memcmp(full.data() + at, tail.data() + at, len * sizeof(float)))
              << "seq " << s << " row " << r;
        } else {
          ASSERT_TRUE(std::all_of(tail.begin() + at, tail.begin() + at + len,
                                  [](float x) { return std::isnan(x); }))
              << "seq " << s << " row " << r << " was written";
        }
      }
    }
  }
}

}  // namespace
}  // namespace hkv::kernels
