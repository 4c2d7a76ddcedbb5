#include "executor/step_codec.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <type_traits>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/batch_validation.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

static_assert(std::endian::native == std::endian::little, "the step format is little-endian");

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out_.insert(out_.end(), p, p + sizeof(T));
  }
  void PutBool(bool b) { Put<uint8_t>(b ? 1 : 0); }
  template <typename T>
  void PutVector(const std::vector<T>& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    Put<uint64_t>(v.size());
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    out_.insert(out_.end(), p, p + v.size() * sizeof(T));
  }
  std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> bytes) : bytes_(bytes) {}

  template <typename T>
  absl::Status Get(T* v) {
    HKV_RETURN_IF_ERROR(Need(sizeof(T)));
    std::memcpy(v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  // Reads a message's leading tag; DATA_LOSS naming `what` when it is not `tag`.
  absl::Status ExpectTag(uint32_t tag, const char* what) {
    uint32_t got = 0;
    HKV_RETURN_IF_ERROR(Get(&got));
    if (got != tag) return absl::DataLossError(absl::StrCat("not a ", what, " message"));
    return absl::OkStatus();
  }
  absl::Status GetBool(bool* b) {
    uint8_t v = 0;
    HKV_RETURN_IF_ERROR(Get(&v));
    if (v > 1) return absl::DataLossError("step message: a boolean is neither 0 nor 1");
    *b = v == 1;
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status GetVector(std::vector<T>* v) {
    uint64_t n = 0;
    HKV_RETURN_IF_ERROR(Get(&n));
    if (n > (bytes_.size() - pos_) / sizeof(T)) return Truncated();
    v->resize(n);
    std::memcpy(v->data(), bytes_.data() + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return absl::OkStatus();
  }
  // A count of items that each take at least `min_bytes` more bytes.
  absl::Status GetCount(uint64_t min_bytes, uint64_t* n) {
    HKV_RETURN_IF_ERROR(Get(n));
    if (*n > (bytes_.size() - pos_) / std::max<uint64_t>(min_bytes, 1)) return Truncated();
    return absl::OkStatus();
  }
  absl::Status Done() const {
    if (pos_ != bytes_.size()) {
      return absl::DataLossError(
          absl::StrCat("step message: ", bytes_.size() - pos_, " bytes left over"));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Need(uint64_t n) const {
    return n > bytes_.size() - pos_ ? Truncated() : absl::OkStatus();
  }
  static absl::Status Truncated() { return absl::DataLossError("step message is truncated"); }

  absl::Span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

constexpr uint32_t kBatchTag = 0x42544348;   // "BTCH"
constexpr uint32_t kResultTag = 0x52534C54;  // "RSLT"
constexpr uint32_t kSetupTag = 0x53455455;   // "SETU"

}  // namespace

absl::StatusOr<std::vector<uint8_t>> BatchEncoder::Encode(const Batch& b) {
  // Only the page table: row lengths travel as they are, and the receiver checks them.
  if (const absl::Status table = ValidatePageTable(b); !table.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("step to send: ", table.message()));
  }
  Writer w;
  w.Put(kBatchTag);
  w.Put(b.num_layers);
  w.Put(b.num_kv_heads);
  w.Put(b.block_size);
  w.Put<uint64_t>(b.seqs.size());
  for (const SequenceStep& s : b.seqs) {
    w.Put(s.id);
    w.PutVector(s.tokens);
    w.Put(s.start_pos);
    w.PutBool(s.sample);
    w.Put(s.sample_step);
    const StepSampling& p = s.sampling;
    w.Put(p.temperature);
    w.Put(p.top_k);
    w.Put(p.top_p);
    w.Put(p.seed);
    w.Put(p.presence_penalty);
    w.Put(p.frequency_penalty);
    w.Put(p.repetition_penalty);
    w.Put(p.min_p);
    w.Put(p.min_tokens);
    w.Put(p.logprobs);
    w.Put(s.num_prompt_tokens);
    w.Put(s.num_samples);
    w.PutVector(s.min_tokens_banned);
    w.PutBool(s.select);
    const KvSelectionSpec& k = s.selection;
    w.Put(k.window);
    w.Put(k.pool_kernel);
    w.PutVector(k.capacity);
    w.PutVector(k.layer_budget);
    w.Put(k.adaptive_floor_fraction);
    w.PutVector(s.layer_block_indptr);
    w.PutVector(s.layer_blocks);
  }
  // Page table: per row, how many leading blocks equal the same row's in this sequence's previous
  // step (0 for a sequence that was not in it), then the row's other blocks.
  const int64_t rows_per_seq = static_cast<int64_t>(b.num_layers) * b.num_kv_heads;
  const int64_t rows = b.num_rows();
  std::vector<uint32_t> reuse(rows, 0), tail_len(rows, 0);
  std::vector<BlockId> tails;
  tails.reserve(b.kv_indices.size() / 8 + 16);
  absl::flat_hash_map<RequestId, SeqRows> current;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t seq = rows_per_seq > 0 ? r / rows_per_seq : 0;
    const int64_t local = rows_per_seq > 0 ? r % rows_per_seq : 0;
    const BlockId* row = b.kv_indices.data() + b.kv_indptr[r];
    const int64_t n = b.kv_indptr[r + 1] - b.kv_indptr[r];
    int64_t same = 0;
    if (seq < static_cast<int64_t>(b.seqs.size())) {
      const RequestId id = b.seqs[seq].id;
      auto it = previous_.find(id);
      if (it != previous_.end() && local + 1 < static_cast<int64_t>(it->second.indptr.size())) {
        const SeqRows& p = it->second;
        const int64_t pn = p.indptr[local + 1] - p.indptr[local];
        const BlockId* prow = p.blocks.data() + p.indptr[local];
        while (same < std::min(n, pn) && prow[same] == row[same]) ++same;
      }
      SeqRows& c = current[id];
      if (c.indptr.empty()) c.indptr.push_back(0);
      c.blocks.insert(c.blocks.end(), row, row + n);
      c.indptr.push_back(static_cast<int64_t>(c.blocks.size()));
    }
    reuse[r] = static_cast<uint32_t>(same);
    tail_len[r] = static_cast<uint32_t>(n - same);
    tails.insert(tails.end(), row + same, row + n);
  }
  previous_ = std::move(current);
  w.PutVector(reuse);
  w.PutVector(tail_len);
  w.PutVector(tails);
  w.PutVector(b.kv_len_before);
  w.PutVector(b.kv_len_after);
  std::vector<BlockId> copies;  // flattened (src, dst) pairs
  for (const auto& [src, dst] : b.block_copies) {
    copies.push_back(src);
    copies.push_back(dst);
  }
  w.PutVector(copies);
  std::vector<RequestId> forks;
  for (const auto& [parent, child] : b.forks) {
    forks.push_back(parent);
    forks.push_back(child);
  }
  w.PutVector(forks);
  w.PutVector(b.released);
  return w.Take();
}

namespace {

// Reads one sequence's step fields, in EncodeBatch's order.
absl::Status ReadSequenceStep(Reader* r, SequenceStep* s) {
  HKV_RETURN_IF_ERROR(r->Get(&s->id));
  HKV_RETURN_IF_ERROR(r->GetVector(&s->tokens));
  HKV_RETURN_IF_ERROR(r->Get(&s->start_pos));
  HKV_RETURN_IF_ERROR(r->GetBool(&s->sample));
  HKV_RETURN_IF_ERROR(r->Get(&s->sample_step));
  StepSampling& p = s->sampling;
  HKV_RETURN_IF_ERROR(r->Get(&p.temperature));
  HKV_RETURN_IF_ERROR(r->Get(&p.top_k));
  HKV_RETURN_IF_ERROR(r->Get(&p.top_p));
  HKV_RETURN_IF_ERROR(r->Get(&p.seed));
  HKV_RETURN_IF_ERROR(r->Get(&p.presence_penalty));
  HKV_RETURN_IF_ERROR(r->Get(&p.frequency_penalty));
  HKV_RETURN_IF_ERROR(r->Get(&p.repetition_penalty));
  HKV_RETURN_IF_ERROR(r->Get(&p.min_p));
  HKV_RETURN_IF_ERROR(r->Get(&p.min_tokens));
  HKV_RETURN_IF_ERROR(r->Get(&p.logprobs));
  HKV_RETURN_IF_ERROR(r->Get(&s->num_prompt_tokens));
  HKV_RETURN_IF_ERROR(r->Get(&s->num_samples));
  HKV_RETURN_IF_ERROR(r->GetVector(&s->min_tokens_banned));
  HKV_RETURN_IF_ERROR(r->GetBool(&s->select));
  KvSelectionSpec& k = s->selection;
  HKV_RETURN_IF_ERROR(r->Get(&k.window));
  HKV_RETURN_IF_ERROR(r->Get(&k.pool_kernel));
  HKV_RETURN_IF_ERROR(r->GetVector(&k.capacity));
  HKV_RETURN_IF_ERROR(r->GetVector(&k.layer_budget));
  HKV_RETURN_IF_ERROR(r->Get(&k.adaptive_floor_fraction));
  HKV_RETURN_IF_ERROR(r->GetVector(&s->layer_block_indptr));
  HKV_RETURN_IF_ERROR(r->GetVector(&s->layer_blocks));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Batch> BatchDecoder::Decode(absl::Span<const uint8_t> bytes) {
  Reader r(bytes);
  HKV_RETURN_IF_ERROR(r.ExpectTag(kBatchTag, "step"));
  Batch b;
  HKV_RETURN_IF_ERROR(r.Get(&b.num_layers));
  HKV_RETURN_IF_ERROR(r.Get(&b.num_kv_heads));
  HKV_RETURN_IF_ERROR(r.Get(&b.block_size));
  uint64_t n = 0;
  HKV_RETURN_IF_ERROR(r.GetCount(/*min_bytes=*/64, &n));
  b.seqs.resize(n);
  for (SequenceStep& s : b.seqs) {
    HKV_RETURN_IF_ERROR(ReadSequenceStep(&r, &s));
  }
  std::vector<uint32_t> reuse, tail_len;
  std::vector<BlockId> tails;
  HKV_RETURN_IF_ERROR(r.GetVector(&reuse));
  HKV_RETURN_IF_ERROR(r.GetVector(&tail_len));
  HKV_RETURN_IF_ERROR(r.GetVector(&tails));
  HKV_RETURN_IF_ERROR(r.GetVector(&b.kv_len_before));
  HKV_RETURN_IF_ERROR(r.GetVector(&b.kv_len_after));
  std::vector<BlockId> copies;
  HKV_RETURN_IF_ERROR(r.GetVector(&copies));
  if (copies.size() % 2 != 0) return absl::DataLossError("step message: odd block-copy list");
  for (size_t i = 0; i < copies.size(); i += 2)
    b.block_copies.emplace_back(copies[i], copies[i + 1]);
  std::vector<RequestId> forks;
  HKV_RETURN_IF_ERROR(r.GetVector(&forks));
  if (forks.size() % 2 != 0) return absl::DataLossError("step message: odd fork list");
  for (size_t i = 0; i < forks.size(); i += 2) b.forks.emplace_back(forks[i], forks[i + 1]);
  HKV_RETURN_IF_ERROR(r.GetVector(&b.released));
  HKV_RETURN_IF_ERROR(r.Done());
  // The shape the workers index by: rows and page table must agree, so that a bad message fails
  // here and not inside a kernel.
  const int64_t rows = b.num_rows();
  if (b.num_layers < 0 || b.num_kv_heads < 0 || b.block_size <= 0 ||
      static_cast<int64_t>(reuse.size()) != rows || static_cast<int64_t>(tail_len.size()) != rows ||
      static_cast<int64_t>(b.kv_len_before.size()) != rows ||
      static_cast<int64_t>(b.kv_len_after.size()) != rows) {
    return absl::DataLossError("step message: page table does not match its batch");
  }
  const int64_t rows_per_seq = static_cast<int64_t>(b.num_layers) * b.num_kv_heads;
  b.kv_indptr.assign(1, 0);
  b.kv_indptr.reserve(rows + 1);
  absl::flat_hash_map<RequestId, SeqRows> current;
  size_t next_tail = 0;
  for (int64_t row = 0; row < rows; ++row) {
    const RequestId id = b.seqs[row / rows_per_seq].id;
    const int64_t local = row % rows_per_seq;
    if (reuse[row] > 0) {
      auto it = previous_.find(id);
      if (it == previous_.end() || local + 1 >= static_cast<int64_t>(it->second.indptr.size()) ||
          reuse[row] > it->second.indptr[local + 1] - it->second.indptr[local]) {
        return absl::DataLossError(
            "step message reuses blocks of a step this node did not see (out of sync)");
      }
      const BlockId* prow = it->second.blocks.data() + it->second.indptr[local];
      b.kv_indices.insert(b.kv_indices.end(), prow, prow + reuse[row]);
    }
    if (tail_len[row] > tails.size() - next_tail)
      return absl::DataLossError("step message is truncated");
    b.kv_indices.insert(b.kv_indices.end(), tails.begin() + next_tail,
                        tails.begin() + next_tail + tail_len[row]);
    next_tail += tail_len[row];
    const int64_t start = b.kv_indptr.back();
    b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
    SeqRows& c = current[id];
    if (c.indptr.empty()) c.indptr.push_back(0);
    c.blocks.insert(c.blocks.end(), b.kv_indices.begin() + start, b.kv_indices.end());
    c.indptr.push_back(static_cast<int64_t>(c.blocks.size()));
  }
  if (next_tail != tails.size())
    return absl::DataLossError("step message: unused page-table blocks");
  previous_ = std::move(current);
  return b;
}

absl::StatusOr<std::vector<uint8_t>> EncodeBatch(const Batch& batch) {
  return BatchEncoder().Encode(batch);
}

absl::StatusOr<Batch> DecodeBatch(absl::Span<const uint8_t> bytes) {
  return BatchDecoder().Decode(bytes);
}

std::vector<uint8_t> EncodeBatchResult(const BatchResult& result) {
  Writer w;
  w.Put(kResultTag);
  w.Put<uint64_t>(result.seqs.size());
  for (const SequenceResult& s : result.seqs) {
    w.Put(s.id);
    w.Put(s.token);
    w.PutVector(s.kept_per_head);
    w.PutVector(s.logits);
    w.PutVector(s.extra_tokens);
    w.Put<uint64_t>(s.logprobs.size());
    for (const TokenLogprobs& l : s.logprobs) {
      w.Put(l.token);
      w.Put(l.logprob);
      w.PutVector(l.top_ids);
      w.PutVector(l.top_logprobs);
    }
  }
  return w.Take();
}

absl::StatusOr<BatchResult> DecodeBatchResult(absl::Span<const uint8_t> bytes) {
  Reader r(bytes);
  HKV_RETURN_IF_ERROR(r.ExpectTag(kResultTag, "step result"));
  BatchResult out;
  uint64_t n = 0;
  HKV_RETURN_IF_ERROR(r.GetCount(/*min_bytes=*/28, &n));
  out.seqs.resize(n);
  for (SequenceResult& s : out.seqs) {
    HKV_RETURN_IF_ERROR(r.Get(&s.id));
    HKV_RETURN_IF_ERROR(r.Get(&s.token));
    HKV_RETURN_IF_ERROR(r.GetVector(&s.kept_per_head));
    HKV_RETURN_IF_ERROR(r.GetVector(&s.logits));
    HKV_RETURN_IF_ERROR(r.GetVector(&s.extra_tokens));
    uint64_t num_logprobs = 0;
    HKV_RETURN_IF_ERROR(r.GetCount(/*min_bytes=*/24, &num_logprobs));
    s.logprobs.resize(num_logprobs);
    for (TokenLogprobs& l : s.logprobs) {
      HKV_RETURN_IF_ERROR(r.Get(&l.token));
      HKV_RETURN_IF_ERROR(r.Get(&l.logprob));
      HKV_RETURN_IF_ERROR(r.GetVector(&l.top_ids));
      HKV_RETURN_IF_ERROR(r.GetVector(&l.top_logprobs));
    }
  }
  HKV_RETURN_IF_ERROR(r.Done());
  return out;
}

std::vector<uint8_t> EncodeGroupSetup(const GroupSetup& setup) {
  Writer w;
  w.Put(kSetupTag);
  w.PutVector(setup.nccl_id);
  w.PutVector(setup.head_of_slot);
  w.Put(setup.blocks_per_rank);
  return w.Take();
}

absl::StatusOr<GroupSetup> DecodeGroupSetup(absl::Span<const uint8_t> bytes) {
  Reader r(bytes);
  HKV_RETURN_IF_ERROR(r.ExpectTag(kSetupTag, "group setup"));
  GroupSetup out;
  HKV_RETURN_IF_ERROR(r.GetVector(&out.nccl_id));
  HKV_RETURN_IF_ERROR(r.GetVector(&out.head_of_slot));
  HKV_RETURN_IF_ERROR(r.Get(&out.blocks_per_rank));
  HKV_RETURN_IF_ERROR(r.Done());
  return out;
}

}  // namespace hkv
