#include <cmath>

#include "kernels/decode_attention.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/gemv_fused.h"
#include "kernels/kv_append.h"
#include "kernels/kv_select.h"
#include "kernels/layer_ops.h"
#include "kernels/prefill_attention.h"
#include "kernels/rope_kv_append.h"
#include "kernels/sampling.h"
#include "workers/cuda/cuda_worker_state.h"
#include "workers/nccl_communicator.h"

namespace hkv {
namespace {

namespace k = ::hkv::kernels;
using cuda_internal::DeviceBuffer;
using cuda_internal::DeviceStep;
using cuda_internal::kDType;

}  // namespace

bool CudaWorker::State::FusedDecode(const HostStep& h) const {
  return options.fused_decode && options.tp.size == 1 && h.total <= k::kGemvPreferredRows &&
         k::FusedGemvApplies(kDType, h.total, cfg.dim, /*norm_prologue=*/true);
}

// Whether step h's last layer goes past its attention only for the rows that sample (all that
// leaves the model; its K/V are written before): on one GPU, in eager steps that do not sample
// every row. Graph and fused decode steps sample every row; tensor-parallel ranks other than 0
// sample nothing yet must run the same collectives as rank 0, so they keep every row.
bool CudaWorker::State::PrunesLastLayer(const HostStep& h) const {
  return !h.graph && !FusedDecode(h) && options.tp.size == 1 &&
         static_cast<int32_t>(h.sample_rows.size()) < h.total;
}

// The page table after the step (decode attention, KV appends, selection destinations).
k::PagedKvView CudaWorker::State::KvViewAfter(const DeviceStep& d) const {
  k::PagedKvView after;
  after.indptr = d.indptr_a;
  after.indices = d.indices_a;
  after.last_len = d.last_a;
  after.k_pool = k_pool.get();
  after.v_pool = v_pool.get();
  after.block_stride = static_cast<int64_t>(options.block_size) * cfg.head_dim;
  after.block_size = options.block_size;
  after.num_kv_heads = cfg.num_kv_heads;
  after.head_dim = cfg.head_dim;
  after.row_seq_stride = cfg.num_layers * cfg.num_kv_heads;
  return after;
}

// Causal attention of `count` sequences' chunks starting at internal sequence k0, over the
// chunk plus the paged `prefix` (null: the chunk alone).
absl::Status CudaWorker::State::RunPrefill(const HostStep& h, int32_t k0, int32_t count,
                                           const int32_t* cu, int32_t max_len,
                                           const k::PagedKvView* prefix, bool last_tile_only) {
  const ModelConfig& c = cfg;
  const int32_t qkv_w = c.q_size() + 2 * c.kv_size();
  auto* q = qkv.get<uint16_t>();
  const size_t first = h.token_start[k0];
  k::PrefillAttentionArgs a;
  a.dtype = kDType;
  a.q = q + first * qkv_w;
  a.k = q + first * qkv_w + c.q_size();
  a.v = q + first * qkv_w + c.q_size() + c.kv_size();
  a.out = attn.get<uint16_t>() + first * c.q_size();
  a.q_stride = a.kv_stride = qkv_w;
  a.out_stride = c.q_size();
  a.cu_seqlens = cu;
  a.num_seqs = count;
  a.max_q_len = max_len;
  a.num_q_heads = c.num_heads;
  a.num_kv_heads = c.num_kv_heads;
  a.head_dim = c.head_dim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  a.prefix = prefix;
  a.total_q = h.total - static_cast<int32_t>(first);  // rows of qkv from `first` (TMA bounds)
  a.last_tile_only = last_tile_only;
  switch (options.prefill_kernel) {
    case CudaPrefillKernel::kAuto:
      a.kernel = k::PrefillKernel::kAuto;
      break;
    case CudaPrefillKernel::kMmaSync:
      a.kernel = k::PrefillKernel::kMmaSync;
      break;
    case CudaPrefillKernel::kWgmma:  // Create checked the GPU.
      a.kernel = k::PrefillKernel::kWgmma;
      break;
  }
  cudaError_t e = k::RunPrefillAttention(a, stream);
  if (e == cudaErrorNotSupported && a.kernel == k::PrefillKernel::kWgmma) {
    // The wgmma kernel refused this chunk (alignment, or no TMA descriptor) and launched
    // nothing: run it on the mma.sync kernel.
    a.kernel = k::PrefillKernel::kMmaSync;
    e = k::RunPrefillAttention(a, stream);
  }
  HKV_CUDA_RETURN_IF_ERROR(e);
  return absl::OkStatus();
}

// The step's selection buffers: kept counts and caps per kept sequence, and the workspace
// and kept_index slices of RunSelect's prompts (each its own, so that they can run on the
// select streams together) and of RunPagedSelect's (one after another in slice 0).
absl::Status CudaWorker::State::ReserveSelect(const Batch& b, const HostStep& h) {
  if (h.num_kept_seqs() == 0) return absl::OkStatus();
  const int32_t H = cfg.num_kv_heads;
  const int64_t rows_per_seq = static_cast<int64_t>(cfg.num_layers) * H;
  HKV_RETURN_IF_ERROR(kept.Reserve(static_cast<size_t>(h.num_kept_seqs()) * rows_per_seq * 4));
  HKV_RETURN_IF_ERROR(
      select_caps.Reserve(static_cast<size_t>(h.num_kept_seqs()) * rows_per_seq * 4));
  // Paged selects run one after another in slice 0 (each scores its whole prompt: more than
  // the step's tokens); one-step ones each in their own.
  size_t ws_bytes = k::KvSelectWorkspaceBytes(h.max_paged_select_len, 64, cfg.num_heads, H);
  size_t index_ints = static_cast<size_t>(H) * h.max_paged_select_len;
  select_ws_offset.assign(h.num_select, 0);
  select_index_offset.assign(h.num_select, 0);
  size_t ws_at = 0, index_at = 0;
  for (int32_t j = 0; j < h.num_select; ++j) {
    const int32_t nj =
        static_cast<int32_t>(b.seqs[h.order[h.num_decode + h.num_prefill + j]].tokens.size());
    select_ws_offset[j] = ws_at;
    select_index_offset[j] = index_at;
    ws_at += (k::KvSelectWorkspaceBytes(nj, 64, cfg.num_heads, H) + 255) / 256 * 256;
    index_at += static_cast<size_t>(H) * nj;
  }
  ws_bytes = std::max(ws_bytes, ws_at);
  index_ints = std::max(index_ints, index_at);
  HKV_RETURN_IF_ERROR(kept_index.Reserve(index_ints * 4));
  HKV_RETURN_IF_ERROR(select_ws.Reserve(ws_bytes + 256));
  if (return_kept_positions) {
    kept_index_host.assign(static_cast<size_t>(h.num_kept_seqs()) * cfg.num_layers, {});
  }
  return absl::OkStatus();
}

// Tests (return_kept_positions): the selection just run's kept positions [H, n] to the host,
// for kept sequence j of the step at layer l. A copy to pageable memory returns once done.
absl::Status CudaWorker::State::CopyKeptIndex(int32_t j, int32_t l, int32_t n,
                                              const int32_t* index) {
  if (!return_kept_positions) return absl::OkStatus();
  std::vector<int32_t>& out = kept_index_host[static_cast<size_t>(j) * cfg.num_layers + l];
  out.resize(static_cast<size_t>(cfg.num_kv_heads) * n);
  HKV_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(out.data(), index, out.size() * 4, cudaMemcpyDeviceToHost, stream));
  HKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

// Compressed prefills of layer l: dense attention over each prompt, then the selection kernel
// scatters each head's kept tokens into its blocks.
absl::Status CudaWorker::State::RunSelect(const Batch& b, const HostStep& h, const DeviceStep& d,
                                          int32_t l, bool last_tile_only) {
  const ModelConfig& c = cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads, bs = options.block_size;
  const int32_t qkv_w = c.q_size() + 2 * c.kv_size();
  const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
  auto* q = qkv.get<uint16_t>();
  const int32_t k0 = h.num_decode + h.num_prefill;
  HKV_RETURN_IF_ERROR(
      RunPrefill(h, k0, h.num_select, d.cu_select, h.max_select, nullptr, last_tile_only));
  // Several prompts: fork onto the select streams (each prompt's kernels are small and
  // serial), join before returning. Tests that copy kept positions run them in order.
  const int32_t forks =
      return_kept_positions ? 0 : std::min<int32_t>(h.num_select, kMaxSelectStreams);
  if (forks > 1) {
    while (static_cast<int32_t>(select_streams.size()) < forks) {
      cudaStream_t s = nullptr;
      cudaEvent_t e = nullptr;
      HKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      select_streams.push_back(s);
      HKV_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      select_joins.push_back(e);
    }
    if (select_fork == nullptr) {
      HKV_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&select_fork, cudaEventDisableTiming));
    }
    HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(select_fork, stream));
    for (int32_t f = 0; f < forks; ++f) {
      HKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(select_streams[f], select_fork, 0));
    }
  }
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
    ks.num_q_heads = c.num_heads;
    ks.num_kv_heads = H;
    ks.head_dim = c.head_dim;
    ks.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    ks.caps = d.caps + (static_cast<size_t>(j) * L + l) * H;
    ks.dest_indptr = d.indptr_a;
    ks.dest_indices = d.indices_a;
    ks.dest_first_row = static_cast<int32_t>((k0 + j) * rows_per_seq + l * H);
    ks.k_pool = k_pool.get();
    ks.v_pool = v_pool.get();
    ks.block_stride = static_cast<int64_t>(bs) * c.head_dim;
    ks.block_size = bs;
    ks.workspace = static_cast<char*>(select_ws.get()) + select_ws_offset[j];
    ks.kept_count = kept.get<int32_t>() + (static_cast<size_t>(j) * L + l) * H;
    ks.kept_index = kept_index.get<int32_t>() + select_index_offset[j];
    const size_t jl = static_cast<size_t>(j) * L + l;
    if (h.ada_total[jl] >= 0) {  // adakv: the kernel splits the layer's budget and blocks.
      const int32_t first = h.ada_block_start[j * (L + 1) + l];
      ks.adaptive_total = h.ada_total[jl];
      ks.adaptive_floor = h.ada_floor[jl];
      ks.dest_indices = d.ada_blocks + first;
      ks.dest_capacity = h.ada_block_start[j * (L + 1) + l + 1] - first;
      ks.caps_out = select_caps.get<int32_t>() + jl * H;
    }
    HKV_CUDA_RETURN_IF_ERROR(k::RunKvSelect(ks, forks > 1 ? select_streams[j % forks] : stream));
    HKV_RETURN_IF_ERROR(CopyKeptIndex(j, l, n, ks.kept_index));
  }
  for (int32_t f = 0; forks > 1 && f < forks; ++f) {
    HKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(select_joins[f], select_streams[f]));
    HKV_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, select_joins[f], 0));
  }
  return absl::OkStatus();
}

