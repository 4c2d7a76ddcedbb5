#include "workers/cuda_worker.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "kernels/decode_attention.h"
#include "kernels/gemm.h"
#include "kernels/kv_append.h"
#include "kernels/kv_select.h"
#include "kernels/layer_ops.h"
#include "kernels/prefill_attention.h"
#include "kernels/sampling.h"
#include "workers/cpu_ops.h"
#include "workers/sampler.h"

namespace hkv {
namespace {

namespace k = ::hkv::kernels;
constexpr k::DType kDType = k::DType::kBf16;

#define HKV_CUDA_RETURN_IF_ERROR(expr)                                                       \
  do {                                                                                       \
    const cudaError_t hkv_cuda_err_ = (expr);                                                \
    if (hkv_cuda_err_ != cudaSuccess) {                                                      \
      return absl::InternalError(absl::StrCat("CUDA error in ", #expr, ": ",                 \
                                              cudaGetErrorString(hkv_cuda_err_)));           \
    }                                                                                        \
  } while (0)

#define HKV_CUBLAS_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                       \
    const cublasStatus_t hkv_cublas_st_ = (expr);                                            \
    if (hkv_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                           \
      return absl::InternalError(                                                            \
          absl::StrCat("cuBLAS error ", static_cast<int>(hkv_cublas_st_), " in ", #expr));   \
    }                                                                                        \
  } while (0)

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;  // NaN.
  bits += 0x7fff + ((bits >> 16) & 1);                  // Round to nearest even.
  return static_cast<uint16_t>(bits >> 16);
}

// A grow-only device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    const cudaError_t e = cudaMalloc(&ptr_, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes: ",
                                                       cudaGetErrorString(e)));
    }
    bytes_ = std::max<size_t>(bytes, 256);
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Upload(const std::vector<T>& host, cudaStream_t stream) {
    HKV_RETURN_IF_ERROR(Reserve(host.size() * sizeof(T)));
    if (host.empty()) return absl::OkStatus();
    HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ptr_, host.data(), host.size() * sizeof(T),
                                             cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

absl::Status UploadBf16(const std::vector<float>& host, DeviceBuffer* out) {
  std::vector<uint16_t> bf(host.size());
  for (size_t i = 0; i < host.size(); ++i) bf[i] = ToBf16(host[i]);
  HKV_RETURN_IF_ERROR(out->Reserve(bf.size() * 2));
  HKV_CUDA_RETURN_IF_ERROR(cudaMemcpy(out->get(), bf.data(), bf.size() * 2, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

std::vector<float> Concat(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

struct LayerBuffers {
  DeviceBuffer attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;
};

}  // namespace

struct CudaWorker::State {
  std::shared_ptr<const Model> model;
  CudaWorkerOptions options;
  int64_t num_blocks = 0;
  std::string sizing;
  bool return_logits = false;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  // Weights (bf16).
  DeviceBuffer embedding, final_norm, lm_head, inv_freq;
  std::deque<LayerBuffers> layers;  // deque: buffers are not movable.
  // KV pool.
  DeviceBuffer k_pool, v_pool;
  // Step buffers.
  DeviceBuffer ids, pos, slots, indptr_after, indices_after, last_after, indptr_before,
      indices_before, last_before, cu_prefill, cu_select, caps, kept, kept_index, select_ws,
      decode_ws, res, xb, qkv, attn, tmp, gate_up, hidden, sample_x, logits, sample_rows, tokens;

  ~State() {
    if (cublas != nullptr) cublasDestroy(cublas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
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

absl::StatusOr<std::unique_ptr<CudaWorker>> CudaWorker::Create(std::shared_ptr<const Model> model,
                                                              const CudaWorkerOptions& options) {
  const ModelConfig& c = model->config;
  if (!CudaDeviceAvailable()) return absl::UnavailableError("no CUDA device is available");
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the CUDA kernels serve head_dim 64 or 128; this model has ", c.head_dim,
        ": use --device cpu"));
  }
  if (c.group_size() > 8) {
    return absl::InvalidArgumentError("the CUDA kernels serve GQA groups of at most 8");
  }
  if (c.qkv_bias) return absl::InvalidArgumentError("q/k/v biases are not supported on CUDA yet");
  if (c.dim % 8 != 0 || c.hidden_dim % 8 != 0) {
    return absl::InvalidArgumentError("hidden sizes must be multiples of 8 on CUDA");
  }
  if ((options.block_size & (options.block_size - 1)) != 0) {
    return absl::InvalidArgumentError("block_size must be a power of two on CUDA");
  }
  auto s = std::make_unique<State>();
  s->model = model;
  s->options = options;
  HKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasCreate(&s->cublas));
  HKV_CUBLAS_RETURN_IF_ERROR(cublasSetStream(s->cublas, s->stream));

  size_t free_before = 0, total = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_before, &total));
  const ModelWeights& w = model->weights;
  int64_t weight_bytes = 0;
  for (const LayerWeights& l : w.layers) {
    weight_bytes += 2 * static_cast<int64_t>(l.wq.size() + l.wk.size() + l.wv.size() + l.wo.size() +
                                             l.w_gate.size() + l.w_up.size() + l.w_down.size());
  }
  weight_bytes += 2 * static_cast<int64_t>(w.embedding.size() + w.lm_head.size());
  if (weight_bytes + options.activation_reserve_bytes > static_cast<int64_t>(free_before)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the model needs %.2f GiB of weights + %.2f GiB of activations but the GPU has %.2f GiB "
        "free: %.2f GiB short",
        weight_bytes / 1073741824.0, options.activation_reserve_bytes / 1073741824.0,
        free_before / 1073741824.0,
        (weight_bytes + options.activation_reserve_bytes - static_cast<int64_t>(free_before)) /
            1073741824.0));
  }
  HKV_RETURN_IF_ERROR(UploadBf16(w.embedding, &s->embedding));
  HKV_RETURN_IF_ERROR(UploadBf16(w.final_norm, &s->final_norm));
  if (!w.lm_head.empty()) HKV_RETURN_IF_ERROR(UploadBf16(w.lm_head, &s->lm_head));
  std::vector<float> inv_freq = RopeInvFreq(c);
  HKV_RETURN_IF_ERROR(s->inv_freq.Reserve(inv_freq.size() * 4));
  HKV_CUDA_RETURN_IF_ERROR(cudaMemcpy(s->inv_freq.get(), inv_freq.data(), inv_freq.size() * 4,
                                      cudaMemcpyHostToDevice));
  s->layers.resize(c.num_layers);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerBuffers& b = s->layers[l];
    HKV_RETURN_IF_ERROR(UploadBf16(lw.attn_norm, &b.attn_norm));
    HKV_RETURN_IF_ERROR(UploadBf16(Concat({&lw.wq, &lw.wk, &lw.wv}), &b.wqkv));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.wo, &b.wo));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.ffn_norm, &b.ffn_norm));
    HKV_RETURN_IF_ERROR(UploadBf16(Concat({&lw.w_gate, &lw.w_up}), &b.w_gate_up));
    HKV_RETURN_IF_ERROR(UploadBf16(lw.w_down, &b.w_down));
  }
  size_t free_after = 0;
  HKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_after, &total));
  const int64_t bytes_per_block = 2LL * options.block_size * c.head_dim * 2;
  const int64_t budget = static_cast<int64_t>(options.gpu_memory_utilization * total) -
                         static_cast<int64_t>(total - free_after) -
                         options.activation_reserve_bytes;
  s->num_blocks = options.num_blocks > 0 ? options.num_blocks : budget / bytes_per_block;
  if (s->num_blocks < 1 || s->num_blocks > INT32_MAX) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no room for a KV pool: %.2f GiB total x %.2f utilization - %.2f GiB in use - %.2f GiB "
        "activations leaves %.2f GiB; raise --gpu-memory-utilization or use a smaller model",
        total / 1073741824.0, options.gpu_memory_utilization,
        (total - free_after) / 1073741824.0, options.activation_reserve_bytes / 1073741824.0,
        budget / 1073741824.0));
  }
  const size_t pool_bytes = static_cast<size_t>(s->num_blocks) * bytes_per_block / 2;
  HKV_RETURN_IF_ERROR(s->k_pool.Reserve(pool_bytes));
  HKV_RETURN_IF_ERROR(s->v_pool.Reserve(pool_bytes));
  s->sizing = absl::StrFormat(
      "GPU %d: %.2f GiB total, weights %.2f GiB (bf16), activations reserve %.2f GiB, "
      "utilization %.2f -> KV pool %d blocks x %d B = %.2f GiB",
      options.device, total / 1073741824.0, weight_bytes / 1073741824.0,
      options.activation_reserve_bytes / 1073741824.0, options.gpu_memory_utilization,
      s->num_blocks, bytes_per_block, s->num_blocks * bytes_per_block / 1073741824.0);
  return std::unique_ptr<CudaWorker>(new CudaWorker(std::move(s)));
}

