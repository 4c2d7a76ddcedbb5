// PlanSingleLaunchDecodeAttentionOnDevice: the decode work list built by one CTA on the GPU from
// device page tables (see single_launch_decode_attention.h; layout and split rules in
// single_launch_decode_plan.h, shared with the host planner in single_launch_decode_plan.cc, which
// is the reference).
//
// NOTE(kernels): each of the 1024 threads owns a contiguous run of rows, so one block-wide
// exclusive scan of (items, cost) per thread gives every row its first item and cost prefix
// in row order; the CTA assignment then needs no second pass (single_launch_decode::FirstCtaAt).

#include "kernels/cuda_common.cuh"
#include "kernels/decode_plan_rows.h"
#include "kernels/single_launch_decode_attention.h"
#include "kernels/single_launch_decode_plan.h"

namespace hkv::kernels {
namespace {

using single_launch_decode::MetaLayout;

constexpr int kPlanThreads = 1024;
constexpr int kPlanWarps = kPlanThreads / 32;

struct PlanArgs {
  SingleLaunchDecodeOptions o;
  const int32_t* indptr;
  const int32_t* last_len;
  const int32_t* row_ids;   // may be null
  const int32_t* num_rows;  // may be null
  int32_t host_rows;
  int32_t block_size;
  int32_t slots;
  int32_t* meta;
};

template <bool kMax>
__device__ int64_t BlockReduce64(int64_t v, int64_t* s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t y = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? (y > v ? y : v) : v + y;
  }
  __syncthreads();  // `s` may still be read by the previous call
  if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
  __syncthreads();
  v = s[0];
  for (int i = 1; i < kPlanWarps; ++i) v = kMax ? (s[i] > v ? s[i] : v) : v + s[i];
  return v;
}

// Exclusive prefix sum over the threads in order; *total = the sum of all.
__device__ int64_t BlockExclusiveSum64(int64_t v, int64_t* s, int64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();
  if (lane == 31) s[warp] = x;
  __syncthreads();
  int64_t before = 0, all = 0;
  for (int i = 0; i < kPlanWarps; ++i) {
    before += i < warp ? s[i] : 0;
    all += s[i];
  }
  *total = all;
  return before + x - v;
}

__global__ void __launch_bounds__(kPlanThreads) PlanSingleLaunchDecodeKernel(PlanArgs p) {
  WaitForPriorGrid();
  AllowDependentsIfSmallGrid();
  __shared__ int64_t s_red[kPlanWarps];
  const SingleLaunchDecodeOptions& o = p.o;
  const MetaLayout L(o);
  int32_t rows = p.host_rows;
  if (p.num_rows != nullptr) rows = min(max(*p.num_rows, 0), o.max_rows);
  const int per_thread = (rows + kPlanThreads - 1) / kPlanThreads;
  const int r0 = min(rows, static_cast<int>(threadIdx.x) * per_thread);
  const int r1 = min(rows, r0 + per_thread);

  // Row length and first block; a malformed row counts as empty.
  auto row_of = [&](int r, int32_t* first, bool* bad) -> int64_t {
    const int32_t csr = p.row_ids != nullptr ? p.row_ids[r] : r;
    *bad = false;
    *first = 0;
    if (csr < 0) {
      *bad = true;
      return 0;
    }
    const int32_t b0 = p.indptr[csr], blocks = p.indptr[csr + 1] - b0;
    *first = b0;
    if (blocks == 0) return 0;
    const int32_t last = p.last_len[csr];
    if (blocks < 0 || last < 1 || last > p.block_size) {
      *bad = true;
      return 0;
    }
    return static_cast<int64_t>(blocks - 1) * p.block_size + last;
  };

  int64_t total = 0, longest = 0, bad = 0;
  for (int r = r0; r < r1; ++r) {
    int32_t first;
    bool is_bad;
    const int64_t len = row_of(r, &first, &is_bad);
    total += len;
    longest = len > longest ? len : longest;
    bad += is_bad ? 1 : 0;
  }
  total = BlockReduce64<false>(total, s_red);
  longest = BlockReduce64<true>(longest, s_red);
  bad = BlockReduce64<false>(bad, s_red);

  // The split chunk: the host planner's candidates, scored by its estimate for long lists.
  int64_t chunk = 0;
  if (o.split_tokens > 0) {
    int64_t items = 0;
    for (int r = r0; r < r1; ++r) {
      int32_t first;
      bool is_bad;
      items += single_launch_decode::SplitsFor(row_of(r, &first, &is_bad), o.split_tokens);
    }
    items = BlockReduce64<false>(items, s_red);
    chunk = items <= o.max_work_items ? o.split_tokens : 0;  // else no split: always fits
  } else if (longest * p.slots > total) {
    double best_time = 1e300;
    for (int f = 0; f < single_launch_decode::kNumChunkFactors; ++f) {
      const int64_t cand = single_launch_decode::CandidateChunk(f, total, p.slots,
                                                                single_launch_decode::MinChunk(o));
      int64_t items = 0, cost = 0, biggest = 0;
      for (int r = r0; r < r1; ++r) {
        int32_t first;
        bool is_bad;
        const int64_t len = row_of(r, &first, &is_bad);
        const int64_t ns = single_launch_decode::SplitsFor(len, cand);
        items += ns;
        cost += len + ns * single_launch_decode::kItemOverheadTokens;
        for (int64_t i = 0; i < ns; ++i) {
          const int64_t c = single_launch_decode::SplitBegin(len, i + 1, ns) -
                            single_launch_decode::SplitBegin(len, i, ns);
          biggest = c > biggest ? c : biggest;
        }
      }
      items = BlockReduce64<false>(items, s_red);
      cost = BlockReduce64<false>(cost, s_red);
      biggest = BlockReduce64<true>(biggest, s_red) + single_launch_decode::kItemOverheadTokens;
      if (items > o.max_work_items) continue;
      double t = single_launch_decode::MakespanBound(items, cost, biggest, p.slots);
      t *= 1.0 + 1e-3 * single_launch_decode::ChunkFactor(f);  // prefer fewer splits on ties
      if (t < best_time) {
        best_time = t;
        chunk = cand;
      }
    }
  }

  // Items and cost of this thread's rows, then their place in the list.
  int64_t my_items = 0, my_cost = 0;
  for (int r = r0; r < r1; ++r) {
    int32_t first;
    bool is_bad;
    const int64_t len = row_of(r, &first, &is_bad);
    const int64_t ns = single_launch_decode::SplitsFor(len, chunk);
    my_items += ns;
    my_cost += len + ns * single_launch_decode::kItemOverheadTokens;
  }
  int64_t num_items = 0, total_cost = 0;
  int64_t item = BlockExclusiveSum64(my_items, s_red, &num_items);
  int64_t prefix = BlockExclusiveSum64(my_cost, s_red, &total_cost);
  const int32_t ctas = single_launch_decode::NumCtas(o, static_cast<int32_t>(num_items), p.slots);
  int32_t* meta = p.meta;
  for (int r = r0; r < r1; ++r) {
    int32_t first;
    bool is_bad;
    const int64_t len = row_of(r, &first, &is_bad);
    const int64_t ns = single_launch_decode::SplitsFor(len, chunk);
    meta[L.row_split_begin + r] = static_cast<int32_t>(item);
    meta[L.row_num_splits + r] = static_cast<int32_t>(ns);
    meta[L.row_arrivals + r] = 0;
    for (int64_t i = 0; i < ns; ++i, ++item) {
      const int64_t b = single_launch_decode::SplitBegin(len, i, ns),
                    e = single_launch_decode::SplitBegin(len, i + 1, ns);
      meta[L.work_row + item] = r;
      meta[L.work_begin + item] = static_cast<int32_t>(b);
      meta[L.work_end + item] = static_cast<int32_t>(e);
      meta[L.work_slot + item] = static_cast<int32_t>(item);
      meta[L.work_first_block + item] = first;
      const int64_t cost = e - b + single_launch_decode::kItemOverheadTokens;
      if (ctas == num_items) {
        meta[L.cta_begin + item] = static_cast<int32_t>(item);
      } else {
        const int64_t c1 = single_launch_decode::FirstCtaAt(prefix + cost, total_cost, ctas);
        for (int64_t c = single_launch_decode::FirstCtaAt(prefix, total_cost, ctas); c < c1; ++c) {
          meta[L.cta_begin + c] = static_cast<int32_t>(item);
        }
      }
      prefix += cost;
    }
  }
  if (threadIdx.x == 0) {
    meta[0] = static_cast<int32_t>(num_items);
    meta[1] = ctas;
    meta[2] = static_cast<int32_t>(bad);
    meta[3] = static_cast<int32_t>(chunk);
    meta[L.cta_begin + ctas] = static_cast<int32_t>(num_items);
  }
}

}  // namespace

