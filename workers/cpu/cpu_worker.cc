#include "workers/cpu/cpu_worker.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/batch_validation.h"
#include "common/status_macros.h"
#include "headkv/selection.h"
#include "model/rope.h"
#include "workers/cpu/cpu_ops.h"
#include "workers/sampler.h"

namespace hkv {

CpuWorker::CpuWorker(std::shared_ptr<const Model> model, int32_t num_blocks, int32_t block_size,
                     int32_t num_threads)
    : model_(std::move(model)),
      num_blocks_(num_blocks),
      block_size_(block_size),
      head_dim_(model_->config.head_dim),
      k_pool_(static_cast<size_t>(num_blocks) * block_size * head_dim_),
      v_pool_(k_pool_.size()),
      inv_freq_(RopeInvFreq(model_->config)),
      pool_(num_threads) {}

absl::StatusOr<KvCapacity> CpuWorker::ReportKvCapacity() const {
  return KvCapacity{2LL * block_size_ * head_dim_ * static_cast<int64_t>(sizeof(float)), INT32_MAX};
}

absl::Status CpuWorker::AllocateKvPool(int64_t num_blocks) {
  if (num_blocks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("a KV pool of ", num_blocks, " blocks"));
  }
  if (num_blocks > INT32_MAX) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a KV pool of ", num_blocks, " blocks: block ids are 32-bit"));
  }
  num_blocks_ = static_cast<int32_t>(num_blocks);
  const size_t elems = static_cast<size_t>(num_blocks) * block_size_ * head_dim_;
  k_pool_.assign(elems, 0.0f);
  v_pool_.assign(elems, 0.0f);
  return absl::OkStatus();
}

absl::Status CpuWorker::CheckBatch(const Batch& b) const {
  const ModelConfig& c = model_->config;
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("malformed batch: ", parts...));
  };
  if (b.num_layers != c.num_layers || b.num_kv_heads != c.num_kv_heads) {
    return bad("shape ", b.num_layers, "x", b.num_kv_heads, " != model ", c.num_layers, "x",
               c.num_kv_heads);
  }
  if (b.block_size != block_size_) return bad("block_size ", b.block_size, " != ", block_size_);
  HKV_RETURN_IF_ERROR(ValidateBatchShape(b));
  HKV_RETURN_IF_ERROR(ValidateBlockIds(b, num_blocks_));
  HKV_RETURN_IF_ERROR(ValidateRowLengths(b));
  HKV_RETURN_IF_ERROR(ValidateProbes(b));
  for (const SequenceStep& s : b.seqs) {
    if (s.tokens.empty()) return bad("sequence ", s.id, " has no tokens");
    for (TokenId t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) return bad("token ", t, " outside the vocabulary");
    }
    if (s.start_pos < 0 || s.start_pos + static_cast<int64_t>(s.tokens.size()) > c.max_seq_len) {
      return bad("sequence ", s.id, " runs past the context length ", c.max_seq_len);
    }
    // A compressed prefill in one step exceeds the window; the last chunk of a chunked one
    // (start_pos > 0, rows holding the earlier chunks) holds the whole window.
    const int32_t T = static_cast<int32_t>(s.tokens.size());
    if (s.select && (s.selection.window < 1 || T < s.selection.window ||
                     (s.start_pos == 0 && T == s.selection.window))) {
      return bad("compressed prefill of sequence ", s.id, " (", T, " tokens at ", s.start_pos,
                 ") does not hold its window of ", s.selection.window);
    }
    if (s.select && s.start_pos > 0 && !s.layer_blocks.empty()) {
      return bad("chunked compressed prefill of sequence ", s.id, " with a layer reservation");
    }
  }
  return absl::OkStatus();
}

absl::Status CpuWorker::Launch(const Batch& batch) {
  if (launched_.size() >= 2) {
    return absl::FailedPreconditionError("two steps are launched already: Await one first");
  }
  absl::StatusOr<BatchResult> result;
  if (HasPendingTokens(batch)) {
    Batch resolved = batch;
    const absl::Status status = pending_.Resolve(&resolved);
    result = status.ok() ? Execute(resolved) : absl::StatusOr<BatchResult>(status);
  } else {
    result = Execute(batch);
  }
  if (result.ok()) {
    pending_.Record(batch, *result);
  } else {
    pending_.Clear();
  }
  launched_.push_back(std::move(result));
  return absl::OkStatus();  // A failed step reports at its Await, in order.
}

