// The CUDA worker's step as two halves (CudaWorker::Launch / Await): the host side and the
// device's queue of one step, the wait for the oldest, and the pending tokens a step launched
// behind another takes from that one's samples.
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/page_table_gather.h"
#include "workers/cuda/cuda_worker_state.h"
#include "workers/pending_tokens.h"

namespace hkv {

namespace k = ::hkv::kernels;
using cuda_internal::DeviceStep;
using cuda_internal::StepInputs;

bool CudaWorker::State::AsyncCapable() const {
  return options.tp.size == 1 && block_first == 0 && !phases.on() && !return_kept_positions;
}

absl::Status CudaWorker::State::LaunchStep(const Batch& global_batch) {
  if (!launched.empty() && (launched.size() >= 2 || !AsyncCapable())) {
    return absl::FailedPreconditionError(
        absl::StrCat(launched.size(), " steps are launched: Await one first"));
  }
  cuda_internal::LaunchedStep& step = launched.emplace_back();
  const absl::Status status = LaunchInto(global_batch, step);
  if (!status.ok()) {
    launched.pop_back();
    last_sample_row.clear();  // Nothing may refer to a step that did not run.
  }
  return status;
}

// The whole host side of a step (layout, staging, page tables), then the device's queue: the
// inputs' copies, the forward pass, the copies of its results and the slot's event.
absl::Status CudaWorker::State::LaunchInto(const Batch& global_batch,
                                           cuda_internal::LaunchedStep& step) {
  const auto host_start = std::chrono::steady_clock::now();
  const bool sliced = options.tp.size > 1 || block_first != 0;
  const bool delta = global_batch.delta_only();
  if (sliced && delta) {  // AcceptsPageTableDeltas is false: the ranks slice the full CSR
    return absl::InvalidArgumentError("page-table deltas on a tensor-parallel rank");
  }
  step.batch = &global_batch;
  if (sliced) {
    HKV_ASSIGN_OR_RETURN(step.local, RankView(global_batch, slice()));
    step.batch = &step.local;
  }
  const Batch& b = *step.batch;
  HKV_RETURN_IF_ERROR(CheckBatch(b));
  if (sliced && HasPendingTokens(b)) {  // rank 0 alone samples: no rank has the tokens
    return absl::InvalidArgumentError("pending tokens on a tensor-parallel rank");
  }
  HKV_RETURN_IF_ERROR(ValidatePendingTokens(b, last_sample_row));
  if (delta) {
    HKV_RETURN_IF_ERROR(ApplyDelta(b));
  } else {
    device_table.valid = false;  // a full-CSR step: the next delta step uploads its rows
  }
  if (options.tp.rank == 0) {  // Only rank 0 samples (step_layout.h).
    histories.Observe(b);
    for (const SequenceStep& st : b.seqs) HKV_RETURN_IF_ERROR(histories.CheckFor(st));
  }
  StepInputs* inputs = nullptr;
  HKV_ASSIGN_OR_RETURN(step.h, LayOut(b, &inputs));
  const HostStep& h = step.h;
  const k::DecodePlanOptions decode = DecodeOptionsFor(h);
  HKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  // The pinned inputs are rewritten from here: the last step's copies from them must have run
  // (they lead that step on the stream, so this rarely waits).
  if (inputs_sent_recorded) HKV_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(inputs_sent));
  HKV_RETURN_IF_ERROR(StageExtras(BuildSamplingExtras(b, h, histories, cfg.vocab_size)));
  step.logprobs_top = extras.top;
  HKV_RETURN_IF_ERROR(inputs->Begin(h.graph ? inputs->capacity() : StageBytes(h, decode)));
  HKV_ASSIGN_OR_RETURN(DeviceStep d, Stage(h, decode, inputs));
  HKV_RETURN_IF_ERROR(StagePending(b, h));
  HKV_RETURN_IF_ERROR(CopyBlocks(b));
  step.host_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host_start)
          .count();
  step.slot = next_slot;
  next_slot ^= 1;
  HKV_RETURN_IF_ERROR(Launch(b, h, decode, d, inputs, step.slot));
  RecordSampleRows(b, h);
  return CopyOut(h, step.slot);
}

absl::StatusOr<BatchResult> CudaWorker::State::AwaitStep() {
  if (launched.empty()) return absl::FailedPreconditionError("no step was launched");
  const cuda_internal::LaunchedStep& step = launched.front();
  absl::StatusOr<BatchResult> result = [&]() -> absl::StatusOr<BatchResult> {
    HKV_RETURN_IF_ERROR(WaitFor(step));
    HKV_RETURN_IF_ERROR(RecordProfile(*step.batch, step.h, step.host_us, step.slot));
    HKV_CUDA_RETURN_IF_ERROR(phases.Collect());
    BatchResult r = Unpack(step);
    HKV_RETURN_IF_ERROR(UnpackProbes(&r));
    return r;
  }();
  if (result.ok()) {
    launched.pop_front();
  } else {
    launched.clear();  // The device failed: the later steps are abandoned.
    last_sample_row.clear();
  }
  return result;
}

absl::Status CudaWorker::State::StagePending(const Batch& b, const HostStep& h) {
  if (h.pending_at.empty()) return absl::OkStatus();
  const size_t n = h.pending_at.size() * k::kGatherSegmentInts;
  HKV_RETURN_IF_ERROR(pending_host.Reserve(n * 4));
  HKV_RETURN_IF_ERROR(pending_dev.Reserve(n * 4));
  auto* seg = reinterpret_cast<int32_t*>(pending_host.get());
  for (size_t i = 0; i < h.pending_at.size(); ++i) {
    // ValidatePendingTokens found every pending sequence among the last step's samples.
    seg[4 * i] = h.pending_at[i];
    seg[4 * i + 1] = last_sample_row.at(b.seqs[h.pending_of[i]].id);
    seg[4 * i + 2] = 1;
    seg[4 * i + 3] = 0;
  }
  return absl::OkStatus();
}

// After the step's inputs are on the device and before anything may grow `tokens`: the
// previous step's samples are still there, in their sampled rows.
absl::Status CudaWorker::State::RunPending(const HostStep& h, const DeviceStep& d) {
  if (h.pending_at.empty()) return absl::OkStatus();
  const int32_t n = static_cast<int32_t>(h.pending_at.size());
  HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pending_dev.get(), pending_host.get(),
                                           static_cast<size_t>(n) * k::kGatherSegmentInts * 4,
                                           cudaMemcpyHostToDevice, stream));
  // d.ids is the step's staging on the device, written by this stream only.
  HKV_CUDA_RETURN_IF_ERROR(k::GatherPageTable(pending_dev.get<int32_t>(), n, tokens.get<int32_t>(),
                                              tokens.get<int32_t>(), const_cast<int32_t*>(d.ids),
                                              nullptr, stream));
  return absl::OkStatus();
}

void CudaWorker::State::RecordSampleRows(const Batch& b, const HostStep& h) {
  last_sample_row.clear();
  for (size_t i = 0; i < h.sample_seq.size(); ++i) {
    if (h.sample_seq[i] < 0 || h.sample_index[i] != 0) continue;
    const SequenceStep& st = b.seqs[h.order[h.sample_seq[i]]];
    if (st.sample) last_sample_row[st.id] = static_cast<int32_t>(i);
  }
}

}  // namespace hkv
