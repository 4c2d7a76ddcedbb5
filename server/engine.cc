#include "server/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/quote.h"
#include "common/random.h"
#include "common/status_macros.h"
#include "server/request_id.h"
#include "tokenizer/utf8.h"

namespace hkv {

struct Engine::Active {
  std::shared_ptr<RequestStream> stream;  // Shared by the request's samples (n > 1).
  int32_t index = 0;                      // Which sample; its request's id is id - index.
  int32_t num_samples = 1;
  std::unique_ptr<OutputProcessor> output;
  int32_t prompt_tokens = 0;
  int32_t prefilled = 0;  // Prompt tokens counted in prompt_tokens_total.
  int32_t generated = 0;
  uint64_t seed = 0;  // The sampling seed used, reported in the usage.
  absl::Time arrival;
  absl::Time last_token;
  bool finished = false;
};

namespace {

// The key of a live request in by_client_id_: ids are scoped to their tenant. Tenant names
// never hold '\n' (server/auth/api_keys.h), so distinct pairs give distinct keys.
std::string ClientKey(const std::string& tenant, const std::string& request_id) {
  return tenant.empty() ? request_id : absl::StrCat(tenant, "\n", request_id);
}

absl::Status ValidateStops(const SamplingParams& p, const StopLimits& limits, int32_t vocab_size) {
  // The lists' sizes first: each check after them is linear in their length.
  HKV_RETURN_IF_ERROR(CheckStopLimits(limits, p.stop, p.stop_token_ids.size()));
  for (size_t i = 0; i < p.stop.size(); ++i) {
    // Matching runs on the output repaired into UTF-8, where such a string could never appear.
    if (!IsValidUtf8(p.stop[i])) {
      return absl::InvalidArgumentError(absl::StrCat("stop string ", i, " is not valid UTF-8"));
    }
  }
  for (TokenId id : p.stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop token id ", id, " is out of range"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Engine::Engine(const EngineOptions& options, std::unique_ptr<Worker> worker,
               std::shared_ptr<const Tokenizer> tokenizer)
    : options_(options), worker_(std::move(worker)), tokenizer_(std::move(tokenizer)) {
  KvCacheConfig kv = options_.kv;
  kv.num_layers = worker_->config().num_layers;
  kv.num_kv_heads = worker_->config().num_kv_heads;
  kv_ = std::make_unique<KvCacheManager>(kv);
  scheduler_ = std::make_unique<Scheduler>(options_.scheduler, kv_.get());
  metrics_.kv_blocks_total = kv.num_blocks;
}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  loop_alive_ = true;
  metrics_.ready = 1;
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  loop_alive_ = false;
  metrics_.ready = 0;
}

absl::Duration Engine::IterationRunningFor() const {
  const int64_t started = iteration_started_ns_.load();
  if (started == 0) return absl::ZeroDuration();
  return std::max(absl::ZeroDuration(), absl::Now() - absl::FromUnixNanos(started));
}

bool Engine::Healthy() const {
  return loop_alive_.load() && IterationRunningFor() < options_.stall_timeout;
}

bool Engine::Live() const {
  return loop_alive_.load() && IterationRunningFor() < options_.liveness_timeout;
}

absl::StatusOr<HeadBudgetPlan> Engine::PlanFor(const std::string& policy, int32_t budget,
                                               double beta) {
  HKV_ASSIGN_OR_RETURN(const KvPolicyName name, ParsePolicyName(policy));
  const ModelConfig& m = worker_->config();
  if (Compresses(name) && budget > m.max_seq_len) {
    // No prompt is longer than the context, so such a budget would never compress: a client
    // mistake (and budgets near 2^31 used to overflow the planners).
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_policy.budget ", budget, " exceeds the model's context length ", m.max_seq_len,
        ": use a smaller budget, or the full policy to keep every token"));
  }
  // The key holds only what the plan depends on (full ignores the budget, only headkv reads
  // beta), so equal plans share one of the cache's few entries.
  const PlanKey key{name, Compresses(name) ? budget : 0,
                    name == KvPolicyName::kHeadKv ? beta : 0.0};
  if (std::optional<HeadBudgetPlan> cached = plan_cache_.Lookup(key)) return *std::move(cached);
  KvPolicy p;
  p.name = name;
  p.budget = budget;
  p.beta = beta;
  p.granularity = Granularity::kKvHead;
  if (p.name == KvPolicyName::kHeadKv) {
    if (options_.head_scores == nullptr) {
      return absl::InvalidArgumentError(
          "the headkv policy needs head scores: start the server with --head-scores FILE");
    }
    HKV_RETURN_IF_ERROR(CheckShape(*options_.head_scores, m.num_layers, m.num_heads));
    p.scores =
        std::make_shared<const HeadScores>(GroupByKvHead(*options_.head_scores, m.num_kv_heads));
  }
  HKV_RETURN_IF_ERROR(ValidatePolicy(p));
  HKV_ASSIGN_OR_RETURN(HeadBudgetPlan plan,
                       HeadBudgetPlanner::Plan(p, m.num_layers, m.num_kv_heads));
  plan_cache_.Insert(key, plan);
  return plan;
}

