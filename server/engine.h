#pragma once
// Engine: the step loop. One engine thread owns the Scheduler and the KvCacheManager and drives
// the Worker: Schedule() -> Worker::Execute(batch) -> Scheduler::Update(), then fans the new
// tokens out to each request's RequestStream, their text made by the request's OutputProcessor
// (detokenized, valid UTF-8, stop strings applied), through a StreamPusher: the chunks of a
// loop iteration reach the streams from the pusher's thread while the engine runs the next.
//
// Threading: Submit/Abort/Cancel/Healthy/Live/Drain may be called from any thread (gRPC handlers,
// the CLI). They only touch the mutex-guarded inbox; everything else is engine-thread only.

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "block_manager/kv_cache_manager.h"
#include "common/sampling_params.h"
#include "headkv/head_budget_planner.h"
#include "headkv/kv_policy.h"
#include "scheduler/scheduler.h"
#include "server/metrics.h"
#include "server/output_processor.h"
#include "server/plan_cache.h"
#include "server/request_stream.h"
#include "server/stream_pusher.h"
#include "tokenizer/tokenizer.h"
#include "workers/worker.h"

namespace hkv {

struct EngineOptions {
  SchedulerOptions scheduler;
  KvCacheConfig kv;                    // num_layers / num_kv_heads are taken from the model.
  int32_t kv_bytes_per_token_row = 0;  // Bytes of K+V of one token in one row (0: fp32).
  std::string default_policy = "full";
  int32_t default_budget = 128;
  double default_beta = 1.01;
  std::shared_ptr<const HeadScores> head_scores;  // For the headkv policy (query-head scores).
  // Watchdog on the engine loop: one iteration (from leaving its idle wait until it waits
  // again, or until the next iteration starts) running longer than `stall_timeout` makes the
  // engine not ready; longer than `liveness_timeout`, not live.
  absl::Duration stall_timeout = absl::Seconds(30);
  StopLimits stop_limits;  // Checked by Submit before a request is queued.
  int32_t max_n = 16;      // Most samples per request (sampling.n), checked by Submit.
  // What the APIs give requests that leave temperature / top_k / top_p unset (the model's
  // generation_config.json). Read by the API layers when they build an EngineRequest.
  SamplingDefaults sampling_defaults;
  absl::Duration liveness_timeout = absl::Minutes(5);
  // Fault injection (HKV_FAULT_ENGINE_STALL_MS, see fault_injection.h): the loop sleeps this
  // long once, outside Worker::Execute, after its first step. Zero in production.
  absl::Duration fault_loop_stall = absl::ZeroDuration();
  // Steps carry page-table deltas when the worker accepts them (Worker::AcceptsPageTableDeltas);
  // false sends the full CSR every step (tests compare the two).
  bool page_table_deltas = true;
  // Async scheduling (Worker::SupportsAsyncSteps, Scheduler::ScheduleAhead): the engine plans and
  // launches step N+1 before it awaits step N, so that the host's scheduling, layout and
  // delivery overlap the device's step. Off with prefill pacing (its step times need one step
  // at a time) and for workers without async steps. false runs one step at a time.
  bool async_scheduling = true;
};

// A request as the engine takes it (already tokenized).
struct EngineRequest {
  // Client's id (server/request_id.h: bounded, printable, not "hkv-..."); when empty the engine
  // makes an unguessable one in the reserved "hkv-" namespace.
  std::string request_id;
  std::vector<TokenId> prompt;
  SamplingParams sampling;  // sampling.seed is ignored: `seed` below decides it.
  // The sampling seed; nullopt draws a fresh one from the OS entropy source, so unseeded
  // samples differ. The seed used is reported in the final chunk's usage.
  std::optional<uint64_t> seed;
  std::string kv_policy;  // Empty: the engine default.
  int32_t kv_budget = 0;  // 0: the engine default.
  double kv_beta = 0;     // 0: the engine default.
  int32_t priority = 0;
  absl::Time deadline = absl::InfiniteFuture();
  // The API key's tenant (server/auth/api_keys.h), "" without keys. Request ids are scoped to
  // it: two tenants may use the same id, and Abort finds only the caller's own requests.
  std::string tenant;
};

class Engine {
 public:
  Engine(const EngineOptions& options, std::unique_ptr<Worker> worker,
         std::shared_ptr<const Tokenizer> tokenizer);
  ~Engine();  // Stops the loop; unfinished requests end as aborted.

