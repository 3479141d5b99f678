// Enqueues one selective step: clear the workspace's counters, select the thresholds of each key
// width, run the fused update. Host code only; nothing here waits for the device.
#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "cuda/kernels.h"
#include "cuda/launch.h"

namespace cure::cuda {
namespace {

template <typename K>
SelectArgs<K> select_args(const GroupLayout& g, const unsigned char* meta, unsigned char* ws, uint64_t* thresholds,
                          const StepOptions& o) {
  return SelectArgs<K>{reinterpret_cast<const DevSlot*>(meta),
                       reinterpret_cast<const ListEntry*>(meta + g.all.offset),
                       g.all.count,
                       g.all.chunks,
                       reinterpret_cast<const ListEntry*>(meta + g.multi.offset),
                       g.multi.count,
                       g.multi.chunks,
                       reinterpret_cast<unsigned long long*>(ws + g.hist),
                       reinterpret_cast<unsigned int*>(ws + g.done),
                       reinterpret_cast<unsigned long long*>(ws + g.count),
                       reinterpret_cast<SelectState*>(ws + g.state),
                       reinterpret_cast<K*>(ws + g.cand),
                       thresholds,
                       o.alpha,
                       o.score};
}

}  // namespace

int persistent_grid(const void* kernel, int64_t chunks, int sm_count) {
  // Occupancy depends on the kernel and the device's architecture; one process's GPUs share one in
  // practice, and any grid size is correct (the kernels loop over chunks), so one answer per kernel.
  static std::mutex mutex;
  static std::unordered_map<const void*, int> per_sm;
  int blocks = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = per_sm.find(kernel);
    if (it != per_sm.end()) {
      blocks = it->second;
    } else {
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kBlock, 0) != cudaSuccess) {
        (void)cudaGetLastError();  // not sticky; the launch reports real errors
        blocks = 1;
      }
      per_sm.emplace(kernel, std::max(blocks, 1));
    }
  }
  return int(std::min<int64_t>(chunks, int64_t(std::max(blocks, 1)) * std::max(sm_count, 1)));
}

cudaError_t launch_step(const StepPlan& plan, const void* meta, void* workspace, int64_t* kept,
                        const StepOptions& o, int sm_count, cudaStream_t stream) {
  const auto* m = static_cast<const unsigned char*>(meta);
  auto* ws = static_cast<unsigned char*>(workspace);
  if (plan.zero_bytes > 0) {
    const cudaError_t err = cudaMemsetAsync(ws, 0, plan.zero_bytes, stream);
    if (err != cudaSuccess) return err;
  }
  auto* thresholds = reinterpret_cast<uint64_t*>(ws + plan.thresholds);
  launch_select(select_args<uint32_t>(plan.keys32, m, ws, thresholds, o), sm_count, stream);
  launch_select(select_args<uint64_t>(plan.keys64, m, ws, thresholds, o), sm_count, stream);
  UpdateArgs update{reinterpret_cast<const DevSlot*>(m),
                    nullptr,
                    0,
                    0,
                    thresholds,
                    reinterpret_cast<unsigned long long*>(kept),
                    sgd_hyper<float>(o),
                    sgd_hyper<double>(o),
                    static_cast<float>(o.revision_decay),
                    static_cast<float>(1.0 - o.revision_decay),
                    o.revision_decay,
                    1.0 - o.revision_decay,
                    o.alpha,
                    o.score,
                    o.revise};
  for (int t = 0; t < 4; ++t) {
    update.list = reinterpret_cast<const ListEntry*>(m + plan.update[t].offset);
    update.count = plan.update[t].count;
    update.chunks = plan.update[t].chunks;
    launch_update(update, static_cast<DType>(t), sm_count, stream);
  }
  return cudaGetLastError();
}

}  // namespace cure::cuda
