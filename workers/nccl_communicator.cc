#include "workers/nccl_communicator.h"

#include <nccl.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"

namespace hkv {

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
};

namespace {

absl::Status NcclError(const char* what, ncclResult_t r) {
  return absl::UnavailableError(absl::StrCat("NCCL ", what, ": ", ncclGetErrorString(r)));
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl, int32_t rank, int32_t world)
    : impl_(std::move(impl)), rank_(rank), world_(world) {}

NcclCommunicator::~NcclCommunicator() {
  if (impl_ != nullptr && impl_->comm != nullptr) {
    if (aborted_) {
      ncclCommAbort(impl_->comm);
    } else {
      ncclCommDestroy(impl_->comm);
    }
  }
}

absl::StatusOr<std::vector<uint8_t>> NcclCommunicator::NewUniqueId() {
  ncclUniqueId id;
  if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
    return NcclError("ncclGetUniqueId", r);
  }
  std::vector<uint8_t> out(sizeof(id.internal));
  std::memcpy(out.data(), id.internal, out.size());
  return out;
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const std::vector<uint8_t>& id, int32_t world, int32_t rank) {
  ncclUniqueId uid;
  if (id.size() != sizeof(uid.internal)) {
    return absl::InvalidArgumentError(
        absl::StrCat("an NCCL id has ", sizeof(uid.internal), " bytes, got ", id.size()));
  }
  if (world < 1 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of ", world));
  }
  std::memcpy(uid.internal, id.data(), id.size());
  auto impl = std::make_unique<Impl>();
  if (const ncclResult_t r = ncclCommInitRank(&impl->comm, world, uid, rank); r != ncclSuccess) {
    return NcclError("ncclCommInitRank", r);
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl), rank, world));
}

absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> NcclCommunicator::CreateAll(
    const std::vector<int32_t>& devices) {
  if (devices.empty()) return absl::InvalidArgumentError("no devices");
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  std::vector<int> devs(devices.begin(), devices.end());
  if (const ncclResult_t r =
          ncclCommInitAll(comms.data(), static_cast<int>(devs.size()), devs.data());
      r != ncclSuccess) {
    return NcclError("ncclCommInitAll", r);
  }
  std::vector<std::unique_ptr<NcclCommunicator>> out;
  for (size_t i = 0; i < comms.size(); ++i) {
    auto impl = std::make_unique<Impl>();
    impl->comm = comms[i];
    out.push_back(std::unique_ptr<NcclCommunicator>(new NcclCommunicator(
        std::move(impl), static_cast<int32_t>(i), static_cast<int32_t>(comms.size()))));
  }
  return out;
}

absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> NcclCommunicator::CreateGroup(
    const std::vector<uint8_t>& id, int32_t world, int32_t first_rank,
    const std::vector<int32_t>& devices) {
  ncclUniqueId uid;
  if (id.size() != sizeof(uid.internal)) {
    return absl::InvalidArgumentError(
        absl::StrCat("an NCCL id has ", sizeof(uid.internal), " bytes, got ", id.size()));
  }
  const int32_t n = static_cast<int32_t>(devices.size());
  if (n < 1 || first_rank < 0 || first_rank + n > world) {
    return absl::InvalidArgumentError(
        absl::StrCat("ranks ", first_rank, "..", first_rank + n - 1, " of ", world));
  }
  std::memcpy(uid.internal, id.data(), id.size());
  std::vector<ncclComm_t> comms(n, nullptr);
  int previous = 0;
  cudaGetDevice(&previous);
  // Several ranks of one process must join inside one group call, or the first would wait for
  // the others for ever.
  ncclResult_t r = ncclGroupStart();
  for (int32_t i = 0; i < n && r == ncclSuccess; ++i) {
    if (cudaSetDevice(devices[i]) != cudaSuccess) {
      ncclGroupEnd();
      cudaSetDevice(previous);
      return absl::UnavailableError(absl::StrCat("cannot use GPU ", devices[i]));
    }
    r = ncclCommInitRank(&comms[i], world, uid, first_rank + i);
  }
  const ncclResult_t end = ncclGroupEnd();
  cudaSetDevice(previous);
  if (r == ncclSuccess) r = end;
  if (r != ncclSuccess) {
    for (ncclComm_t c : comms) {
      if (c != nullptr) ncclCommAbort(c);
    }
    return NcclError("ncclCommInitRank", r);
  }
  std::vector<std::unique_ptr<NcclCommunicator>> out;
  for (int32_t i = 0; i < n; ++i) {
    auto impl = std::make_unique<Impl>();
    impl->comm = comms[i];
    out.push_back(std::unique_ptr<NcclCommunicator>(
        new NcclCommunicator(std::move(impl), first_rank + i, world)));
  }
  return out;
}