std::vector<int64_t> Engine::BlocksPerLayer() const { return metrics_.BlocksPerLayer(); }

absl::Status Engine::ValidateRequest(const EngineRequest& r) const {
  const ModelConfig& m = worker_->config();
  if (!r.request_id.empty()) HKV_RETURN_IF_ERROR(ValidateClientRequestId(r.request_id));
  if (r.prompt.empty()) {
    return absl::InvalidArgumentError("the prompt is empty: send text or at least one token id");
  }
  for (TokenId id : r.prompt) {
    if (id < 0 || id >= m.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token id ", id, " is outside the vocabulary [0, ", m.vocab_size, ")"));
    }
  }
  HKV_RETURN_IF_ERROR(ValidateSamplingParams(r.sampling));
  if (r.sampling.n > options_.scheduler.max_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("n is ", r.sampling.n, " but at most ",
                                                   options_.scheduler.max_seqs,
                                                   " sequences run at once (--max-seqs)"));
  }
  if (r.sampling.n > options_.max_n) {
    return absl::InvalidArgumentError(
        absl::StrCat("n is ", r.sampling.n, " but this server draws at most ", options_.max_n,
                     " samples per request (--max-n)"));
  }
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.sampling.max_tokens;
  if (total > m.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", r.prompt.size(), " tokens) + max_tokens (", r.sampling.max_tokens,
                     ") exceeds the model's context length ", m.max_seq_len,
                     ": shorten the prompt or lower max_tokens"));
  }
  return ValidateStops(r.sampling, options_.stop_limits, m.vocab_size);
}

