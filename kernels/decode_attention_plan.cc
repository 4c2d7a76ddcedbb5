// Host planning of paged decode attention (the split-K work list); see decode_attention.h.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <numeric>
#include <vector>

#include "kernels/decode_attention.h"
#include "kernels/decode_attention_layout.h"
#include "kernels/decode_plan_rows.h"

namespace hkv::kernels {
namespace {

using decode_internal::kCtasPerSm;
using decode_internal::MetaLayout;

// Simulated makespan of the work list on `slots` CTA slots, items issued in order.
// REQUIRES: costs sorted in descending order (LPT), so the first `slots` items each start at 0
// on a slot of their own and the slot that frees first is always the heap's top.
double Makespan(const std::vector<int64_t>& costs, int slots) {
  const size_t first = std::min(costs.size(), static_cast<size_t>(std::max(slots, 1)));
  std::vector<int64_t> free_at(costs.begin(), costs.begin() + first);  // a min-heap below
  std::make_heap(free_at.begin(), free_at.end(), std::greater<int64_t>());
  int64_t end = costs.empty() ? 0 : costs.front();
  for (size_t i = first; i < costs.size(); ++i) {
    std::pop_heap(free_at.begin(), free_at.end(), std::greater<int64_t>());
    free_at.back() += costs[i];
    end = std::max(end, free_at.back());
    std::push_heap(free_at.begin(), free_at.end(), std::greater<int64_t>());
  }
  return static_cast<double>(end);
}

constexpr int64_t kItemOverheadTokens = 48;  // fixed cost of a CTA, in token-equivalents
constexpr int64_t kChunkAlign = 64;
#ifndef HKV_DECODE_MIN_CHUNK
#define HKV_DECODE_MIN_CHUNK 128
#endif
constexpr int64_t kMinChunk = HKV_DECODE_MIN_CHUNK;  // tokens; shorter splits cost a merge
constexpr int64_t kSimulateMaxItems = 2048;          // above this, ChooseChunk uses the LPT bound

// Start of split i of ns over len tokens, aligned down to kChunkAlign tokens.
int64_t SplitBegin(int64_t len, int64_t i, int64_t ns) {
  return i == 0 ? 0 : i >= ns ? len : (len * i / ns) / kChunkAlign * kChunkAlign;
}

// Splits of each row for chunk size `chunk` (0 = no split).
int64_t SplitsFor(int64_t len, int64_t chunk) {
  return chunk <= 0 || len <= chunk ? 1 : (len + chunk - 1) / chunk;
}

// Picks the split chunk (0 = no split): among a few candidates, the one whose work list has
// the smallest simulated makespan on `slots` CTA slots in LPT order. Runs on the host for every
// layer of every decode step whose rows differ from the previous layer's (HeadKV's ragged rows:
// all of them), so it avoids work that cannot change the answer: candidates that round to the
// same chunk are evaluated once, and a list of no more items than slots needs no simulation
// (each item gets its own slot: the makespan is the largest item).
int64_t ChooseChunk(const std::vector<int64_t>& lens, int64_t total, int64_t longest, int slots,
                    int64_t max_work_items) {
  // Fast path: no row is longer than an even share of the GPU, so splitting cannot help.
  if (longest * slots <= total) return 0;
  int64_t best_chunk = 0;
  double best_time = 1e300;
  const double factors[] = {0.0, 1.0, 2.0, 4.0, 8.0};
  int64_t tried[std::size(factors)];
  int num_tried = 0;
  std::vector<int64_t> costs;
  for (double f : factors) {
    int64_t chunk = 0;
    if (f > 0.0) {
      chunk = static_cast<int64_t>(std::ceil(static_cast<double>(total) / (slots * f)));
      chunk = std::max<int64_t>(kMinChunk, (chunk + kChunkAlign - 1) / kChunkAlign * kChunkAlign);
      // A chunk no shorter than the longest row splits nothing: the same list as chunk 0.
      if (chunk >= longest) chunk = 0;
    }
    if (std::find(tried, tried + num_tried, chunk) != tried + num_tried) continue;
    tried[num_tried++] = chunk;
    int64_t items = 0;
    for (int64_t len : lens) items += SplitsFor(len, chunk);
    if (items > max_work_items) continue;
    // Calls f(cost) for every work item of this chunk, in row order.
    auto for_each_cost = [&](auto&& f) {
      for (int64_t len : lens) {
        const int64_t ns = SplitsFor(len, chunk);
        for (int64_t i = 0; i < ns; ++i) {
          f(SplitBegin(len, i + 1, ns) - SplitBegin(len, i, ns) + kItemOverheadTokens);
        }
      }
    };
    double t = 0.0;
    if (items <= slots || items > kSimulateMaxItems) {
      // One item per slot: the largest item. Many items (large batches): the LPT bound, close
      // to the simulation, in O(items) instead of O(items log slots).
      int64_t sum = 0, biggest = 0;
      for_each_cost([&](int64_t c) {
        sum += c;
        biggest = std::max(biggest, c);
      });
      t = items <= slots ? static_cast<double>(biggest)
                         : std::max(static_cast<double>(biggest), static_cast<double>(sum) / slots);
    } else {
      costs.clear();
      costs.reserve(static_cast<size_t>(items));
      for_each_cost([&](int64_t c) { costs.push_back(c); });
      std::sort(costs.begin(), costs.end(), std::greater<int64_t>());
      t = Makespan(costs, slots);
    }
    t *= 1.0 + 1e-3 * f;  // prefer fewer splits on ties
    if (t < best_time) {
      best_time = t;
      best_chunk = chunk;
    }
  }
  return best_chunk;
}

}  // namespace

size_t DecodeWorkspaceBytes(const DecodePlanOptions& o) {
  const MetaLayout L(o);
  const size_t floats = static_cast<size_t>(o.max_work_items) * o.group_size * (o.head_dim + 1);
  return static_cast<size_t>(L.total) * sizeof(int32_t) + floats * sizeof(float);
}

size_t DecodeMetaInts(const DecodePlanOptions& o) { return MetaLayout(o).total; }

cudaError_t PlanDecodeAttention(const DecodePlanOptions& o, const int32_t* host_indptr,
                                const int32_t* host_last_len, int32_t num_rows, int32_t block_size,
                                void* workspace, cudaStream_t stream, DecodePlan* plan,
                                const int32_t* host_row_ids) {
  if (plan == nullptr || workspace == nullptr) return cudaErrorInvalidValue;
  std::vector<int32_t> meta(DecodeMetaInts(o));
  const cudaError_t e = BuildDecodePlan(o, host_indptr, host_last_len, num_rows, block_size,
                                        host_row_ids, meta.data(), plan);
  if (e != cudaSuccess) return e;
  plan->host_meta = std::move(meta);
  plan->workspace = workspace;
  plan->device_meta = nullptr;
  return cudaMemcpyAsync(workspace, plan->host_meta.data(),
                         plan->host_meta.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream);
}

cudaError_t BuildDecodePlan(const DecodePlanOptions& o, const int32_t* host_indptr,
                            const int32_t* host_last_len, int32_t num_rows, int32_t block_size,
                            const int32_t* host_row_ids, int32_t* meta, DecodePlan* plan) {
  if (plan == nullptr || meta == nullptr || o.group_size < 1 || o.group_size > 8 ||
      (o.head_dim != 64 && o.head_dim != 128) || o.max_rows < 1 || o.max_work_items < o.max_rows ||
      !ValidKvStages(o.kv_stages) || num_rows < 0 || num_rows > o.max_rows || block_size < 1 ||
      (block_size & (block_size - 1)) != 0) {
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
  const int slots = num_sms * kCtasPerSm;
  const int64_t best_chunk = ChooseChunk(lens, total, longest, slots, o.max_work_items);
  // Work items: (row, begin, end, slot); slots of a row are contiguous for the merge.
  struct Item {
    int32_t row, begin, end, slot;
  };
  std::vector<Item> items;
  const MetaLayout L(o);
  std::fill(meta, meta + L.total, 0);
  for (int r = 0; r < num_rows; ++r) {
    const int64_t ns = SplitsFor(lens[r], best_chunk);
    meta[L.row_split_begin + r] = static_cast<int32_t>(items.size());
    meta[L.row_num_splits + r] = static_cast<int32_t>(ns);
    for (int64_t i = 0; i < ns; ++i) {
      const int64_t b = SplitBegin(lens[r], i, ns), e = SplitBegin(lens[r], i + 1, ns);
      items.push_back({r, static_cast<int32_t>(b), static_cast<int32_t>(e),
                       static_cast<int32_t>(items.size())});
    }
  }
  // Longest items first, ties in row order (a stable sort by length, descending). Items are
  // at most the longest row long, so where that is short next to the item count (HeadKV's
  // ragged rows, large batches: thousands of items every layer of every step) a counting sort
  // gives the same order in O(items + longest).
  int32_t max_item = 0;
  for (const Item& it : items) max_item = std::max(max_item, it.end - it.begin);
  if (static_cast<size_t>(max_item) <= 4 * items.size()) {
    std::vector<int32_t> start(static_cast<size_t>(max_item) + 2, 0);
    for (const Item& it : items) ++start[max_item - (it.end - it.begin) + 1];
    for (size_t k = 1; k < start.size(); ++k) start[k] += start[k - 1];
    std::vector<Item> sorted(items.size());
    for (const Item& it : items) sorted[start[max_item - (it.end - it.begin)]++] = it;
    items.swap(sorted);
  } else {
    std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) {
      return x.end - x.begin > y.end - y.begin;
    });
  }
  int32_t num_merge = 0;
  for (int r = 0; r < num_rows; ++r) {
    if (meta[L.row_num_splits + r] > 1) meta[L.merge_row + num_merge++] = r;
  }
  meta[0] = static_cast<int32_t>(items.size());
  meta[1] = num_merge;
  plan->num_merge_rows = num_merge;
  for (size_t i = 0; i < items.size(); ++i) {
    meta[L.work_row + i] = items[i].row;
    meta[L.work_begin + i] = items[i].begin;
    meta[L.work_end + i] = items[i].end;
    meta[L.work_slot + i] = items[i].slot;
    meta[L.work_first_block + i] = first_block[items[i].row];
  }
  plan->options = o;
  plan->num_rows = num_rows;
  plan->num_work_items = static_cast<int32_t>(items.size());
  plan->chunk_tokens = static_cast<int32_t>(best_chunk > 0 ? best_chunk : longest);
  plan->row_lengths = std::move(lens);
  return cudaSuccess;
}

bool RebaseDecodePlan(const DecodePlan& planned, const int32_t* planned_meta,
                      const int32_t* host_indptr, const int32_t* host_last_len, int32_t block_size,
                      const int32_t* host_row_ids, int32_t* meta) {
  const int32_t rows = planned.num_rows;
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
