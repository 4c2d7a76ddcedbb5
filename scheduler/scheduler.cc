#include "scheduler/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace hkv {
namespace {

// Running order: more important first (priority desc, then older first).
bool MoreImportant(const Request* a, const Request* b) {
  return a->priority != b->priority ? a->priority > b->priority : a->order < b->order;
}

bool Contains(const std::vector<TokenId>& ids, TokenId id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, KvCacheManager* kv)
    : options_(options), kv_(kv) {}

int64_t Scheduler::PeakBlocks(const Request& r) const {
  const int32_t n = static_cast<int32_t>(r.prompt.size());
  const int32_t m = r.sampling.max_tokens;
  const int32_t bs = kv_->config().block_size;
  if (!r.compresses()) return kv_->FootprintBlocksUniform(n + m);
  if (r.plan.adaptive) {
    int64_t reserved = 0;
    for (int32_t l = 0; l < r.plan.num_layers; ++l) reserved += r.plan.MaxBlocksPerLayer(l, n, bs);
    return reserved + static_cast<int64_t>(kv_->num_rows_per_seq()) * ((m + bs - 1) / bs);
  }
  std::vector<int32_t> rows = r.plan.KeptTokens(n);
  for (int32_t& t : rows) t += m;
  return kv_->FootprintBlocks(rows);
}

absl::Status Scheduler::Add(std::unique_ptr<Request> request) {
  if (static_cast<int32_t>(waiting_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_queue, " requests): retry later"));
  }
  const int64_t peak = PeakBlocks(*request);
  if (peak > kv_->num_total_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs ", peak, " KV head-blocks (", request->prompt.size(),
        " prompt tokens + ", request->sampling.max_tokens, " max_tokens over ",
        kv_->num_rows_per_seq(), " heads) but the whole pool has ", kv_->num_total_blocks(),
        ": shorten the prompt, lower max_tokens, or use a compressing kv_policy"));
  }
  Request* r = request.get();
  r->status = RequestStatus::kWaiting;
  r->order = next_order_++;
  requests_.emplace(r->id, std::move(request));
  InsertWaiting(r);
  return absl::OkStatus();
}

void Scheduler::InsertWaiting(Request* r) {
  r->status = RequestStatus::kWaiting;
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), r, MoreImportant), r);
}

void Scheduler::Abort(RequestId id, FinishReason reason) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  aborted_.push_back(Finish(it->second.get(), reason, absl::Now()));
}

std::vector<RequestOutput> Scheduler::TakeAborted() {
  std::vector<RequestOutput> out;
  out.swap(aborted_);
  return out;
}

void Scheduler::ExpireDeadlines(absl::Time now) {
  std::vector<Request*> expired;
  for (auto& [id, r] : requests_) {
    if (r->deadline <= now) expired.push_back(r.get());
  }
  for (Request* r : expired) aborted_.push_back(Finish(r, FinishReason::kDeadline, now));
}

RequestOutput Scheduler::Finish(Request* r, FinishReason reason, absl::Time now) {
  RequestOutput out;
  out.id = r->id;
  out.finished = true;
  out.reason = reason;
  if (kv_->Contains(r->id)) {
    for (int32_t len : kv_->RowLengths(r->id)) out.kv_tokens_kept += len;
    kv_->Free(r->id);
  }
  out.kv_tokens_full = static_cast<int64_t>(kv_->num_rows_per_seq()) * r->num_computed;
  const absl::Time scheduled = r->first_scheduled == absl::InfinitePast() ? now : r->first_scheduled;
  out.queue_time = scheduled - r->arrival_time;
  if (r->first_token != absl::InfinitePast()) {
    out.time_to_first_token = r->first_token - r->arrival_time;
  }
  out.num_preemptions = r->num_preemptions;
  std::erase(running_, r);
  std::erase(waiting_, r);
  requests_.erase(r->id);  // Destroys *r.
  return out;
}

void Scheduler::Preempt(Request* r) {
  kv_->Free(r->id);
  r->num_computed = 0;
  ++r->num_preemptions;
  ++num_preemptions_;
  std::erase(running_, r);
  InsertWaiting(r);
}

int32_t Scheduler::StepTokens(const Request& r, int32_t budget, bool batch_has_prefill,
                              bool* select) const {
  *select = false;
  if (r.num_computed == 0 && r.compresses()) {
    const int32_t n = static_cast<int32_t>(r.prompt.size());
    *select = true;
    return n <= budget || !batch_has_prefill ? n : 0;
  }
  const int32_t pending = r.num_tokens() - r.num_computed;
  return std::max(0, std::min(pending, budget));
}

bool Scheduler::Allocate(Request& r, int32_t num_tokens, bool select, Planned* p) {
  *p = Planned{&r, num_tokens, select, {}, std::nullopt};
  const int32_t rows = kv_->num_rows_per_seq();
  if (select) {
    const int32_t n = static_cast<int32_t>(r.prompt.size());
    p->len_before.assign(rows, 0);
    if (r.plan.adaptive) {
      std::vector<int32_t> blocks(r.plan.num_layers);
      for (int32_t l = 0; l < r.plan.num_layers; ++l) {
        blocks[l] = r.plan.MaxBlocksPerLayer(l, n, kv_->config().block_size);
      }
      p->reservation = kv_->ReserveLayers(r.id, blocks);
      return p->reservation.has_value();
    }
    return kv_->Append(r.id, r.plan.KeptTokens(n));
  }
  p->len_before = kv_->Contains(r.id) ? kv_->RowLengths(r.id) : std::vector<int32_t>(rows, 0);
  return kv_->AppendUniform(r.id, num_tokens);
}