absl::StatusOr<std::shared_ptr<RequestStream>> Engine::Submit(EngineRequest r) {
  HKV_RETURN_IF_ERROR(ValidateRequest(r));
  const std::string policy = r.kv_policy.empty() ? options_.default_policy : r.kv_policy;
  const int32_t budget = r.kv_budget > 0 ? r.kv_budget : options_.default_budget;
  const double beta = r.kv_beta > 0 ? r.kv_beta : options_.default_beta;
  HKV_ASSIGN_OR_RETURN(HeadBudgetPlan plan, PlanFor(policy, budget, beta));
  if (plan.adaptive && (!worker_->SupportsAdaptiveSelection() || options_.kv.num_partitions > 1)) {
    // Refused here: a step the worker cannot run would fail every request in flight.
    return absl::UnimplementedError(
        absl::StrCat("kv_policy ", std::string(PolicyNameString(plan.policy)),
                     " (adaptive budgets) is not supported on ", worker_->name(),
                     options_.kv.num_partitions > 1 ? " with tensor parallelism" : "",
                     ": use full, snapkv, pyramidkv or headkv"));
  }

  auto request = std::make_unique<Request>();
  // n ids: samples 1..n-1 of an n > 1 request take id + 1 .. id + n - 1 (scheduler/request.h).
  request->id = next_id_.fetch_add(r.sampling.n);
  if (r.request_id.empty()) {
    HKV_ASSIGN_OR_RETURN(request->request_id, NewServerRequestId());
  } else {
    request->request_id = std::move(r.request_id);
  }
  // The stop-string automaton is built here, on the caller's thread, not on the engine's.
  auto output =
      std::make_unique<OutputProcessor>(tokenizer_.get(), r.prompt.back(), r.sampling.stop);
  std::vector<std::unique_ptr<OutputProcessor>> sample_outputs;
  for (int32_t i = 1; i < r.sampling.n; ++i) {
    sample_outputs.push_back(
        std::make_unique<OutputProcessor>(tokenizer_.get(), r.prompt.back(), r.sampling.stop));
  }
  request->prompt = r.prompt;
  request->sampling = std::move(r.sampling);
  if (r.seed.has_value()) {
    request->sampling.seed = *r.seed;
  } else {
    HKV_ASSIGN_OR_RETURN(request->sampling.seed, RandomUint64());
  }
  request->eos_ids = tokenizer_ ? tokenizer_->eos_ids() : std::vector<TokenId>{};
  request->priority = r.priority;
  request->plan = std::move(plan);
  request->arrival_time = absl::Now();
  request->deadline = r.deadline;
  auto stream = std::make_shared<RequestStream>(request->id, request->request_id);
  stream->set_prompt_ids(r.prompt);
  stream->set_tenant(r.tenant);
  stream->set_num_samples(request->sampling.n);

  absl::MutexLock lock(&mu_);
  if (stopping_ || draining_) {
    return absl::UnavailableError("the server is draining or stopping: retry on another replica");
  }
  if (waiting_requests_ + static_cast<int64_t>(inbox_.size()) >= options_.scheduler.max_queue) {
    metrics_.requests_rejected_total++;
    return absl::ResourceExhaustedError(
        absl::StrCat("the waiting queue is full (", options_.scheduler.max_queue,
                     " requests): retry later or raise --max-queue"));
  }
  if (!by_client_id_.emplace(ClientKey(r.tenant, request->request_id), request->id).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id ", QuoteForError(request->request_id), " is already in flight"));
  }
  ++live_requests_;
  inbox_.push_back({std::move(request), stream, std::move(output), std::move(sample_outputs)});
  return stream;
}

bool Engine::Abort(const std::string& request_id, const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  auto it = by_client_id_.find(ClientKey(tenant, request_id));
  if (it == by_client_id_.end()) return false;
  controls_.push_back({it->second, FinishReason::kAborted});
  return true;
}

void Engine::Cancel(RequestId id, FinishReason reason) {
  absl::MutexLock lock(&mu_);
  controls_.push_back({id, reason});
}

void Engine::Drain(absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
  }
  metrics_.ready = 0;
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    {
      absl::MutexLock lock(&mu_);
      if (live_requests_ == 0) return;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [client_id, id] : by_client_id_)
    controls_.push_back({id, FinishReason::kAborted});
}

void Engine::DrainInbox() {
  std::deque<Submitted> inbox;
  std::vector<Control> controls;
  {
    absl::MutexLock lock(&mu_);
    inbox.swap(inbox_);
    controls.swap(controls_);
  }
  for (Submitted& submitted : inbox) Admit(std::move(submitted));
  for (const Control& c : controls) {
    // Every sample of the request, even once sample 0 has ended (aborting one not started or
    // already ended is a no-op).
    auto it = samples_.find(c.id);
    if (it == samples_.end()) continue;
    for (int32_t i = 0; i < it->second.n; ++i) scheduler_->Abort(c.id + i, c.reason);
  }
}