absl::Status NcclCommunicator::AllReduceSum(void* buffer, int64_t count, kernels::DType dtype,
                                            cudaStream_t stream) {
  if (aborted_) return absl::UnavailableError("the NCCL communicator was aborted");
  const ncclDataType_t t = dtype == kernels::DType::kBf16 ? ncclBfloat16 : ncclFloat16;
  if (const ncclResult_t r = ncclAllReduce(buffer, buffer, static_cast<size_t>(count), t, ncclSum,
                                           impl_->comm, stream);
      r != ncclSuccess) {
    return NcclError("ncclAllReduce", r);
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Broadcast(void* buffer, int64_t bytes, int32_t root,
                                         cudaStream_t stream) {
  if (aborted_) return absl::UnavailableError("the NCCL communicator was aborted");
  if (const ncclResult_t r = ncclBroadcast(buffer, buffer, static_cast<size_t>(bytes), ncclUint8,
                                           root, impl_->comm, stream);
      r != ncclSuccess) {
    return NcclError("ncclBroadcast", r);
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::WaitFor(cudaStream_t stream, absl::Duration timeout,
                                       const std::atomic<bool>* cancel) {
  const absl::Time deadline = absl::Now() + timeout;
  for (int64_t spins = 0;; ++spins) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) {
      Abort();
      return absl::UnavailableError(
          absl::StrCat("CUDA error on rank ", rank_, ": ", cudaGetErrorString(q)));
    }
    if (spins % 64 == 0) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(impl_->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        Abort();
        return absl::UnavailableError(
            absl::StrCat("NCCL error on rank ", rank_, ": ", ncclGetErrorString(async)));
      }
      if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) {
        HKV_LOG(ERROR) << "rank " << rank_ << ": step cancelled; aborting the communicator";
        Abort();
        HKV_LOG(ERROR) << "rank " << rank_ << ": communicator aborted";
        return absl::UnavailableError(
            absl::StrCat("rank ", rank_,
                         ": step cancelled, a peer node is gone; communicator "
                         "aborted"));
      }
      if (absl::Now() > deadline) {
        HKV_LOG(ERROR) << "rank " << rank_ << ": step timed out; aborting the communicator";
        Abort();
        return absl::DeadlineExceededError(absl::StrCat(
            "rank ", rank_, ": a tensor-parallel step did not finish within ",
            absl::FormatDuration(timeout), " (a peer rank died or hangs); communicator aborted"));
      }
    }
    if (spins > 2000) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclCommunicator::Abort() {
  if (aborted_ || impl_->comm == nullptr) return;
  aborted_ = true;
  // ncclCommAbort waits for this rank's kernels to see the abort flag and for NCCL's proxy
  // threads to wind down, and recent NCCL synchronizes with the node's other ranks while
  // freeing; with a peer process killed it can block for ever (NVIDIA/nccl issues 863 and
  // 1777; a node 0 whose peer was killed hung like this on 2 x H200 before this change). The group is dead either way, so it runs on a thread of its
  // own and the rank returns its error at once (the process exits soon after: see
  // server/cmd_serve.cc and common/exit_watchdog.h).
  ncclComm_t comm = impl_->comm;
  impl_->comm = nullptr;
  std::thread([comm] { ncclCommAbort(comm); }).detach();
}

}  // namespace hkv
