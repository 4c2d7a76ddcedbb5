#include "workers/nccl_communicator.h"

#include <nccl.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

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

absl::Status NcclCommunicator::WaitFor(cudaStream_t stream, absl::Duration timeout) {
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
      if (absl::Now() > deadline) {
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
  ncclCommAbort(impl_->comm);
  impl_->comm = nullptr;
}

}  // namespace hkv
