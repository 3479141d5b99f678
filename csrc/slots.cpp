#include "slots.h"

#include <c10/util/Exception.h>

namespace cure {
namespace {

DType dtype_of(const at::Tensor& t, size_t i) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "selective_step: params[", i, "] has unsupported dtype ", t.scalar_type());
  }
}

// Memory-safety net for direct torch.ops calls; cure_ext.selective_step validates everything first.
void check_same(const at::Tensor& p, const at::Tensor& t, const char* name, size_t i) {
  TORCH_CHECK_VALUE(t.sizes() == p.sizes() && t.scalar_type() == p.scalar_type() && t.device() == p.device(),
                    "selective_step: ", name, "[", i, "] must match params[", i, "] in shape, dtype and device");
}

}  // namespace

StepOptions make_options(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                         double alpha, c10::string_view score, c10::string_view conserve, bool revise,
                         double revision_decay) {
  TORCH_CHECK_VALUE(score == "abs" || score == "signed", "selective_step: score must be 'abs' or 'signed'");
  TORCH_CHECK_VALUE(conserve == "grad" || conserve == "freeze",
                    "selective_step: conserve must be 'grad' or 'freeze'");
  return StepOptions{lr,
                     momentum,
                     dampening,
                     weight_decay,
                     nesterov,
                     alpha,
                     score == "abs" ? ScoreMode::Abs : ScoreMode::Signed,
                     conserve == "grad" ? ConserveMode::Grad : ConserveMode::Freeze,
                     revise,
                     revision_decay};
}

PreparedStep::PreparedStep(const StepCall& c) : options_(c.options) {
  const size_t n = c.params.size();
  const bool use_momentum = options_.momentum > 0.0;
  TORCH_CHECK_VALUE(c.grads.size() == n && c.nat_grads.size() == n && c.adv_grads.size() == n &&
                        c.selective.size() == n,
                    "selective_step: grads, nat_grads, adv_grads and selective must have len(params) entries");
  TORCH_CHECK_VALUE(!use_momentum || c.momentum_buffers.size() == n,
                    "selective_step: momentum_buffers must have len(params) entries when momentum > 0");
  TORCH_CHECK_VALUE(!options_.revise || c.revision_params.size() == n,
                    "selective_step: revision_params must have len(params) entries when revise=True");
  slots_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = c.params[i];
    TORCH_CHECK_VALUE(p.device() == c.params[0].device(), "selective_step: params[", i,
                      "] is on another device than params[0]");
    TensorSlot s{};
    s.dtype = dtype_of(p, i);
    s.n = p.numel();
    check_same(p, c.grads[i], "grads", i);
    s.param = writable(p);
    s.grad = readable(c.grads[i]);
    s.selective = c.selective.get(i);
    if (s.selective) {
      const std::optional<at::Tensor> nat = c.nat_grads.get(i), adv = c.adv_grads.get(i);
      TORCH_CHECK_VALUE(nat.has_value() && adv.has_value(), "selective_step: nat_grads[", i, "] and adv_grads[",
                        i, "] are required for a selective tensor");
      check_same(p, *nat, "nat_grads", i);
      check_same(p, *adv, "adv_grads", i);
      s.nat = readable(*nat);
      s.adv = readable(*adv);
      s.k = conserve_count(c.percentile, s.n);
    }
    if (use_momentum) {
      check_same(p, c.momentum_buffers[i], "momentum_buffers", i);
      s.mom = writable(c.momentum_buffers[i]);
    }
    if (options_.revise) {
      check_same(p, c.revision_params[i], "revision_params", i);
      s.rev = writable(c.revision_params[i]);
    }
    slots_.push_back(s);
  }
}

void* PreparedStep::writable(const at::Tensor& t) {
  if (t.is_contiguous()) return t.data_ptr();
  at::Tensor copy = t.contiguous();
  written_.emplace_back(t, copy);
  return copy.data_ptr();
}

const void* PreparedStep::readable(const at::Tensor& t) {
  if (t.is_contiguous()) return t.data_ptr();
  inputs_.push_back(t.contiguous());
  return inputs_.back().data_ptr();
}

void PreparedStep::write_back() {
  for (auto& [target, copy] : written_) target.copy_(copy);
  written_.clear();
}

}  // namespace cure
