// Host planner of paged decode attention: BuildSingleLaunchDecodePlan /
// PlanSingleLaunchDecodeAttention / RebaseSingleLaunchDecodePlan (see
// single_launch_decode_attention.h; the work list layout is in single_launch_decode_plan.h).

#include "kernels/single_launch_decode_plan.h"

#include <algorithm>
#include <cmath>
#include <queue>
#include <vector>

#include "kernels/decode_plan_rows.h"
#include "kernels/single_launch_decode_attention.h"

namespace hkv::kernels {
namespace {

using single_launch_decode::MetaLayout;

constexpr int64_t kSimulateMaxItems = 2048;  // above this, ChooseChunk uses the LPT bound

// Simulated makespan of the work list on `slots` CTA slots, items issued in order.
double Makespan(const std::vector<int64_t>& costs, int slots) {
  std::priority_queue<double, std::vector<double>, std::greater<double>> free_at;
  for (int i = 0; i < slots; ++i) free_at.push(0.0);
  double end = 0.0;
  for (int64_t c : costs) {
    const double t = free_at.top() + static_cast<double>(c);
    free_at.pop();
    free_at.push(t);
    end = std::max(end, t);
  }
  return end;
}

// Picks the split chunk (0 = no split): among a few candidates, the one whose work list has
// the smallest simulated makespan on `slots` CTA slots in LPT order.
int64_t ChooseChunk(const std::vector<int64_t>& lens, int64_t total, int64_t longest, int slots,
                    const SingleLaunchDecodeOptions& o) {
  if (o.split_tokens > 0) return o.split_tokens;
  // Fast path: no row is longer than an even share of the GPU, so splitting cannot help.
  if (longest * slots <= total) return 0;
  int64_t best_chunk = 0;
  double best_time = 1e300;
  for (int f = 0; f < single_launch_decode::kNumChunkFactors; ++f) {
    const int64_t chunk =
        single_launch_decode::CandidateChunk(f, total, slots, single_launch_decode::MinChunk(o));
    std::vector<int64_t> costs;
    for (int64_t len : lens) {
      const int64_t ns = single_launch_decode::SplitsFor(len, chunk);
      for (int64_t i = 0; i < ns; ++i) {
        costs.push_back(single_launch_decode::SplitBegin(len, i + 1, ns) -
                        single_launch_decode::SplitBegin(len, i, ns) +
                        single_launch_decode::kItemOverheadTokens);
      }
    }
    if (static_cast<int64_t>(costs.size()) > o.max_work_items) continue;
    double t = 0.0;
    if (static_cast<int64_t>(costs.size()) <= kSimulateMaxItems) {
      std::sort(costs.begin(), costs.end(), std::greater<int64_t>());
      t = Makespan(costs, slots);
    } else {
      // Many items (large batches, planned every layer of every step): an O(items) estimate
      // instead of the O(items log slots) simulation; the device planner uses it always.
      int64_t sum = 0, biggest = 0;
      for (int64_t c : costs) {
        sum += c;
        biggest = std::max(biggest, c);
      }
      t = single_launch_decode::MakespanBound(static_cast<int64_t>(costs.size()), sum, biggest,
                                              slots);
    }
    t *= 1.0 + 1e-3 * single_launch_decode::ChunkFactor(f);  // prefer fewer splits on ties
    if (t < best_time) {
      best_time = t;
      best_chunk = chunk;
    }
  }
  return best_chunk;
}

}  // namespace

bool ValidSingleLaunchDecodeOptions(const SingleLaunchDecodeOptions& o) {
  return o.group_size >= 1 && o.group_size <= 8 && (o.head_dim == 64 || o.head_dim == 128) &&
         o.max_rows >= 1 && o.max_work_items >= o.max_rows &&
         (o.cta_threads == 0 || o.cta_threads == 128 || o.cta_threads == 256) &&
         (o.loads_in_flight == 0 || o.loads_in_flight == 4 || o.loads_in_flight == 8) &&
         (!o.prefetch || o.loads_in_flight != 8) && o.items_per_cta >= 0 &&
         o.min_split_tokens >= 0 && o.split_tokens >= 0 && o.ctas_per_sm >= 0 &&
         o.ctas_per_sm <= 64;
}

size_t SingleLaunchDecodeWorkspaceBytes(const SingleLaunchDecodeOptions& o) {
  const MetaLayout L(o);
  const size_t floats = static_cast<size_t>(o.max_work_items) * o.group_size * (o.head_dim + 1);
  return static_cast<size_t>(L.total) * sizeof(int32_t) + floats * sizeof(float);
}

size_t SingleLaunchDecodeMetaInts(const SingleLaunchDecodeOptions& o) {
  return MetaLayout(o).total;
}

cudaError_t PlanSingleLaunchDecodeAttention(const SingleLaunchDecodeOptions& o,
                                            const int32_t* host_indptr,
                                            const int32_t* host_last_len, int32_t num_rows,
                                            int32_t block_size, void* workspace,
                                            cudaStream_t stream, SingleLaunchDecodePlan* plan,
                                            const int32_t* host_row_ids) {
  if (plan == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
  std::vector<int32_t> meta(SingleLaunchDecodeMetaInts(o));
  const cudaError_t e = BuildSingleLaunchDecodePlan(o, host_indptr, host_last_len, num_rows,
                                                    block_size, host_row_ids, meta.data(), plan);
  if (e != cudaSuccess) return e;
  plan->host_meta = std::move(meta);
  plan->workspace = workspace;
  plan->device_meta = nullptr;
  return cudaMemcpyAsync(workspace, plan->host_meta.data(),
                         plan->host_meta.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream);
}

cudaError_t BuildSingleLaunchDecodePlan(const SingleLaunchDecodeOptions& o,
                                        const int32_t* host_indptr, const int32_t* host_last_len,
                                        int32_t num_rows, int32_t block_size,
                                        const int32_t* host_row_ids, int32_t* meta,
                                        SingleLaunchDecodePlan* plan) {
  if (plan == nullptr || meta == nullptr || !ValidSingleLaunchDecodeOptions(o) || num_rows < 0 ||
      num_rows > o.max_rows || block_size < 1 || (block_size & (block_size - 1)) != 0) {
    return cudaErrorInvalidValue;
  }
  int num_sms = 0;
  if (const cudaError_t e = ResolveNumSms(o.num_sms, &num_sms); e != cudaSuccess) return e;
  PlannedRows planned;
  if (!ReadPlannedRows(host_indptr, host_last_len, num_rows, block_size, host_row_ids, &planned)) {
    return cudaErrorInvalidValue;  // malformed page table
  }
  std::vector<int64_t>& lens = planned.lens;
  const std::vector<int32_t>& first_block = planned.first_block;
  const int64_t total = planned.total, longest = planned.longest;
  const int slots = single_launch_decode::CtaSlots(o, num_sms);
  const int64_t best_chunk = ChooseChunk(lens, total, longest, slots, o);
  // Work items: (row, begin, end, slot); slots of a row are contiguous for the merge.
  struct Item {
    int32_t row, begin, end, slot;
  };
  std::vector<Item> items;
  const MetaLayout L(o);
  std::fill(meta, meta + L.total, 0);
  int32_t num_merge = 0;
  for (int r = 0; r < num_rows; ++r) {
    const int64_t ns = single_launch_decode::SplitsFor(lens[r], best_chunk);
    if (static_cast<int64_t>(items.size()) + ns > o.max_work_items) {
      return cudaErrorInvalidValue;  // a fixed split_tokens that needs more items than planned
    }
    meta[L.row_split_begin + r] = static_cast<int32_t>(items.size());
    meta[L.row_num_splits + r] = static_cast<int32_t>(ns);
    num_merge += ns > 1 ? 1 : 0;
    for (int64_t i = 0; i < ns; ++i) {
      const int64_t b = single_launch_decode::SplitBegin(lens[r], i, ns);
      const int64_t e = single_launch_decode::SplitBegin(lens[r], i + 1, ns);
      items.push_back({r, static_cast<int32_t>(b), static_cast<int32_t>(e),
                       static_cast<int32_t>(items.size())});
    }
  }
  // Longest first (LPT), so the CTAs of the last wave hold the short items.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& x, const Item& y) { return x.end - x.begin > y.end - y.begin; });
  const int32_t num_items = static_cast<int32_t>(items.size());
  const int32_t ctas = single_launch_decode::NumCtas(o, num_items, slots);
  int64_t total_cost = 0;
  for (const Item& it : items)
    total_cost += it.end - it.begin + single_launch_decode::kItemOverheadTokens;
  meta[0] = num_items;
  meta[1] = ctas;
  meta[3] = static_cast<int32_t>(best_chunk);
  int64_t prefix = 0;
  for (int32_t i = 0; i < num_items; ++i) {
    const Item& it = items[i];
    meta[L.work_row + i] = it.row;
    meta[L.work_begin + i] = it.begin;
    meta[L.work_end + i] = it.end;
    meta[L.work_slot + i] = it.slot;
    meta[L.work_first_block + i] = first_block[it.row];
    const int64_t cost = it.end - it.begin + single_launch_decode::kItemOverheadTokens;
    if (ctas == num_items) {
      meta[L.cta_begin + i] = i;
    } else {
      const int64_t c1 = single_launch_decode::FirstCtaAt(prefix + cost, total_cost, ctas);
      for (int64_t c = single_launch_decode::FirstCtaAt(prefix, total_cost, ctas); c < c1; ++c) {
        meta[L.cta_begin + c] = i;
      }
    }
    prefix += cost;
  }
  meta[L.cta_begin + ctas] = num_items;
  plan->options = o;
  plan->num_rows = num_rows;
  plan->num_work_items = num_items;
  plan->num_merge_rows = num_merge;
  plan->num_ctas = ctas;
  plan->device_planned = false;
  plan->chunk_tokens = static_cast<int32_t>(best_chunk > 0 ? best_chunk : longest);
  plan->row_lengths = std::move(lens);
  return cudaSuccess;
}

bool RebaseSingleLaunchDecodePlan(const SingleLaunchDecodePlan& planned,
                                  const int32_t* planned_meta, const int32_t* host_indptr,
                                  const int32_t* host_last_len, int32_t block_size,
                                  const int32_t* host_row_ids, int32_t* meta) {
  const int32_t rows = planned.num_rows;
  if (planned.device_planned) return false;  // its work list is on the device only
  if (static_cast<int32_t>(planned.row_lengths.size()) != rows) return false;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t csr = host_row_ids != nullptr ? host_row_ids[r] : r;
    if (PagedRowLength(host_indptr, host_last_len, csr, block_size) != planned.row_lengths[r]) {
      return false;
    }
  }
  const MetaLayout L(planned.options);
  std::copy(planned_meta, planned_meta + L.total, meta);
  for (int32_t i = 0; i < planned.num_work_items; ++i) {
    const int32_t r = meta[L.work_row + i];
    meta[L.work_first_block + i] = host_indptr[host_row_ids != nullptr ? host_row_ids[r] : r];
  }
  return true;
}

}  // namespace hkv::kernels