// Last chunks of chunked compressed prefills at layer l, after their attention: each selects
// from its rows, which hold the whole prompt, and compacts the kept tokens in place (the
// block manager frees the rows' tail once the step is done).
absl::Status CudaWorker::State::RunPagedSelect(const Batch& b, const HostStep& h,
                                               const DeviceStep& d, int32_t l) {
  const ModelConfig& c = cfg;
  const int32_t L = c.num_layers, H = c.num_kv_heads, bs = options.block_size;
  const int32_t qkv_w = c.q_size() + 2 * c.kv_size();
  const int64_t rows_per_seq = static_cast<int64_t>(L) * H;
  auto* q = qkv.get<uint16_t>();
  for (size_t j = 0; j < h.paged_select.size(); ++j) {
    const int32_t k2 = h.paged_select[j];
    const SequenceStep& st = b.seqs[h.order[k2]];
    const int32_t T = static_cast<int32_t>(st.tokens.size()), win = st.selection.window;
    const size_t kept_at = (static_cast<size_t>(h.num_select + j) * L + l) * H;
    k::KvSelectArgs ks;
    ks.dtype = kDType;
    ks.q_window = q + (static_cast<size_t>(h.token_start[k2]) + T - win) * qkv_w;
    ks.q_stride = qkv_w;
    ks.n = h.paged_select_len[j];
    ks.window = win;
    ks.pool_kernel = st.selection.pool_kernel;
    ks.num_q_heads = c.num_heads;
    ks.num_kv_heads = H;
    ks.head_dim = c.head_dim;
    ks.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    ks.caps = d.caps + kept_at;
    ks.in_place = true;
    ks.dest_indptr = d.indptr_a;
    ks.dest_indices = d.indices_a;
    ks.dest_first_row = static_cast<int32_t>(k2 * rows_per_seq + l * H);
    ks.k_pool = k_pool.get();
    ks.v_pool = v_pool.get();
    ks.block_stride = static_cast<int64_t>(bs) * c.head_dim;
    ks.block_size = bs;
    ks.workspace = select_ws.get();
    ks.kept_count = kept.get<int32_t>() + kept_at;
    ks.kept_index = kept_index.get<int32_t>();
    const size_t jl = j * L + l;
    if (h.paged_ada_total[jl] >= 0) {  // adakv: the kernel splits the layer's budget.
      ks.adaptive_total = h.paged_ada_total[jl];
      ks.adaptive_floor = h.paged_ada_floor[jl];
      ks.caps_out = select_caps.get<int32_t>() + kept_at;
    }
    HKV_CUDA_RETURN_IF_ERROR(k::RunKvSelect(ks, stream));
    HKV_RETURN_IF_ERROR(
        CopyKeptIndex(h.num_select + static_cast<int32_t>(j), l, ks.n, ks.kept_index));
  }
  return absl::OkStatus();
}

