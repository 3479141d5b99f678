// The CPU selective step over all tensors of a call (torch-free): per tensor, the scores' order keys,
// an exact radix select of the k-th key, then one fused pass for the keep test, SGD update, revision
// and the kept count. Storage types for float16/bfloat16 come from the caller (c10::Half, ...).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/radix_select.h"
#include "step_args.h"

namespace cure {

constexpr int64_t kElementGrain = int64_t(1) << 15;  // elements per parallel task: amortises dispatch

// Reusable key storage for one call, sized to the largest selective tensor.
template <typename K> class KeyBuffer {
 public:
  K* get(int64_t n) {
    if (n > size_) {
      data_.reset(new K[static_cast<size_t>(n)]);  // uninitialised: every entry is written before use
      size_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<K[]> data_;
  int64_t size_ = 0;
};

// ParallelFor: pfor(begin, end, grain, fn) running fn(b, e) over disjoint sub-ranges.
template <typename T, typename ParallelFor>
int64_t step_tensor(const TensorSlot& slot, const StepOptions& o, KeyBuffer<typename KeyOf<typename Acc<T>::type>::type>& buf,
                    ParallelFor&& pfor) {
  using A = typename Acc<T>::type;
  using K = typename KeyOf<A>::type;
  const int64_t n = slot.n;
  T* theta = static_cast<T*>(slot.param);
  T* mom = static_cast<T*>(slot.mom);
  T* rev = static_cast<T*>(slot.rev);
  const T* grad = static_cast<const T*>(slot.grad);

  const K* keys = nullptr;
  uint64_t threshold = trivial_threshold(slot);
  if (needs_selection(slot)) {
    K* out = buf.get(n);
    const T* nat = static_cast<const T*>(slot.nat);
    const T* adv = static_cast<const T*>(slot.adv);
    const ScoreCoeffs<A> c(o.alpha);
    pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = order_key(score(A(nat[i]), A(adv[i]), c, o.score));
    });
    keys = out;
    const auto chunk_pfor = [&](int64_t b, int64_t e, const auto& fn) { pfor(b, e, 1, fn); };
    threshold = radix_select(keys, n, slot.k, chunk_pfor);
  }

  const SgdHyper<A> h = sgd_hyper<A>(o);
  const A decay = A(o.revision_decay), one_minus_decay = A(1.0 - o.revision_decay);
  const bool keep_all = threshold == KEEP_ALL;
  std::atomic<int64_t> kept{0};
  pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
    int64_t local = 0;
    for (int64_t i = b; i < e; ++i) {
      const bool k = keys ? keep(keys[i], threshold) : keep_all;
      local += k;
      A th = A(theta[i]);
      A m = h.use_momentum ? A(mom[i]) : A(0);
      sgd_update(th, m, A(grad[i]), k, h);
      theta[i] = T(th);
      if (h.use_momentum) mom[i] = T(m);
      if (o.revise) rev[i] = T(revise(A(rev[i]), A(theta[i]), decay, one_minus_decay));
    }
    kept.fetch_add(local, std::memory_order_relaxed);
  });
  return kept.load();
}

// Runs every slot; kept[i] receives the number of entries of slot i that were updated.
template <typename Half, typename BFloat16, typename ParallelFor>
void selective_step_cpu(const std::vector<TensorSlot>& slots, const StepOptions& o, int64_t* kept,
                        ParallelFor&& pfor) {
  KeyBuffer<uint32_t> keys32;
  KeyBuffer<uint64_t> keys64;
  for (size_t i = 0; i < slots.size(); ++i) {
    const TensorSlot& s = slots[i];
    switch (s.dtype) {
      case DType::Float32: kept[i] = step_tensor<float>(s, o, keys32, pfor); break;
      case DType::Float64: kept[i] = step_tensor<double>(s, o, keys64, pfor); break;
      case DType::Float16: kept[i] = step_tensor<Half>(s, o, keys32, pfor); break;
      case DType::BFloat16: kept[i] = step_tensor<BFloat16>(s, o, keys32, pfor); break;
    }
  }
}

}  // namespace cure
