// The CPU selective step over all tensors of a call (torch-free): per tensor, the scores' order keys,
// an exact radix select of the k-th key, then one fused pass for the keep test, SGD update, revision
// and the kept count. Storage types for float16/bfloat16 come from the caller (c10::Half, ...).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/radix_select.h"
#include "step_args.h"

namespace cure {

constexpr int64_t kElementGrain = int64_t(1) << 15;  // elements per parallel task: amortises dispatch
// Tensors up to kElementGrain elements run whole on one thread, many of them per parallel loop: a
// parallel loop per tiny tensor would cost more than its work.
constexpr int64_t kSmallTensor = kElementGrain;
// Up to this size std::nth_element finds the k-th key faster than the radix passes' fixed cost
// (2^11-bucket histograms); both return the exact order statistic.
constexpr int64_t kSortSelectMax = 2048;

// Key storage and select scratch of one key width, reused across tensors and calls (see
// SelectScratch: fresh allocations would be page-faulted anew on every step).
template <typename K> struct KeyWorkspace {
  std::vector<K> keys;
  SelectScratch<K> select;
  K* get(int64_t n) {
    if (keys.size() < static_cast<size_t>(n)) keys.resize(static_cast<size_t>(n));
    return keys.data();
  }
};

// The calling thread's workspace of key type K (pool threads running small tensors have their own),
// so concurrent calls never share scratch.
template <typename K> KeyWorkspace<K>& thread_workspace() {
  static thread_local KeyWorkspace<K> ws;
  return ws;
}

// k-th smallest of keys[0..n) by std::nth_element on a copy (the keys stay in element order).
template <typename K> K sort_select(const K* keys, int64_t n, int64_t k, SelectScratch<K>& scratch) {
  std::vector<K>& copy = scratch.buffers[0];
  copy.assign(keys, keys + n);
  std::nth_element(copy.begin(), copy.begin() + k, copy.end());
  return copy[static_cast<size_t>(k)];
}

// Calls fn with std::bool_constant arguments matching the run-time flags.
template <typename Fn> void with_flags(bool a, bool b, bool c, Fn&& fn) {
  const auto pick_c = [&](auto x, auto y) {
    c ? fn(x, y, std::true_type{}) : fn(x, y, std::false_type{});
  };
  const auto pick_b = [&](auto x) { b ? pick_c(x, std::true_type{}) : pick_c(x, std::false_type{}); };
  a ? pick_b(std::true_type{}) : pick_b(std::false_type{});
}

// The fused pass over [b, e): keep test, SGD update, revision; returns the kept count. The restrict
// pointers (distinct tensors) let the compiler vectorise.
template <bool HasKeys, bool UseMomentum, bool Revise, typename T, typename K, typename A>
int64_t update_range(int64_t b, int64_t e, T* __restrict__ theta, T* __restrict__ mom, T* __restrict__ rev,
                     const T* __restrict__ grad, const K* __restrict__ keys, K threshold, bool keep_all,
                     const SgdHyper<A> h, A decay, A one_minus_decay) {
  // h by value: a reference could alias the stores, which blocks vectorisation.
  int64_t kept = 0;
  for (int64_t i = b; i < e; ++i) {
    bool k = keep_all;
    if constexpr (HasKeys) k = keep(keys[i], threshold);  // K-wide: see keep()
    kept += k;
    A th = A(theta[i]);
    A m = A(0);
    if constexpr (UseMomentum) m = A(mom[i]);
    sgd_update(th, m, A(grad[i]), k, h);
    const T stored = T(th);
    theta[i] = stored;
    if constexpr (UseMomentum) mom[i] = T(m);
    if constexpr (Revise) rev[i] = T(revise(A(rev[i]), A(stored), decay, one_minus_decay));
  }
  return kept;
}

// ParallelFor: pfor(begin, end, grain, fn) running fn(b, e) over disjoint sub-ranges.
template <typename T, typename ParallelFor>
int64_t step_tensor(const TensorSlot& slot, const StepOptions& o, ParallelFor&& pfor) {
  using A = typename Acc<T>::type;
  using K = typename KeyOf<A>::type;
  KeyWorkspace<K>& ws = thread_workspace<K>();
  const int64_t n = slot.n;
  T* theta = static_cast<T*>(slot.param);
  T* mom = static_cast<T*>(slot.mom);
  T* rev = static_cast<T*>(slot.rev);
  const T* grad = static_cast<const T*>(slot.grad);

  const K* keys = nullptr;
  uint64_t threshold = trivial_threshold(slot);
  if (needs_selection(slot)) {
    K* out = ws.get(n);
    const T* nat = static_cast<const T*>(slot.nat);
    const T* adv = static_cast<const T*>(slot.adv);
    const ScoreCoeffs<A> c(o.alpha);
    keys = out;
    if (n <= kSortSelectMax) {
      for (int64_t i = 0; i < n; ++i) out[i] = order_key(score(A(nat[i]), A(adv[i]), c, o.score));
      threshold = sort_select(keys, n, slot.k, ws.select);
    } else {
      // Keys and the select's first histogram in one pass over the select's chunks: each chunk's keys
      // are counted while still in cache.
      const int64_t len = select_chunk(n), chunks = (n + len - 1) / len;
      ws.select.hist.assign(static_cast<size_t>(chunks * kRadixBuckets), 0);
      pfor(0, chunks, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t ch = cb; ch < ce; ++ch) {
          const int64_t begin = ch * len, end = std::min(n, begin + len);
          for (int64_t i = begin; i < end; ++i) out[i] = order_key(score(A(nat[i]), A(adv[i]), c, o.score));
          count_digits(out, begin, end, first_shift<K>(), ws.select.hist.data() + ch * kRadixBuckets);
        }
      });
      const auto chunk_pfor = [&](int64_t b, int64_t e, const auto& fn) { pfor(b, e, 1, fn); };
      threshold = radix_select(keys, n, slot.k, ws.select, chunk_pfor, /*first_counted=*/true);
    }
  }

  const SgdHyper<A> h = sgd_hyper<A>(o);
  const A decay = A(o.revision_decay), one_minus_decay = A(1.0 - o.revision_decay);
  const bool keep_all = threshold == KEEP_ALL;
  std::atomic<int64_t> kept{0};
  // The loop-invariant choices become template flags so that each variant's loop vectorises.
  with_flags(keys != nullptr, h.use_momentum, o.revise, [&](auto has_keys, auto use_momentum, auto revise) {
    pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
      const int64_t local = update_range<has_keys.value, use_momentum.value, revise.value>(
          b, e, theta, mom, rev, grad, keys, K(threshold), keep_all, h, decay, one_minus_decay);
      kept.fetch_add(local, std::memory_order_relaxed);
    });
  });
  return kept.load();
}