// Layer l up to the attention output: norm (adding the previous layer's output, unless the
// fused products already did), q/k/v, RoPE and KV appends (one kernel unless
// options.fused_rope_kv_append and fused_decode are both off), then decode, prefill and selection
// attention into `attn` (with last_tile_only, prefill attention only for each chunk's last
// 128-row tile, which holds every row a prefill samples).
absl::Status CudaWorker::State::LayerAttention(const Batch& b, const HostStep& h,
                                               const DeviceStep& d, int32_t l,
                                               const k::PagedKvView& after, bool fused,
                                               bool last_tile_only) {
  const ModelConfig& c = cfg;
  const int32_t H = c.num_kv_heads, hd = c.head_dim, dim = c.dim, total = h.total;
  const int32_t qkv_w = c.q_size() + 2 * c.kv_size();
  const k::RopeStyle rope =
      c.rope_style == RopeStyle::kHalf ? k::RopeStyle::kRotateHalf : k::RopeStyle::kInterleaved;
  const cuda_internal::LayerBuffers& w = layers[l];
  auto* q = qkv.get<uint16_t>();
  if (fused) {  // res already holds the previous layer's output
    phases.Mark("attn_norm+qkv", stream);
    HKV_CUDA_RETURN_IF_ERROR(k::RmsNormGemv(kDType, res.get(), dim, w.attn_norm.get(), c.norm_eps,
                                            w.wqkv.get(), dim, q, qkv_w, total, qkv_w, dim,
                                            options.fused_gemv_cols.qkv, stream));
  } else {
    phases.Mark("attn_norm", stream);
    HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, l == 0 ? res.get() : tmp.get(),
                                        l == 0 ? nullptr : res.get(), w.attn_norm.get(), xb.get(),
                                        total, dim, c.norm_eps, stream));
    phases.Mark("qkv", stream);
    HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, xb.get(), dim,
                                                 w.wqkv.get(), dim, q, qkv_w, false, total, qkv_w,
                                                 dim));
  }
  if (options.fused_decode || options.fused_rope_kv_append) {
    // RoPE of every token, and the K/V writes of the plain ones, in one kernel.
    phases.Mark("rope+kv_append", stream);
    k::RopeKvAppendArgs ra;
    ra.dtype = kDType;
    ra.qkv = q;
    ra.stride = qkv_w;
    ra.k_offset = c.q_size();
    ra.v_offset = c.q_size() + c.kv_size();
    ra.num_q_heads = c.num_heads;
    ra.pos = d.pos;
    ra.tokens = total;
    ra.theta = c.rope_theta;
    ra.inv_freq = inv_freq.get<float>();
    ra.style = rope;
    ra.slots = d.slots + static_cast<size_t>(l) * h.plain_tokens * H;
    ra.append_tokens = h.plain_tokens;
    HKV_CUDA_RETURN_IF_ERROR(k::RopeKvAppend(ra, after, stream));
  } else {
    phases.Mark("rope", stream);
    HKV_CUDA_RETURN_IF_ERROR(k::Rope(kDType, q, qkv_w, c.num_heads, q + c.q_size(), qkv_w, H, d.pos,
                                     total, hd, c.rope_theta, inv_freq.get<float>(), rope, stream));
    if (h.plain_tokens > 0) {
      phases.Mark("kv_append", stream);
      HKV_CUDA_RETURN_IF_ERROR(k::AppendKvSlots(
          kDType, after, q + c.q_size(), q + c.q_size() + c.kv_size(), qkv_w,
          d.slots + static_cast<size_t>(l) * h.plain_tokens * H, h.plain_tokens, stream));
    }
  }
  if (h.num_decode > 0) {
    phases.Mark("decode_attention", stream);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    HKV_CUDA_RETURN_IF_ERROR(k::RunDecodeAttention(
        d.plans[l], after, kDType, q, qkv_w, attn.get<uint16_t>(), c.q_size(), scale, stream));
    HKV_RETURN_IF_ERROR(RunProbes(l, after));  // Nothing unless the step asked (eager only).
  }
  if (h.num_prefill > 0) {
    phases.Mark("prefill_attention", stream);
    k::PagedKvView prefix = after;
    prefix.indptr = d.indptr_b;
    prefix.indices = d.indices_b;
    prefix.last_len = d.last_b;
    prefix.row_offset = static_cast<int32_t>(l * H);  // indptr_b lists prefill rows only
    HKV_RETURN_IF_ERROR(RunPrefill(h, h.num_decode, h.num_prefill, d.cu_prefill, h.max_prefill,
                                   &prefix, last_tile_only));
    if (!h.paged_select.empty()) HKV_RETURN_IF_ERROR(RunPagedSelect(b, h, d, l));
  }
  if (h.num_select > 0) {
    phases.Mark("select", stream);
    HKV_RETURN_IF_ERROR(RunSelect(b, h, d, l, last_tile_only));
  }
  return absl::OkStatus();
}

