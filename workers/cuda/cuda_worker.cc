#include "workers/cuda/cuda_worker.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/batch_validation.h"
#include "common/status_macros.h"
#include "kernels/decode_attention.h"
#include "kernels/kv_select.h"
#include "model/rope.h"
#include "model/tensor_parallel.h"
#include "workers/cuda/cuda_worker_state.h"
#include "workers/cuda/memory_plan.h"
#include "workers/nccl_communicator.h"

namespace hkv {
namespace {

namespace k = ::hkv::kernels;
using cuda_internal::DeviceBuffer;
using cuda_internal::DeviceStep;
using cuda_internal::kAlign;
using cuda_internal::StepInputs;
using cuda_internal::StepProfile;
constexpr int64_t kCublasWorkspaceBytes = 32LL << 20;
constexpr double kGiB = 1073741824.0;
static_assert(kCudaDefaultDecodeKvStages == k::kDefaultKvStages);

absl::Status CheckOptions(const ModelConfig& global, const CudaWorkerOptions& options) {
  const CudaTensorParallel& tp = options.tp;
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size || (tp.size > 1 && tp.comm == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel rank ", tp.rank, " of ", tp.size, " needs a communicator"));
  }
  const int64_t all_slots = static_cast<int64_t>(global.num_layers) * global.num_kv_heads;
  const HeadRankAssignment& p = tp.placement;
  if (!p.head_of_slot.empty() &&
      (static_cast<int64_t>(p.head_of_slot.size()) != all_slots || p.num_ranks != tp.size ||
       p.num_layers != global.num_layers || p.num_heads != global.num_kv_heads)) {
    return absl::InvalidArgumentError(
        "the head placement needs one entry per (layer, KV head) over the group's ranks");
  }
  if ((options.block_size & (options.block_size - 1)) != 0) {
    return absl::InvalidArgumentError("block_size must be a power of two on CUDA");
  }
  if (options.max_step_tokens < 1 || options.max_seqs < 1 || options.cuda_graph_max_batch < 0) {
    return absl::InvalidArgumentError("max_step_tokens and max_seqs must be positive");
  }
  if (!k::ValidKvStages(options.decode_kv_stages)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode_kv_stages must be 0 or 2..", k::kMaxKvStages, ", got ", options.decode_kv_stages));
  }
  return absl::OkStatus();
}

// Global KV head of each local (layer, slot) of rank `tp.rank`.
std::vector<int32_t> GlobalHeads(const ModelConfig& global, const ModelConfig& local,
                                 const CudaTensorParallel& tp) {
  std::vector<int32_t> heads;
  for (int32_t l = 0; l < local.num_layers; ++l) {
    for (int32_t j = 0; j < local.num_kv_heads; ++j) {
      const int32_t slot = tp.rank * local.num_kv_heads + j;
      const std::vector<int32_t>& placed = tp.placement.head_of_slot;
      heads.push_back(placed.empty() ? slot : placed[l * global.num_kv_heads + slot]);
    }
  }
  return heads;
}

}  // namespace

bool CudaDeviceAvailable() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

CudaWorker::CudaWorker(std::unique_ptr<State> state) : state_(std::move(state)) {}
CudaWorker::~CudaWorker() = default;
const ModelConfig& CudaWorker::config() const { return state_->model->config; }
std::string CudaWorker::name() const { return absl::StrCat("cuda:", state_->options.device); }
int64_t CudaWorker::num_blocks() const { return state_->num_blocks; }
const std::string& CudaWorker::sizing() const { return state_->sizing; }
void CudaWorker::set_return_logits(bool on) { state_->return_logits = on; }
void CudaWorker::set_return_kept_positions(bool on) { state_->return_kept_positions = on; }
void CudaWorker::set_graphs_enabled(bool on) { state_->graphs_enabled = on; }
void CudaWorker::set_phase_profile(bool on) { state_->phases.Enable(on); }
std::vector<CudaWorker::PhaseTime> CudaWorker::phase_profile() const {
  const cuda_internal::PhaseTimer& t = state_->phases;
  std::vector<PhaseTime> out;
  const double steps = std::max<int64_t>(t.steps(), 1);
  for (const auto& p : t.phases()) out.push_back({p.name, p.calls / steps, p.us / steps});
  return out;
}
int64_t CudaWorker::graph_steps() const { return state_->graph_steps; }
int64_t CudaWorker::eager_steps() const { return state_->eager_steps; }
int64_t CudaWorker::graphs_captured() const { return state_->graphs_captured; }
const std::vector<int32_t>& CudaWorker::global_heads() const { return state_->global_head; }
absl::Status CudaWorker::SetBlockRange(int64_t first, int64_t count) {
  if (first < 0 || count < 1 || count > state_->num_blocks || first + count > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("block range [", first, ", ", first + count,
                                                   ") does not fit a pool of ", state_->num_blocks,
                                                   " blocks"));
  }
  state_->block_first = first;
  state_->num_blocks = count;
  return absl::OkStatus();
}

