// Torch-free entry of the CUDA selective step: plan a call on the host (metadata image, workspace
// size), then launch it on a stream. The caller owns every allocation, so torch's caching allocator
// (or cudaMalloc in the C++ tests) provides the memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/meta.h"
#include "step_args.h"

namespace cure::cuda {

struct StepPlan {
  std::vector<unsigned char> meta;  // host image of the metadata; upload it unchanged
  int32_t num_slots = 0;
  ListInfo update[4]{};             // tensors with n > 0, by DType
  GroupLayout keys32{}, keys64{};   // float32/16/bf16 selections; float64 selections
  size_t thresholds = 0;            // workspace: uint64 per slot
  size_t zero_bytes = 0;            // workspace prefix that launch_step clears
  size_t workspace_bytes = 0;
};

// Host only; sizes come from the slots alone, so planning never waits for the device.
StepPlan plan_step(const TensorSlot* slots, int32_t count);

// Enqueues the whole step on `stream`: no host synchronisation, a fixed number of launches.
// meta: device copy of plan.meta (16-byte aligned); workspace: plan.workspace_bytes bytes (256-byte
// aligned); kept: num_slots int64 zeros, incremented by the update pass. Returns the first launch error.
cudaError_t launch_step(const StepPlan& plan, const void* meta, void* workspace, int64_t* kept,
                        const StepOptions& options, int sm_count, cudaStream_t stream);

}  // namespace cure::cuda
