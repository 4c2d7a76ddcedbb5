#include "workers/cuda_worker.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "headkv/rank_assignment.h"
#include "kernels/decode_attention.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/init_ops.h"
#include "kernels/kv_append.h"
#include "kernels/kv_select.h"
#include "kernels/layer_ops.h"
#include "kernels/prefill_attention.h"
#include "kernels/sampling.h"
#include "workers/cpu_ops.h"
#include "workers/cuda_buffers.h"
#include "workers/nccl_communicator.h"
#include "workers/sampler.h"
#include "workers/tensor_parallel.h"

namespace hkv {
namespace {

namespace k = ::hkv::kernels;
using cuda_internal::AlignUp;
using cuda_internal::DeviceBuffer;
using cuda_internal::kAlign;
using cuda_internal::PinnedBuffer;
using cuda_internal::SliceBytes;
using cuda_internal::StepInputs;
using cuda_internal::ToBf16;
using cuda_internal::UploadBf16;
constexpr k::DType kDType = k::DType::kBf16;
constexpr int64_t kCublasWorkspaceBytes = 32LL << 20;
// Padded decode batch sizes with a graph (vLLM's choice of steps, up to 256).
constexpr int32_t kGraphBatchSizes[] = {1,  2,  4,  8,   16,  24,  32,  48,
                                        64, 80, 96, 128, 160, 192, 224, 256};

std::vector<float> Concat(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

struct LayerBuffers {
  DeviceBuffer attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;
};

// One step as the host builds it. Sequences are in internal order: decodes, plain prefill
// chunks, compressed prefills; a graph step appends padding decodes.
struct HostStep {
  bool graph = false;
  int32_t num_decode = 0, num_prefill = 0, num_select = 0;  // num_decode includes padding
  int32_t real_decode = 0;
  int32_t total = 0;         // tokens (padding included)
  int32_t plain_tokens = 0;  // tokens of decodes and plain prefills
  int32_t max_prefill = 0, max_select = 0;
  std::vector<int32_t> order;        // internal -> batch index (real sequences only)
  std::vector<int32_t> token_start;  // per internal sequence
  std::vector<int32_t> ids, pos, indptr_a, indices_a, last_a, indptr_b, indices_b, last_b,
      cu_prefill, cu_select, caps;
  std::vector<int64_t> slots;   // [L, total, H]
  bool shared_indices = false;  // indices_a is the batch's kv_indices
  const std::vector<BlockId>* batch_indices = nullptr;
  std::vector<int32_t> sample_seq, sample_token;
  std::vector<k::SamplingRow> sample_rows;
  k::DecodePlanOptions decode_options;
};

// Device addresses of a step's inputs (inside StepInputs).
struct DeviceStep {
  const int32_t *ids = nullptr, *pos = nullptr, *indptr_a = nullptr, *indices_a = nullptr,
                *last_a = nullptr, *indptr_b = nullptr, *indices_b = nullptr, *last_b = nullptr,
                *cu_prefill = nullptr, *cu_select = nullptr, *caps = nullptr,
                *sample_token = nullptr;
  const int64_t* slots = nullptr;
  const k::SamplingRow* sample_rows = nullptr;
  std::vector<k::DecodePlan> plans;  // per layer, when the step decodes
};

// Optional per-step timing (HKV_STEP_PROFILE=1): host time to build and stage a step, GPU time
// from the input copy to the last kernel, per kind of step; printed every 1000 steps and at
// exit. Costs two events and a host timer per step.
struct StepProfile {
  struct Kind {
    int64_t steps = 0;
    double host_us = 0, gpu_us = 0, seqs = 0, tokens = 0;
  };
  bool on = false;
  cudaEvent_t start = nullptr, stop = nullptr;
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
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
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

}  // namespace

struct CudaWorker::State {
  std::shared_ptr<const Model> model;
  ModelConfig cfg;  // This rank's shapes (the model's without tensor parallelism).
  CudaWorkerOptions options;
  // Tensor parallelism: global KV head of each local (layer, head) [L * Hl], and the global
  // block ids [block_first, block_first + num_blocks) of this rank's pool.
  std::vector<int32_t> global_head;
  int64_t block_first = 0;
  int64_t num_blocks = 0;
  int32_t num_sms = 0;
  std::string sizing;
  bool return_logits = false;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  // Weights (bf16).
  DeviceBuffer embedding, final_norm, lm_head, inv_freq;
  std::deque<LayerBuffers> layers;  // deque: buffers are not movable.
  // KV pool.
  DeviceBuffer k_pool, v_pool;
  // Activations and workspaces.
  DeviceBuffer cublas_ws, res, xb, qkv, attn, tmp, gate_up, hidden, sample_x, logits, tokens,
      decode_ws, select_ws, kept, kept_index;
  StepInputs eager_inputs, graph_inputs;
  PinnedBuffer host_out;                  // sampled tokens, kept counts, logits
  std::map<int32_t, DecodeGraph> graphs;  // by padded batch size
  int64_t graph_steps = 0, eager_steps = 0, graphs_captured = 0;
  StepProfile profile;

  ~State() {
    graphs.clear();
    if (profile.on && profile.steps > 0) {
      profile.Print();
      profile.steps = 0;
    }
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

  absl::Status ReserveActivations(int64_t step_tokens, int64_t sample_rows);
  absl::Status RankView(const Batch& global, Batch* local) const;
  absl::Status FillDummyWeights(uint64_t seed);
  absl::Status UploadWeights(const Model& m);
  absl::Status BuildHostStep(const Batch& b, int32_t graph_batch, HostStep* h) const;
  absl::StatusOr<DeviceStep> Stage(const HostStep& h, StepInputs* in) const;
  size_t StageBytes(const HostStep& h) const;
  absl::Status Forward(const Batch& b, const HostStep& h, const DeviceStep& d);
  absl::Status RunGraph(const Batch& b, const HostStep& h, const DeviceStep& d);
};

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

namespace {

int64_t WeightBytes(const ModelConfig& c) {
  const int64_t dim = c.dim, qkv_w = c.q_size() + 2 * c.kv_size(), hidden = c.hidden_dim;
  int64_t elems = static_cast<int64_t>(c.vocab_size) * dim * (c.tie_embeddings ? 1 : 2) + dim;
  elems += static_cast<int64_t>(c.num_layers) *
           (2 * dim + qkv_w * dim + dim * c.q_size() + 3 * hidden * dim);
  return 2 * elems;
}

// Activation bytes per token of a step (bf16 unless noted).
int64_t ActivationBytesPerToken(const ModelConfig& c) {
  const int64_t qkv_w = c.q_size() + 2 * c.kv_size();
  return 2 * (3 * static_cast<int64_t>(c.dim) + qkv_w + c.q_size() + 3 * c.hidden_dim);
}

int32_t GraphBatchFor(int32_t n, int32_t max_batch) {
  for (int32_t s : kGraphBatchSizes) {
    if (s >= n) return s <= max_batch ? s : 0;
  }
  return 0;
}

}  // namespace

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
  HKV_RETURN_IF_ERROR(sample_x.Reserve(rows * c.dim * 2));
  HKV_RETURN_IF_ERROR(logits.Reserve(rows * c.vocab_size * 4));
  HKV_RETURN_IF_ERROR(tokens.Reserve(rows * 4));
  return absl::OkStatus();
}

absl::Status CudaWorker::State::FillDummyWeights(uint64_t seed) {
  // Values depend only on (seed, tensor, element of the full matrix), so a tensor-parallel rank
  // writes exactly its shard of the unsharded model's weights.
  const ModelConfig& g = model->config;  // global shapes
  const int64_t dim = g.dim, hd = g.head_dim, grp = g.group_size();
  const int64_t q = g.q_size(), kv = g.kv_size(), ffn = g.hidden_dim;
  const int64_t hl = cfg.num_kv_heads, ql = cfg.q_size(), kvl = cfg.kv_size(), fl = cfg.hidden_dim;
  const int64_t f0 = static_cast<int64_t>(options.tp.rank) * fl;
  auto seed_of = [&](int64_t tensor) {
    return seed * 0x100000001B3ULL + static_cast<uint64_t>(tensor);
  };
  auto scale = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  // out[r, c] = element (row0 + r, col0 + c) of logical tensor `tensor` of width cols_total.
  auto fill = [&](uint16_t* out, int64_t ld, int64_t rows, int64_t cols, int64_t row0, int64_t col0,
                  int64_t cols_total, int64_t tensor, float sc, float value) {
    return k::FillUniformMatrix(kDType, out, ld, rows, cols, row0, col0, cols_total,
                                seed_of(tensor), sc, value, stream);
  };
  HKV_RETURN_IF_ERROR(embedding.Reserve(static_cast<size_t>(g.vocab_size) * dim * 2));
  HKV_CUDA_RETURN_IF_ERROR(
      fill(embedding.get<uint16_t>(), dim, g.vocab_size, dim, 0, 0, dim, 1, 1.0f, 0.0f));
  HKV_RETURN_IF_ERROR(final_norm.Reserve(dim * 2));
  HKV_CUDA_RETURN_IF_ERROR(fill(final_norm.get<uint16_t>(), dim, 1, dim, 0, 0, dim, 2, 0, 1));
  if (!g.tie_embeddings) {
    HKV_RETURN_IF_ERROR(lm_head.Reserve(static_cast<size_t>(g.vocab_size) * dim * 2));
    HKV_CUDA_RETURN_IF_ERROR(
        fill(lm_head.get<uint16_t>(), dim, g.vocab_size, dim, 0, 0, dim, 3, scale(dim), 0.0f));
  }
  layers.resize(g.num_layers);
  for (int32_t l = 0; l < g.num_layers; ++l) {
    LayerBuffers& b = layers[l];
    const int64_t t = 16 + 16 * static_cast<int64_t>(l);  // this layer's tensor ids
    HKV_RETURN_IF_ERROR(b.attn_norm.Reserve(dim * 2));
    HKV_RETURN_IF_ERROR(b.ffn_norm.Reserve(dim * 2));
    HKV_RETURN_IF_ERROR(b.wqkv.Reserve((ql + 2 * kvl) * dim * 2));
    HKV_RETURN_IF_ERROR(b.wo.Reserve(dim * ql * 2));
    HKV_RETURN_IF_ERROR(b.w_gate_up.Reserve(2 * fl * dim * 2));
    HKV_RETURN_IF_ERROR(b.w_down.Reserve(dim * fl * 2));
    auto* qkv_base = b.wqkv.get<uint16_t>();
    auto* gu_base = b.w_gate_up.get<uint16_t>();
    HKV_CUDA_RETURN_IF_ERROR(fill(b.attn_norm.get<uint16_t>(), dim, 1, dim, 0, 0, dim, t, 0, 1));
    HKV_CUDA_RETURN_IF_ERROR(fill(b.ffn_norm.get<uint16_t>(), dim, 1, dim, 0, 0, dim, t + 1, 0, 1));
    for (int64_t j = 0; j < hl; ++j) {  // this rank's KV heads, in slot order
      const int64_t head = global_head[l * hl + j];
      // q/k/v rows (column-parallel) and o columns (row-parallel) of that head.
      HKV_CUDA_RETURN_IF_ERROR(fill(qkv_base + j * grp * hd * dim, dim, grp * hd, dim,
                                    head * grp * hd, 0, dim, t + 2, scale(dim), 0.0f));
      HKV_CUDA_RETURN_IF_ERROR(fill(qkv_base + (ql + j * hd) * dim, dim, hd, dim, head * hd, 0, dim,
                                    t + 3, scale(dim), 0.0f));
      HKV_CUDA_RETURN_IF_ERROR(fill(qkv_base + (ql + kvl + j * hd) * dim, dim, hd, dim, head * hd,
                                    0, dim, t + 4, scale(dim), 0.0f));
      HKV_CUDA_RETURN_IF_ERROR(fill(b.wo.get<uint16_t>() + j * grp * hd, ql, dim, grp * hd, 0,
                                    head * grp * hd, q, t + 5, scale(q), 0.0f));
    }
    (void)kv;
    HKV_CUDA_RETURN_IF_ERROR(fill(gu_base, dim, fl, dim, f0, 0, dim, t + 6, scale(dim), 0.0f));
    HKV_CUDA_RETURN_IF_ERROR(
        fill(gu_base + fl * dim, dim, fl, dim, f0, 0, dim, t + 7, scale(dim), 0.0f));
    HKV_CUDA_RETURN_IF_ERROR(
        fill(b.w_down.get<uint16_t>(), fl, dim, fl, 0, f0, ffn, t + 8, scale(ffn), 0.0f));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

absl::Status CudaWorker::State::UploadWeights(const Model& m) {
  const ModelWeights& w = m.weights;
  const ModelConfig& c = m.config;
  if (static_cast<int32_t>(w.layers.size()) != c.num_layers || w.embedding.empty()) {
    return absl::InvalidArgumentError("the model's weights are missing");
  }
  HKV_RETURN_IF_ERROR(UploadBf16(w.embedding, &embedding));
  HKV_RETURN_IF_ERROR(UploadBf16(w.final_norm, &final_norm));
  if (!w.lm_head.empty()) HKV_RETURN_IF_ERROR(UploadBf16(w.lm_head, &lm_head));
  layers.resize(c.num_layers);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerBuffers& b = layers[l];
    HKV_RETURN_IF_ERROR(UploadBf16(lw.attn_norm, &b.attn_norm));
    HKV_RETURN_IF_ERROR(UploadBf16(Concat({&lw.wq, &lw.wk, &lw.wv}), &b.wqkv));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.wo, &b.wo));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.ffn_norm, &b.ffn_norm));
    HKV_RETURN_IF_ERROR(UploadBf16(Concat({&lw.w_gate, &lw.w_up}), &b.w_gate_up));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.w_down, &b.w_down));
  }
  return absl::OkStatus();
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