void Engine::Admit(Submitted submitted) {
  std::unique_ptr<Request> request = std::move(submitted.request);
  const std::shared_ptr<RequestStream>& stream = submitted.stream;
  auto active = std::make_unique<Active>();
  active->stream = stream;
  active->output = std::move(submitted.output);
  active->prompt_tokens = static_cast<int32_t>(request->prompt.size());
  active->seed = request->sampling.seed;
  active->arrival = request->arrival_time;
  active->num_samples = request->sampling.n;
  const RequestId id = request->id;
  const uint64_t seed = request->sampling.seed;
  absl::Status status = scheduler_->Add(std::move(request));
  if (!status.ok()) {
    metrics_.requests_rejected_total++;
    StreamChunk chunk;
    chunk.finished = true;
    chunk.finish = FinishReason::kError;
    chunk.status = status;
    stream->Push(std::move(chunk));
    absl::MutexLock lock(&mu_);
    by_client_id_.erase(ClientKey(stream->tenant(), stream->request_id()));
    --live_requests_;
    return;
  }
  samples_[id] = {active->num_samples, active->num_samples};
  for (int32_t i = 1; i < active->num_samples; ++i) {
    auto sample = std::make_unique<Active>();
    sample->stream = active->stream;
    sample->prompt_tokens = active->prompt_tokens;
    sample->arrival = active->arrival;
    sample->num_samples = active->num_samples;
    sample->index = i;
    sample->seed = SampleSeed(seed, i);
    sample->prefilled = sample->prompt_tokens;  // The prompt is prefilled (and counted) once.
    sample->output = std::move(submitted.sample_outputs[i - 1]);
    active_.emplace(id + i, std::move(sample));
  }
  active_.emplace(id, std::move(active));
}

void Engine::ObserveToken(Active& a, absl::Time now) {
  if (a.generated == 0) {
    metrics_.time_to_first_token_s.Observe(absl::ToDoubleSeconds(now - a.arrival));
  } else {
    metrics_.inter_token_latency_s.Observe(absl::ToDoubleSeconds(now - a.last_token));
  }
  a.last_token = now;
  ++a.generated;
  metrics_.generation_tokens_total++;
}

void Engine::FinishChunk(Active& a, const RequestOutput& out, bool stop_hit, absl::Time now,
                         StreamChunk* chunk) {
  const int64_t bytes_per_token = options_.kv_bytes_per_token_row > 0
                                      ? options_.kv_bytes_per_token_row
                                      : 2LL * worker_->config().head_dim * 4;
  a.finished = true;
  chunk->finished = true;
  chunk->finish = stop_hit ? FinishReason::kStop : out.reason;
  if (chunk->finish == FinishReason::kError) {
    chunk->status = absl::InternalError("the request failed in the worker");
  }
  StreamUsage& u = chunk->usage;
  u.prompt_tokens = a.index == 0 ? a.prompt_tokens : 0;  // n > 1: counted once, in sample 0's
  u.generated_tokens = a.generated;
  u.kv_tokens_kept = out.kv_tokens_kept;
  u.kv_tokens_full = out.kv_tokens_full;
  u.kv_bytes_kept = out.kv_tokens_kept * bytes_per_token;
  u.kv_bytes_full = out.kv_tokens_full * bytes_per_token;
  u.queue_time_ms = absl::ToDoubleMilliseconds(out.queue_time);
  u.time_to_first_token_ms = absl::ToDoubleMilliseconds(out.time_to_first_token);
  u.num_preemptions = out.num_preemptions;
  u.seed = a.seed;
  metrics_.requests_finished_total++;
  metrics_.CountFinish(chunk->finish);
  if (chunk->finish == FinishReason::kError) metrics_.requests_failed_total++;
  metrics_.kv_bytes_kept_total += u.kv_bytes_kept;
  metrics_.kv_bytes_full_total += u.kv_bytes_full;
  metrics_.e2e_latency_s.Observe(absl::ToDoubleSeconds(now - a.arrival));
  metrics_.queue_time_s.Observe(absl::ToDoubleSeconds(out.queue_time));
}

