#pragma once
// The decode attention work list's layout in the workspace, shared by the host planner
// (decode_attention_plan.cc) and the kernels (decode_attention.cu). Internal to kernels/.

#include <cstdint>

#include "kernels/decode_attention.h"

namespace hkv::kernels::decode_internal {

constexpr int kMetaHeader = 2;  // num_work, num_merge_rows
// CTA slots an SM holds (registers and the ring's shared memory allow 4 at GQA groups <= 4):
// the planner spreads the work over num_sms * kCtasPerSm slots.
constexpr int kCtasPerSm = 4;

// Offsets (in int32) of the arrays inside the workspace meta block.
struct MetaLayout {
  int64_t work_row, work_begin, work_end, work_slot, work_first_block, row_split_begin,
      row_num_splits, merge_row, total;
  explicit MetaLayout(const DecodePlanOptions& o) {
    work_row = kMetaHeader;
    work_begin = work_row + o.max_work_items;
    work_end = work_begin + o.max_work_items;
    work_slot = work_end + o.max_work_items;
    work_first_block = work_slot + o.max_work_items;
    row_split_begin = work_first_block + o.max_work_items;
    row_num_splits = row_split_begin + o.max_rows;
    merge_row = row_num_splits + o.max_rows;
    total = (merge_row + o.max_rows + 63) / 64 * 64;
  }
};

}  // namespace hkv::kernels::decode_internal