absl::StatusOr<std::unique_ptr<CudaWorker>> CudaWorker::Create(std::shared_ptr<const Model> model,
                                                               const CudaWorkerOptions& options) {
  const ModelConfig& global = model->config;
  if (!CudaDeviceAvailable()) return absl::UnavailableError("no CUDA device is available");
  HKV_RETURN_IF_ERROR(Supports(global));
  const CudaTensorParallel& tp = options.tp;
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size || (tp.size > 1 && tp.comm == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor-parallel rank ", tp.rank, " of ", tp.size, " needs a communicator"));
  }
  const int64_t all_slots = static_cast<int64_t>(global.num_layers) * global.num_kv_heads;
  if (!tp.head_of_slot.empty() && static_cast<int64_t>(tp.head_of_slot.size()) != all_slots) {
    return absl::InvalidArgumentError("the head placement needs one entry per (layer, KV head)");
  }
  if ((options.block_size & (options.block_size - 1)) != 0) {
    return absl::InvalidArgumentError("block_size must be a power of two on CUDA");
  }
  if (options.max_step_tokens < 1 || options.max_seqs < 1 || options.cuda_graph_max_batch < 0) {
    return absl::InvalidArgumentError("max_step_tokens and max_seqs must be positive");
  }
  auto s = std::make_unique<State>();
  s->model = model;
  s->options = options;
  if (tp.size > 1) {
    HKV_ASSIGN_OR_RETURN(s->cfg, ShardConfig(global, tp.size));
  } else {
    s->cfg = global;
  }
  const ModelConfig& c = s->cfg;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    for (int32_t j = 0; j < c.num_kv_heads; ++j) {
      const int32_t slot = tp.rank * c.num_kv_heads + j;
      s->global_head.push_back(
          tp.head_of_slot.empty() ? slot : tp.head_of_slot[l * global.num_kv_heads + slot]);
    }
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  HKV_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&s->num_sms, cudaDevAttrMultiProcessorCount, options.device));
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasCreate(&s->cublas));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasSetStream(s->cublas, s->stream));
  // A fixed cuBLAS workspace: graph capture must not allocate.
  HKV_RETURN_IF_ERROR(s->cublas_ws.Reserve(kCublasWorkspaceBytes));
  HKV_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(s->cublas, s->cublas_ws.get(), s->cublas_ws.bytes()));

  size_t free_before = 0, total = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_before, &total));
  const int64_t weight_bytes = WeightBytes(c);
  const int64_t act_bytes =
      ActivationBytesPerToken(c) * options.max_step_tokens +
      static_cast<int64_t>(options.max_seqs) * (c.vocab_size * 4 + c.dim * 2 + 4);
  if (weight_bytes + act_bytes + options.activation_reserve_bytes >
      static_cast<int64_t>(free_before)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the model needs %.2f GiB of weights + %.2f GiB of activations (%d tokens a step) + "
        "%.2f GiB headroom but the GPU has %.2f GiB free: %.2f GiB short",
        weight_bytes / 1073741824.0, act_bytes / 1073741824.0, options.max_step_tokens,
        options.activation_reserve_bytes / 1073741824.0, free_before / 1073741824.0,
        (weight_bytes + act_bytes + options.activation_reserve_bytes -
         static_cast<int64_t>(free_before)) /
            1073741824.0));
  }
  if (model->device_dummy_seed.has_value()) {
    HKV_RETURN_IF_ERROR(s->FillDummyWeights(*model->device_dummy_seed));
  } else {
    if (tp.size > 1) {
      HeadRankAssignment placement;
      if (tp.head_of_slot.empty()) {
        HKV_ASSIGN_OR_RETURN(placement,
                             ContiguousAssignment(global.num_layers, global.num_kv_heads, tp.size));
      } else {
        placement = {global.num_layers, global.num_kv_heads, tp.size, tp.head_of_slot};
      }
      HKV_ASSIGN_OR_RETURN(Model shard, ShardModel(*model, placement, tp.rank));
      HKV_RETURN_IF_ERROR(s->UploadWeights(shard));
    } else {
      HKV_RETURN_IF_ERROR(s->UploadWeights(*model));
    }
  }
  std::vector<float> inv_freq = RopeInvFreq(c);
  HKV_RETURN_IF_ERROR(s->inv_freq.Reserve(inv_freq.size() * 4));
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s->inv_freq.get(), inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));
  // Step buffers for the largest planned step, before the pool takes the rest.
  HKV_RETURN_IF_ERROR(s->ReserveActivations(options.max_step_tokens, options.max_seqs));
  k::DecodePlanOptions dopt;
  dopt.max_rows = std::max(options.max_seqs, options.cuda_graph_max_batch) * c.num_kv_heads;
  dopt.max_work_items = dopt.max_rows + 1024;
  dopt.group_size = c.group_size();
  dopt.head_dim = c.head_dim;
  HKV_RETURN_IF_ERROR(s->decode_ws.Reserve(k::DecodeWorkspaceBytes(dopt)));
  HKV_RETURN_IF_ERROR(s->select_ws.Reserve(
      k::KvSelectWorkspaceBytes(options.max_step_tokens, 64, c.num_heads, c.num_kv_heads) + 256));

  size_t free_after = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_after, &total));
  const int64_t bytes_per_block = 2LL * options.block_size * c.head_dim * 2;
  const int64_t in_use = static_cast<int64_t>(total - free_after);
  const int64_t budget = static_cast<int64_t>(options.gpu_memory_utilization * total) - in_use -
                         options.activation_reserve_bytes;
  s->num_blocks = options.num_blocks > 0 ? options.num_blocks : budget / bytes_per_block;
  if (s->num_blocks < 1 || s->num_blocks > INT32_MAX) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no room for a KV pool: %.2f GiB total x %.2f utilization - %.2f GiB in use (weights "
        "and step buffers) - %.2f GiB headroom leaves %.2f GiB; raise "
        "--gpu-memory-utilization, lower --max-batch-tokens or use a smaller model",
        total / 1073741824.0, options.gpu_memory_utilization, in_use / 1073741824.0,
        options.activation_reserve_bytes / 1073741824.0, budget / 1073741824.0));
  }
  const size_t pool_bytes = static_cast<size_t>(s->num_blocks) * bytes_per_block / 2;
  HKV_RETURN_IF_ERROR(s->k_pool.Reserve(pool_bytes));
  HKV_RETURN_IF_ERROR(s->v_pool.Reserve(pool_bytes));
  if (options.cuda_graph_max_batch > 0) {
    // Graph inputs at their largest: fixed slices for the biggest graph, then page indices
    // for every block of the pool (a step that lists more falls back to eager).
    HostStep h;
    h.graph = true;
    h.num_decode = GraphBatchFor(options.cuda_graph_max_batch, options.cuda_graph_max_batch);
    if (h.num_decode == 0) h.num_decode = kGraphBatchSizes[std::size(kGraphBatchSizes) - 1];
    h.total = h.num_decode;
    h.decode_options = dopt;
    h.decode_options.max_rows = h.num_decode * c.num_kv_heads;
    h.decode_options.max_work_items = h.decode_options.max_rows + 1024;
    h.indices_a.resize(s->num_blocks + 1);
    HKV_RETURN_IF_ERROR(s->graph_inputs.Begin(s->StageBytes(h)));
  }
  if (const char* p = std::getenv("HKV_STEP_PROFILE"); p != nullptr && p[0] == '1') {
    s->profile.on = true;
    HKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(&s->profile.start));
    HKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(&s->profile.stop));
  }
  s->sizing = absl::StrFormat(
      "GPU %d: %.2f GiB total, weights %.2f GiB (bf16%s), step buffers %.2f GiB (%d tokens, "
      "%d seqs), headroom %.2f GiB, utilization %.2f -> KV pool %d blocks x %d B = %.2f GiB; "
      "CUDA graphs for decode batches up to %d",
      options.device, total / 1073741824.0, weight_bytes / 1073741824.0,
      model->device_dummy_seed.has_value() ? ", random on the GPU" : "",
      (in_use - weight_bytes) / 1073741824.0, options.max_step_tokens, options.max_seqs,
      options.activation_reserve_bytes / 1073741824.0, options.gpu_memory_utilization,
      s->num_blocks, bytes_per_block, s->num_blocks * bytes_per_block / 1073741824.0,
      options.cuda_graph_max_batch);
  return std::unique_ptr<CudaWorker>(new CudaWorker(std::move(s)));
}