void Engine::Deliver(const std::vector<RequestOutput>& outputs) {
  const absl::Time now = absl::Now();
  for (const RequestOutput& out : outputs) {
    auto it = active_.find(out.id);
    if (it == active_.end()) continue;
    Active& a = *it->second;
    StreamChunk chunk;
    chunk.index = a.index;
    bool stop_hit = false;
    for (size_t i = 0; i < out.new_tokens.size() && !a.finished && !stop_hit; ++i) {
      const TokenId t = out.new_tokens[i];
      ObserveToken(a, now);
      chunk.token_ids.push_back(t);
      if (i < out.logprobs.size()) chunk.logprobs.push_back(out.logprobs[i]);
      OutputProcessor::Delta delta =
          a.output->Push(t, /*last=*/out.finished && i + 1 == out.new_tokens.size());
      chunk.text += delta.text;
      stop_hit = delta.stop_hit;
    }
    if (stop_hit && !out.finished) {
      // The stream closes with the abort's output, which TakeAborted() hands over at the top of
      // the next loop iteration: only that output knows the KV usage before the blocks go.
      scheduler_->Abort(out.id, FinishReason::kStop);
    }
    if (out.finished && !a.finished) FinishChunk(a, out, stop_hit, now, &chunk);
    if (!chunk.token_ids.empty() || chunk.finished) a.stream->Push(std::move(chunk));
    if (out.unforked_samples > 0) EndUnforked(out, now);
    if (out.finished) Erase(out.id);
  }
}

void Engine::EndUnforked(const RequestOutput& out, absl::Time now) {
  for (int32_t k = 1; k <= out.unforked_samples; ++k) {
    auto it = active_.find(out.id + k);
    if (it == active_.end()) continue;
    StreamChunk chunk;
    chunk.index = it->second->index;
    RequestOutput none = out;
    none.kv_tokens_kept = none.kv_tokens_full = 0;
    if (!it->second->finished) FinishChunk(*it->second, none, false, now, &chunk);
    it->second->stream->Push(std::move(chunk));
    Erase(out.id + k);
  }
}

void Engine::Erase(RequestId id) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  const RequestId request = id - it->second->index;
  const std::string client_key =
      ClientKey(it->second->stream->tenant(), it->second->stream->request_id());
  active_.erase(it);
  if (--samples_[request].left > 0) return;
  samples_.erase(request);
  absl::MutexLock lock(&mu_);
  by_client_id_.erase(client_key);
  --live_requests_;
}

void Engine::FailAll(const absl::Status& status) {
  for (auto& [id, a] : active_) {
    scheduler_->Abort(id, FinishReason::kError);
    if (a->finished) continue;
    a->finished = true;
    StreamChunk chunk;
    chunk.finished = true;
    chunk.finish = FinishReason::kError;
    chunk.status = status;
    a->stream->Push(std::move(chunk));
  }
}

void Engine::PublishGauges() {
  metrics_.requests_running = scheduler_->num_running();
  metrics_.requests_waiting = scheduler_->num_waiting();
  metrics_.kv_blocks_used = kv_->num_total_blocks() - kv_->num_free_blocks();
  metrics_.kv_blocks_used_peak =
      std::max(metrics_.kv_blocks_used.load(), metrics_.kv_blocks_used_peak.load());
  metrics_.preemptions_total = scheduler_->num_preemptions();
  // Per-layer usage walks every table: refresh it every 32 steps, not every step.
  if (steps_++ % 32 == 0) metrics_.SetBlocksPerLayer(kv_->BlocksPerLayer());
  absl::MutexLock lock(&mu_);
  waiting_requests_ = scheduler_->num_waiting();
}

void Engine::OnWorkerFailure(const absl::Status& status) {
  HKV_LOG(ERROR) << "worker failed: " << status;
  // The device (or a peer node) is gone or in an unknown state: every request fails UNAVAILABLE
  // (a client may retry on another replica) and readiness turns NOT_SERVING.
  FailAll(absl::UnavailableError(absl::StrCat("the worker failed: ", status.message())));
  worker_failed_ = true;
  loop_alive_ = false;
  metrics_.ready = 0;
}

