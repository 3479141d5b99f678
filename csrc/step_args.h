// Torch-free description of one selective_step call: what the torch-facing launchers hand to the
// CPU and CUDA kernels (raw pointers to contiguous storage, 64-bit sizes).
#pragma once

#include <cstdint>

#include "cure_math.h"

namespace cure {

enum class DType : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// One parameter tensor. Every pointer addresses `n` consecutive elements of `dtype`, in the same
// (storage) order for all of them, which need not be the tensor's logical order; nat/adv are
// null for a non-selective tensor, mom is null without momentum, rev is null without revision.
struct TensorSlot {
  void* param;
  const void* grad;
  const void* nat;
  const void* adv;
  void* mom;
  void* rev;
  int64_t n;
  int64_t k;  // entries to conserve, floor(percentile * n); 0 for a non-selective tensor
  DType dtype;
  int32_t selective;
};

// The scalar arguments, already validated.
struct StepOptions {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  double alpha;
  ScoreMode score;
  ConserveMode conserve;
  bool revise;
  double revision_decay;
};

template <typename A> SgdHyper<A> sgd_hyper(const StepOptions& o) {
  return SgdHyper<A>{static_cast<A>(o.lr),
                     static_cast<A>(o.momentum),
                     static_cast<A>(1.0 - o.dampening),
                     static_cast<A>(o.weight_decay),
                     o.momentum > 0.0,
                     o.nesterov,
                     o.conserve == ConserveMode::Freeze};
}

// Whether the tensor needs a selection at all; otherwise its threshold is KEEP_ALL or KEEP_NONE.
inline bool needs_selection(const TensorSlot& s) { return s.selective && s.k > 0 && s.k < s.n; }
inline uint64_t trivial_threshold(const TensorSlot& s) {
  return (s.selective && s.n > 0 && s.k == s.n) ? KEEP_NONE : KEEP_ALL;
}

}  // namespace cure