absl::Status CudaWorker::State::BuildHostStep(const Batch& b, int32_t graph_batch,
                                              HostStep* hp) const {
  HostStep& h = *hp;
  const ModelConfig& c = cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads, bs = options.block_size;
  const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
  for (int pass = 0; pass < 3; ++pass) {
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& st = b.seqs[i];
      const int kind = st.select ? 2 : (st.tokens.size() == 1 ? 0 : 1);
      if (kind != pass) continue;
      if (st.select && st.selection.capacity.empty()) {
        return absl::UnimplementedError(
            "adaptive (adakv) selection is not supported on the CUDA worker yet: use another "
            "policy or --device cpu");
      }
      h.order.push_back(static_cast<int32_t>(i));
      (kind == 0 ? h.num_decode : kind == 1 ? h.num_prefill : h.num_select)++;
    }
  }
  h.real_decode = h.num_decode;
  h.batch_indices = &b.kv_indices;
  h.graph = graph_batch > 0;
  const int32_t real_seqs = static_cast<int32_t>(h.order.size());
  const int32_t pad = h.graph ? graph_batch - h.num_decode : 0;
  // When the batch lists its sequences in internal order and every row holds exactly the
  // blocks of its tokens (the usual case), the batch's index list is the step's as it is:
  // staged straight from the batch instead of copied row by row (millions of entries at
  // batch 256).
  h.shared_indices = b.kv_indptr.empty() || b.kv_indptr[0] == 0;
  for (int32_t k2 = 0; k2 < real_seqs && h.shared_indices; ++k2) {
    h.shared_indices = h.order[k2] == k2;
  }
  for (int64_t r = 0; r < b.num_rows() && h.shared_indices; ++r) {
    h.shared_indices = b.kv_indptr[r + 1] - b.kv_indptr[r] == (b.kv_len_after[r] + bs - 1) / bs;
  }
  h.indptr_a.push_back(0);
  h.indptr_b.push_back(0);
  h.cu_prefill.push_back(0);
  h.cu_select.push_back(0);
  for (int32_t k2 = 0; k2 < real_seqs; ++k2) {
    const SequenceStep& st = b.seqs[h.order[k2]];
    h.token_start.push_back(static_cast<int32_t>(h.ids.size()));
    for (size_t t = 0; t < st.tokens.size(); ++t) {
      if (st.tokens[t] < 0 || st.tokens[t] >= c.vocab_size) {
        return absl::InvalidArgumentError("token outside the vocabulary");
      }
      h.ids.push_back(st.tokens[t]);
      h.pos.push_back(st.start_pos + static_cast<int32_t>(t));
    }
    const int32_t T = static_cast<int32_t>(st.tokens.size());
    if (k2 >= h.num_decode && k2 < h.num_decode + h.num_prefill) {
      h.cu_prefill.push_back(h.cu_prefill.back() + T);
      h.max_prefill = std::max(h.max_prefill, T);
    } else if (k2 >= h.num_decode + h.num_prefill) {
      h.cu_select.push_back(h.cu_select.back() + T);
      h.max_select = std::max(h.max_select, T);
      if (static_cast<int64_t>(st.selection.capacity.size()) != rows_per_seq) {
        return absl::InvalidArgumentError("selection capacity has the wrong size");
      }
      if (st.selection.window < 1 || st.selection.window > T) {
        return absl::InvalidArgumentError("selection window outside 1..prompt length");
      }
      h.caps.insert(h.caps.end(), st.selection.capacity.begin(), st.selection.capacity.end());
    }
    const bool is_prefill = k2 >= h.num_decode && k2 < h.num_decode + h.num_prefill;
    for (int64_t r = b.row(h.order[k2], 0, 0); r < b.row(h.order[k2] + 1, 0, 0); ++r) {
      const int32_t first = b.kv_indptr[r], nblocks = b.kv_indptr[r + 1] - first;
      const int32_t after = b.kv_len_after[r], before = b.kv_len_before[r];
      if (nblocks < 0 || after > nblocks * bs || before > after || before < 0) {
        return absl::InvalidArgumentError("a row holds too few blocks for its tokens");
      }
      const int32_t used_a = (after + bs - 1) / bs, used_b = (before + bs - 1) / bs;
      if (h.shared_indices) {
        h.indptr_a.push_back(b.kv_indptr[r + 1]);
      } else {
        h.indices_a.insert(h.indices_a.end(), b.kv_indices.begin() + first,
                           b.kv_indices.begin() + first + used_a);
        h.indptr_a.push_back(static_cast<int32_t>(h.indices_a.size()));
      }
      h.last_a.push_back(after == 0 ? 0 : after - (used_a - 1) * bs);
      if (is_prefill) {  // The paged prefix of plain prefill chunks (their rows only).
        h.indices_b.insert(h.indices_b.end(), b.kv_indices.begin() + first,
                           b.kv_indices.begin() + first + used_b);
        h.indptr_b.push_back(static_cast<int32_t>(h.indices_b.size()));
        h.last_b.push_back(before == 0 ? 0 : before - (used_b - 1) * bs);
      }
      if (!st.select && after - before != T) {
        return absl::InvalidArgumentError("a plain row must grow by the step's tokens");
      }
    }
    if (k2 + 1 == h.num_decode && pad > 0) {
      // Padding decodes (graph steps): token 0 at position 0, empty rows, no KV writes.
      for (int32_t p = 0; p < pad; ++p) {
        h.ids.push_back(0);
        h.pos.push_back(0);
        for (int64_t r = 0; r < rows_per_seq; ++r) {
          h.indptr_a.push_back(h.indptr_a.back());
          h.last_a.push_back(0);
        }
      }
    }
  }
  if (h.graph) {
    for (int32_t p = 0; p < pad; ++p) h.token_start.push_back(h.real_decode + p);
    // token_start of real sequences after the decodes shifts by the padding (none in graph
    // steps, which are decode-only).
    h.num_decode += pad;
  }
  h.total = static_cast<int32_t>(h.ids.size());
  h.plain_tokens = h.total - (h.cu_select.back());
  // Slot of each plain token in each (layer, head): [L, total, H]; -1 for compressed prefills
  // and padding.
  h.slots.assign(static_cast<size_t>(L) * h.total * H, -1);
  for (int32_t k2 = 0; k2 < h.real_decode + h.num_prefill; ++k2) {
    const int32_t bi = h.order[k2];
    const SequenceStep& st = b.seqs[bi];
    const int32_t ts = h.token_start[k2];
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t hh = 0; hh < H; ++hh) {
        const int64_t r = b.row(bi, l, hh);
        const BlockId* blocks = &b.kv_indices[b.kv_indptr[r]];
        for (size_t t = 0; t < st.tokens.size(); ++t) {
          const int32_t slot = b.kv_len_before[r] + static_cast<int32_t>(t);
          h.slots[(static_cast<size_t>(l) * h.total + ts + t) * H + hh] =
              static_cast<int64_t>(blocks[slot / bs]) * bs + slot % bs;
        }
      }
    }
  }
  // Sampled rows: the last token of each sequence that asks for one (every padding row too).
  // Tensor-parallel ranks other than 0 hold the same hidden state and sample nothing: only
  // rank 0's tokens are used, so they skip the LM head (a 1 GB read per step on Llama-3-8B).
  const int32_t sampling_seqs =
      options.tp.rank > 0 ? 0 : h.num_decode + h.num_prefill + h.num_select;
  for (int32_t k2 = 0; k2 < sampling_seqs; ++k2) {
    const bool padding = h.graph && k2 >= h.real_decode;
    if (!padding) {
      const int32_t internal_real = k2;  // padding exists only in decode-only graph steps
      const SequenceStep& st = b.seqs[h.order[internal_real]];
      if (!st.sample && !h.graph) continue;
      k::SamplingRow row;
      row.temperature = st.sampling.temperature;
      row.top_k = st.sampling.top_k;
      row.top_p = st.sampling.top_p;
      row.uniform = static_cast<float>(SampleUniform(st.sampling.seed, st.sample_step));
      h.sample_rows.push_back(row);
      h.sample_seq.push_back(st.sample ? internal_real : -1);
      h.sample_token.push_back(h.token_start[internal_real] +
                               static_cast<int32_t>(st.tokens.size()) - 1);
    } else {
      h.sample_rows.push_back(k::SamplingRow{});
      h.sample_seq.push_back(-1);
      h.sample_token.push_back(k2);
    }
  }
  h.decode_options.max_rows = std::max(1, h.num_decode * H);
  // Graph steps launch every possible work item (most exit at once): keep that bound close to
  // what the planner uses at small batches (a few items per SM).
  h.decode_options.max_work_items =
      h.decode_options.max_rows + (h.graph ? std::min(1024, 4 * num_sms) : 1024);
  h.decode_options.group_size = c.group_size();
  h.decode_options.head_dim = c.head_dim;
  h.decode_options.num_sms = num_sms;
  h.decode_options.fixed_grid = h.graph;
  return absl::OkStatus();
}

