#include "server/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/quote.h"
#include "common/random.h"
#include "common/status_macros.h"
#include "server/engine_request_state.h"
#include "server/request_id.h"
#include "tokenizer/utf8.h"

namespace hkv {
namespace {

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
  async_ = options_.async_scheduling && worker_->SupportsAsyncSteps() &&
           !PrefillPacer(options_.scheduler.pacing).enabled();
  KvCacheConfig kv = options_.kv;
  kv.num_layers = worker_->config().num_layers;
  kv.num_kv_heads = worker_->config().num_kv_heads;
  kv_ = std::make_unique<KvCacheManager>(kv);
  SchedulerOptions scheduling = options_.scheduler;
  scheduling.page_table_deltas = options_.page_table_deltas && worker_->AcceptsPageTableDeltas();
  scheduler_ = std::make_unique<Scheduler>(scheduling, kv_.get());
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
  pusher_.Drain();  // Every chunk the loop made reaches its stream before Stop returns.
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

}  // namespace hkv