absl::StatusOr<BatchResult> CudaWorker::Execute(const Batch& b) {
  State& s = *state_;
  const ModelConfig& c = s.model->config;
  const int32_t L = c.num_layers, H = c.num_kv_heads, Hq = c.num_heads, d = c.head_dim;
  const int32_t bs = s.options.block_size, dim = c.dim, hidden = c.hidden_dim;
  const int32_t qkv_w = c.q_size() + 2 * c.kv_size();
  const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
  if (b.num_layers != L || b.num_kv_heads != H || b.block_size != bs ||
      static_cast<int64_t>(b.kv_indptr.size()) != b.num_rows() + 1 ||
      static_cast<int64_t>(b.kv_len_before.size()) != b.num_rows() ||
      static_cast<int64_t>(b.kv_len_after.size()) != b.num_rows()) {
    return absl::InvalidArgumentError("malformed batch for the CUDA worker");
  }
  for (BlockId id : b.kv_indices) {
    if (id < 0 || id >= s.num_blocks) return absl::InvalidArgumentError("block id outside the pool");
  }
  // Internal order: decodes, then plain prefill chunks, then compressed prefills.
  std::vector<int32_t> order;
  int32_t num_decode = 0, num_prefill = 0, num_select = 0;
  for (int pass = 0; pass < 3; ++pass) {
    for (size_t i = 0; i < b.seqs.size(); ++i) {
      const SequenceStep& st = b.seqs[i];
      if (st.tokens.empty()) return absl::InvalidArgumentError("a sequence has no tokens");
      const int kind = st.select ? 2 : (st.tokens.size() == 1 ? 0 : 1);
      if (kind != pass) continue;
      if (st.select && st.selection.capacity.empty()) {
        return absl::UnimplementedError(
            "adaptive (adakv) selection is not supported on the CUDA worker yet: use another "
            "policy or --device cpu");
      }
      order.push_back(static_cast<int32_t>(i));
      (kind == 0 ? num_decode : kind == 1 ? num_prefill : num_select)++;
    }
  }
  const int32_t num_seqs = static_cast<int32_t>(order.size());
  // Host-side step tables.
  std::vector<int32_t> ids, pos, token_start(num_seqs);
  std::vector<int32_t> indptr_a{0}, indices_a, last_a, indptr_b{0}, indices_b, last_b;
  std::vector<int32_t> cu_prefill{0}, cu_select{0}, caps;
  int32_t max_prefill = 0, max_select = 0, max_select_n = 0;
  for (int32_t k = 0; k < num_seqs; ++k) {
    const SequenceStep& st = b.seqs[order[k]];
    token_start[k] = static_cast<int32_t>(ids.size());
    for (size_t t = 0; t < st.tokens.size(); ++t) {
      if (st.tokens[t] < 0 || st.tokens[t] >= c.vocab_size) {
        return absl::InvalidArgumentError("token outside the vocabulary");
      }
      ids.push_back(st.tokens[t]);
      pos.push_back(st.start_pos + static_cast<int32_t>(t));
    }
    const int32_t T = static_cast<int32_t>(st.tokens.size());
    if (k >= num_decode && k < num_decode + num_prefill) {
      cu_prefill.push_back(cu_prefill.back() + T);
      max_prefill = std::max(max_prefill, T);
    } else if (k >= num_decode + num_prefill) {
      cu_select.push_back(cu_select.back() + T);
      max_select = std::max(max_select, T);
      max_select_n = std::max(max_select_n, T);
      if (static_cast<int64_t>(st.selection.capacity.size()) != rows_per_seq) {
        return absl::InvalidArgumentError("selection capacity has the wrong size");
      }
      caps.insert(caps.end(), st.selection.capacity.begin(), st.selection.capacity.end());
    }
    for (int64_t r = b.row(order[k], 0, 0); r < b.row(order[k] + 1, 0, 0); ++r) {
      const int32_t first = b.kv_indptr[r], nblocks = b.kv_indptr[r + 1] - first;
      const int32_t after = b.kv_len_after[r], before = b.kv_len_before[r];
      if (after > nblocks * bs || before > after) {
        return absl::InvalidArgumentError("a row holds too few blocks for its tokens");
      }
      const int32_t used_a = (after + bs - 1) / bs, used_b = (before + bs - 1) / bs;
      indices_a.insert(indices_a.end(), b.kv_indices.begin() + first,
                       b.kv_indices.begin() + first + used_a);
      indptr_a.push_back(static_cast<int32_t>(indices_a.size()));
      last_a.push_back(after == 0 ? 0 : after - (used_a - 1) * bs);
      indices_b.insert(indices_b.end(), b.kv_indices.begin() + first,
                       b.kv_indices.begin() + first + used_b);
      indptr_b.push_back(static_cast<int32_t>(indices_b.size()));
      last_b.push_back(before == 0 ? 0 : before - (used_b - 1) * bs);
      if (!st.select && after - before != T) {
        return absl::InvalidArgumentError("a plain row must grow by the step's tokens");
      }
    }
  }
  const int32_t total = static_cast<int32_t>(ids.size());
  // Slot of each plain token in each (layer, head): [L, total, H]; -1 for compressed prefills.
  std::vector<int64_t> slots(static_cast<size_t>(L) * total * H, -1);
  for (int32_t k = 0; k < num_decode + num_prefill; ++k) {
    const SequenceStep& st = b.seqs[order[k]];
    for (int32_t l = 0; l < L; ++l) {
      for (int32_t h = 0; h < H; ++h) {
        const int64_t r = b.row(order[k], l, h);
        const BlockId* blocks = &b.kv_indices[b.kv_indptr[r]];
        for (size_t t = 0; t < st.tokens.size(); ++t) {
          const int32_t slot = b.kv_len_before[r] + static_cast<int32_t>(t);
          slots[(static_cast<size_t>(l) * total + token_start[k] + t) * H + h] =
              static_cast<int64_t>(blocks[slot / bs]) * bs + slot % bs;
        }
      }
    }
  }
  cudaStream_t stream = s.stream;
  HKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.options.device));
  for (const auto& [src, dst] : b.block_copies) {
    const size_t block_bytes = static_cast<size_t>(bs) * d * 2;
    for (DeviceBuffer* pool : {&s.k_pool, &s.v_pool}) {
      HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pool->get<char>() + dst * block_bytes,
                                               pool->get<char>() + src * block_bytes, block_bytes,
                                               cudaMemcpyDeviceToDevice, stream));
    }
  }
  HKV_RETURN_IF_ERROR(s.ids.Upload(ids, stream));
  HKV_RETURN_IF_ERROR(s.pos.Upload(pos, stream));
  HKV_RETURN_IF_ERROR(s.slots.Upload(slots, stream));
  HKV_RETURN_IF_ERROR(s.indptr_after.Upload(indptr_a, stream));
  HKV_RETURN_IF_ERROR(s.indices_after.Upload(indices_a, stream));
  HKV_RETURN_IF_ERROR(s.last_after.Upload(last_a, stream));
  HKV_RETURN_IF_ERROR(s.indptr_before.Upload(indptr_b, stream));
  HKV_RETURN_IF_ERROR(s.indices_before.Upload(indices_b, stream));
  HKV_RETURN_IF_ERROR(s.last_before.Upload(last_b, stream));
  HKV_RETURN_IF_ERROR(s.cu_prefill.Upload(cu_prefill, stream));
  HKV_RETURN_IF_ERROR(s.cu_select.Upload(cu_select, stream));
  HKV_RETURN_IF_ERROR(s.caps.Upload(caps, stream));
  const size_t act = static_cast<size_t>(total);
  HKV_RETURN_IF_ERROR(s.res.Reserve(act * dim * 2));
  HKV_RETURN_IF_ERROR(s.xb.Reserve(act * dim * 2));
  HKV_RETURN_IF_ERROR(s.tmp.Reserve(act * dim * 2));
  HKV_RETURN_IF_ERROR(s.qkv.Reserve(act * qkv_w * 2));
  HKV_RETURN_IF_ERROR(s.attn.Reserve(act * c.q_size() * 2));
  HKV_RETURN_IF_ERROR(s.gate_up.Reserve(act * 2 * hidden * 2));
  HKV_RETURN_IF_ERROR(s.hidden.Reserve(act * hidden * 2));
  HKV_RETURN_IF_ERROR(s.kept.Reserve(std::max<size_t>(1, num_select * rows_per_seq) * 4));
  HKV_RETURN_IF_ERROR(s.kept_index.Reserve(static_cast<size_t>(H) * std::max(1, max_select_n) * 4));
  if (num_select > 0) {
    HKV_RETURN_IF_ERROR(
        s.select_ws.Reserve(k::KvSelectWorkspaceBytes(max_select_n, 8, Hq, H) + 256));
  }
  k::DecodePlanOptions dopt;
  dopt.max_rows = std::max(1, num_decode * H);
  dopt.max_work_items = dopt.max_rows + 1024;
  dopt.group_size = c.group_size();
  dopt.head_dim = d;
  if (num_decode > 0) HKV_RETURN_IF_ERROR(s.decode_ws.Reserve(k::DecodeWorkspaceBytes(dopt)));

  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const k::RopeStyle rope = c.rope_style == RopeStyle::kHalf ? k::RopeStyle::kRotateHalf
                                                               : k::RopeStyle::kInterleaved;
  k::PagedKvView after;
  after.indptr = s.indptr_after.get<int32_t>();
  after.indices = s.indices_after.get<int32_t>();
  after.last_len = s.last_after.get<int32_t>();
  after.k_pool = s.k_pool.get();
  after.v_pool = s.v_pool.get();
  after.block_stride = static_cast<int64_t>(bs) * d;
  after.block_size = bs;
  after.num_kv_heads = H;
  after.head_dim = d;
  after.row_seq_stride = static_cast<int32_t>(rows_per_seq);
  k::PagedKvView before = after;
  before.indptr = s.indptr_before.get<int32_t>();
  before.indices = s.indices_before.get<int32_t>();
  before.last_len = s.last_before.get<int32_t>();
  auto* qkv = s.qkv.get<uint16_t>();
  auto* attn = s.attn.get<uint16_t>();

  HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, s.embedding.get(), c.vocab_size, dim,
                                              s.ids.get<int32_t>(), total, s.res.get(), stream));
  std::vector<int32_t> row_ids(std::max(1, num_decode * H));
  for (int32_t l = 0; l < L; ++l) {
    const LayerBuffers& w = s.layers[l];
    if (l == 0) {
      HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, s.res.get(), nullptr, w.attn_norm.get(),
                                          s.xb.get(), total, dim, c.norm_eps, stream));
    } else {
      HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, s.tmp.get(), s.res.get(), w.attn_norm.get(),
                                          s.xb.get(), total, dim, c.norm_eps, stream));
    }
    HKV_CUBLAS_RETURN_IF_ERROR(k::GemmRowMajor(s.cublas, kDType, s.xb.get(), dim, w.wqkv.get(),
                                               dim, qkv, qkv_w, false, total, qkv_w, dim));
    HKV_CUDA_RETURN_IF_ERROR(k::Rope(kDType, qkv, qkv_w, Hq, qkv + c.q_size(), qkv_w, H,
                                     s.pos.get<int32_t>(), total, d, c.rope_theta,
                                     s.inv_freq.get<float>(), rope, stream));
    if (num_decode + num_prefill > 0) {
      HKV_CUDA_RETURN_IF_ERROR(k::AppendKvSlots(
          kDType, after, qkv + c.q_size(), qkv + c.q_size() + c.kv_size(), qkv_w,
          s.slots.get<int64_t>() + static_cast<size_t>(l) * total * H,
          token_start[num_decode + num_prefill - 1] +
              static_cast<int32_t>(b.seqs[order[num_decode + num_prefill - 1]].tokens.size()),
          stream));
    }
    if (num_decode > 0) {
      for (int32_t k2 = 0; k2 < num_decode; ++k2) {
        for (int32_t h = 0; h < H; ++h) {
          row_ids[k2 * H + h] = static_cast<int32_t>(k2 * rows_per_seq + l * H + h);
        }
      }
      k::DecodePlan plan;
      HKV_CUDA_RETURN_IF_ERROR(k::PlanDecodeAttention(dopt, indptr_a.data(), last_a.data(),
                                                      num_decode * H, bs, s.decode_ws.get(),
                                                      stream, &plan, row_ids.data()));
      HKV_CUDA_RETURN_IF_ERROR(k::RunDecodeAttention(plan, after, kDType, qkv, qkv_w, attn,
                                                     c.q_size(), scale, stream));
    }
    // Causal attention of a group of sequences' chunks, starting at internal sequence k0.
    auto run_prefill = [&](int32_t k0, int32_t count, const DeviceBuffer& cu, int32_t max_len,
                           const k::PagedKvView* prefix) {
      const size_t first = token_start[k0];
      k::PrefillAttentionArgs a;
      a.dtype = kDType;
      a.q = qkv + first * qkv_w;
      a.k = qkv + first * qkv_w + c.q_size();
      a.v = qkv + first * qkv_w + c.q_size() + c.kv_size();
      a.out = attn + first * c.q_size();
      a.q_stride = a.kv_stride = qkv_w;
      a.out_stride = c.q_size();
      a.cu_seqlens = cu.get<int32_t>();
      a.num_seqs = count;
      a.max_q_len = max_len;
      a.num_q_heads = Hq;
      a.num_kv_heads = H;
      a.head_dim = d;
      a.scale = scale;
      a.prefix = prefix;
      return k::RunPrefillAttention(a, stream);
    };
    if (num_prefill > 0) {
      k::PagedKvView prefix = before;
      prefix.row_offset = static_cast<int32_t>(num_decode * rows_per_seq + l * H);
      HKV_CUDA_RETURN_IF_ERROR(
          run_prefill(num_decode, num_prefill, s.cu_prefill, max_prefill, &prefix));
    }
    if (num_select > 0) {
      const int32_t k0 = num_decode + num_prefill;
      HKV_CUDA_RETURN_IF_ERROR(run_prefill(k0, num_select, s.cu_select, max_select, nullptr));
      for (int32_t j = 0; j < num_select; ++j) {
        const SequenceStep& st = b.seqs[order[k0 + j]];
        const int32_t n = static_cast<int32_t>(st.tokens.size()), win = st.selection.window;
        const size_t start = token_start[k0 + j];
        k::KvSelectArgs ks;
        ks.dtype = kDType;
        ks.q_window = qkv + (start + n - win) * qkv_w;
        ks.keys = qkv + start * qkv_w + c.q_size();
        ks.values = qkv + start * qkv_w + c.q_size() + c.kv_size();
        ks.q_stride = ks.kv_stride = qkv_w;
        ks.n = n;
        ks.window = win;
        ks.pool_kernel = st.selection.pool_kernel;
        ks.num_q_heads = Hq;
        ks.num_kv_heads = H;
        ks.head_dim = d;
        ks.scale = scale;
        ks.caps = s.caps.get<int32_t>() + (static_cast<size_t>(j) * L + l) * H;
        ks.dest_indptr = s.indptr_after.get<int32_t>();
        ks.dest_indices = s.indices_after.get<int32_t>();
        ks.dest_first_row = static_cast<int32_t>((k0 + j) * rows_per_seq + l * H);
        ks.k_pool = s.k_pool.get();
        ks.v_pool = s.v_pool.get();
        ks.block_stride = static_cast<int64_t>(bs) * d;
        ks.block_size = bs;
        ks.workspace = s.select_ws.get();
        ks.kept_count = s.kept.get<int32_t>() + (static_cast<size_t>(j) * L + l) * H;
        ks.kept_index = s.kept_index.get<int32_t>();
        HKV_CUDA_RETURN_IF_ERROR(k::RunKvSelect(ks, stream));
      }
    }
    HKV_CUBLAS_RETURN_IF_ERROR(k::GemmRowMajor(s.cublas, kDType, attn, c.q_size(), w.wo.get(),
                                               c.q_size(), s.tmp.get(), dim, false, total, dim,
                                               c.q_size()));
    HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, s.tmp.get(), s.res.get(), w.ffn_norm.get(),
                                        s.xb.get(), total, dim, c.norm_eps, stream));
    HKV_CUBLAS_RETURN_IF_ERROR(k::GemmRowMajor(s.cublas, kDType, s.xb.get(), dim,
                                               w.w_gate_up.get(), dim, s.gate_up.get(),
                                               2 * hidden, false, total, 2 * hidden, dim));
    HKV_CUDA_RETURN_IF_ERROR(k::SwiGlu(kDType, s.gate_up.get(), s.gate_up.get<uint16_t>() + hidden,
                                       2 * hidden, s.hidden.get(), total, hidden, stream));
    HKV_CUBLAS_RETURN_IF_ERROR(k::GemmRowMajor(s.cublas, kDType, s.hidden.get(), hidden,
                                               w.w_down.get(), hidden, s.tmp.get(), dim, false,
                                               total, dim, hidden));
  }
  HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, s.tmp.get(), s.res.get(), s.final_norm.get(),
                                      s.xb.get(), total, dim, c.norm_eps, stream));
  // Sample the last token of each sequence that asks for one.
  std::vector<int32_t> sample_seq;
  std::vector<k::SamplingRow> sample_rows;
  for (int32_t k2 = 0; k2 < num_seqs; ++k2) {
    const SequenceStep& st = b.seqs[order[k2]];
    if (!st.sample) continue;
    sample_seq.push_back(k2);
    k::SamplingRow row;
    row.temperature = st.sampling.temperature;
    row.top_k = st.sampling.top_k;
    row.top_p = st.sampling.top_p;
    row.uniform = static_cast<float>(SampleUniform(st.sampling.seed, st.sample_step));
    sample_rows.push_back(row);
  }
  const int32_t ns = static_cast<int32_t>(sample_seq.size());
  std::vector<int32_t> sampled(ns);
  std::vector<float> logits;
  if (ns > 0) {
    HKV_RETURN_IF_ERROR(s.sample_x.Reserve(static_cast<size_t>(ns) * dim * 2));
    for (int32_t i = 0; i < ns; ++i) {
      const int32_t k2 = sample_seq[i];
      const size_t last = token_start[k2] + b.seqs[order[k2]].tokens.size() - 1;
      HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.sample_x.get<uint16_t>() + i * dim,
                                               s.xb.get<uint16_t>() + last * dim, dim * 2,
                                               cudaMemcpyDeviceToDevice, stream));
    }
    HKV_RETURN_IF_ERROR(s.logits.Reserve(static_cast<size_t>(ns) * c.vocab_size * 4));
    const DeviceBuffer& head = s.lm_head.bytes() > 0 ? s.lm_head : s.embedding;
    HKV_CUBLAS_RETURN_IF_ERROR(k::GemmRowMajor(s.cublas, kDType, s.sample_x.get(), dim,
                                               head.get(), dim, s.logits.get(), c.vocab_size,
                                               true, ns, c.vocab_size, dim));
    HKV_RETURN_IF_ERROR(s.sample_rows.Upload(sample_rows, stream));
    HKV_RETURN_IF_ERROR(s.tokens.Reserve(ns * 4));
    HKV_CUDA_RETURN_IF_ERROR(k::SampleTokens(s.logits.get<float>(), c.vocab_size, ns,
                                             c.vocab_size, s.sample_rows.get<k::SamplingRow>(),
                                             s.tokens.get<int32_t>(), stream));
    HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sampled.data(), s.tokens.get(), ns * 4,
                                             cudaMemcpyDeviceToHost, stream));
    if (s.return_logits) {
      logits.resize(static_cast<size_t>(ns) * c.vocab_size);
      HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits.data(), s.logits.get(), logits.size() * 4,
                                               cudaMemcpyDeviceToHost, stream));
    }
  }
  std::vector<int32_t> kept(static_cast<size_t>(num_select) * rows_per_seq);
  if (num_select > 0) {
    HKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kept.data(), s.kept.get(), kept.size() * 4,
                                             cudaMemcpyDeviceToHost, stream));
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  HKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());

  BatchResult result;
  result.seqs.resize(b.seqs.size());
  for (size_t i = 0; i < b.seqs.size(); ++i) result.seqs[i].id = b.seqs[i].id;
  for (int32_t i = 0; i < ns; ++i) {
    SequenceResult& r = result.seqs[order[sample_seq[i]]];
    r.token = sampled[i];
    if (s.return_logits) {
      r.logits.assign(logits.begin() + static_cast<size_t>(i) * c.vocab_size,
                      logits.begin() + static_cast<size_t>(i + 1) * c.vocab_size);
    }
  }
  for (int32_t j = 0; j < num_select; ++j) {
    result.seqs[order[num_decode + num_prefill + j]].kept_per_head.assign(
        kept.begin() + j * rows_per_seq, kept.begin() + (j + 1) * rows_per_seq);
  }
  return result;
}

}  // namespace hkv