size_t CudaWorker::State::StageBytes(const HostStep& h) const {
  const int32_t L = cfg.num_layers;
  size_t bytes =
      SliceBytes<int32_t>(h.ids.size()) + SliceBytes<int32_t>(h.pos.size()) +
      SliceBytes<k::SamplingRow>(h.sample_rows.size()) +
      SliceBytes<int32_t>(h.sample_token.size()) + SliceBytes<int64_t>(h.slots.size()) +
      SliceBytes<int32_t>(h.last_a.size()) + SliceBytes<int32_t>(h.indptr_a.size()) +
      SliceBytes<int32_t>(h.last_b.size()) + SliceBytes<int32_t>(h.indptr_b.size()) +
      SliceBytes<int32_t>(h.cu_prefill.size()) + SliceBytes<int32_t>(h.cu_select.size()) +
      SliceBytes<int32_t>(h.caps.size()) + SliceBytes<int32_t>(h.indices_b.size()) +
      SliceBytes<int32_t>(h.shared_indices ? h.batch_indices->size() : h.indices_a.size());
  if (h.num_decode > 0) bytes += L * SliceBytes<int32_t>(k::DecodeMetaInts(h.decode_options));
  return bytes;
}

// The order of the slices is fixed, and variable-length ones come last, so a graph step of a
// given batch size always finds its inputs at the same addresses.
absl::StatusOr<DeviceStep> CudaWorker::State::Stage(const HostStep& h, StepInputs* in) const {
  const ModelConfig& c = cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads;
  DeviceStep d;
  d.ids = in->Put(h.ids);
  d.pos = in->Put(h.pos);
  d.sample_rows = in->Put(h.sample_rows);
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
    const size_t meta_ints = k::DecodeMetaInts(h.decode_options);
    const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
    std::vector<int32_t> row_ids(static_cast<size_t>(h.real_decode) * H);
    d.plans.resize(L);
    int32_t base = -1;
    const int32_t* base_meta = nullptr;
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t s = 0; s < h.real_decode; ++s) {
        for (int32_t hh = 0; hh < H; ++hh) {
          row_ids[s * H + hh] = static_cast<int32_t>(s * rows_per_seq + l * H + hh);
        }
      }
      int32_t* host_meta = nullptr;
      d.plans[l].device_meta = in->Take<int32_t>(meta_ints, &host_meta);
      // Layers whose heads hold the same lengths as the last planned layer (every layer under
      // full KV) reuse its work list with their own blocks.
      if (base >= 0 &&
          k::RebaseDecodePlan(d.plans[base], base_meta, h.indptr_a.data(), h.last_a.data(),
                              options.block_size, row_ids.data(), host_meta)) {
        const int32_t* device_meta = d.plans[l].device_meta;
        d.plans[l] = d.plans[base];
        d.plans[l].row_lengths.clear();
        d.plans[l].device_meta = device_meta;
      } else {
        const cudaError_t e = k::BuildDecodePlan(
            h.decode_options, h.indptr_a.data(), h.last_a.data(), h.real_decode * H,
            options.block_size, row_ids.data(), host_meta, &d.plans[l]);
        if (e != cudaSuccess) return absl::InvalidArgumentError("malformed decode page table");
        base = l;
        base_meta = host_meta;
      }
      d.plans[l].workspace = decode_ws.get();
    }
  }
  d.indices_b = in->Put(h.indices_b);
  d.indices_a = in->Put(h.shared_indices ? *h.batch_indices : h.indices_a);
  return d;
}