// Layer l from the attention output: o_proj, norm, SwiGLU MLP, down_proj (row-parallel ones
// summed over the ranks), leaving the layer's output in `tmp` (fused: added to `res`). `rows`
// names the attention output and residual rows it runs on (every row of the step, or the
// last layer's sampled rows).
absl::Status CudaWorker::State::LayerMlp(const MlpRows& rows, int32_t l, bool fused) {
  const ModelConfig& c = cfg;
  const int32_t dim = c.dim, hid = c.hidden_dim, total = rows.count;
  if (total == 0) return absl::OkStatus();
  const cuda_internal::LayerBuffers& w = layers[l];
  if (fused) {  // both residual adds in the products' epilogues; the layer's output is in res
    phases.Mark("o_proj+residual", stream);
    HKV_CUDA_RETURN_IF_ERROR(k::GemvAddResidual(kDType, rows.attn, c.q_size(), w.wo.get(),
                                                c.q_size(), rows.res, dim, total, dim, c.q_size(),
                                                options.fused_gemv_cols.o, stream));
    phases.Mark("ffn_norm+gate_up+swiglu", stream);
    HKV_CUDA_RETURN_IF_ERROR(k::RmsNormGemvSwiGlu(
        kDType, rows.res, dim, w.ffn_norm.get(), c.norm_eps, w.w_gate_up.get(), dim, hidden.get(),
        hid, total, hid, dim, options.fused_gemv_cols.gate_up, stream));
    phases.Mark("down_proj+residual", stream);
    HKV_CUDA_RETURN_IF_ERROR(k::GemvAddResidual(kDType, hidden.get(), hid, w.w_down.get(), hid,
                                                rows.res, dim, total, dim, hid,
                                                options.fused_gemv_cols.down, stream));
    return absl::OkStatus();
  }
  phases.Mark("o_proj", stream);
  HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, rows.attn, c.q_size(),
                                               w.wo.get(), c.q_size(), tmp.get(), dim, false, total,
                                               dim, c.q_size()));
  if (options.tp.size > 1) {  // row-parallel o_proj: sum the ranks' partial outputs
    phases.Mark("all_reduce", stream);
    HKV_RETURN_IF_ERROR(
        options.tp.comm->AllReduceSum(tmp.get(), int64_t{total} * dim, kDType, stream));
  }
  phases.Mark("ffn_norm", stream);
  HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, tmp.get(), rows.res, w.ffn_norm.get(), xb.get(),
                                      total, dim, c.norm_eps, stream));
  phases.Mark("gate_up+swiglu", stream);
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
  phases.Mark("down_proj", stream);
  HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, hidden.get(), hid,
                                               w.w_down.get(), hid, tmp.get(), dim, false, total,
                                               dim, hid));
  if (options.tp.size > 1) {  // row-parallel down_proj
    phases.Mark("all_reduce", stream);
    HKV_RETURN_IF_ERROR(
        options.tp.comm->AllReduceSum(tmp.get(), int64_t{total} * dim, kDType, stream));
  }
  return absl::OkStatus();
}