bool CudaWorker::SupportsAdaptiveSelection() const { return state_->options.tp.size <= 1; }
bool CudaWorker::AcceptsPageTableDeltas() const {
  return state_->options.tp.size <= 1 && state_->block_first == 0;
}

absl::StatusOr<KvCapacity> CudaWorker::ReportKvCapacity() const {
  return KvCapacity{KvBlockBytes(state_->options.block_size, state_->cfg.head_dim),
                    state_->num_blocks};
}

absl::Status CudaWorker::AllocateKvPool(int64_t num_blocks) {
  if (num_blocks > state_->num_blocks) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a KV pool of ", num_blocks, " blocks: the GPU holds ", state_->num_blocks));
  }
  return SetBlockRange(0, num_blocks);
}

absl::Status CudaWorker::Supports(const ModelConfig& c) {
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("the CUDA kernels serve head_dim 64 or 128; this model has ", c.head_dim,
                     ": use --device cpu"));
  }
  if (c.group_size() > 8) {
    return absl::InvalidArgumentError("the CUDA kernels serve GQA groups of at most 8");
  }
  if (c.qkv_bias) return absl::InvalidArgumentError("q/k/v biases are not supported on CUDA yet");
  if (c.dim % 8 != 0 || c.hidden_dim % 8 != 0) {
    return absl::InvalidArgumentError("hidden sizes must be multiples of 8 on CUDA");
  }
  return absl::OkStatus();
}

absl::Status CudaWorker::State::InitDevice() {
  HKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  HKV_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, options.device));
  // HeadKV's rows differ in every layer, so a step plans all of them (1.5-2.4 ms a step at
  // batch 256 on the H200's host): up to 4 threads where the host has cores to spare.
  const int plan_threads =
      std::min(4, std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2));
  if (plan_threads > 1) plan_pool = std::make_unique<ThreadPool>(plan_threads);
  if (options.prefill_kernel == CudaPrefillKernel::kWgmma) {
    int major = 0;
    HKV_CUDA_RETURN_IF_ERROR(
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, options.device));
    if (major != 9) {
      return absl::InvalidArgumentError(
          absl::StrCat("the wgmma prefill kernel needs an sm_90 GPU (H100/H200); device ",
                       options.device, " is sm_", major, "x: use the mma prefill kernel"));
    }
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas, stream));
  // A fixed cuBLAS workspace: graph capture must not allocate.
  HKV_RETURN_IF_ERROR(cublas_ws.Reserve(kCublasWorkspaceBytes));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(cublas, cublas_ws.get(), cublas_ws.bytes()));
  if (const char* p = std::getenv("HKV_STEP_PROFILE"); p != nullptr && p[0] == '1') {
    profile.on = true;
    for (int i = 0; i < 2; ++i) {
      HKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(&profile.start[i]));
      HKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(&profile.stop[i]));
    }
  }
  for (cudaEvent_t& e : step_done) {
    HKV_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&inputs_sent, cudaEventDisableTiming));
  return absl::OkStatus();
}