absl::StatusOr<BatchResult> CpuWorker::Await() {
  if (launched_.empty()) return absl::FailedPreconditionError("no step was launched");
  absl::StatusOr<BatchResult> result = std::move(launched_.front());
  launched_.pop_front();
  return result;
}

absl::StatusOr<BatchResult> CpuWorker::Execute(const Batch& delta_or_csr) {
  // A delta step: the tables it changes are ours to keep; the math reads the full CSR.
  Batch with_csr;
  const bool delta = delta_or_csr.delta_only();
  if (delta) {
    HKV_RETURN_IF_ERROR(ValidatePageTable(delta_or_csr));
    HKV_RETURN_IF_ERROR(tables_.Apply(*delta_or_csr.kv_delta));
    with_csr = delta_or_csr;
    with_csr.kv_delta.reset();
    HKV_RETURN_IF_ERROR(tables_.FillBatchCsr(&with_csr));
  }
  const Batch& batch = delta ? with_csr : delta_or_csr;
  HKV_RETURN_IF_ERROR(CheckBatch(batch));
  // A failed step leaves its inputs in the histories; the scheduler recomputes its sequences
  // from position 0, which starts their histories again.
  histories_.Observe(batch);
  for (const SequenceStep& s : batch.seqs) HKV_RETURN_IF_ERROR(histories_.CheckFor(s));
  const size_t block_floats = static_cast<size_t>(block_size_) * head_dim_;
  for (const auto& [src, dst] : batch.block_copies) {
    std::memcpy(KeySlot(dst, 0), KeySlot(src, 0), block_floats * sizeof(float));
    std::memcpy(ValueSlot(dst, 0), ValueSlot(src, 0), block_floats * sizeof(float));
  }
  BatchResult result;
  result.seqs.resize(batch.seqs.size());
  std::vector<absl::Status> status(batch.seqs.size());
  const int64_t n = static_cast<int64_t>(batch.seqs.size());
  if (n == 1) {
    status[0] = RunSequence(batch, 0, &pool_, &result.seqs[0]);
  } else {
    // Sequences in parallel; each one's matmuls single-threaded. Every sequence writes only its
    // own blocks, and the order of operations inside a sequence does not depend on the batch.
    pool_.ParallelFor(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        status[i] = RunSequence(batch, i, nullptr, &result.seqs[i]);
      }
    });
  }
  for (const absl::Status& s : status) HKV_RETURN_IF_ERROR(s);
  return result;
}

