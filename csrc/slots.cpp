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

// Every tensor's checks, before anything is written: the Python wrapper leaves the per-tensor checks
// to this loop (it touches every tensor anyway) and words the SPEC's message when one fails.
void check_strided(const at::Tensor& t, const char* name, size_t i) {
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, "selective_step: ", name, "[", i, "] must be a dense (strided) tensor");
}

void check_same(const at::Tensor& p, const at::Tensor& t, const char* name, size_t i) {
  check_strided(t, name, i);
  TORCH_CHECK_VALUE(t.sizes() == p.sizes() && t.scalar_type() == p.scalar_type() && t.device() == p.device(),
                    "selective_step: ", name, "[", i, "] must match params[", i, "] in shape, dtype and device");
}

// Whether b (shaped like a) puts every element at a's offset from the data pointer.
bool same_strides(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// Whether the tensors of one index can be stepped in place in storage order: each covers exactly its
// n elements from its data pointer (non-overlapping and dense; strides are never negative), and the
// same offset holds the same element in all of them. The step is elementwise and the selection does
// not depend on element order, so channels_last weights and permuted views need no copies.
bool storage_order_agrees(const std::vector<const at::Tensor*>& ts) {
  bool contiguous = true;
  for (const at::Tensor* t : ts) contiguous = contiguous && t->is_contiguous();
  if (contiguous) return true;
  for (const at::Tensor* t : ts)
    if (!t->is_non_overlapping_and_dense() || !same_strides(*ts[0], *t)) return false;
  return true;
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
  const size_t buffers = c.momentum_buffers.size(), revisions = c.revision_params.size();
  TORCH_CHECK_VALUE(buffers == n || (buffers == 0 && !use_momentum),
                    "selective_step: momentum_buffers must have len(params) entries (none only without momentum)");
  TORCH_CHECK_VALUE(revisions == n || (revisions == 0 && !options_.revise),
                    "selective_step: revision_params must have len(params) entries (none only without revise)");
  slots_.reserve(n);
  std::vector<const at::Tensor*> operands;  // index i's tensors, params[i] first
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = c.params[i];
    check_strided(p, "params", i);
    TORCH_CHECK_VALUE(p.device() == c.params[0].device(), "selective_step: params[", i,
                      "] is on another device than params[0]");
    TensorSlot s{};
    s.dtype = dtype_of(p, i);
    s.n = p.numel();
    s.selective = c.selective.get(i);
    operands.assign({&p, &c.grads[i]});
    check_same(p, c.grads[i], "grads", i);
    const std::optional<at::Tensor> nat = c.nat_grads.get(i), adv = c.adv_grads.get(i);
    TORCH_CHECK_VALUE(!s.selective || (nat.has_value() && adv.has_value()), "selective_step: nat_grads[", i,
                      "] and adv_grads[", i, "] are required for a selective tensor");
    if (nat) check_same(p, *nat, "nat_grads", i);
    if (adv) check_same(p, *adv, "adv_grads", i);
    if (s.selective) operands.insert(operands.end(), {&*nat, &*adv});
    if (buffers) check_same(p, c.momentum_buffers[i], "momentum_buffers", i);
    if (use_momentum) operands.push_back(&c.momentum_buffers[i]);
    if (revisions) check_same(p, c.revision_params[i], "revision_params", i);
    if (options_.revise) operands.push_back(&c.revision_params[i]);

    const bool in_place = storage_order_agrees(operands);
    s.param = writable(p, in_place);
    s.grad = readable(c.grads[i], in_place);
    if (s.selective) {
      s.nat = readable(*nat, in_place);
      s.adv = readable(*adv, in_place);
      s.k = conserve_count(c.percentile, s.n);
    }
    if (use_momentum) s.mom = writable(c.momentum_buffers[i], in_place);
    if (options_.revise) s.rev = writable(c.revision_params[i], in_place);
    slots_.push_back(s);
  }
}

void* PreparedStep::writable(const at::Tensor& t, bool in_place) {
  if (in_place || t.is_contiguous()) return t.data_ptr();
  at::Tensor copy = t.contiguous();
  written_.emplace_back(t, copy);
  return copy.data_ptr();
}

const void* PreparedStep::readable(const at::Tensor& t, bool in_place) {
  if (in_place || t.is_contiguous()) return t.data_ptr();
  inputs_.push_back(t.contiguous());
  return inputs_.back().data_ptr();
}

void PreparedStep::write_back() {
  for (auto& [target, copy] : written_) target.copy_(copy);
  written_.clear();
}

}  // namespace cure