// Runs every slot; kept[i] receives the number of entries of slot i that were updated. Large tensors
// are parallel inside; small ones are spread whole over the threads by one parallel loop.
template <typename Half, typename BFloat16, typename ParallelFor>
void selective_step_cpu(const std::vector<TensorSlot>& slots, const StepOptions& o, int64_t* kept,
                        ParallelFor&& pfor) {
  const auto run = [&](size_t i, auto&& loop) {
    const TensorSlot& s = slots[i];
    switch (s.dtype) {
      case DType::Float32: kept[i] = step_tensor<float>(s, o, loop); break;
      case DType::Float64: kept[i] = step_tensor<double>(s, o, loop); break;
      case DType::Float16: kept[i] = step_tensor<Half>(s, o, loop); break;
      case DType::BFloat16: kept[i] = step_tensor<BFloat16>(s, o, loop); break;
    }
  };
  std::vector<size_t> small;
  int64_t small_elements = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].n <= kSmallTensor) {
      small.push_back(i);
      small_elements += slots[i].n;
    } else {
      run(i, pfor);
    }
  }
  if (small.empty()) return;
  const auto serial = [](int64_t b, int64_t e, int64_t, const auto& fn) {
    if (b < e) fn(b, e);
  };
  const int64_t count = static_cast<int64_t>(small.size());
  // Tasks of about kElementGrain elements: tiny tensors together stay on the calling thread.
  const int64_t grain = std::max<int64_t>(1, kElementGrain * count / std::max<int64_t>(small_elements, 1));
  pfor(0, count, grain, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) run(small[static_cast<size_t>(j)], serial);
  });
}

}  // namespace cure