cudaError_t PlanSingleLaunchDecodeAttentionOnDevice(
    const SingleLaunchDecodeOptions& o, const int32_t* device_indptr,
    const int32_t* device_last_len, int32_t num_rows, int32_t block_size, void* workspace,
    cudaStream_t stream, SingleLaunchDecodePlan* plan, const int32_t* device_row_ids,
    const int32_t* device_num_rows) {
  if (plan == nullptr || workspace == nullptr || device_indptr == nullptr ||
      device_last_len == nullptr || !ValidSingleLaunchDecodeOptions(o) || num_rows < 0 ||
      num_rows > o.max_rows || block_size < 1 || (block_size & (block_size - 1)) != 0) {
    return cudaErrorInvalidValue;
  }
  int num_sms = 0;
  if (const cudaError_t e = ResolveNumSms(o.num_sms, &num_sms); e != cudaSuccess) return e;
  PlanArgs p;
  p.o = o;
  p.indptr = device_indptr;
  p.last_len = device_last_len;
  p.row_ids = device_row_ids;
  p.num_rows = device_num_rows;
  p.host_rows = num_rows;
  p.block_size = block_size;
  p.slots = single_launch_decode::CtaSlots(o, num_sms);
  p.meta = static_cast<int32_t*>(workspace);
  const cudaError_t e =
      LaunchOverlapped(PlanSingleLaunchDecodeKernel, dim3(1), dim3(kPlanThreads), 0, stream, p);
  if (e != cudaSuccess) return e;
  plan->options = o;
  plan->num_rows = num_rows;
  plan->num_work_items = o.max_work_items;  // upper bounds: the counts are on the device
  plan->num_merge_rows = 0;
  plan->num_ctas = o.max_work_items;
  plan->chunk_tokens = 0;
  plan->device_planned = true;
  plan->workspace = workspace;
  plan->device_meta = nullptr;
  plan->host_meta.clear();
  plan->row_lengths.clear();
  return cudaSuccess;
}

}  // namespace hkv::kernels