// Final norm, then the LM head and sampling of the sampled rows. `rows`: the last layer's
// (every row, or the sampled rows in sample order when it was pruned).
absl::Status CudaWorker::State::SampleStep(const HostStep& h, const DeviceStep& d,
                                           const MlpRows& rows, bool fused) {
  const ModelConfig& c = cfg;
  const int32_t dim = c.dim, ns = static_cast<int32_t>(h.sample_rows.size());
  const bool pruned = rows.count < h.total;  // PrunesLastLayer's rows: the sampled ones
  if (ns == 0) return absl::OkStatus();      // nothing reads the final norm
  phases.Mark("final_norm", stream);
  HKV_CUDA_RETURN_IF_ERROR(k::RmsNorm(kDType, fused ? rows.res : tmp.get(),
                                      fused ? nullptr : rows.res, final_norm.get(), xb.get(),
                                      rows.count, dim, c.norm_eps, stream));
  // Gather the sampled rows (graph steps sample every row, in place; pruned steps hold them).
  const void* x = xb.get();
  if (!h.graph && !pruned) {
    HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, xb.get(), rows.count, dim, d.sample_token,
                                                ns, sample_x.get(), stream));
    x = sample_x.get();
  }
  const DeviceBuffer& head = lm_head.bytes() > 0 ? lm_head : embedding;
  phases.Mark("lm_head", stream);
  HKV_CUBLAS_RETURN_IF_ERROR(k::LinearRowMajor(cublas, stream, kDType, x, dim, head.get(), dim,
                                               logits.get(), c.vocab_size, true, ns, c.vocab_size,
                                               dim));
  phases.Mark("sample", stream);
  HKV_ASSIGN_OR_RETURN(const float* sample_from, PenalisedLogits(ns));
  HKV_CUDA_RETURN_IF_ERROR(k::SampleTokens(sample_from, c.vocab_size, ns, c.vocab_size,
                                           d.sample_rows, tokens.get<int32_t>(), stream));
  return RunLogprobs(ns);
}

