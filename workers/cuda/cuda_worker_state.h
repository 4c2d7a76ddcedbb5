#pragma once
// CudaWorker::State: everything one CUDA worker owns (weights, KV pool, step buffers, graphs,
// stream, cuBLAS handle), shared by the files of workers/cuda/ that each implement one part of
// it: cuda_worker.cc (creation and the step), step_launch.cc (its launch and await),
// device_weights.cc, step_staging.cc, forward.cc, decode_graphs.cc. Internal to workers/cuda/.
//
// Thread-compatible: used only by the worker's thread (its CUDA device and stream).

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/batch.h"
#include "common/page_table_mirror.h"
#include "common/thread_pool.h"
#include "kernels/decode_attention.h"
#include "kernels/dtype.h"
#include "kernels/logits_processing.h"
#include "kernels/sampling.h"
#include "model/model_config.h"
#include "workers/cuda/cuda_buffers.h"
#include "workers/cuda/cuda_worker.h"
#include "workers/cuda/device_page_table.h"
#include "workers/cuda/phase_timer.h"
#include "workers/cuda/rank_view.h"
#include "workers/cuda/sampling_extras.h"
#include "workers/cuda/step_layout.h"
#include "workers/token_history.h"

namespace hkv {
namespace cuda_internal {

constexpr kernels::DType kDType = kernels::DType::kBf16;

struct LayerBuffers {
  DeviceBuffer attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;
};

// Device addresses of a step's inputs (inside StepInputs).
struct DeviceStep {
  const int32_t *ids = nullptr, *pos = nullptr, *indptr_a = nullptr, *indices_a = nullptr,
                *last_a = nullptr, *indptr_b = nullptr, *indices_b = nullptr, *last_b = nullptr,
                *cu_prefill = nullptr, *cu_select = nullptr, *caps = nullptr,
                *sample_token = nullptr, *ada_blocks = nullptr;
  // A delta step (HostStep::device_indices): indices_a is built here by the gather of
  // gather_segments over the last table and gather_upload.
  int32_t* indices_a_built = nullptr;
  const int32_t *gather_segments = nullptr, *gather_upload = nullptr;
  const int64_t* slots = nullptr;
  const kernels::SamplingRow* sample_rows = nullptr;
  std::vector<kernels::DecodePlan> plans;  // per layer, when the step decodes
};

// Device addresses of a step's sampling extras (sampling_step.cc); all null without them.
struct DeviceExtras {
  bool penalties = false;
  int32_t top = -1;                             // logprobs: the top-k computed per row (-1: none)
  const kernels::PenaltyRow* params = nullptr;  // [sampled rows]
  const int32_t *indptr = nullptr, *ids = nullptr, *counts = nullptr;
};

// Optional per-step timing (HKV_STEP_PROFILE=1): host time to build and stage a step, GPU time
// from the input copy to the last kernel, per kind of step; printed every 1000 steps and at
// exit. Costs two events per launch slot and a host timer per step.
struct StepProfile {
  struct Kind {
    int64_t steps = 0;
    double host_us = 0, gpu_us = 0, seqs = 0, tokens = 0;
  };
  bool on = false;
  cudaEvent_t start[2] = {}, stop[2] = {};  // per launch slot (async steps)
  std::map<std::string, Kind> kinds;
  int64_t steps = 0;

  void Print() const {
    for (const auto& [name, k] : kinds) {
      std::fprintf(stderr,
                   "hkv step profile: %-14s steps %7lld  host %8.0f us  gpu %8.0f us  seqs %6.1f  "
                   "tokens %7.1f\n",
                   name.c_str(), static_cast<long long>(k.steps), k.host_us / k.steps,
                   k.gpu_us / k.steps, k.seqs / k.steps, k.tokens / k.steps);
    }
  }
  ~StepProfile() {
    if (on && steps > 0) Print();
    for (int i = 0; i < 2; ++i) {
      if (start[i] != nullptr) cudaEventDestroy(start[i]);
      if (stop[i] != nullptr) cudaEventDestroy(stop[i]);
    }
  }
};

struct DecodeGraph {
  cudaGraphExec_t exec = nullptr;
  uint64_t epoch = 0;
  DecodeGraph() = default;
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;
  ~DecodeGraph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
};

// The attention probes of one step (attention_probes.cc): the probed decodes, in internal
// order, and their kernel parameters [n, 4] = (q row, internal sequence, prompt_len, top_n).
struct ProbePlan {
  std::vector<int32_t> batch_index;
  std::vector<int32_t> meta;
  int32_t max_len = 0, max_top_n = 0;
};

// A step launched and not yet awaited (CudaWorker::Launch / Await). `batch` is the caller's, or
// `local` (this rank's view of it).
struct LaunchedStep {
  const Batch* batch = nullptr;
  Batch local;
  HostStep h;
  double host_us = 0;
  int32_t slot = 0;           // Its pinned results and events: two slots, used in turn.
  int32_t logprobs_top = -1;  // Its sampling extras' top-k (DeviceExtras::top).
};

}  // namespace cuda_internal

struct CudaWorker::State {
  using DeviceBuffer = cuda_internal::DeviceBuffer;

