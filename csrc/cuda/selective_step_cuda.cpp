// CUDA kernel of cure_ext::selective_step: allocates `kept`, the metadata and the workspace through
// torch (caching allocators, current stream), then hands raw pointers to the torch-free launcher.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/launch.h"
#include "slots.h"

namespace cure {
namespace {

// A captured CUDA graph replays the metadata upload from the host buffer it was captured with, so
// that buffer must live as long as the graph may: captured calls keep theirs for the process.
void keep_for_graph_replays(at::Tensor host) {
  static std::mutex mutex;
  static std::vector<at::Tensor> buffers;
  const std::lock_guard<std::mutex> lock(mutex);
  buffers.push_back(std::move(host));
}

at::Tensor run_cuda(PreparedStep& step, at::Device device) {
  const c10::cuda::CUDAGuard guard(device);
  std::vector<TensorSlot>& slots = step.slots();
  at::Tensor kept = at::zeros({static_cast<int64_t>(slots.size())}, at::TensorOptions(at::kLong).device(device));
  if (slots.empty()) return kept;
  const cuda::StepPlan plan = cuda::plan_step(slots.data(), static_cast<int32_t>(slots.size()));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device.index()));

  // One asynchronous upload of the metadata: from pinned memory normally; while the stream is being
  // captured, from pageable memory kept alive for the graph's replays.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  at::Tensor host = at::empty({static_cast<int64_t>(plan.meta.size())},
                              at::TensorOptions(at::kByte).pinned_memory(!capturing));
  std::memcpy(host.data_ptr(), plan.meta.data(), plan.meta.size());
  const at::Tensor meta = host.to(device, /*non_blocking=*/true);
  if (capturing) keep_for_graph_replays(std::move(host));

  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(plan.workspace_bytes)}, at::TensorOptions(at::kByte).device(device));
  C10_CUDA_CHECK(cuda::launch_step(plan, meta.data_ptr(), workspace.data_ptr(), kept.data_ptr<int64_t>(),
                                   step.options(), sm_count, stream));
  // meta and workspace go back to the caching allocator now: it reuses them only for work queued
  // later on this stream, which runs after these kernels.
  return kept;
}

}  // namespace
}  // namespace cure

TORCH_LIBRARY_IMPL(cure_ext, CUDA, m) { m.impl("selective_step", &cure::selective_step_kernel<cure::run_cuda>); }