absl::Status CudaWorker::State::ReserveActivations(int64_t step_tokens, int64_t sample_rows) {
  const ModelConfig& c = cfg;
  const size_t t = static_cast<size_t>(std::max<int64_t>(step_tokens, 1));
  const size_t qkv_w = c.q_size() + 2 * c.kv_size();
  HKV_RETURN_IF_ERROR(res.Reserve(t * c.dim * 2));
  HKV_RETURN_IF_ERROR(xb.Reserve(t * c.dim * 2));
  HKV_RETURN_IF_ERROR(tmp.Reserve(t * c.dim * 2));
  HKV_RETURN_IF_ERROR(qkv.Reserve(t * qkv_w * 2));
  HKV_RETURN_IF_ERROR(attn.Reserve(t * c.q_size() * 2));
  HKV_RETURN_IF_ERROR(gate_up.Reserve(t * 2 * c.hidden_dim * 2));
  HKV_RETURN_IF_ERROR(hidden.Reserve(t * c.hidden_dim * 2));
  const size_t rows = static_cast<size_t>(std::max<int64_t>(sample_rows, 1));
  HKV_RETURN_IF_ERROR(sample_attn.Reserve(rows * c.q_size() * 2));
  HKV_RETURN_IF_ERROR(sample_x.Reserve(rows * c.dim * 2));
  HKV_RETURN_IF_ERROR(logits.Reserve(rows * c.vocab_size * 4));
  HKV_RETURN_IF_ERROR(tokens.Reserve(rows * 4));
  return absl::OkStatus();
}

// RoPE table and the buffers of the largest planned step, before the pool takes the rest.
// Returns the decode plan options the buffers were sized for.
absl::StatusOr<k::DecodePlanOptions> CudaWorker::State::ReserveStepBuffers() {
  const ModelConfig& c = cfg;
  std::vector<float> freq = RopeInvFreq(c);
  HKV_RETURN_IF_ERROR(inv_freq.Reserve(freq.size() * 4));
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(inv_freq.get(), freq.data(), freq.size() * 4, cudaMemcpyHostToDevice));
  HKV_RETURN_IF_ERROR(ReserveActivations(options.max_step_tokens, options.max_seqs));
  k::DecodePlanOptions dopt;
  dopt.max_rows = std::max(options.max_seqs, options.cuda_graph_max_batch) * c.num_kv_heads;
  dopt.max_work_items = dopt.max_rows + 1024;
  dopt.group_size = c.group_size();
  dopt.head_dim = c.head_dim;
  dopt.kv_stages = options.decode_kv_stages;
  HKV_RETURN_IF_ERROR(decode_ws.Reserve(k::DecodeWorkspaceBytes(dopt)));
  HKV_RETURN_IF_ERROR(select_ws.Reserve(
      k::KvSelectWorkspaceBytes(options.max_step_tokens, 64, c.num_heads, c.num_kv_heads) + 256));
  return dopt;
}

absl::Status CudaWorker::State::AllocatePool(int64_t total_bytes, int64_t in_use_bytes) {
  HKV_ASSIGN_OR_RETURN(num_blocks, KvPoolBlocks(cfg, options, total_bytes, in_use_bytes));
  const size_t pool_bytes =
      static_cast<size_t>(num_blocks) * KvBlockBytes(options.block_size, cfg.head_dim) / 2;
  HKV_RETURN_IF_ERROR(k_pool.Reserve(pool_bytes));
  HKV_RETURN_IF_ERROR(v_pool.Reserve(pool_bytes));
  return absl::OkStatus();
}

// Graph inputs at their largest: fixed slices for the biggest graph, then page indices for
// every block of the pool (a step that lists more falls back to eager).
absl::Status CudaWorker::State::ReserveGraphInputs(const k::DecodePlanOptions& planned) {
  if (options.cuda_graph_max_batch <= 0) return absl::OkStatus();
  HostStep h;
  h.graph = true;
  h.num_decode = GraphBatchFor(options.cuda_graph_max_batch, options.cuda_graph_max_batch);
  if (h.num_decode == 0) h.num_decode = kGraphBatchSizes[std::size(kGraphBatchSizes) - 1];
  h.total = h.num_decode;
  k::DecodePlanOptions decode = planned;
  decode.max_rows = h.num_decode * cfg.num_kv_heads;
  decode.max_work_items = decode.max_rows + 1024;
  h.indices_a.resize(num_blocks + 1);
  // A delta step's gather inputs: a few segments and new blocks per row of the biggest graph
  // (a step that sends more, such as the first after a reset, runs eagerly).
  const int64_t rows = static_cast<int64_t>(h.num_decode) * cfg.num_layers * cfg.num_kv_heads;
  h.gather_segments.resize(4 * (3 * rows + 1024));
  h.gather_upload.resize(2 * rows + 65536);
  return graph_inputs.Begin(StageBytes(h, decode));
}