  // Starts the engine thread.
  void Start();
  // Validates and queues a request. INVALID_ARGUMENT (bad prompt/sampling/policy/request_id,
  // a budget above the context, stop lists past options().stop_limits), RESOURCE_EXHAUSTED
  // (queue full), UNAVAILABLE (draining or stopped), ALREADY_EXISTS (request_id in use).
  // Admission errors found later arrive as the stream's final chunk.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(EngineRequest request);
  // Ends a request by the client's id (finish kAborted). False if `tenant` has no such live
  // request (another tenant's request of that id is not found).
  bool Abort(const std::string& request_id, const std::string& tenant = "");
  // Ends a request whose client went away or whose deadline passed.
  void Cancel(RequestId id, FinishReason reason);
  // Readiness: true while the loop is alive and its current iteration has run for less than
  // the stall timeout.
  bool Healthy() const;
  // Liveness: true while the loop is alive and its current iteration has run for less than the
  // liveness timeout. False means only a restart helps.
  bool Live() const;
  // True once a worker step failed (the device is gone; the loop has stopped for good).
  bool WorkerFailed() const { return worker_failed_.load(); }
  // How long the loop iteration in progress has run: zero while the loop waits for input or is
  // not running. Thread-safe.
  absl::Duration IterationRunningFor() const;
  // Stops admitting; waits up to `timeout` for in-flight requests, then aborts the rest.
  void Drain(absl::Duration timeout);
  void Stop();

  const ModelConfig& model_config() const { return worker_->config(); }
  const EngineOptions& options() const { return options_; }
  const EngineMetrics& metrics() const { return metrics_; }
  EngineMetrics* mutable_metrics() { return &metrics_; }
  std::string worker_name() const { return worker_->name(); }
  // Returns the budget plan of a policy for this model's layers x KV heads, from a small LRU
  // cache. INVALID_ARGUMENT for an unknown policy, an invalid one, or a compressing policy whose
  // budget exceeds the model's context (it could never compress anything). Thread-safe.
  absl::StatusOr<HeadBudgetPlan> PlanFor(const std::string& policy, int32_t budget, double beta);
  // Returns how many plans the cache holds (at most PlanCache::kDefaultCapacity). Thread-safe.
  size_t plan_cache_size() const { return plan_cache_.size(); }

  // Head-blocks in use per layer (refreshed every few engine steps).
  std::vector<int64_t> BlocksPerLayer() const;

 private:
  struct Active;  // Engine-thread state of one live request.
  // A request handed from Submit to the engine thread.
  struct Submitted {
    std::unique_ptr<Request> request;
    std::shared_ptr<RequestStream> stream;
    std::unique_ptr<OutputProcessor> output;  // Built by Submit, on the caller's thread.
    // n > 1: samples 1..n-1's own processors (detokenizer and stop-string state).
    std::vector<std::unique_ptr<OutputProcessor>> sample_outputs;
  };
  struct Control {
    RequestId id;
    FinishReason reason;
  };