// Plain rows of layer `layer`: appends the step's K/V to each KV head's blocks, then attends
// every query head of its group over the row (the paged cache, the new tokens included).
absl::Status CpuWorker::StoreAndAttend(const Batch& b, int64_t index, int32_t layer, const float* q,
                                       const float* k, const float* v, float* scores, float* attn,
                                       SequenceResult* result) {
  const SequenceStep& step = b.seqs[index];
  const ModelConfig& c = model_->config;
  const int32_t T = static_cast<int32_t>(b.seqs[index].tokens.size());
  const int32_t q_size = c.q_size(), kv_size = c.kv_size(), d = head_dim_;
  const int32_t group = c.group_size(), l = layer;
  for (int32_t h = 0; h < c.num_kv_heads; ++h) {
    const int64_t r = b.row(index, l, h);
    const BlockId* blocks = &b.kv_indices[b.kv_indptr[r]];
    const int32_t base = b.kv_len_before[r];
    if (b.kv_len_after[r] != base + T) {
      return absl::InvalidArgumentError(absl::StrCat("malformed batch: row ", r, " grows by ",
                                                     b.kv_len_after[r] - base, " not ", T));
    }
    for (int32_t t = 0; t < T; ++t) {
      const int32_t slot = base + t;
      std::memcpy(KeySlot(blocks[slot / block_size_], slot % block_size_), &k[t * kv_size + h * d],
                  d * sizeof(float));
      std::memcpy(ValueSlot(blocks[slot / block_size_], slot % block_size_),
                  &v[t * kv_size + h * d], d * sizeof(float));
    }
    for (int32_t hq = h * group; hq < (h + 1) * group; ++hq) {
      for (int32_t t = 0; t < T; ++t) {
        Attend(
            &q[t * q_size + hq * d], d, base + t + 1,
            [&](int32_t j) { return KeySlot(blocks[j / block_size_], j % block_size_); },
            [&](int32_t j) { return ValueSlot(blocks[j / block_size_], j % block_size_); }, scores,
            &attn[t * q_size + hq * d]);
      }
      if (step.probe_top_n > 0) {  // One token (ValidateProbes): scores = exp(s - max) of its row.
        const int32_t k_top = std::min(step.probe_top_n, step.probe_prompt_len);
        const size_t at = (static_cast<size_t>(layer) * c.num_heads + hq) * k_top;
        ProbeTopN(scores, base + 1, step.probe_prompt_len, k_top, &result->probe_positions[at],
                  &result->probe_weights[at]);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuWorker::RunSequence(const Batch& b, int64_t index, ThreadPool* pool,
                                    SequenceResult* result) {
  const ModelConfig& c = model_->config;
  const ModelWeights& w = model_->weights;
  const SequenceStep& step = b.seqs[index];
  const int32_t T = static_cast<int32_t>(step.tokens.size());
  const int32_t dim = c.dim, q_size = c.q_size(), kv_size = c.kv_size(), d = head_dim_;
  const int32_t group = c.group_size();
  result->id = step.id;
  if (step.select) result->kept_per_head.assign(c.num_layers * c.num_kv_heads, 0);
  if (step.probe_top_n > 0) {
    const size_t n = static_cast<size_t>(c.num_layers) * c.num_heads *
                     std::min(step.probe_top_n, step.probe_prompt_len);
    result->probe_positions.assign(n, -1);
    result->probe_weights.assign(n, 0.0f);
  }

  std::vector<float> x(static_cast<size_t>(T) * dim), xb(x.size()),
      attn(static_cast<size_t>(T) * q_size);
  std::vector<float> q(attn.size()), k(static_cast<size_t>(T) * kv_size), v(k.size());
  std::vector<float> h1(static_cast<size_t>(T) * c.hidden_dim), h3(h1.size()), o(x.size());
  for (int32_t t = 0; t < T; ++t) {
    std::memcpy(&x[t * dim], &w.embedding[static_cast<size_t>(step.tokens[t]) * dim],
                dim * sizeof(float));
  }
  // Attention scores: as long as the longest row this step reads (compressed rows can be
  // shorter than the position, full rows as long).
  int32_t longest = T;
  for (int64_t r = b.row(index, 0, 0); r < b.row(index + 1, 0, 0); ++r) {
    longest = std::max(longest, b.kv_len_after[r]);
  }
  std::vector<float> scores(longest);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    for (int32_t t = 0; t < T; ++t) {
      RmsNorm(&x[t * dim], lw.attn_norm.data(), dim, c.norm_eps, &xb[t * dim]);
    }
    MatMul(xb.data(), T, dim, lw.wq, lw.bq, q_size, q.data(), pool);
    MatMul(xb.data(), T, dim, lw.wk, lw.bk, kv_size, k.data(), pool);
    MatMul(xb.data(), T, dim, lw.wv, lw.bv, kv_size, v.data(), pool);
    for (int32_t t = 0; t < T; ++t) {
      ApplyRope(&q[t * q_size], c.num_heads, d, step.start_pos + t, inv_freq_, c.rope_style);
      ApplyRope(&k[t * kv_size], c.num_kv_heads, d, step.start_pos + t, inv_freq_, c.rope_style);
    }
    if (step.select && step.start_pos > 0) {
      // Last chunk of a chunked compressed prefill: the rows hold the earlier chunks; store
      // this one and attend like a plain chunk, then select over the whole rows in place.
      HKV_RETURN_IF_ERROR(StoreAndAttend(b, index, l, q.data(), k.data(), v.data(), scores.data(),
                                         attn.data(), result));
      const int32_t w_len = step.selection.window;
      HKV_RETURN_IF_ERROR(SelectInPlace(b, index, l, &q[(T - w_len) * q_size], result));
    } else if (step.select) {
      // Compressed prefill: attend over the layer's full K/V in scratch, then store the
      // selection.
      for (int32_t t = 0; t < T; ++t) {
        for (int32_t hq = 0; hq < c.num_heads; ++hq) {
          const int32_t h = hq / group;
          Attend(
              &q[t * q_size + hq * d], d, t + 1,
              [&](int32_t j) { return &k[static_cast<size_t>(j) * kv_size + h * d]; },
              [&](int32_t j) { return &v[static_cast<size_t>(j) * kv_size + h * d]; },
              scores.data(), &attn[t * q_size + hq * d]);
        }
      }
      const int32_t w_len = step.selection.window;
      HKV_RETURN_IF_ERROR(
          SelectAndStore(b, index, l, &q[(T - w_len) * q_size], k.data(), v.data(), T, result));
    } else {
      HKV_RETURN_IF_ERROR(StoreAndAttend(b, index, l, q.data(), k.data(), v.data(), scores.data(),
                                         attn.data(), result));
    }
    MatMul(attn.data(), T, q_size, lw.wo, {}, dim, o.data(), pool);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    for (int32_t t = 0; t < T; ++t) {
      RmsNorm(&x[t * dim], lw.ffn_norm.data(), dim, c.norm_eps, &xb[t * dim]);
    }
    MatMul(xb.data(), T, dim, lw.w_gate, {}, c.hidden_dim, h1.data(), pool);
    MatMul(xb.data(), T, dim, lw.w_up, {}, c.hidden_dim, h3.data(), pool);
    for (size_t i = 0; i < h1.size(); ++i) {
      const float g = h1[i];
      h1[i] = g / (1.0f + std::exp(-g)) * h3[i];
    }
    MatMul(h1.data(), T, c.hidden_dim, lw.w_down, {}, dim, o.data(), pool);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }
  if (!step.sample) return absl::OkStatus();
  std::vector<float> last(dim), logits(c.vocab_size);
  RmsNorm(&x[(T - 1) * dim], w.final_norm.data(), dim, c.norm_eps, last.data());
  MatMul(last.data(), 1, dim, w.classifier(), {}, c.vocab_size, logits.data(), pool);
  if (return_logits_) result->logits = logits;  // Raw: before penalties.
  SampleSequence(step, histories_, logits, result);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> CpuWorker::LayerCaps(
    const SequenceStep& step, int32_t layer, const std::vector<std::vector<float>>& scores) const {
  const ModelConfig& c = model_->config;
  const KvSelectionSpec& spec = step.selection;
  const int32_t H = c.num_kv_heads;
  if (spec.capacity.empty()) {  // Adaptive.
    if (static_cast<int32_t>(spec.layer_budget.size()) != c.num_layers) {
      return absl::InvalidArgumentError("malformed batch: adaptive selection without budgets");
    }
    return AdaKvAllocate(scores, spec.layer_budget[layer], spec.adaptive_floor_fraction);
  }
  if (static_cast<int32_t>(spec.capacity.size()) != c.num_layers * H) {
    return absl::InvalidArgumentError("malformed batch: selection capacity has wrong size");
  }
  return std::vector<int32_t>(spec.capacity.begin() + layer * H,
                              spec.capacity.begin() + (layer + 1) * H);
}

absl::Status CpuWorker::SelectAndStore(const Batch& b, int64_t index, int32_t layer,
                                       const float* q_window, const float* k, const float* v,
                                       int32_t n, SequenceResult* result) {
  const ModelConfig& c = model_->config;
  const SequenceStep& step = b.seqs[index];
  const KvSelectionSpec& spec = step.selection;
  const int32_t H = c.num_kv_heads, d = head_dim_, w = spec.window;
  const std::vector<std::vector<float>> scores =
      WindowScores(q_window, k, n, w, c.num_heads, H, d, spec.pool_kernel, /*group_average=*/true);
  const bool adaptive = spec.capacity.empty();
  if (adaptive && static_cast<int32_t>(step.layer_block_indptr.size()) != c.num_layers + 1) {
    return absl::InvalidArgumentError("malformed batch: adaptive selection without a reservation");
  }
  HKV_ASSIGN_OR_RETURN(const std::vector<int32_t> caps, LayerCaps(step, layer, scores));
  int32_t next_layer_block = adaptive ? step.layer_block_indptr[layer] : 0;
  for (int32_t h = 0; h < H; ++h) {
    const std::vector<int32_t> kept = SelectKept(scores[h], caps[h], n, w);
    const int32_t count = static_cast<int32_t>(kept.size());
    const BlockId* blocks;
    if (adaptive) {
      const int32_t need = (count + block_size_ - 1) / block_size_;
      if (next_layer_block + need > step.layer_block_indptr[layer + 1]) {
        return absl::InvalidArgumentError(absl::StrCat("malformed batch: layer ", layer,
                                                       " reservation too small for the selection"));
      }
      blocks = &step.layer_blocks[next_layer_block];
      next_layer_block += need;
    } else {
      const int64_t r = b.row(index, layer, h);
      if (b.kv_len_before[r] != 0 || b.kv_len_after[r] != count) {
        return absl::InvalidArgumentError(absl::StrCat("malformed batch: row ", r, " expects ",
                                                       b.kv_len_after[r], " kept tokens, the plan ",
                                                       "selects ", count));
      }
      blocks = &b.kv_indices[b.kv_indptr[r]];
    }
    for (int32_t s = 0; s < count; ++s) {
      const size_t src = (static_cast<size_t>(kept[s]) * H + h) * d;
      std::memcpy(KeySlot(blocks[s / block_size_], s % block_size_), k + src, d * sizeof(float));
      std::memcpy(ValueSlot(blocks[s / block_size_], s % block_size_), v + src, d * sizeof(float));
    }
    result->kept_per_head[layer * H + h] = count;
    if (return_kept_positions_) {  // Layers run in order, heads too: rows append in order.
      result->kept_positions.insert(result->kept_positions.end(), kept.begin(), kept.end());
    }
  }
  return absl::OkStatus();
}

absl::Status CpuWorker::SelectInPlace(const Batch& b, int64_t index, int32_t layer,
                                      const float* q_window, SequenceResult* result) {
  const ModelConfig& c = model_->config;
  const SequenceStep& step = b.seqs[index];
  const KvSelectionSpec& spec = step.selection;
  const int32_t H = c.num_kv_heads, d = head_dim_, w = spec.window;
  const int32_t n = step.start_pos + static_cast<int32_t>(step.tokens.size());
  // The layer's keys gathered from the rows, in the layout WindowScores reads: the same
  // values the one-step prefill holds in scratch, so the scores are bit for bit the same.
  std::vector<float> keys(static_cast<size_t>(n) * H * d);
  for (int32_t h = 0; h < H; ++h) {
    const int64_t r = b.row(index, layer, h);
    if (b.kv_len_before[r] != step.start_pos || b.kv_len_after[r] != n) {
      return absl::InvalidArgumentError(absl::StrCat("malformed batch: row ", r, " holds ",
                                                     b.kv_len_after[r], " of the prompt's ", n,
                                                     " tokens at its last chunk"));
    }
    const BlockId* blocks = &b.kv_indices[b.kv_indptr[r]];
    for (int32_t j = 0; j < n; ++j) {
      std::memcpy(&keys[(static_cast<size_t>(j) * H + h) * d],
                  KeySlot(blocks[j / block_size_], j % block_size_), d * sizeof(float));
    }
  }
  const std::vector<std::vector<float>> scores = WindowScores(
      q_window, keys.data(), n, w, c.num_heads, H, d, spec.pool_kernel, /*group_average=*/true);
  HKV_ASSIGN_OR_RETURN(const std::vector<int32_t> caps, LayerCaps(step, layer, scores));
  for (int32_t h = 0; h < H; ++h) {
    const BlockId* blocks = &b.kv_indices[b.kv_indptr[b.row(index, layer, h)]];
    const std::vector<int32_t> kept = SelectKept(scores[h], caps[h], n, w);
    // Compaction in place: kept is ascending, so kept[s] >= s and slot kept[s] is read before
    // any later s overwrites it.
    for (int32_t s = 0; s < static_cast<int32_t>(kept.size()); ++s) {
      if (kept[s] == s) continue;
      const int32_t from = kept[s];
      std::memcpy(KeySlot(blocks[s / block_size_], s % block_size_),
                  KeySlot(blocks[from / block_size_], from % block_size_), d * sizeof(float));
      std::memcpy(ValueSlot(blocks[s / block_size_], s % block_size_),
                  ValueSlot(blocks[from / block_size_], from % block_size_), d * sizeof(float));
    }
    result->kept_per_head[layer * H + h] = static_cast<int32_t>(kept.size());
    if (return_kept_positions_) {
      result->kept_positions.insert(result->kept_positions.end(), kept.begin(), kept.end());
    }
  }
  return absl::OkStatus();
}

}  // namespace hkv
