// Host planner of the CUDA selective step, torch- and CUDA-free (so g++ tests and times it): the
// metadata image uploaded with one copy, the workspace layout, and a cache that reuses both while a
// call's tensor list is unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/meta.h"
#include "step_args.h"

namespace cure::cuda {

// Candidate keys the workspace holds per key width unless the caller asks otherwise: 64 MiB of
// 32-bit keys. The torch launcher reads CURE_EXT_CAND_CAP (keys) to override it, for tests.
constexpr int64_t kDefaultCandCap = int64_t(1) << 24;

struct StepPlan {
  std::vector<unsigned char> meta;  // host image of the metadata; upload it unchanged
  int32_t num_slots = 0;
  ListInfo update[4]{};             // tensors with n > 0, by DType
  GroupLayout keys32{}, keys64{};   // float32/16/bf16 selections; float64 selections
  size_t thresholds = 0;            // workspace: uint64 per slot
  size_t zero_bytes = 0;            // workspace prefix that launch_step clears
  size_t workspace_bytes = 0;
};

// Candidate room of each multi-chunk selection of one key width, in keys (multiples of 4, so every
// tensor's candidates stay 16-byte aligned): the whole tensor while the sum fits under cap, else a
// share of cap proportional to the tensor's size. A tensor whose candidates outgrow its room
// recomputes its later digits' keys from the gradients instead (select.cu).
std::vector<int64_t> candidate_room(const std::vector<int64_t>& sizes, int64_t cap);

// Sizes come from the slots alone, so planning never waits for the device. cand_cap: candidate keys
// per key width (>= 0).
StepPlan plan_step(const TensorSlot* slots, int32_t count, int64_t cand_cap = kDefaultCandCap);

}  // namespace cure::cuda