void Engine::Loop() {
  // While idle, the worker's liveness is polled this often (a cheap, non-blocking check).
  constexpr absl::Duration kLivenessCheckInterval = absl::Seconds(1);
  absl::Time last_liveness_check = absl::Now();
  bool fault_stall_pending = options_.fault_loop_stall > absl::ZeroDuration();
  // The watchdog times every iteration, all of it: draining the inbox, scheduling, the step,
  // delivering outputs. Only the idle wait for input is not timed.
  iteration_started_ns_ = absl::GetCurrentTimeNanos();
  while (true) {
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      stopping = stopping_;
      if (!stopping && inbox_.empty() && controls_.empty() && !scheduler_->HasUnfinished()) {
        auto has_input = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !inbox_.empty() || !controls_.empty();
        };
        iteration_started_ns_ = 0;
        mu_.AwaitWithTimeout(absl::Condition(&has_input), absl::Milliseconds(100));
        iteration_started_ns_ = absl::GetCurrentTimeNanos();
        stopping = stopping_;
      }
    }
    if (stopping) {
      for (auto& [id, a] : active_) scheduler_->Abort(id, FinishReason::kAborted);
    }
    DrainInbox();
    std::vector<RequestOutput> outputs = scheduler_->TakeAborted();
    const absl::Time now = absl::Now();
    std::optional<Batch> batch = scheduler_->Schedule(now);
    std::vector<RequestOutput> more = scheduler_->TakeAborted();
    outputs.insert(outputs.end(), more.begin(), more.end());
    if (batch.has_value()) RunStep(*batch, &outputs);
    if (!batch.has_value() && loop_alive_.load() &&
        absl::Now() - last_liveness_check >= kLivenessCheckInterval) {
      last_liveness_check = absl::Now();
      if (absl::Status live = worker_->Liveness(); !live.ok()) OnWorkerFailure(live);
    }
    Deliver(outputs);
    PublishGauges();
    if (fault_stall_pending && metrics_.engine_steps_total.load() > 0) {
      fault_stall_pending = false;
      HKV_LOG(WARNING) << "fault injection: the engine loop stalls for "
                       << options_.fault_loop_stall;
      absl::SleepFor(options_.fault_loop_stall);
    }
    if (stopping && !scheduler_->HasUnfinished()) break;
    if (!loop_alive_.load()) {
      // A device failure: keep answering submitted requests with errors, but run nothing.
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    iteration_started_ns_ = absl::GetCurrentTimeNanos();  // The next iteration starts here.
  }
  iteration_started_ns_ = 0;
  FailRemaining();
}

void Engine::RunStep(const Batch& batch, std::vector<RequestOutput>* outputs) {
  absl::StatusOr<BatchResult> result = worker_->Execute(batch);
  metrics_.engine_steps_total++;
  if (!result.ok()) {
    OnWorkerFailure(result.status());
    outputs->clear();
    return;
  }
  // Prompt tokens prefilled for the first time (recomputes after preemption excluded).
  for (const SequenceStep& s : batch.seqs) {
    auto it = active_.find(s.id);
    if (it == active_.end()) continue;
    Active& a = *it->second;
    const int32_t done = std::min<int32_t>(s.start_pos + s.tokens.size(), a.prompt_tokens);
    if (done > a.prefilled) {
      metrics_.prompt_tokens_total += done - a.prefilled;
      a.prefilled = done;
    }
  }
  std::vector<RequestOutput> stepped = scheduler_->Update(batch, *result, absl::Now());
  outputs->insert(outputs->end(), stepped.begin(), stepped.end());
}

void Engine::FailRemaining() {
  FailAll(absl::UnavailableError("the engine stopped"));
  absl::MutexLock lock(&mu_);
  for (Submitted& submitted : inbox_) {
    StreamChunk chunk;
    chunk.finished = true;
    chunk.finish = FinishReason::kError;
    chunk.status = absl::UnavailableError("the engine stopped");
    submitted.stream->Push(std::move(chunk));
  }
  inbox_.clear();
  live_requests_ = 0;
  by_client_id_.clear();
  loop_alive_ = false;
}

}  // namespace hkv
