// Internal interface between the launcher (launch.cu) and the kernel files: the kernels' arguments,
// passed by value, and one host function per kernel family that enqueues its launches.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/meta.h"
#include "step_args.h"

namespace cure::cuda {

// One key width's selections (see GroupLayout); K = uint32_t or uint64_t.
template <typename K>
struct SelectArgs {
  const DevSlot* slots;
  const ListEntry* all;
  int32_t all_count;
  int64_t all_chunks;
  const ListEntry* multi;
  int32_t multi_count;
  int64_t multi_chunks;
  unsigned long long* hist;
  unsigned int* done;
  unsigned long long* count;
  SelectState* state;
  K* cand;
  uint64_t* thresholds;  // per slot; written for every slot with kNeedsSelect
  double alpha;
  ScoreMode mode;
};

struct UpdateArgs {
  const DevSlot* slots;
  const ListEntry* list;
  int32_t count;
  int64_t chunks;
  const uint64_t* thresholds;
  unsigned long long* kept;  // int64 per slot, accumulated
  SgdHyper<float> hyper32;
  SgdHyper<double> hyper64;
  float decay32, one_minus_decay32;
  double decay64, one_minus_decay64;
  double alpha;
  ScoreMode mode;
  bool revise;
};

// Blocks of a persistent grid over `chunks` chunks: as many as can be resident at once on sm_count
// multiprocessors (the kernel's occupancy, asked once per kernel), never more than the chunks.
int persistent_grid(const void* kernel, int64_t chunks, int sm_count);
template <typename... Args> int persistent_grid(void (*kernel)(Args...), int64_t chunks, int sm_count) {
  return persistent_grid(reinterpret_cast<const void*>(kernel), chunks, sm_count);
}

// Enqueue 0, 1 + (Digits<K>::kCount - 1) launches: first digit, then, if a tensor spans several
// chunks, compaction and the later digits.
template <typename K>
void launch_select(const SelectArgs<K>& args, int sm_count, cudaStream_t stream);

// Updates the tensors of args.list, all of storage type dtype.
void launch_update(const UpdateArgs& args, DType dtype, int sm_count, cudaStream_t stream);

}  // namespace cure::cuda