absl::StatusOr<std::unique_ptr<CudaWorker>> CudaWorker::Create(std::shared_ptr<const Model> model,
                                                               const CudaWorkerOptions& options) {
  const ModelConfig& global = model->config;
  if (!CudaDeviceAvailable()) return absl::UnavailableError("no CUDA device is available");
  HKV_RETURN_IF_ERROR(Supports(global));
  HKV_RETURN_IF_ERROR(CheckOptions(global, options));
  auto s = std::make_unique<State>();
  s->model = model;
  s->options = options;
  if (options.tp.size > 1) {
    HKV_ASSIGN_OR_RETURN(s->cfg, ShardConfig(global, options.tp.size));
  } else {
    s->cfg = global;
  }
  const ModelConfig& c = s->cfg;
  s->global_head = GlobalHeads(global, c, options.tp);
  HKV_RETURN_IF_ERROR(s->InitDevice());
  size_t free_before = 0, total = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_before, &total));
  HKV_RETURN_IF_ERROR(CheckModelFits(c, options, static_cast<int64_t>(free_before)));
  HKV_RETURN_IF_ERROR(s->LoadWeights());
  HKV_ASSIGN_OR_RETURN(const k::DecodePlanOptions dopt, s->ReserveStepBuffers());
  size_t free_after = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_after, &total));
  const int64_t in_use = static_cast<int64_t>(total - free_after);
  HKV_RETURN_IF_ERROR(s->AllocatePool(static_cast<int64_t>(total), in_use));
  HKV_RETURN_IF_ERROR(s->ReserveGraphInputs(dopt));
  const int64_t weight_bytes = WeightBytes(c);
  const int64_t bytes_per_block = KvBlockBytes(options.block_size, c.head_dim);
  s->sizing = absl::StrFormat(
      "GPU %d: %.2f GiB total, weights %.2f GiB (bf16%s), step buffers %.2f GiB (%d tokens, "
      "%d seqs), headroom %.2f GiB, utilization %.2f -> KV pool %d blocks x %d B = %.2f GiB; "
      "CUDA graphs for decode batches up to %d",
      options.device, total / kGiB, weight_bytes / kGiB,
      model->device_dummy_seed.has_value() ? ", random on the GPU" : "",
      (in_use - weight_bytes) / kGiB, options.max_step_tokens, options.max_seqs,
      options.activation_reserve_bytes / kGiB, options.gpu_memory_utilization, s->num_blocks,
      bytes_per_block, s->num_blocks * bytes_per_block / kGiB, options.cuda_graph_max_batch);
  return std::unique_ptr<CudaWorker>(new CudaWorker(std::move(s)));
}

// Shape, block ids and block copies of this worker's batch; INVALID_ARGUMENT when malformed.
absl::Status CudaWorker::State::CheckBatch(const Batch& b) const {
  if (b.num_layers != cfg.num_layers || b.num_kv_heads != cfg.num_kv_heads ||
      b.block_size != options.block_size) {
    return absl::InvalidArgumentError("malformed batch for the CUDA worker");
  }
  HKV_RETURN_IF_ERROR(ValidateBatchShape(b));
  HKV_RETURN_IF_ERROR(ValidateBlockIds(b, num_blocks));
  HKV_RETURN_IF_ERROR(ValidateProbes(b));
  for (const SequenceStep& st : b.seqs) {
    if (st.tokens.empty()) return absl::InvalidArgumentError("a sequence has no tokens");
  }
  return absl::OkStatus();
}

absl::Status CudaWorker::State::CopyBlocks(const Batch& b) {
  const size_t block_bytes = static_cast<size_t>(options.block_size) * cfg.head_dim * 2;
  for (const auto& [src, dst] : b.block_copies) {
    for (DeviceBuffer* pool : {&k_pool, &v_pool}) {
      HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pool->get<char>() + dst * block_bytes,
                                               pool->get<char>() + src * block_bytes, block_bytes,
                                               cudaMemcpyDeviceToDevice, stream));
    }
  }
  return absl::OkStatus();
}

