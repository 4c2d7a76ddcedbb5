#include <algorithm>

#include "kernels/decode_attention.h"
#include "kernels/sampling.h"
#include "workers/cuda/cuda_worker_state.h"

namespace hkv {
namespace {

namespace k = ::hkv::kernels;
using cuda_internal::DeviceStep;
using cuda_internal::SliceBytes;
using cuda_internal::StepInputs;

// The host layout's sampling rows as the sampling kernel reads them (same fields, same size).
const k::SamplingRow* PutSamplingRows(const std::vector<HostSamplingRow>& rows, StepInputs* in) {
  static_assert(sizeof(HostSamplingRow) == sizeof(k::SamplingRow));
  k::SamplingRow* host = nullptr;
  const k::SamplingRow* dev = in->Take<k::SamplingRow>(rows.size(), &host);
  for (size_t i = 0; i < rows.size(); ++i) {
    host[i].temperature = rows[i].temperature;
    host[i].top_k = rows[i].top_k;
    host[i].top_p = rows[i].top_p;
    host[i].uniform = rows[i].uniform;
  }
  return dev;
}

}  // namespace

// The step's host layout: a graph step when the batch is decode-only, of a size with a graph,
// and its page indices fit the graph inputs; else eager. Sets *inputs to the buffer to use.
absl::StatusOr<HostStep> CudaWorker::State::LayOut(const Batch& b, StepInputs** inputs) {
  bool all_decode = !b.seqs.empty();
  for (const SequenceStep& st : b.seqs) {
    // Sampling extras (penalties, logprobs) run eagerly: their inputs change size every step.
    // Probed decodes too: the graphs stay those of plain decode.
    all_decode = all_decode && !st.select && st.tokens.size() == 1 && !NeedsSamplingExtras(st) &&
                 st.probe_top_n == 0;
  }
  // Phase profiles time eager steps only (events cannot be timed inside a graph).
  all_decode = all_decode && graphs_enabled && !phases.on();
  const int32_t graph_batch =
      all_decode ? GraphBatchFor(static_cast<int32_t>(b.seqs.size()), options.cuda_graph_max_batch)
                 : 0;
  // A delta step's rows come from the worker's tables, its indices_a from the device's.
  const bool delta = b.delta_only();
  const StepRows rows{delta ? &step_rows : nullptr, delta};
  auto lay_out = [&](int32_t graph_size) -> absl::StatusOr<HostStep> {
    HKV_ASSIGN_OR_RETURN(HostStep h, BuildHostStep(b, shape(), graph_size, rows));
    if (h.device_indices) PlanTableGather(b, step_rows, device_table, &h);
    return h;
  };
  HKV_ASSIGN_OR_RETURN(HostStep h, lay_out(graph_batch));
  *inputs = &eager_inputs;
  if (h.graph) {
    if (StageBytes(h, DecodeOptionsFor(h)) <= graph_inputs.capacity()) {
      *inputs = &graph_inputs;
    } else {  // More page indices than the graph inputs hold (shared blocks): run eagerly.
      HKV_ASSIGN_OR_RETURN(h, lay_out(0));
    }
  }
  return h;
}

k::DecodePlanOptions CudaWorker::State::DecodeOptionsFor(const HostStep& h) const {
  k::DecodePlanOptions o;
  o.max_rows = std::max(1, h.num_decode * cfg.num_kv_heads);
  // Graph steps launch every possible work item (most exit at once): keep that bound close to
  // what the planner uses at small batches (a few items per SM).
  o.max_work_items = o.max_rows + (h.graph ? std::min(1024, 4 * num_sms) : 1024);
  o.group_size = cfg.group_size();
  o.head_dim = cfg.head_dim;
  o.num_sms = num_sms;
  o.fixed_grid = h.graph;
  o.kv_stages = options.decode_kv_stages;
  return o;
}

size_t CudaWorker::State::StageBytes(const HostStep& h, const k::DecodePlanOptions& decode) const {
  const int32_t L = cfg.num_layers;
  size_t bytes =
      SliceBytes<int32_t>(h.ids.size()) + SliceBytes<int32_t>(h.pos.size()) +
      SliceBytes<k::SamplingRow>(h.sample_rows.size()) +
      SliceBytes<int32_t>(h.sample_token.size()) + SliceBytes<int64_t>(h.slots.size()) +
      SliceBytes<int32_t>(h.last_a.size()) + SliceBytes<int32_t>(h.indptr_a.size()) +
      SliceBytes<int32_t>(h.last_b.size()) + SliceBytes<int32_t>(h.indptr_b.size()) +
      SliceBytes<int32_t>(h.cu_prefill.size()) + SliceBytes<int32_t>(h.cu_select.size()) +
      SliceBytes<int32_t>(h.caps.size()) + SliceBytes<int32_t>(h.indices_b.size()) +
      SliceBytes<int32_t>(h.device_indices   ? h.indptr_a.back()
                          : h.shared_indices ? h.batch_indices->size()
                                             : h.indices_a.size()) +
      SliceBytes<int32_t>(h.ada_blocks.size()) + SliceBytes<int32_t>(h.gather_segments.size()) +
      SliceBytes<int32_t>(h.gather_upload.size());
  if (h.num_decode > 0) bytes += L * SliceBytes<int32_t>(k::DecodeMetaInts(decode));
  return bytes;
}

// The order of the slices is fixed, and variable-length ones come last, so a graph step of a
// given batch size always finds its inputs at the same addresses.
absl::StatusOr<DeviceStep> CudaWorker::State::Stage(const HostStep& h,
                                                    const k::DecodePlanOptions& decode,
                                                    StepInputs* in) const {
  const ModelConfig& c = cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads;
  DeviceStep d;
  d.ids = in->Put(h.ids);
  d.pos = in->Put(h.pos);
  d.sample_rows = PutSamplingRows(h.sample_rows, in);
  d.sample_token = in->Put(h.sample_token);
  d.slots = in->Put(h.slots);
  d.last_a = in->Put(h.last_a);
  d.indptr_a = in->Put(h.indptr_a);
  d.last_b = in->Put(h.last_b);
  d.indptr_b = in->Put(h.indptr_b);
  d.cu_prefill = in->Put(h.cu_prefill);
  d.cu_select = in->Put(h.cu_select);
  d.caps = in->Put(h.caps);
  if (h.num_decode > 0) {
    const size_t meta_ints = k::DecodeMetaInts(decode);
    const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
    d.plans.resize(L);
    // The staging slices first, in layer order (a graph step finds them at fixed addresses).
    std::vector<int32_t*> host_meta(L);
    for (int32_t l = 0; l < L; ++l) {
      d.plans[l].device_meta = in->Take<int32_t>(meta_ints, &host_meta[l]);
    }
    // Then the plans of layers [l0, l1). Layers whose heads hold the same lengths as the last
    // planned layer of the range (every layer under full KV) reuse its work list with their
    // own blocks; a fresh plan of the same lengths would be the same list, so how the layers
    // are split over threads never changes the result.
    std::vector<uint8_t> malformed(L, 0);
    auto plan_layers = [&](int64_t l0, int64_t l1) {
      std::vector<int32_t> row_ids(static_cast<size_t>(h.real_decode) * H);
      int64_t base = -1;
      for (int64_t l = l0; l < l1; ++l) {
        for (int32_t s = 0; s < h.real_decode; ++s) {
          for (int32_t hh = 0; hh < H; ++hh) {
            row_ids[s * H + hh] = static_cast<int32_t>(s * rows_per_seq + l * H + hh);
          }
        }
        if (base >= 0 &&
            k::RebaseDecodePlan(d.plans[base], host_meta[base], h.indptr_a.data(), h.last_a.data(),
                                options.block_size, row_ids.data(), host_meta[l])) {
          const int32_t* device_meta = d.plans[l].device_meta;
          d.plans[l] = d.plans[base];
          d.plans[l].row_lengths.clear();
          d.plans[l].device_meta = device_meta;
        } else {
          const cudaError_t e =
              k::BuildDecodePlan(decode, h.indptr_a.data(), h.last_a.data(), h.real_decode * H,
                                 options.block_size, row_ids.data(), host_meta[l], &d.plans[l]);
          if (e != cudaSuccess) malformed[l] = 1;
          base = l;
        }
        d.plans[l].workspace = decode_ws.get();
      }
    };
    // Threads pay off only with rows enough to plan (a few microseconds a layer at batch 1).
    if (plan_pool != nullptr && h.real_decode * H >= 256) {
      plan_pool->ParallelFor(L, plan_layers);
    } else {
      plan_layers(0, L);
    }
    for (int32_t l = 0; l < L; ++l) {
      if (malformed[l]) return absl::InvalidArgumentError("malformed decode page table");
    }
  }
  d.indices_b = in->Put(h.indices_b);
  if (h.device_indices) {  // built on the device from the last step's (device_page_table.h)
    d.indices_a_built = in->TakeDeviceOnly<int32_t>(h.indptr_a.back());
    d.indices_a = d.indices_a_built;
  } else {
    d.indices_a = in->Put(h.shared_indices ? *h.batch_indices : h.indices_a);
  }
  d.ada_blocks = in->Put(h.ada_blocks);
  d.gather_segments = in->Put(h.gather_segments);
  d.gather_upload = in->Put(h.gather_upload);
  return d;
}

}  // namespace hkv