// Launches the whole step on the stream: no host sync, no allocation (so it can be captured).
absl::Status CudaWorker::State::Forward(const Batch& b, const HostStep& h, const DeviceStep& d) {
  const ModelConfig& c = cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads, Hq = c.num_heads, hd = c.head_dim;
  const int32_t bs = options.block_size, dim = c.dim, hid = c.hidden_dim;
  const int32_t qkv_w = c.q_size() + 2 * c.kv_size();
  const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
  const int32_t total = h.total;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const k::RopeStyle rope =
      c.rope_style == RopeStyle::kHalf ? k::RopeStyle::kRotateHalf : k::RopeStyle::kInterleaved;
  k::PagedKvView after;
  after.indptr = d.indptr_a;
  after.indices = d.indices_a;
  after.last_len = d.last_a;
  after.k_pool = k_pool.get();
  after.v_pool = v_pool.get();
  after.block_stride = static_cast<int64_t>(bs) * hd;
  after.block_size = bs;
  after.num_kv_heads = H;
  after.head_dim = hd;
  after.row_seq_stride = static_cast<int32_t>(rows_per_seq);
  k::PagedKvView before = after;
  before.indptr = d.indptr_b;
  before.indices = d.indices_b;
  before.last_len = d.last_b;
  auto* q = qkv.get<uint16_t>();
  auto* at = attn.get<uint16_t>();

  HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, embedding.get(), c.vocab_size, dim, d.ids,
                                              total, res.get(), stream));
  for (int32_t l = 0; l < L; ++l) {
    const LayerBuffers& w = layers[l];
    HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, l == 0 ? res.get() : tmp.get(),
                                        l == 0 ? nullptr : res.get(), w.attn_norm.get(), xb.get(),
                                        total, dim, c.norm_eps, stream));
    HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, xb.get(), dim,
                                                 w.wqkv.get(), dim, q, qkv_w, false, total, qkv_w,
                                                 dim));
    HKV_CUDA_RETURN_IF_ERROR(k::Rope(kDType, q, qkv_w, Hq, q + c.q_size(), qkv_w, H, d.pos, total,
                                     hd, c.rope_theta, inv_freq.get<float>(), rope, stream));
    if (h.plain_tokens > 0) {
      HKV_CUDA_RETURN_IF_ERROR(
          k::AppendKvSlots(kDType, after, q + c.q_size(), q + c.q_size() + c.kv_size(), qkv_w,
                           d.slots + static_cast<size_t>(l) * total * H, h.plain_tokens, stream));
    }
    if (h.num_decode > 0) {
      HKV_CUDA_RETURN_IF_ERROR(k::RunDecodeAttention(d.plans[l], after, kDType, q, qkv_w, at,
                                                     c.q_size(), scale, stream));
    }
    // Causal attention of a group of sequences' chunks, starting at internal sequence k0.
    auto run_prefill = [&](int32_t k0, int32_t count, const int32_t* cu, int32_t max_len,
                           const k::PagedKvView* prefix) {
      const size_t first = h.token_start[k0];
      k::PrefillAttentionArgs a;
      a.dtype = kDType;
      a.q = q + first * qkv_w;
      a.k = q + first * qkv_w + c.q_size();
      a.v = q + first * qkv_w + c.q_size() + c.kv_size();
      a.out = at + first * c.q_size();
      a.q_stride = a.kv_stride = qkv_w;
      a.out_stride = c.q_size();
      a.cu_seqlens = cu;
      a.num_seqs = count;
      a.max_q_len = max_len;
      a.num_q_heads = Hq;
      a.num_kv_heads = H;
      a.head_dim = hd;
      a.scale = scale;
      a.prefix = prefix;
      return k::RunPrefillAttention(a, stream);
    };
    if (h.num_prefill > 0) {
      k::PagedKvView prefix = before;
      prefix.row_offset = static_cast<int32_t>(l * H);  // indptr_b lists prefill rows only
      HKV_CUDA_RETURN_IF_ERROR(
          run_prefill(h.num_decode, h.num_prefill, d.cu_prefill, h.max_prefill, &prefix));
    }
    if (h.num_select > 0) {
      const int32_t k0 = h.num_decode + h.num_prefill;
      HKV_CUDA_RETURN_IF_ERROR(run_prefill(k0, h.num_select, d.cu_select, h.max_select, nullptr));
      for (int32_t j = 0; j < h.num_select; ++j) {
        const SequenceStep& st = b.seqs[h.order[k0 + j]];
        const int32_t n = static_cast<int32_t>(st.tokens.size()), win = st.selection.window;
        const size_t start = h.token_start[k0 + j];
        k::KvSelectArgs ks;
        ks.dtype = kDType;
        ks.q_window = q + (start + n - win) * qkv_w;
        ks.keys = q + start * qkv_w + c.q_size();
        ks.values = q + start * qkv_w + c.q_size() + c.kv_size();
        ks.q_stride = ks.kv_stride = qkv_w;
        ks.n = n;
        ks.window = win;
        ks.pool_kernel = st.selection.pool_kernel;
        ks.num_q_heads = Hq;
        ks.num_kv_heads = H;
        ks.head_dim = hd;
        ks.scale = scale;
        ks.caps = d.caps + (static_cast<size_t>(j) * L + l) * H;
        ks.dest_indptr = d.indptr_a;
        ks.dest_indices = d.indices_a;
        ks.dest_first_row = static_cast<int32_t>((k0 + j) * rows_per_seq + l * H);
        ks.k_pool = k_pool.get();
        ks.v_pool = v_pool.get();
        ks.block_stride = static_cast<int64_t>(bs) * hd;
        ks.block_size = bs;
        ks.workspace = select_ws.get();
        ks.kept_count = kept.get<int32_t>() + (static_cast<size_t>(j) * L + l) * H;
        ks.kept_index = kept_index.get<int32_t>();
        HKV_CUDA_RETURN_IF_ERROR(k::RunKvSelect(ks, stream));
      }
    }
    HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, at, c.q_size(), w.wo.get(),
                                                 c.q_size(), tmp.get(), dim, false, total, dim,
                                                 c.q_size()));
    if (options.tp.size > 1) {  // row-parallel o_proj: sum the ranks' partial outputs
      HKV_RETURN_IF_ERROR(
          options.tp.comm->AllReduceSum(tmp.get(), int64_t{total} * dim, kDType, stream));
    }
    HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, tmp.get(), res.get(), w.ffn_norm.get(), xb.get(),
                                        total, dim, c.norm_eps, stream));
    if (total <= k::kGemvPreferredRows) {
      // Decode: gate_up and SwiGLU in one pass over the weights.
      HKV_CUDA_RETURN_IF_ERROR(k::GemvSwiGlu(kDType, xb.get(), dim, w.w_gate_up.get(), dim,
                                             hidden.get(), hid, total, hid, dim, stream));
    } else {
      HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, xb.get(), dim,
                                                   w.w_gate_up.get(), dim, gate_up.get(), 2 * hid,
                                                   false, total, 2 * hid, dim));
      HKV_CUDA_RETURN_IF_ERROR(k::SwiGlu(kDType, gate_up.get(), gate_up.get<uint16_t>() + hid,
                                         2 * hid, hidden.get(), total, hid, stream));
    }
    HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, hidden.get(), hid,
                                                 w.w_down.get(), hid, tmp.get(), dim, false, total,
                                                 dim, hid));
    if (options.tp.size > 1) {  // row-parallel down_proj
      HKV_RETURN_IF_ERROR(
          options.tp.comm->AllReduceSum(tmp.get(), int64_t{total} * dim, kDType, stream));
    }
  }
  HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, tmp.get(), res.get(), final_norm.get(), xb.get(),
                                      total, dim, c.norm_eps, stream));
  const int32_t ns = static_cast<int32_t>(h.sample_rows.size());
  if (ns == 0) return absl::OkStatus();
  // Gather the sampled rows (graph steps sample every row, in place).
  const void* x = xb.get();
  if (!h.graph) {
    HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, xb.get(), total, dim, d.sample_token, ns,
                                                sample_x.get(), stream));
    x = sample_x.get();
  }
  const DeviceBuffer& head = lm_head.bytes() > 0 ? lm_head : embedding;
  HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, x, dim, head.get(), dim,
                                               logits.get(), c.vocab_size, true, ns, c.vocab_size,
                                               dim));
  HKV_CUDA_RETURN_IF_ERROR(k::SampleTokens(logits.get<float>(), c.vocab_size, ns, c.vocab_size,
                                           d.sample_rows, tokens.get<int32_t>(), stream));
  return absl::OkStatus();
}

