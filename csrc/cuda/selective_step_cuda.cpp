// CUDA kernel of cure_ext::selective_step: allocates `kept` and the workspace through torch (caching
// allocator, current stream), reuses the plan and its uploaded metadata while the tensor list is
// unchanged (plan_cache.h), then hands raw pointers to the torch-free launcher.
// torch's host allocator header reads std::hardware_destructive_interference_size, which GCC 12+ warns
// about in every file including it; the value only pads torch's own structures.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winterference-size"
#include <ATen/core/CachingHostAllocator.h>
#pragma GCC diagnostic pop
#else
#include <ATen/core/CachingHostAllocator.h>
#endif
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/launch.h"
#include "cuda/plan_cache.h"
#include "slots.h"

namespace cure {
namespace {

// A few recent tensor lists per process (one optimizer, or a handful alternating); each entry holds
// only its plan and its metadata, O(tensors) bytes. Never destroyed: at exit, freeing device tensors
// could run after torch's CUDA allocator is gone.
cuda::PlanCache<at::Tensor>& plan_cache() {
  static auto* cache = new cuda::PlanCache<at::Tensor>(8);
  return *cache;
}

// Candidate keys per key width; CURE_EXT_CAND_CAP (keys) lowers it so tests reach the overflow path.
int64_t candidate_cap() {
  const char* env = std::getenv("CURE_EXT_CAND_CAP");
  if (env == nullptr || *env == '\0') return cuda::kDefaultCandCap;
  char* end = nullptr;
  const long long cap = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(*end == '\0' && cap >= 0, "CURE_EXT_CAND_CAP must be a non-negative integer, got '", env, "'");
  return cap;
}

// The op's scalars (lr, momentum, percentile, revision decay...) are kernel arguments, so a captured
// graph would replay the capture's values on every replay and silently ignore the schedule.
void refuse_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  TORCH_CHECK(capture == cudaStreamCaptureStatusNone,
              "cure_ext.selective_step cannot be captured in a CUDA graph: its lr, momentum, percentile and revision "
              "arguments would be frozen at their captured values on every replay; call it outside the captured "
              "region");
}

// The metadata's one upload: cudaMemcpyAsync from a block of torch's pinned host allocator on the
// current stream, not a dispatcher copy (no aten::copy_ under the profiler, so callers counting copies
// see only copies of their own tensors). The stream is recorded on the block, so the allocator does
// not hand it out again before the copy has run.
at::Tensor upload(const cuda::StepPlan& plan, at::Device device, const c10::cuda::CUDAStream& stream) {
  const size_t bytes = plan.meta.size();
  at::Tensor meta = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions(at::kByte).device(device));
  at::HostAllocator* pinned = at::getHostAllocator(at::kCUDA);
  const at::DataPtr host = pinned->allocate(bytes);
  std::memcpy(host.get(), plan.meta.data(), bytes);
  C10_CUDA_CHECK(cudaMemcpyAsync(meta.data_ptr(), host.get(), bytes, cudaMemcpyHostToDevice, stream.stream()));
  TORCH_INTERNAL_ASSERT(pinned->record_event(host.get(), host.get_context(), stream.unwrap()),
                        "the pinned metadata block is not from torch's host allocator");
  return meta;
}

at::Tensor run_cuda(PreparedStep& step, at::Device device) {
  const c10::cuda::CUDAGuard guard(device);
  const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device.index());
  const cudaStream_t stream = current.stream();
  refuse_capture(stream);
  const int64_t cap = candidate_cap();
  std::vector<TensorSlot>& slots = step.slots();
  at::Tensor kept = at::zeros({static_cast<int64_t>(slots.size())}, at::TensorOptions(at::kLong).device(device));
  if (slots.empty()) return kept;
  const cuda::PlanPlace place{device.index(), reinterpret_cast<uintptr_t>(stream), cap};
  const auto entry = plan_cache().get(place, slots.data(), static_cast<int32_t>(slots.size()),
                                      [&](const cuda::StepPlan& plan) { return upload(plan, device, current); });
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device.index()));
  // The workspace goes back to the caching allocator on return: it reuses it only for work queued
  // later on this stream, which runs after these kernels. The cached metadata is only ever read by
  // kernels on this stream (the stream is part of the cache key).
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(entry.plan->workspace_bytes)}, at::TensorOptions(at::kByte).device(device));
  C10_CUDA_CHECK(cuda::launch_step(*entry.plan, entry.upload.data_ptr(), workspace.data_ptr(),
                                   kept.data_ptr<int64_t>(), step.options(), sm_count, stream));
  return kept;
}

}  // namespace
}  // namespace cure

TORCH_LIBRARY_IMPL(cure_ext, CUDA, m) { m.impl("selective_step", &cure::selective_step_kernel<cure::run_cuda>); }