// Sends the step's inputs, grows what the step needs, and runs it (graph or eager).
absl::Status CudaWorker::State::Launch(const Batch& b, const HostStep& h,
                                       const k::DecodePlanOptions& decode, DeviceStep& d,
                                       StepInputs* inputs, int32_t slot) {
  if (profile.on) HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(profile.start[slot], stream));
  HKV_RETURN_IF_ERROR(inputs->Upload(stream));
  HKV_RETURN_IF_ERROR(RunPending(h, d));
  // Every host-to-device copy of the step is queued: the next step may rewrite the pinned
  // inputs once this has run.
  HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(inputs_sent, stream));
  inputs_sent_recorded = true;
  if (h.device_indices) HKV_RETURN_IF_ERROR(BuildDeviceTable(b, h, d));
  HKV_RETURN_IF_ERROR(ReserveActivations(h.total, static_cast<int64_t>(h.sample_rows.size())));
  HKV_RETURN_IF_ERROR(ReserveSelect(b, h));
  if (h.num_decode > 0) {
    HKV_RETURN_IF_ERROR(decode_ws.Reserve(k::DecodeWorkspaceBytes(decode)));
    for (k::DecodePlan& p : d.plans) p.workspace = decode_ws.get();
  }
  HKV_RETURN_IF_ERROR(PlanProbes(b, h));
  if (h.graph) {
    HKV_RETURN_IF_ERROR(RunGraph(b, h, d));
    ++graph_steps;
  } else {
    HKV_RETURN_IF_ERROR(Forward(b, h, d));
    ++eager_steps;
  }
  if (profile.on) HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(profile.stop[slot], stream));
  return absl::OkStatus();
}

// Queues the copies of sampled tokens, kept counts and logits (when asked) into the slot's
// pinned buffer, then the slot's event.
absl::Status CudaWorker::State::CopyOut(const HostStep& h, int32_t slot) {
  cuda_internal::PinnedBuffer& host_out = this->host_out[slot];
  const size_t ns = h.sample_rows.size();
  const size_t kept_n = static_cast<size_t>(h.num_kept_seqs()) * cfg.num_layers * cfg.num_kv_heads;
  const size_t logit_n = return_logits ? ns * cfg.vocab_size : 0;
  const size_t lp_bytes = LogprobBytes(static_cast<int32_t>(ns));
  HKV_RETURN_IF_ERROR(host_out.Reserve((ns + kept_n + logit_n) * 4 + lp_bytes + 3 * kAlign));
  auto* out_tokens = reinterpret_cast<int32_t*>(host_out.get());
  auto* out_kept = out_tokens + ns;
  auto* out_logits = reinterpret_cast<float*>(out_kept + kept_n);
  if (lp_bytes > 0) {
    HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out_logits + logit_n, logprob_out.get(), lp_bytes,
                                             cudaMemcpyDeviceToHost, stream));
  }
  if (ns > 0) {
    HKV_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out_tokens, tokens.get(), ns * 4, cudaMemcpyDeviceToHost, stream));
  }
  if (kept_n > 0) {
    HKV_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out_kept, kept.get(), kept_n * 4, cudaMemcpyDeviceToHost, stream));
  }
  if (logit_n > 0) {
    HKV_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out_logits, logits.get(), logit_n * 4, cudaMemcpyDeviceToHost, stream));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(step_done[slot], stream));
  return absl::OkStatus();
}

absl::Status CudaWorker::State::WaitFor(const cuda_internal::LaunchedStep& step) {
  if (options.tp.size > 1) {  // One step at a time (AsyncCapable): the stream is that step.
    HKV_RETURN_IF_ERROR(
        options.tp.comm->WaitFor(stream, options.tp.step_timeout, options.tp.cancel));
  } else {
    HKV_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(step_done[step.slot]));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CudaWorker::State::RecordProfile(const Batch& b, const HostStep& h, double host_us,
                                              int32_t slot) {
  if (!profile.on) return absl::OkStatus();
  float gpu_ms = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&gpu_ms, profile.start[slot], profile.stop[slot]));
  const std::string kind = h.graph                             ? "decode graph"
                           : h.num_prefill + h.num_select == 0 ? "decode eager"
                           : h.real_decode > 0                 ? "mixed"
                                                               : "prefill";
  StepProfile::Kind& k = profile.kinds[kind];
  ++k.steps;
  k.host_us += host_us;
  k.gpu_us += gpu_ms * 1e3;
  k.seqs += b.seqs.size();
  k.tokens += h.total;
  if (++profile.steps % 1000 == 0) profile.Print();
  return absl::OkStatus();
}