  std::shared_ptr<const Model> model;
  ModelConfig cfg;  // This rank's shapes (the model's without tensor parallelism).
  CudaWorkerOptions options;
  // Tensor parallelism: global KV head of each local (layer, head) [L * Hl], and the global
  // block ids [block_first, block_first + num_blocks) of this rank's pool.
  std::vector<int32_t> global_head;
  int64_t block_first = 0;
  int64_t num_blocks = 0;
  int32_t num_sms = 0;
  // Builds the decode plans of a step's layers in parallel (Stage), on the worker's thread
  // and a few helpers; null (plans on the worker's thread alone) on hosts of few cores.
  std::unique_ptr<ThreadPool> plan_pool;
  std::string sizing;
  bool return_logits = false;
  // Tests: each selection's kept_index [H, n] copied to the host, per (kept sequence j of the
  // step, layer) [num_kept_seqs * L]; Unpack trims rows to their kept counts.
  bool return_kept_positions = false;
  std::vector<std::vector<int32_t>> kept_index_host;
  // A step's one-step compressed prefills select concurrently (RunSelect): forked from
  // `stream` onto these after their attention, joined back before the layer goes on, each
  // prompt in its own slices of select_ws and kept_index (offsets per select j, set by
  // ReserveSelect), so a burst of short prompts does not run its small kernels one prompt after
  // another. Created on first use; worker thread only.
  static constexpr int32_t kMaxSelectStreams = 4;
  std::vector<cudaStream_t> select_streams;
  std::vector<cudaEvent_t> select_joins;
  cudaEvent_t select_fork = nullptr;
  std::vector<size_t> select_ws_offset, select_index_offset;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  // Weights (bf16).
  DeviceBuffer embedding, final_norm, lm_head, inv_freq;
  std::deque<cuda_internal::LayerBuffers> layers;  // deque: buffers are not movable.
  // KV pool.
  DeviceBuffer k_pool, v_pool;
  // Activations and workspaces.
  // sample_attn / sample_x: the sampled rows' attention output and residual ([sampled rows,
  // q_size] / [.., dim]) when the last layer runs on them alone (PrunesLastLayer).
  DeviceBuffer cublas_ws, res, xb, qkv, attn, tmp, gate_up, hidden, sample_attn, sample_x, logits,
      tokens, decode_ws, select_ws, kept, kept_index, select_caps;
  cuda_internal::StepInputs eager_inputs, graph_inputs;
  // Sampled tokens, kept counts and logits, per launch slot (a step's results are read while
  // the next one runs).
  cuda_internal::PinnedBuffer host_out[2];
  // Async steps: launched and not awaited, oldest first (at most two); the event each slot's
  // step records after its last copy; the event recorded once a step's host-to-device copies
  // have run (the pinned inputs, staging and extras, may be rewritten after it).
  std::deque<cuda_internal::LaunchedStep> launched;
  cudaEvent_t step_done[2] = {};
  cudaEvent_t inputs_sent = nullptr;
  bool inputs_sent_recorded = false;
  int32_t next_slot = 0;
  // Pending tokens (common/batch.h): the sampled row (in `tokens`) of each sequence the last
  // launched step sampled, and a step's gather of them into its ids (page_table_gather.h
  // segments), staged in pending_host, copied to pending_dev.
  absl::flat_hash_map<RequestId, int32_t> last_sample_row;
  cuda_internal::PinnedBuffer pending_host;
  DeviceBuffer pending_dev;
  // Sampling extras (eager steps only): the penalty lists, penalised logits, logprob outputs.
  TokenHistories histories;  // rank 0 only: the ranks that sample
  cuda_internal::PinnedBuffer extras_host;
  DeviceBuffer extras_dev, penalised, logprob_out;
  cuda_internal::DeviceExtras extras;                    // this step's; reset by every step
  std::map<int32_t, cuda_internal::DecodeGraph> graphs;  // by padded batch size
  int64_t graph_steps = 0, eager_steps = 0, graphs_captured = 0;
  cuda_internal::StepProfile profile;
  cuda_internal::PhaseTimer phases;  // opt-in per-phase timing (eager steps only)
  // false: every step runs eagerly (benchmarks, tests). The kernel set (fused or not) is
  // options.fused_decode, fixed for the worker's life, so graphs need not key on it.
  bool graphs_enabled = true;
  // Attention probes: the step's plan; meta, one layer's logits [n, Hq, max_len] fp32, and
  // the top positions and weights [L, n, Hq, max_top_n].
  cuda_internal::ProbePlan probe;
  DeviceBuffer probe_meta, probe_ws, probe_pos, probe_w;
  // Page-table deltas (Batch::kv_delta; device_page_table.h): every sequence's rows on the
  // host, this step's row lists (into `tables`), and the device's two tables: the last step's
  // (device_tables[last_table], described by device_table) and the one the next gather writes.
  PageTableMirror tables;
  std::vector<const std::vector<BlockTable>*> step_rows;
  DeviceTableState device_table;
  DeviceBuffer device_tables[2];
  int32_t last_table = 0;