absl::Status CudaWorker::State::RunGraph(const Batch& b, const HostStep& h, const DeviceStep& d) {
  DecodeGraph& g = graphs[h.num_decode];
  const uint64_t epoch = Epoch();
  if (g.exec == nullptr || g.epoch != epoch) {
    if (g.exec != nullptr) {
      cudaGraphExecDestroy(g.exec);
      g.exec = nullptr;
    }
    HKV_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const absl::Status forward = Forward(b, h, d);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    if (!forward.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return forward;
    }
    HKV_CUDA_RETURN_IF_ERROR(end);
    const cudaError_t inst = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    HKV_CUDA_RETURN_IF_ERROR(inst);
    g.epoch = epoch;
    ++graphs_captured;
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g.exec, stream));
  return absl::OkStatus();
}

// This rank's part of a batch: the rows of its KV heads, with block ids of its pool, and
// selection caps of its heads.
absl::Status CudaWorker::State::RankView(const Batch& g, Batch* out) const {
  const int32_t L = cfg.num_layers, hl = cfg.num_kv_heads, hg = model->config.num_kv_heads;
  if (g.num_layers != L || g.num_kv_heads != hg ||
      static_cast<int64_t>(g.kv_indptr.size()) != g.num_rows() + 1 ||
      static_cast<int64_t>(g.kv_len_before.size()) != g.num_rows() ||
      static_cast<int64_t>(g.kv_len_after.size()) != g.num_rows()) {
    return absl::InvalidArgumentError("malformed batch for a tensor-parallel rank");
  }
  out->num_layers = L;
  out->num_kv_heads = hl;
  out->block_size = g.block_size;
  out->seqs = g.seqs;
  for (SequenceStep& st : out->seqs) {
    if (st.selection.capacity.empty()) continue;
    if (static_cast<int64_t>(st.selection.capacity.size()) != int64_t{L} * hg) {
      return absl::InvalidArgumentError("selection capacity has the wrong size");
    }
    std::vector<int32_t> local(static_cast<size_t>(L) * hl);
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t j = 0; j < hl; ++j) {
        local[l * hl + j] = st.selection.capacity[l * hg + global_head[l * hl + j]];
      }
    }
    st.selection.capacity = std::move(local);
  }
  const int64_t rows = out->num_rows();
  out->kv_indptr.assign(1, 0);
  out->kv_indptr.reserve(rows + 1);
  out->kv_len_before.reserve(rows);
  out->kv_len_after.reserve(rows);
  out->kv_indices.clear();
  for (size_t i = 0; i < g.seqs.size(); ++i) {
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t j = 0; j < hl; ++j) {
        const int64_t r = g.row(static_cast<int64_t>(i), l, global_head[l * hl + j]);
        for (int32_t k = g.kv_indptr[r]; k < g.kv_indptr[r + 1]; ++k) {
          const int64_t id = g.kv_indices[k] - block_first;
          if (id < 0 || id >= num_blocks) {
            return absl::InvalidArgumentError(absl::StrCat(
                "block ", g.kv_indices[k], " is outside rank ", options.tp.rank, "'s pool"));
          }
          out->kv_indices.push_back(static_cast<BlockId>(id));
        }
        out->kv_indptr.push_back(static_cast<int32_t>(out->kv_indices.size()));
        out->kv_len_before.push_back(g.kv_len_before[r]);
        out->kv_len_after.push_back(g.kv_len_after[r]);
      }
    }
  }
  out->block_copies.clear();
  for (const auto& [src, dst] : g.block_copies) {
    if (src < block_first || src >= block_first + num_blocks) continue;  // another rank's
    out->block_copies.emplace_back(static_cast<BlockId>(src - block_first),
                                   static_cast<BlockId>(dst - block_first));
  }
  return absl::OkStatus();
}

