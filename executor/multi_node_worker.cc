#include "executor/multi_node_worker.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "executor/step_codec.h"

namespace hkv {

// While a step runs, watches the peers' connections from its own thread: a peer process that
// exits mid-step closes its socket, and the local ranks, which would otherwise wait for its
// collectives until the step timeout, are told to give up (Worker::CancelStep).
class StepWatch {
 public:
  StepWatch(Worker* local, std::vector<StepConnection*> peers)
      : local_(local), peers_(std::move(peers)), thread_([this] { Loop(); }) {}
  ~StepWatch() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Begin() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_step_ = true;
    }
    cv_.notify_all();
  }
  void End() {
    std::lock_guard<std::mutex> lock(mu_);
    in_step_ = false;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait(lock, [this] { return stop_ || in_step_; });
      while (in_step_ && !stop_) {
        // poll() on a socket another thread reads is safe: nothing is consumed.
        for (StepConnection* p : peers_) {
          if (p->PeerHungUp()) {
            HKV_LOG(ERROR) << "node " << p->peer_node()
                           << " closed its connection mid-step; cancelling this node's ranks";
            local_->CancelStep();
            in_step_ = false;
            break;
          }
        }
        cv_.wait_for(lock, std::chrono::milliseconds(50));
      }
    }
  }

  Worker* local_;
  std::vector<StepConnection*> peers_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, in_step_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

MultiNodeWorker::MultiNodeWorker(std::unique_ptr<Worker> local,
                                 std::vector<std::unique_ptr<StepConnection>> followers,
                                 absl::Duration step_timeout)
    : local_(std::move(local)), followers_(std::move(followers)), step_timeout_(step_timeout) {
  std::vector<StepConnection*> peers;
  for (auto& f : followers_) peers.push_back(f.get());
  watch_ = std::make_unique<StepWatch>(local_.get(), std::move(peers));
}

MultiNodeWorker::~MultiNodeWorker() {
  watch_.reset();
  for (auto& f : followers_) (void)f->Send(StepMessage::kStop, {}, absl::Seconds(1));
}

std::string MultiNodeWorker::name() const {
  return absl::StrCat(local_->name(), " + ", followers_.size(), " follower node(s)");
}

absl::Status MultiNodeWorker::Fail(absl::Status status) {
  dead_ = absl::UnavailableError(absl::StrCat("multi-node group: ", status.message()));
  for (auto& f : followers_) f->SendError(std::string(dead_.message()));
  return dead_;
}

absl::Status MultiNodeWorker::Liveness() {
  if (!dead_.ok()) return dead_;
  for (auto& f : followers_) {
    if (f->PeerHungUp()) {
      return Fail(
          absl::UnavailableError(absl::StrCat("node ", f->peer_node(), " closed its connection")));
    }
  }
  return local_->Liveness();
}

absl::StatusOr<BatchResult> MultiNodeWorker::Execute(const Batch& batch) {
  if (!dead_.ok()) return dead_;
  absl::StatusOr<std::vector<uint8_t>> step = encoder_.Encode(batch);
  if (!step.ok()) return Fail(step.status());
  // Every node must enter the step before node 0 does: its collectives wait for all ranks.
  for (auto& f : followers_) {
    absl::Status sent = f->Send(StepMessage::kStep, *step, step_timeout_);
    if (!sent.ok()) {
      return Fail(absl::Status(sent.code(), absl::StrCat("sending a step to node ", f->peer_node(),
                                                         ": ", sent.message())));
    }
  }
  watch_->Begin();
  absl::StatusOr<BatchResult> result = local_->Execute(batch);
  watch_->End();
  if (!result.ok()) return Fail(result.status());
  for (auto& f : followers_) {
    absl::StatusOr<std::vector<uint8_t>> answer = f->Expect(StepMessage::kResult, step_timeout_);
    if (!answer.ok()) {
      return Fail(absl::Status(
          answer.status().code(),
          absl::StrCat("node ", f->peer_node(), "'s step: ", answer.status().message())));
    }
    absl::StatusOr<BatchResult> theirs = DecodeBatchResult(*answer);
    if (!theirs.ok()) return Fail(theirs.status());
    if (theirs->seqs.size() != result->seqs.size()) {
      return Fail(absl::InternalError(absl::StrCat("node ", f->peer_node(), " answered for ",
                                                   theirs->seqs.size(), " sequences, not ",
                                                   result->seqs.size())));
    }
    for (size_t i = 0; i < result->seqs.size(); ++i) {
      std::vector<int32_t>& kept = result->seqs[i].kept_per_head;
      const std::vector<int32_t>& other = theirs->seqs[i].kept_per_head;
      if (other.empty()) continue;
      if (kept.size() != other.size()) {
        return Fail(
            absl::InternalError(absl::StrCat("node ", f->peer_node(), " reported ", other.size(),
                                             " kept counts, not ", kept.size())));
      }
      for (size_t h = 0; h < kept.size(); ++h) kept[h] = std::max(kept[h], other[h]);
    }
  }
  return result;
}

absl::Status MultiNodeWorker::AllocateKvPool(int64_t num_blocks) {
  HKV_ASSIGN_OR_RETURN(const KvCapacity agreed, local_->ReportKvCapacity());
  if (num_blocks != agreed.max_blocks) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the multi-node group agreed on ", agreed.max_blocks, " KV blocks, not ", num_blocks));
  }
  return local_->AllocateKvPool(num_blocks);
}

absl::Status RunStepFollower(Worker* local, StepConnection* leader) {
  StepWatch watch(local, {leader});
  BatchDecoder decoder;  // mirrors the leader's encoder: every step, in order
  for (;;) {
    HKV_ASSIGN_OR_RETURN(StepConnection::Message m, leader->Receive(absl::InfiniteDuration()));
    switch (m.type) {
      case StepMessage::kStop:
        return absl::OkStatus();
      case StepMessage::kError:
        return absl::UnavailableError(
            absl::StrCat("the leader gave up: ", std::string(m.payload.begin(), m.payload.end())));
      case StepMessage::kStep: {
        absl::StatusOr<Batch> batch = decoder.Decode(m.payload);
        watch.Begin();
        absl::StatusOr<BatchResult> result =
            batch.ok() ? local->Execute(*batch) : absl::StatusOr<BatchResult>(batch.status());
        watch.End();
        if (!result.ok()) {
          leader->SendError(absl::StrCat(local->name(), ": ", result.status().message()));
          return result.status();
        }
        for (SequenceResult& s : result->seqs) s.logits.clear();  // rank 0's are the step's
        HKV_RETURN_IF_ERROR(
            leader->Send(StepMessage::kResult, EncodeBatchResult(*result), absl::Minutes(1)));
        break;
      }
      default:
        leader->SendError("unexpected message during steps");
        return absl::FailedPreconditionError(absl::StrCat(
            "the leader sent message type ", static_cast<uint32_t>(m.type), " during steps"));
    }
  }
}

}  // namespace hkv
