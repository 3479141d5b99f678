// CPU kernel of cure_ext::selective_step: the torch-free step of step_kernel.h run on PyTorch's
// intra-op thread pool.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "cpu/step_kernel.h"
#include "slots.h"

namespace cure {
namespace {

at::Tensor run_cpu(PreparedStep& step, at::Device device) {
  at::Tensor kept = at::empty({static_cast<int64_t>(step.slots().size())}, at::TensorOptions(at::kLong).device(device));
  const auto pfor = [](int64_t begin, int64_t end, int64_t grain, const auto& fn) {
    at::parallel_for(begin, end, grain, fn);
  };
  selective_step_cpu<c10::Half, c10::BFloat16>(step.slots(), step.options(), kept.data_ptr<int64_t>(), pfor);
  return kept;
}

}  // namespace
}  // namespace cure

TORCH_LIBRARY_IMPL(cure_ext, CPU, m) { m.impl("selective_step", &cure::selective_step_kernel<cure::run_cpu>); }