absl::StatusOr<BatchResult> CudaWorker::Execute(const Batch& global_batch) {
  const auto host_start = std::chrono::steady_clock::now();
  State& s = *state_;
  Batch local;
  if (s.options.tp.size > 1 || s.block_first != 0) {
    HKV_RETURN_IF_ERROR(s.RankView(global_batch, &local));
  }
  const Batch& b = s.options.tp.size > 1 || s.block_first != 0 ? local : global_batch;
  const ModelConfig& c = s.cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads, bs = s.options.block_size;
  const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
  if (b.num_layers != L || b.num_kv_heads != H || b.block_size != bs ||
      static_cast<int64_t>(b.kv_indptr.size()) != b.num_rows() + 1 ||
      static_cast<int64_t>(b.kv_len_before.size()) != b.num_rows() ||
      static_cast<int64_t>(b.kv_len_after.size()) != b.num_rows()) {
    return absl::InvalidArgumentError("malformed batch for the CUDA worker");
  }
  BlockId lo = 0, hi = 0;  // min/max: a loop the compiler vectorizes (millions of ids)
  for (BlockId id : b.kv_indices) {
    lo = std::min(lo, id);
    hi = std::max(hi, id);
  }
  if (lo < 0 || hi >= s.num_blocks) return absl::InvalidArgumentError("block id outside the pool");
  for (const auto& [src, dst] : b.block_copies) {
    if (src < 0 || src >= s.num_blocks || dst < 0 || dst >= s.num_blocks) {
      return absl::InvalidArgumentError("block copy outside the pool");
    }
  }
  bool all_decode = !b.seqs.empty();
  for (const SequenceStep& st : b.seqs) {
    if (st.tokens.empty()) return absl::InvalidArgumentError("a sequence has no tokens");
    all_decode = all_decode && !st.select && st.tokens.size() == 1;
  }
  const int32_t graph_batch = all_decode ? GraphBatchFor(static_cast<int32_t>(b.seqs.size()),
                                                         s.options.cuda_graph_max_batch)
                                         : 0;
  HostStep h;
  HKV_RETURN_IF_ERROR(s.BuildHostStep(b, graph_batch, &h));
  StepInputs* inputs = &s.eager_inputs;
  if (h.graph) {
    if (s.StageBytes(h) <= s.graph_inputs.capacity()) {
      inputs = &s.graph_inputs;
    } else {  // More page indices than the graph inputs hold (shared blocks): run eagerly.
      h = HostStep();
      HKV_RETURN_IF_ERROR(s.BuildHostStep(b, 0, &h));
    }
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.options.device));
  HKV_RETURN_IF_ERROR(inputs->Begin(h.graph ? inputs->capacity() : s.StageBytes(h)));
  HKV_ASSIGN_OR_RETURN(DeviceStep d, s.Stage(h, inputs));
  cudaStream_t stream = s.stream;
  const size_t block_bytes = static_cast<size_t>(bs) * c.head_dim * 2;
  for (const auto& [src, dst] : b.block_copies) {
    for (DeviceBuffer* pool : {&s.k_pool, &s.v_pool}) {
      HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pool->get<char>() + dst * block_bytes,
                                               pool->get<char>() + src * block_bytes, block_bytes,
                                               cudaMemcpyDeviceToDevice, stream));
    }
  }
  const double host_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - host_start)
          .count();
  if (s.profile.on) HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.profile.start, stream));
  HKV_RETURN_IF_ERROR(inputs->Upload(stream));
  const int32_t ns = static_cast<int32_t>(h.sample_rows.size());
  HKV_RETURN_IF_ERROR(s.ReserveActivations(h.total, ns));
  if (h.num_select > 0) {
    HKV_RETURN_IF_ERROR(s.kept.Reserve(static_cast<size_t>(h.num_select) * rows_per_seq * 4));
    HKV_RETURN_IF_ERROR(s.kept_index.Reserve(static_cast<size_t>(H) * h.max_select * 4));
    HKV_RETURN_IF_ERROR(
        s.select_ws.Reserve(k::KvSelectWorkspaceBytes(h.max_select, 64, c.num_heads, H) + 256));
  }
  if (h.num_decode > 0) {
    HKV_RETURN_IF_ERROR(s.decode_ws.Reserve(k::DecodeWorkspaceBytes(h.decode_options)));
    for (k::DecodePlan& p : d.plans) p.workspace = s.decode_ws.get();
  }
  if (h.graph) {
    HKV_RETURN_IF_ERROR(s.RunGraph(b, h, d));
    ++s.graph_steps;
  } else {
    HKV_RETURN_IF_ERROR(s.Forward(b, h, d));
    ++s.eager_steps;
  }
  if (s.profile.on) HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.profile.stop, stream));
  // Results: sampled tokens, kept counts, logits (when asked) in one pinned buffer.
  const size_t kept_n = static_cast<size_t>(h.num_select) * rows_per_seq;
  const size_t logit_n = s.return_logits ? static_cast<size_t>(ns) * c.vocab_size : 0;
  HKV_RETURN_IF_ERROR(s.host_out.Reserve((ns + kept_n + logit_n) * 4 + 3 * kAlign));
  auto* out_tokens = reinterpret_cast<int32_t*>(s.host_out.get());
  auto* out_kept = out_tokens + ns;
  auto* out_logits = reinterpret_cast<float*>(out_kept + kept_n);
  if (ns > 0) {
    HKV_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out_tokens, s.tokens.get(), ns * 4, cudaMemcpyDeviceToHost, stream));
  }
  if (kept_n > 0) {
    HKV_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out_kept, s.kept.get(), kept_n * 4, cudaMemcpyDeviceToHost, stream));
  }
  if (logit_n > 0) {
    HKV_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out_logits, s.logits.get(), logit_n * 4, cudaMemcpyDeviceToHost, stream));
  }
  if (s.options.tp.size > 1) {
    // Bounded: a dead or hung peer aborts the communicator instead of hanging this rank.
    HKV_RETURN_IF_ERROR(
        s.options.tp.comm->WaitFor(stream, s.options.tp.step_timeout, s.options.tp.cancel));
  } else {
    HKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (s.profile.on) {
    float gpu_ms = 0;
    HKV_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&gpu_ms, s.profile.start, s.profile.stop));
    const std::string kind = h.graph                             ? "decode graph"
                             : h.num_prefill + h.num_select == 0 ? "decode eager"
                             : h.real_decode > 0                 ? "mixed"
                                                                 : "prefill";
    StepProfile::Kind& k = s.profile.kinds[kind];
    ++k.steps;
    k.host_us += host_us;
    k.gpu_us += gpu_ms * 1e3;
    k.seqs += b.seqs.size();
    k.tokens += h.total;
    if (++s.profile.steps % 1000 == 0) s.profile.Print();
  }

  BatchResult result;
  result.seqs.resize(b.seqs.size());
  for (size_t i = 0; i < b.seqs.size(); ++i) result.seqs[i].id = b.seqs[i].id;
  for (int32_t i = 0; i < ns; ++i) {
    if (h.sample_seq[i] < 0) continue;
    const int32_t bi = h.order[h.sample_seq[i]];
    if (!b.seqs[bi].sample) continue;
    SequenceResult& r = result.seqs[bi];
    r.token = out_tokens[i];
    if (s.return_logits) {
      r.logits.assign(out_logits + static_cast<size_t>(i) * c.vocab_size,
                      out_logits + static_cast<size_t>(i + 1) * c.vocab_size);
    }
  }
  for (int32_t j = 0; j < h.num_select; ++j) {
    result.seqs[h.order[h.num_decode + h.num_prefill + j]].kept_per_head.assign(
        out_kept + j * rows_per_seq, out_kept + (j + 1) * rows_per_seq);
  }
  return result;
}

}  // namespace hkv
