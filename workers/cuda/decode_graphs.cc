#include "workers/cuda/cuda_worker_state.h"

namespace hkv {

using cuda_internal::DecodeGraph;
using cuda_internal::DeviceStep;

// A graph is captured per padded batch size and re-captured when a buffer it uses moved
// (Epoch); replays need the same input addresses, which StepInputs' fixed slice order gives.
absl::Status CudaWorker::State::RunGraph(const Batch& b, const HostStep& h, const DeviceStep& d) {
  DecodeGraph& g = graphs[h.num_decode];
  const uint64_t epoch = Epoch();
  if (g.exec == nullptr || g.epoch != epoch) {
    if (g.exec != nullptr) {
      cudaGraphExecDestroy(g.exec);
      g.exec = nullptr;
    }
    HKV_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const absl::Status forward = Forward(b, h, d);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    if (!forward.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return forward;
    }
    HKV_CUDA_RETURN_IF_ERROR(end);
    const cudaError_t inst = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    HKV_CUDA_RETURN_IF_ERROR(inst);
    g.epoch = epoch;
    ++graphs_captured;
  }
  HKV_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g.exec, stream));
  return absl::OkStatus();
}

}  // namespace hkv
