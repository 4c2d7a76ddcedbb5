#include "executor/tensor_parallel_worker.h"

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "workers/nccl_communicator.h"

namespace hkv {
namespace {

// A thread that runs one job at a time: the rank's CUDA context lives on it.
class RankThread {
 public:
  RankThread() : thread_([this] { Loop(); }) {}
  ~RankThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = std::move(job);
      done_ = false;
    }
    cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || job_ != nullptr; });
      if (stop_) return;
      std::function<void()> job = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      job();
      lock.lock();
      done_ = true;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool done_ = true, stop_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

}  // namespace

struct TensorParallelWorker::Impl {
  std::shared_ptr<const Model> model;
  TensorParallelOptions options;
  std::vector<std::unique_ptr<NcclCommunicator>> comms;
  std::vector<std::unique_ptr<CudaWorker>> ranks;
  std::vector<std::unique_ptr<RankThread>> threads;
  int32_t world = 1;                // ranks of the group, all processes
  std::atomic<bool> cancel{false};  // CancelStep(); read by the ranks' WaitFor
  int64_t blocks_per_rank = 0;
  std::string sizing;  // the ranks' own lines
  absl::Status dead;   // set once a step failed: the group cannot be trusted any more

  // Runs fn(rank) on every rank's thread at once and waits for all.
  void RunAll(const std::function<void(int32_t)>& fn) {
    for (size_t r = 0; r < threads.size(); ++r) {
      threads[r]->Post([&fn, r] { fn(static_cast<int32_t>(r)); });
    }
    for (auto& t : threads) t->Wait();
  }

  ~Impl() {
    // Workers first (their streams may still use the communicators), on their own threads.
    if (!threads.empty()) {
      RunAll([this](int32_t r) {
        if (r < static_cast<int32_t>(ranks.size())) ranks[r].reset();
      });
    }
    threads.clear();
    comms.clear();
  }
};

TensorParallelWorker::TensorParallelWorker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TensorParallelWorker::~TensorParallelWorker() = default;

absl::StatusOr<std::unique_ptr<TensorParallelWorker>> TensorParallelWorker::Create(
    std::shared_ptr<const Model> model, const TensorParallelOptions& options) {
  const int32_t local = static_cast<int32_t>(options.devices.size());
  const int32_t size = options.world_ranks > 0 ? options.world_ranks : local;
  const ModelConfig& c = model->config;
  if (local < 1) return absl::InvalidArgumentError("tensor parallelism needs at least one GPU");
  if (options.first_rank < 0 || options.first_rank + local > size ||
      (size > local && options.nccl_id.empty())) {
    return absl::InvalidArgumentError(absl::StrCat("ranks ", options.first_rank, "..",
                                                   options.first_rank + local - 1, " of ", size,
                                                   " (a group across processes needs an NCCL id)"));
  }
  if (c.num_kv_heads % size != 0 || c.num_heads % size != 0 || c.hidden_dim % size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tensor-parallel-size ", size, " must divide the KV heads (", c.num_kv_heads,
                     "), query heads (", c.num_heads, ") and FFN width (", c.hidden_dim, ")"));
  }
  auto impl = std::make_unique<Impl>();
  impl->model = model;
  impl->options = options;
  impl->world = size;
  if (!options.nccl_id.empty()) {
    HKV_ASSIGN_OR_RETURN(
        impl->comms,
        NcclCommunicator::CreateGroup(options.nccl_id, size, options.first_rank, options.devices));
  } else if (size > 1) {
    HKV_ASSIGN_OR_RETURN(impl->comms, NcclCommunicator::CreateAll(options.devices));
  }
  impl->ranks.resize(local);
  for (int32_t r = 0; r < local; ++r) impl->threads.push_back(std::make_unique<RankThread>());
  std::vector<absl::Status> status(local);
  impl->RunAll([&](int32_t r) {
    CudaWorkerOptions o = options.base;
    o.device = options.devices[r];
    o.tp.rank = options.first_rank + r;
    o.tp.size = size;
    o.tp.comm = size > 1 ? impl->comms[r].get() : nullptr;
    o.tp.cancel = &impl->cancel;
    o.tp.placement = options.placement;
    auto w = CudaWorker::Create(model, o);
    if (w.ok()) {
      impl->ranks[r] = std::move(*w);
    } else {
      status[r] = absl::Status(
          w.status().code(),
          absl::StrCat("rank ", o.tp.rank, " (GPU ", o.device, "): ", w.status().message()));
    }
  });
  for (const absl::Status& s : status) HKV_RETURN_IF_ERROR(s);
  impl->blocks_per_rank = impl->ranks[0]->num_blocks();
  for (const auto& w : impl->ranks) {
    impl->blocks_per_rank = std::min(impl->blocks_per_rank, w->num_blocks());
  }
  std::vector<std::string> lines;
  for (const auto& w : impl->ranks) lines.push_back(w->sizing());
  impl->sizing = absl::StrJoin(lines, "\n");
  auto group = std::unique_ptr<TensorParallelWorker>(new TensorParallelWorker(std::move(impl)));
  HKV_RETURN_IF_ERROR(group->SetBlocksPerRank(group->blocks_per_rank()));
  return group;
}

absl::StatusOr<KvCapacity> TensorParallelWorker::ReportKvCapacity() const {
  HKV_ASSIGN_OR_RETURN(const KvCapacity rank, impl_->ranks[0]->ReportKvCapacity());
  return KvCapacity{rank.bytes_per_block, num_blocks()};
}