void Scheduler::ScheduleRunning(int32_t* budget, std::vector<Planned>* planned) {
  std::sort(running_.begin(), running_.end(), MoreImportant);
  for (size_t i = 0; i < running_.size() && *budget > 0; ++i) {
    Request* r = running_[i];
    bool select = false;
    const bool has_prefill = std::any_of(planned->begin(), planned->end(),
                                         [](const Planned& p) { return p.num_tokens > 1; });
    const int32_t n = StepTokens(*r, *budget, has_prefill, &select);
    if (n == 0) continue;
    Planned p;
    while (!Allocate(*r, n, select, &p)) {
      // Preempt the least important running sequence not yet planned (the tail), maybe r.
      Request* victim = running_.back();
      Preempt(victim);
      if (victim == r) break;
    }
    if (i >= running_.size() || running_[i] != r) break;  // r itself was preempted.
    *budget -= n;
    planned->push_back(std::move(p));
  }
}

void Scheduler::ScheduleWaiting(int32_t* budget, std::vector<Planned>* planned) {
  while (!waiting_.empty() && *budget > 0 &&
         static_cast<int32_t>(running_.size()) < options_.max_seqs) {
    Request* r = waiting_.front();
    bool select = false;
    const bool has_prefill = std::any_of(planned->begin(), planned->end(),
                                         [](const Planned& p) { return p.num_tokens > 1; });
    const int32_t n = StepTokens(*r, *budget, has_prefill, &select);
    if (n == 0) break;
    Planned p;
    if (!Allocate(*r, n, select, &p)) break;  // Head of line waits for blocks; no preemption.
    waiting_.erase(waiting_.begin());
    r->status = RequestStatus::kRunning;
    running_.push_back(r);
    *budget -= n;
    planned->push_back(std::move(p));
  }
}

std::optional<Batch> Scheduler::Schedule(absl::Time now) {
  ExpireDeadlines(now);
  int32_t budget = options_.max_batch_tokens;
  std::vector<Planned> planned;
  ScheduleRunning(&budget, &planned);
  ScheduleWaiting(&budget, &planned);
  if (planned.empty()) return std::nullopt;
  for (Planned& p : planned) {
    if (p.request->first_scheduled == absl::InfinitePast()) p.request->first_scheduled = now;
  }
  return BuildBatch(planned);
}

Batch Scheduler::BuildBatch(const std::vector<Planned>& planned) {
  const KvCacheConfig& config = kv_->config();
  Batch b;
  b.num_layers = config.num_layers;
  b.num_kv_heads = config.num_kv_heads;
  b.block_size = config.block_size;
  std::vector<RequestId> ids;
  for (const Planned& p : planned) ids.push_back(p.request->id);
  KvCsr csr = kv_->ExportCsr(ids);
  b.kv_indptr = std::move(csr.indptr);
  b.kv_indices = std::move(csr.indices);
  b.kv_len_after = std::move(csr.num_tokens);
  for (const Planned& p : planned) {
    b.kv_len_before.insert(b.kv_len_before.end(), p.len_before.begin(), p.len_before.end());
    const Request& r = *p.request;
    SequenceStep s;
    s.id = r.id;
    s.start_pos = r.num_computed;
    for (int32_t t = 0; t < p.num_tokens; ++t) s.tokens.push_back(r.token_at(r.num_computed + t));
    s.sample = r.num_computed + p.num_tokens == r.num_tokens();
    s.sample_step = static_cast<int32_t>(r.output.size());
    s.sampling = r.sampling;
    s.select = p.select;
    if (p.select) {
      s.selection.window = r.plan.window;
      if (r.plan.adaptive) {
        s.selection.layer_budget = r.plan.layer_budget;
        s.layer_block_indptr = p.reservation->indptr;
        s.layer_blocks = p.reservation->blocks;
      } else {
        s.selection.capacity = r.plan.capacity;
      }
    }
    b.seqs.push_back(std::move(s));
  }
  b.block_copies = kv_->TakeBlockCopies();
  return b;
}

std::vector<RequestOutput> Scheduler::Update(const Batch& batch, const BatchResult& result,
                                             absl::Time now) {
  std::vector<RequestOutput> outputs;
  HKV_CHECK(result.seqs.size() == batch.seqs.size()) << "result does not match the batch";
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SequenceStep& s = batch.seqs[i];
    auto it = requests_.find(s.id);
    if (it == requests_.end() || it->second->status != RequestStatus::kRunning) continue;
    Request* r = it->second.get();
    r->num_computed += static_cast<int32_t>(s.tokens.size());
    if (s.select && s.selection.capacity.empty()) {
      absl::Status committed = kv_->CommitAdaptive(r->id, result.seqs[i].kept_per_head);
      if (!committed.ok()) {
        HKV_LOG(ERROR) << "request " << r->id << ": " << committed;
        outputs.push_back(Finish(r, FinishReason::kError, now));
        continue;
      }
    }
    if (!s.sample) continue;
    const TokenId token = result.seqs[i].token;
    r->output.push_back(token);
    if (r->first_token == absl::InfinitePast()) r->first_token = now;
    FinishReason reason = FinishReason::kNone;
    if (!r->sampling.ignore_eos && Contains(r->eos_ids, token)) {
      reason = FinishReason::kEos;
    } else if (Contains(r->sampling.stop_token_ids, token)) {
      reason = FinishReason::kStop;
    } else if (static_cast<int32_t>(r->output.size()) >= r->sampling.max_tokens) {
      reason = FinishReason::kLength;
    }
    RequestOutput out;
    if (reason != FinishReason::kNone) {
      out = Finish(r, reason, now);
    } else {
      out.id = r->id;
    }
    out.new_tokens = {token};
    outputs.push_back(std::move(out));
  }
  return outputs;
}

}  // namespace hkv
