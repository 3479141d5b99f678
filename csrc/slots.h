// Turns the op's tensor lists into torch-free TensorSlots for the device kernels: checks, dtype mapping,
// storage-order views (dense layouts in place, whatever their strides, when they agree across the lists;
// copies only for the rest, written back afterwards), per-tensor k.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <utility>
#include <vector>

#include "step_args.h"

namespace cure {

// The op's arguments, exactly as the schema in ops.cpp declares them.
struct StepCall {
  at::TensorList params, grads;
  const c10::List<std::optional<at::Tensor>>& nat_grads;
  const c10::List<std::optional<at::Tensor>>& adv_grads;
  at::TensorList momentum_buffers, revision_params;
  StepOptions options;
  double percentile;
  const c10::List<bool>& selective;
};

class PreparedStep {
 public:
  explicit PreparedStep(const StepCall& call);
  std::vector<TensorSlot>& slots() { return slots_; }
  const StepOptions& options() const { return options_; }
  // Copies results computed in contiguous scratch back into the caller's strided tensors.
  void write_back();

 private:
  // The tensor's own storage when in place (storage order agrees across the index) or contiguous;
  // otherwise a contiguous copy (written back after the step, for writable).
  void* writable(const at::Tensor& t, bool in_place);
  const void* readable(const at::Tensor& t, bool in_place);

  std::vector<TensorSlot> slots_;
  StepOptions options_;
  std::vector<at::Tensor> inputs_;                                // contiguous copies kept alive
  std::vector<std::pair<at::Tensor, at::Tensor>> written_;        // (caller tensor, contiguous copy)
};

// A device's part of the op: runs the prepared call on that device and returns `kept`.
using DeviceRun = at::Tensor (*)(PreparedStep& step, at::Device device);

// The kernel registered for each dispatch key: the schema's arguments in, `kept` out. Device files
// register `&selective_step_kernel<their_run>` so the argument handling exists once.
StepOptions make_options(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                         double alpha, c10::string_view score, c10::string_view conserve, bool revise,
                         double revision_decay);

template <DeviceRun Run>
at::Tensor selective_step_kernel(at::TensorList params, at::TensorList grads,
                                 const c10::List<std::optional<at::Tensor>>& nat_grads,
                                 const c10::List<std::optional<at::Tensor>>& adv_grads,
                                 at::TensorList momentum_buffers, at::TensorList revision_params, double lr,
                                 double momentum, double dampening, double weight_decay, bool nesterov,
                                 double percentile, double alpha, c10::string_view score,
                                 c10::string_view conserve, const c10::List<bool>& selective, bool revise,
                                 double revision_decay) {
  PreparedStep step(StepCall{params, grads, nat_grads, adv_grads, momentum_buffers, revision_params,
                             make_options(lr, momentum, dampening, weight_decay, nesterov, alpha, score,
                                          conserve, revise, revision_decay),
                             percentile, selective});
  at::Tensor kept = Run(step, params.empty() ? at::Device(at::kCPU) : params[0].device());
  step.write_back();
  return kept;
}

}  // namespace cure
