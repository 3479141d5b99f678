// Torch-free entry of the CUDA selective step: plan a call on the host (cuda/plan.h), then launch it
// on a stream. The caller owns every allocation, so torch's caching allocator
// (or cudaMalloc in the C++ tests) provides the memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/plan.h"

namespace cure::cuda {

// Enqueues the whole step on `stream`: no host synchronisation, a fixed number of launches.
// meta: device copy of plan.meta (16-byte aligned); workspace: plan.workspace_bytes bytes (256-byte
// aligned); kept: num_slots int64 zeros, incremented by the update pass. Returns the first launch error.
cudaError_t launch_step(const StepPlan& plan, const void* meta, void* workspace, int64_t* kept,
                        const StepOptions& options, int sm_count, cudaStream_t stream);

}  // namespace cure::cuda