  ~State() {
    if (!launched.empty()) cudaStreamSynchronize(stream);  // abandoned steps still read buffers
    for (cudaEvent_t e : step_done) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    if (inputs_sent != nullptr) cudaEventDestroy(inputs_sent);
    graphs.clear();
    if (profile.on && profile.steps > 0) {
      profile.Print();
      profile.steps = 0;
    }
    for (cudaStream_t s : select_streams) cudaStreamDestroy(s);
    for (cudaEvent_t e : select_joins) cudaEventDestroy(e);
    if (select_fork != nullptr) cudaEventDestroy(select_fork);
    if (cublas != nullptr) cublasDestroy(cublas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  // Changes whenever a buffer that a graph reads or writes moves.
  uint64_t Epoch() const {
    uint64_t e = graph_inputs.generation();
    for (const DeviceBuffer* b : {&res, &xb, &qkv, &attn, &tmp, &gate_up, &hidden, &logits, &tokens,
                                  &decode_ws, &cublas_ws}) {
      e = e * 1000003 + b->generation();
    }
    return e;
  }
  StepLayoutShape shape() const {
    return {cfg.num_layers, cfg.num_kv_heads, cfg.vocab_size, options.block_size, options.tp.rank};
  }
  RankSlice slice() const {
    return {options.tp.rank, cfg.num_layers, model->config.num_kv_heads,
            &global_head,    block_first,    num_blocks};
  }

  // cuda_worker.cc: creation.
  absl::Status InitDevice();
  absl::Status ReserveActivations(int64_t step_tokens, int64_t sample_rows);
  absl::StatusOr<kernels::DecodePlanOptions> ReserveStepBuffers();
  absl::Status AllocatePool(int64_t total_bytes, int64_t in_use_bytes);
  absl::Status ReserveGraphInputs(const kernels::DecodePlanOptions& planned);
  // cuda_worker.cc: the step.
  absl::Status CheckBatch(const Batch& b) const;
  // device_table_step.cc: a delta step's tables (sets step_rows), and its gather on the device.
  absl::Status ApplyDelta(const Batch& b);
  absl::Status BuildDeviceTable(const Batch& b, const HostStep& h,
                                const cuda_internal::DeviceStep& d);
  absl::StatusOr<HostStep> LayOut(const Batch& b, cuda_internal::StepInputs** inputs);
  absl::Status CopyBlocks(const Batch& b);
  absl::Status Launch(const Batch& b, const HostStep& h, const kernels::DecodePlanOptions& decode,
                      cuda_internal::DeviceStep& d, cuda_internal::StepInputs* inputs,
                      int32_t slot);
  // step_launch.cc: launches a step (the whole host side, then the device's queue) and awaits
  // the oldest.
  absl::Status LaunchStep(const Batch& global_batch);
  absl::Status LaunchInto(const Batch& global_batch, cuda_internal::LaunchedStep& step);
  absl::StatusOr<BatchResult> AwaitStep();
  // Whether steps may be launched ahead (one GPU, no per-step host state that a second step in
  // flight would overwrite: phase profiles, kept positions).
  bool AsyncCapable() const;
  // Stages the gather of a step's pending tokens (h.pending_at) from last_sample_row; then,
  // on the stream after the inputs' upload, copies and runs it. Records the step's sampled
  // rows for the next step.
  absl::Status StagePending(const Batch& b, const HostStep& h);
  absl::Status RunPending(const HostStep& h, const cuda_internal::DeviceStep& d);
  void RecordSampleRows(const Batch& b, const HostStep& h);
  // Queues the copies of sampled tokens, kept counts and logits into slot's pinned buffer.
  absl::Status CopyOut(const HostStep& h, int32_t slot);
  // Waits for `step` (bounded under tensor parallelism: a dead or hung peer aborts the group).
  absl::Status WaitFor(const cuda_internal::LaunchedStep& step);
  absl::Status RecordProfile(const Batch& b, const HostStep& h, double host_us, int32_t slot);
  BatchResult Unpack(const cuda_internal::LaunchedStep& step) const;
  // device_weights.cc
  absl::Status LoadWeights();
  absl::Status FillDummyWeights(uint64_t seed);
  absl::Status UploadWeights(const Model& m);
  // step_staging.cc
  kernels::DecodePlanOptions DecodeOptionsFor(const HostStep& h) const;
  size_t StageBytes(const HostStep& h, const kernels::DecodePlanOptions& decode) const;
  absl::StatusOr<cuda_internal::DeviceStep> Stage(const HostStep& h,
                                                  const kernels::DecodePlanOptions& decode,
                                                  cuda_internal::StepInputs* in) const;
  // forward.cc: launches the whole step on the stream (no host sync, no allocation).
  absl::Status Forward(const Batch& b, const HostStep& h, const cuda_internal::DeviceStep& d);
  kernels::PagedKvView KvViewAfter(const cuda_internal::DeviceStep& d) const;
  // Whether step h runs the fused decode kernels (options.fused_decode, one GPU, 1-4 tokens):
  // then each layer adds its attention and MLP outputs to `res` in the products' epilogues
  // (tmp unused), else the layer's output is left in `tmp` for the next norm to add.
  bool FusedDecode(const HostStep& h) const;
  bool PrunesLastLayer(const HostStep& h) const;
  // The rows a layer's MLP runs on: attention output [count, q_size] and residual [count,
  // dim], contiguous (the step's buffers, or sample_attn / sample_x).
  struct MlpRows {
    const void* attn;
    void* res;
    int32_t count;
  };
  absl::Status LayerAttention(const Batch& b, const HostStep& h, const cuda_internal::DeviceStep& d,
                              int32_t layer, const kernels::PagedKvView& after, bool fused,
                              bool last_tile_only);
  absl::Status RunPrefill(const HostStep& h, int32_t k0, int32_t count, const int32_t* cu,
                          int32_t max_len, const kernels::PagedKvView* prefix, bool last_tile_only);
  absl::Status RunPagedSelect(const Batch& b, const HostStep& h, const cuda_internal::DeviceStep& d,
                              int32_t l);
  absl::Status RunSelect(const Batch& b, const HostStep& h, const cuda_internal::DeviceStep& d,
                         int32_t layer, bool last_tile_only);
  absl::Status ReserveSelect(const Batch& b, const HostStep& h);
  absl::Status CopyKeptIndex(int32_t j, int32_t l, int32_t n, const int32_t* index);
  absl::Status LayerMlp(const MlpRows& rows, int32_t layer, bool fused);
  absl::Status SampleStep(const HostStep& h, const cuda_internal::DeviceStep& d,
                          const MlpRows& rows, bool fused);
  // sampling_step.cc: uploads the step's extras (sets `extras`), runs the penalties on a copy of
  // the logits (returns the logits to sample from), the logprobs after sampling, and reads
  // them back.
  absl::Status StageExtras(const SamplingExtras& x);
  absl::StatusOr<const float*> PenalisedLogits(int32_t rows);
  absl::Status RunLogprobs(int32_t rows);
  size_t LogprobBytes(int32_t rows) const;
  // `top`: the step's extras.top (a later launch resets `extras`).
  void UnpackLogprobs(const Batch& b, const HostStep& h, const char* out, int32_t slot, int32_t top,
                      BatchResult* r) const;
  // attention_probes.cc: plans and uploads the step's probes (eager steps only), runs layer
  // l's, and downloads them after the step.
  absl::Status PlanProbes(const Batch& b, const HostStep& h);
  absl::Status RunProbes(int32_t layer, const kernels::PagedKvView& after);
  absl::Status UnpackProbes(BatchResult* result);
  // decode_graphs.cc: captures (on first use per size and buffer epoch) and replays.
  absl::Status RunGraph(const Batch& b, const HostStep& h, const cuda_internal::DeviceStep& d);
};

}  // namespace hkv