// Launches the whole step on the stream: no host sync, no allocation (so it can be captured).
absl::Status CudaWorker::State::Forward(const Batch& b, const HostStep& h, const DeviceStep& d) {
  const k::PagedKvView after = KvViewAfter(d);
  const bool fused = FusedDecode(h);
  phases.BeginStep();
  phases.Mark("embedding", stream);
  HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, embedding.get(), cfg.vocab_size, cfg.dim,
                                              d.ids, h.total, res.get(), stream));
  const int32_t last = cfg.num_layers - 1;
  const bool prune = PrunesLastLayer(h);
  MlpRows rows{attn.get(), res.get(), h.total};
  for (int32_t l = 0; l <= last; ++l) {
    HKV_RETURN_IF_ERROR(LayerAttention(b, h, d, l, after, fused, prune && l == last));
    if (prune && l == last) {  // on from here with the sampled rows only, in sample order
      const int32_t ns = static_cast<int32_t>(h.sample_rows.size());
      if (ns > 0) {
        phases.Mark("gather_sampled", stream);
        HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, attn.get(), h.total, cfg.q_size(),
                                                    d.sample_token, ns, sample_attn.get(), stream));
        HKV_CUDA_RETURN_IF_ERROR(k::EmbeddingLookup(kDType, res.get(), h.total, cfg.dim,
                                                    d.sample_token, ns, sample_x.get(), stream));
      }
      rows = MlpRows{sample_attn.get(), sample_x.get(), ns};
    }
    HKV_RETURN_IF_ERROR(LayerMlp(rows, l, fused));
  }
  HKV_RETURN_IF_ERROR(SampleStep(h, d, rows, fused));
  phases.Mark("end", stream);
  return absl::OkStatus();
}

}  // namespace hkv