// The step's answer from the pinned results CopyOut left.
BatchResult CudaWorker::State::Unpack(const cuda_internal::LaunchedStep& step) const {
  const Batch& b = *step.batch;
  const HostStep& h = step.h;
  const int32_t slot = step.slot;
  const cuda_internal::PinnedBuffer& host_out = this->host_out[slot];
  const int32_t ns = static_cast<int32_t>(h.sample_rows.size());
  const size_t rows_per_seq = static_cast<size_t>(cfg.num_layers) * cfg.num_kv_heads;
  const size_t kept_n = static_cast<size_t>(h.num_kept_seqs()) * rows_per_seq;
  const auto* out_tokens = reinterpret_cast<const int32_t*>(host_out.get());
  const auto* out_kept = out_tokens + ns;
  const auto* out_logits = reinterpret_cast<const float*>(out_kept + kept_n);
  const size_t vocab = cfg.vocab_size;
  BatchResult result;
  result.seqs.resize(b.seqs.size());
  for (size_t i = 0; i < b.seqs.size(); ++i) result.seqs[i].id = b.seqs[i].id;
  for (int32_t i = 0; i < ns; ++i) {
    if (h.sample_seq[i] < 0) continue;
    const int32_t bi = h.order[h.sample_seq[i]];
    if (!b.seqs[bi].sample) continue;
    SequenceResult& r = result.seqs[bi];
    if (h.sample_index[i] > 0) {  // n > 1: the same sequence's later samples
      r.extra_tokens.push_back(out_tokens[i]);
      continue;
    }
    r.token = out_tokens[i];
    if (return_logits) {
      r.logits.assign(out_logits + i * vocab, out_logits + (i + 1) * vocab);
    }
  }
  const float* out_logprobs = out_logits + (return_logits ? ns * vocab : 0);
  UnpackLogprobs(b, h, reinterpret_cast<const char*>(out_logprobs), slot, step.logprobs_top,
                 &result);
  for (int32_t j = 0; j < h.num_kept_seqs(); ++j) {
    const int32_t k2 =
        j < h.num_select ? h.num_decode + h.num_prefill + j : h.paged_select[j - h.num_select];
    SequenceResult& r = result.seqs[h.order[k2]];
    r.kept_per_head.assign(out_kept + j * rows_per_seq, out_kept + (j + 1) * rows_per_seq);
    if (!return_kept_positions) continue;
    const int32_t L = cfg.num_layers, H = cfg.num_kv_heads;
    for (int32_t l = 0; l < L; ++l) {
      const std::vector<int32_t>& index = kept_index_host[static_cast<size_t>(j) * L + l];
      const size_t n = index.size() / H;
      for (int32_t hh = 0; hh < H; ++hh) {
        const int32_t count = r.kept_per_head[l * H + hh];
        r.kept_positions.insert(r.kept_positions.end(), index.begin() + hh * n,
                                index.begin() + hh * n + std::min<size_t>(count, n));
      }
    }
  }
  return result;
}

absl::StatusOr<BatchResult> CudaWorker::Execute(const Batch& batch) {
  if (!state_->launched.empty()) {
    return absl::FailedPreconditionError("Execute with steps launched: Await them first");
  }
  HKV_RETURN_IF_ERROR(state_->LaunchStep(batch));
  return state_->AwaitStep();
}

bool CudaWorker::SupportsAsyncSteps() const { return state_->AsyncCapable(); }

absl::Status CudaWorker::Launch(const Batch& batch) { return state_->LaunchStep(batch); }

absl::StatusOr<BatchResult> CudaWorker::Await() { return state_->AwaitStep(); }

}  // namespace hkv