absl::Status TensorParallelWorker::AllocateKvPool(int64_t num_blocks) {
  if (num_blocks > this->num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a KV pool of ", num_blocks, " blocks: the ranks hold ", this->num_blocks()));
  }
  const int64_t ranks = impl_->options.shared_block_ids ? 1 : size();
  if (num_blocks % ranks != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a KV pool of ", num_blocks, " blocks does not split over ", ranks, " ranks"));
  }
  return SetBlocksPerRank(num_blocks / ranks);
}

absl::Status TensorParallelWorker::SetBlocksPerRank(int64_t blocks) {
  Impl& m = *impl_;
  if (blocks < 1 || blocks > m.blocks_per_rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("blocks per rank ", blocks, " outside 1..", m.blocks_per_rank));
  }
  for (size_t r = 0; r < m.ranks.size(); ++r) {
    const int64_t rank = m.options.first_rank + static_cast<int64_t>(r);
    const int64_t first = m.options.shared_block_ids ? 0 : rank * blocks;
    HKV_RETURN_IF_ERROR(m.ranks[r]->SetBlockRange(first, blocks));
  }
  m.blocks_per_rank = blocks;
  return absl::OkStatus();
}

const ModelConfig& TensorParallelWorker::config() const { return impl_->model->config; }

std::string TensorParallelWorker::name() const {
  std::vector<std::string> devs;
  for (int32_t d : impl_->options.devices) devs.push_back(absl::StrCat(d));
  return absl::StrCat("cuda:", absl::StrJoin(devs, ","), " (tp ", size(), ")");
}

int32_t TensorParallelWorker::size() const { return impl_->world; }
int64_t TensorParallelWorker::blocks_per_rank() const { return impl_->blocks_per_rank; }
int64_t TensorParallelWorker::num_blocks() const {
  return impl_->options.shared_block_ids ? impl_->blocks_per_rank : impl_->blocks_per_rank * size();
}
std::string TensorParallelWorker::sizing() const {
  const int32_t local = static_cast<int32_t>(impl_->ranks.size());
  return absl::StrCat(impl_->sizing, "\ntensor parallel: ", size(), " ranks",
                      local < size() ? absl::StrCat(" (", local, " in this process)") : "",
                      ", one thread per GPU, NCCL; ", impl_->blocks_per_rank,
                      " KV blocks per rank");
}

void TensorParallelWorker::CancelStep() { impl_->cancel = true; }

void TensorParallelWorker::set_return_logits(bool on) {
  for (auto& w : impl_->ranks) w->set_return_logits(on);
}

std::vector<int32_t> TensorParallelWorker::RowPartition() const {
  const ModelConfig& c = config();
  std::vector<int32_t> out(static_cast<size_t>(c.num_layers) * c.num_kv_heads, 0);
  // Every rank's, this process's or not: slot s of a layer belongs to rank s / (H / R).
  const std::vector<int32_t>& placement = impl_->options.placement.head_of_slot;
  const int32_t per_rank = c.num_kv_heads / size();
  for (int32_t l = 0; l < c.num_layers; ++l) {
    for (int32_t slot = 0; slot < c.num_kv_heads; ++slot) {
      const int32_t head = placement.empty() ? slot : placement[l * c.num_kv_heads + slot];
      out[l * c.num_kv_heads + head] = slot / per_rank;
    }
  }
  return out;
}

absl::StatusOr<BatchResult> TensorParallelWorker::Execute(const Batch& batch) {
  Impl& m = *impl_;
  if (!m.dead.ok()) return m.dead;
  const int32_t n = static_cast<int32_t>(m.ranks.size());  // this process's ranks
  std::vector<absl::StatusOr<BatchResult>> results(n, absl::UnknownError("not run"));
  m.RunAll([&](int32_t r) { results[r] = m.ranks[r]->Execute(batch); });
  for (int32_t r = 0; r < n; ++r) {
    if (results[r].ok()) continue;
    // One rank failed: its peers' collectives can no longer be trusted.
    for (auto& comm : m.comms) {
      if (!comm->aborted()) comm->Abort();
    }
    m.dead = absl::UnavailableError(absl::StrCat("tensor-parallel rank ", m.options.first_rank + r,
                                                 " failed: ", results[r].status().message()));
    return m.dead;
  }
  // Kept counts of compressed prefills: each rank reports its own heads.
  const ModelConfig& c = config();
  const int32_t hl = c.num_kv_heads / size();
  std::vector<std::vector<int32_t>> merged(results[0]->seqs.size());
  for (size_t i = 0; i < merged.size(); ++i) {
    if (results[0]->seqs[i].kept_per_head.empty()) continue;
    std::vector<int32_t> global(static_cast<size_t>(c.num_layers) * c.num_kv_heads, 0);
    for (int32_t r = 0; r < n; ++r) {
      const std::vector<int32_t>& local = results[r]->seqs[i].kept_per_head;
      const std::vector<int32_t>& heads = m.ranks[r]->global_heads();
      for (int32_t l = 0; l < c.num_layers; ++l) {
        for (int32_t j = 0; j < hl; ++j) {
          global[l * c.num_kv_heads + heads[l * hl + j]] = local[l * hl + j];
        }
      }
    }
    merged[i] = std::move(global);
  }
  BatchResult out = std::move(*results[0]);
  for (size_t i = 0; i < merged.size(); ++i) {
    if (!merged[i].empty()) out.seqs[i].kept_per_head = std::move(merged[i]);
  }
  return out;
}

}  // namespace hkv