  void Loop();
  // Runs `batch` on the worker and appends the scheduler's outputs for it; a failed step
  // fails everything instead (OnWorkerFailure) and clears `outputs`.
  void RunStep(const Batch& batch, std::vector<RequestOutput>* outputs);
  // Async scheduling: one loop iteration's steps. Launches a step when none is in flight, then
  // plans and launches the next one ahead, then awaits the oldest and applies its results.
  void RunAsyncSteps(absl::Time now, std::vector<RequestOutput>* outputs);
  // Launches `batch` (kept in launched_ until awaited); false after a worker failure.
  bool LaunchStep(Batch batch);
  // Awaits the oldest launched step and appends the scheduler's outputs for it.
  void CompleteStep(std::vector<RequestOutput>* outputs);
  // A step's result (from Execute or Await, waited for since `waited_from`): its metrics, then
  // Update()'s outputs appended; a failed step fails everything instead and clears `outputs`.
  void ApplyResult(const Batch& batch, const absl::StatusOr<BatchResult>& result,
                   absl::Time waited_from, std::vector<RequestOutput>* outputs);
  // What a step adds to the metrics, and (when it ran, `ok`) its prompt tokens prefilled.
  void CountStep(const Batch& batch, bool ok);
  // After the loop: fails whatever is still live or queued with UNAVAILABLE.
  void FailRemaining();
  void DrainInbox();
  void Admit(Submitted submitted);
  void Deliver(const std::vector<RequestOutput>& outputs);
  // Ends samples 1..out.unforked_samples of out.id's request, which never started.
  void EndUnforked(const RequestOutput& out, absl::Time now);
  // Forgets the Active of `id`; the last of its request's samples frees the request_id.
  void Erase(RequestId id);
  // Counts one generated token of `a` in the latency and token metrics.
  void ObserveToken(Active& a, absl::Time now);
  // Fills the last chunk of a request that ended (reason and usage) and counts it in metrics.
  void FinishChunk(Active& a, const RequestOutput& out, bool stop_hit, absl::Time now,
                   StreamChunk* chunk);
  void FailAll(const absl::Status& status);
  // A failed step or liveness check: fail everything, stop running steps, turn NOT_SERVING.
  void OnWorkerFailure(const absl::Status& status);
  void PublishGauges();
  absl::Status ValidateRequest(const EngineRequest& request) const;

  const EngineOptions options_;
  std::unique_ptr<Worker> worker_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  EngineMetrics metrics_;

  // Engine-thread state.
  std::unique_ptr<KvCacheManager> kv_;
  std::unique_ptr<Scheduler> scheduler_;
  bool async_ = false;  // Set once: options_.async_scheduling and the worker runs async steps
  // Async: the steps launched and not awaited, oldest first (at most two).
  std::deque<Batch> launched_;
  absl::flat_hash_map<RequestId, std::unique_ptr<Active>> active_;  // One per sample.
  // Every chunk the engine sends a stream goes through it (so a stream's chunks keep their
  // order); flushed once per loop iteration, drained by Stop.
  StreamPusher pusher_;
  // Per live request (by the id of its sample 0): its samples, and how many still have an
  // Active. Aborts reach every sample through it; the request leaves the inbox accounting when
  // its last sample does.
  struct Samples {
    int32_t n = 1;
    int32_t left = 1;
  };
  absl::flat_hash_map<RequestId, Samples> samples_;

  // Shared state.
  mutable absl::Mutex mu_;
  std::deque<Submitted> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<Control> controls_ ABSL_GUARDED_BY(mu_);
  // Keyed by ClientKey(tenant, request_id).
  absl::flat_hash_map<std::string, RequestId> by_client_id_ ABSL_GUARDED_BY(mu_);
  PlanCache plan_cache_;  // Thread-safe on its own.
  int64_t live_requests_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t steps_ = 0;  // Engine thread.
  int64_t waiting_requests_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> next_id_{1};  // Engine-internal RequestIds; clients never see them.
  std::atomic<bool> loop_alive_{false};
  std::atomic<bool> worker_failed_{false};
  // Unix ns at which the loop's current iteration started; 0 while it waits idle or is not
  // running. Written by the engine thread only.
  std::atomic<int64_t> iteration_started_ns_{0};
  std::thread thread_;
};

}  // namespace hkv
