#pragma once
// Internal to the decode attention kernels: the layout of a decode work list and the split
// rules that the host planner (single_launch_decode_plan.cc) and the device planner
// (single_launch_decode_plan_device.cu) share, so that both cut a row at the same tokens. Host and
// device inline functions; include it from .cc and .cu files of kernels/ only.
//
// Work list (int32 words, SingleLaunchDecodeMetaInts of the options):
//   [0] work items   [1] CTAs that run them   [2] malformed rows (device planner)   [3] chunk
//   work_row/begin/end/slot/first_block [max_work_items]: item i reads tokens [begin, end) of
//       logical row work_row, whose blocks start at indices[first_block]; partial slot `slot`
//       (the slots of a row are contiguous, split 0 first)
//   row_split_begin / row_num_splits [max_rows]: the first slot and the splits of each row
//   cta_begin [max_work_items + 1]: CTA c runs items cta_begin[c] .. cta_begin[c + 1] - 1
//   row_arrivals [max_rows]: split items of a row that finished in the running call; zero in
//       every plan, and the kernel's last item of a row sets it back to zero, so a plan (or a
//       CUDA graph reading it) can be replayed any number of times.

#include <cstdint>

#include "kernels/single_launch_decode_attention.h"

#if defined(__CUDACC__)
#define HKV_HD __host__ __device__
#else
#define HKV_HD
#endif

namespace hkv::kernels::single_launch_decode {

constexpr int kMetaHeader = 4;
constexpr int kDefaultCtasPerSm = 4;
constexpr int64_t kItemOverheadTokens = 48;  // fixed cost of a work item, in token-equivalents
constexpr int64_t kChunkAlign = 64;
constexpr int64_t kDefaultMinChunk = 128;  // tokens; shorter splits cost more than they save
constexpr int kNumChunkFactors = 5;        // candidate chunks: no split, total / (slots * f)
HKV_HD inline double ChunkFactor(int i) {
  return i == 0 ? 0.0 : static_cast<double>(1 << (i - 1));  // 0, 1, 2, 4, 8
}

// Offsets (in int32) of the arrays inside the work list.
struct MetaLayout {
  int64_t work_row, work_begin, work_end, work_slot, work_first_block, row_split_begin,
      row_num_splits, cta_begin, row_arrivals, total;
  HKV_HD explicit MetaLayout(const SingleLaunchDecodeOptions& o) {
    work_row = kMetaHeader;
    work_begin = work_row + o.max_work_items;
    work_end = work_begin + o.max_work_items;
    work_slot = work_end + o.max_work_items;
    work_first_block = work_slot + o.max_work_items;
    row_split_begin = work_first_block + o.max_work_items;
    row_num_splits = row_split_begin + o.max_rows;
    cta_begin = row_num_splits + o.max_rows;
    row_arrivals = cta_begin + o.max_work_items + 1;
    total = (row_arrivals + o.max_rows + 63) / 64 * 64;
  }
};

// Start of split i of ns over len tokens, aligned down to kChunkAlign tokens.
HKV_HD inline int64_t SplitBegin(int64_t len, int64_t i, int64_t ns) {
  return i == 0 ? 0 : i >= ns ? len : (len * i / ns) / kChunkAlign * kChunkAlign;
}

// Splits of a row for chunk size `chunk` (0 = no split).
HKV_HD inline int64_t SplitsFor(int64_t len, int64_t chunk) {
  return chunk <= 0 || len <= chunk ? 1 : (len + chunk - 1) / chunk;
}

HKV_HD inline int64_t MinChunk(const SingleLaunchDecodeOptions& o) {
  return o.min_split_tokens > 0 ? o.min_split_tokens : kDefaultMinChunk;
}

HKV_HD inline int CtaSlots(const SingleLaunchDecodeOptions& o, int num_sms) {
  return num_sms * (o.ctas_per_sm > 0 ? o.ctas_per_sm : kDefaultCtasPerSm);
}

// Candidate chunk `f` (index into ChunkFactor) for `total` tokens on `slots` CTA slots.
HKV_HD inline int64_t CandidateChunk(int f, int64_t total, int slots, int64_t min_chunk) {
  if (f == 0) return 0;
  const double share = static_cast<double>(total) / (slots * ChunkFactor(f));
  int64_t chunk = static_cast<int64_t>(share);
  if (static_cast<double>(chunk) < share) ++chunk;  // ceil without <cmath> on the device
  chunk = (chunk + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
  return chunk > min_chunk ? chunk : min_chunk;
}

// Estimated makespan (token-equivalents) of `items` items of total `cost`, the longest
// `biggest`, on `slots` CTA slots, for lists too long to simulate: the largest of the longest
// item, the even share, and whole waves of the mean item. The wave term matters for equal
// items (uniform rows): a list of 4.1 waves takes 5, its last wave with few CTAs in flight.
HKV_HD inline double MakespanBound(int64_t items, int64_t cost, int64_t biggest, int slots) {
  if (items <= 0) return 0.0;
  const double share = static_cast<double>(cost) / slots;
  const double waves = static_cast<double>((items + slots - 1) / slots) *
                       (static_cast<double>(cost) / static_cast<double>(items));
  double t = share > waves ? share : waves;
  return t > static_cast<double>(biggest) ? t : static_cast<double>(biggest);
}

// The CTAs that run `items` work items: one item each while they fit in one wave (latency),
// else `slots` CTAs (or items / items_per_cta) that each run a contiguous run of items.
HKV_HD inline int32_t NumCtas(const SingleLaunchDecodeOptions& o, int32_t items, int slots) {
  if (items <= 0) return 0;
  if (o.items_per_cta > 0) return (items + o.items_per_cta - 1) / o.items_per_cta;
  return items <= slots ? items : slots;
}

// First CTA of the run starting at an item whose cost prefix is `prefix`: CTA c starts at
// the item whose cost range [prefix, prefix + cost) holds c * total / ctas, so runs of equal
// cost go to the CTAs in order (an item longer than a share leaves CTAs empty).
HKV_HD inline int64_t FirstCtaAt(int64_t prefix, int64_t total_cost, int32_t ctas) {
  return total_cost <= 0 ? 0 : (prefix * ctas + total_cost - 1) / total_cost;
}

}  // namespace hkv::kernels::single_launch_decode

namespace hkv::kernels {
// True for options every planner and RunSingleLaunchDecodeAttention accept
// (single_launch_decode_plan.cc).
bool ValidSingleLaunchDecodeOptions(const SingleLaunchDecodeOptions& o);
}  // namespace hkv::kernels
