// The CPU selective step over all tensors of a call (torch-free): per tensor, the scores' order keys
// and their 16-bit bucket counts in one pass, then one fused pass for the keep test, SGD update,
// revision and the kept count that sets aside the few entries of the threshold's bucket; their exact
// order statistic decides them last. Storage types for float16/bfloat16 come from the caller.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cpu/bucket_select.h"
#include "cpu/radix_select.h"
#include "step_args.h"

namespace cure {

constexpr int64_t kElementGrain = int64_t(1) << 15;  // elements per parallel task: amortises dispatch
// Tensors up to kElementGrain elements run whole on one thread, many of them per parallel loop: a
// parallel loop per tiny tensor would cost more than its work.
constexpr int64_t kSmallTensor = kElementGrain;
// Up to this size std::nth_element on all keys is faster than the bucket pass's fixed cost; both
// give the exact order statistic.
constexpr int64_t kSortSelectMax = 2048;
// Keys are counted per block, while still in cache.
constexpr int64_t kKeyBlock = 4096;
// The update pass sets aside the threshold bucket's entries per block of this many.
constexpr int64_t kUpdateBlock = 64;
// Entries set aside are updated one by one later: worth it while the threshold's bucket holds at most
// 1/kDeferShare of the tensor (many equal scores, e.g. zero gradients, take an exact radix select).
constexpr int64_t kDeferShare = 128;
constexpr int64_t kLateGrain = 4096;  // entries set aside, per parallel task

// Key storage and select scratch of one key width, reused across tensors and calls (see
// SelectScratch: fresh allocations would be page-faulted anew on every step).
template <typename K> struct KeyWorkspace {
  std::vector<K> keys;
  SelectScratch<K> select;
  BucketSelect buckets;
  std::vector<int64_t> deferred;  // indices set aside by the update pass
  std::vector<K> members;         // a dense threshold bucket's keys
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

// One thread's indices set aside during one update task.
inline std::vector<int64_t>& thread_deferred() {
  static thread_local std::vector<int64_t> indices;
  return indices;
}

// k-th smallest of keys[0..n) by std::nth_element on a copy (the keys stay in element order).
template <typename K> K sort_select(const K* keys, int64_t n, int64_t k, SelectScratch<K>& scratch) {
  std::vector<K>& copy = scratch.buffers[0];
  copy.assign(keys, keys + n);
  std::nth_element(copy.begin(), copy.begin() + k, copy.end());
  return copy[static_cast<size_t>(k)];
}

// Calls fn with std::bool_constant arguments matching the run-time flags.
template <typename Fn> void with_flags(bool a, bool b, Fn&& fn) {
  const auto pick_b = [&](auto x) { b ? fn(x, std::true_type{}) : fn(x, std::false_type{}); };
  a ? pick_b(std::true_type{}) : pick_b(std::false_type{});
}
template <typename Fn> void with_flags(bool a, bool b, bool c, Fn&& fn) {
  with_flags(a, b, [&](auto x, auto y) { c ? fn(x, y, std::true_type{}) : fn(x, y, std::false_type{}); });
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

// update_range over [b, e) except the entries of the threshold's bucket (key bucket == `bucket`),
// which are left as they were and their indices appended to `deferred`; the others are kept iff key
// >= threshold (the bucket's first key). Per block of kUpdateBlock entries: the vectorised loop runs
// whole, then the few entries of the bucket get their old values back.
template <bool UseMomentum, bool Revise, typename T, typename K, typename A>
int64_t update_range_deferring(int64_t b, int64_t e, T* theta, T* mom, T* rev, const T* grad, const K* keys,
                               K threshold, const SgdHyper<A> h, A decay, A one_minus_decay, K bucket,
                               std::vector<int64_t>& deferred) {
  int64_t kept = 0;
  T old[3][kUpdateBlock];
  for (int64_t s = b; s < e; s += kUpdateBlock) {
    const int64_t se = std::min(e, s + kUpdateBlock);
    int hits = 0;
    for (int64_t i = s; i < se; ++i) hits += bucket_of(keys[i]) == bucket;
    const size_t first = deferred.size();
    for (int64_t i = s, j = 0; j < hits; ++i)
      if (bucket_of(keys[i]) == bucket) {
        deferred.push_back(i);
        old[0][j] = theta[i];
        if constexpr (UseMomentum) old[1][j] = mom[i];
        if constexpr (Revise) old[2][j] = rev[i];
        ++j;
      }
    // The bucket's keys are >= threshold: counted as kept here, taken back below.
    kept += update_range<true, UseMomentum, Revise>(s, se, theta, mom, rev, grad, keys, threshold, false, h, decay,
                                                     one_minus_decay) - hits;
    for (int j = 0; j < hits; ++j) {
      const int64_t i = deferred[first + j];
      theta[i] = old[0][j];
      if constexpr (UseMomentum) mom[i] = old[1][j];
      if constexpr (Revise) rev[i] = old[2][j];
    }
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
  const SgdHyper<A> h = sgd_hyper<A>(o);
  const A decay = A(o.revision_decay), one_minus_decay = A(1.0 - o.revision_decay);
  std::atomic<int64_t> kept{0};
  std::mutex merge;
  // The loop-invariant choices become template flags so that each variant's loop vectorises.
  const auto update = [&](const K* keys, K threshold, bool keep_all) {
    with_flags(keys != nullptr, h.use_momentum, o.revise, [&](auto has_keys, auto use_momentum, auto revise) {
      pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
        kept.fetch_add(update_range<has_keys.value, use_momentum.value, revise.value>(
                           b, e, theta, mom, rev, grad, keys, threshold, keep_all, h, decay, one_minus_decay),
                       std::memory_order_relaxed);
      });
    });
  };

  if (!needs_selection(slot)) {
    const uint64_t t = trivial_threshold(slot);
    update(nullptr, K(0), t == KEEP_ALL);
    return kept.load();
  }
  K* keys = ws.get(n);
  const T* nat = static_cast<const T*>(slot.nat);
  const T* adv = static_cast<const T*>(slot.adv);
  const ScoreCoeffs<A> c(o.alpha);
  if (n <= kSortSelectMax) {
    for (int64_t i = 0; i < n; ++i) keys[i] = order_key(score(A(nat[i]), A(adv[i]), c, o.score));
    const K threshold = sort_select(keys, n, slot.k, ws.select);
    update(keys, threshold, false);
    return kept.load();
  }
  // The keys and their bucket counts in one pass, each block counted while still in cache.
  BucketSelect& sel = ws.buckets;
  pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
    BucketCounts<K>& local = thread_bucket_counts<K>();
    for (int64_t s = b; s < e; s += kKeyBlock) {
      const int64_t se = std::min(e, s + kKeyBlock);
      for (int64_t i = s; i < se; ++i) keys[i] = order_key(score(A(nat[i]), A(adv[i]), c, o.score));
      local.count(keys, s, se);
      if (local.total >= kFlushCount || se == e) {
        std::lock_guard<std::mutex> lock(merge);
        local.flush_into(sel);
      }
    }
  });
  const BucketPick pick = sel.pick(slot.k);
  const K bucket = K(pick.bucket), bucket_start = K(bucket << bucket_shift<K>());
  if (pick.count * kDeferShare > n) {
    // Dense bucket (many equal scores): deferring it would cost more than an exact select first,
    // among the bucket's keys only (the counts already placed rank k there).
    std::vector<K>& members = ws.members;
    members.clear();
    pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
      std::vector<K> local;
      for (int64_t i = b; i < e; ++i)
        if (bucket_of(keys[i]) == bucket) local.push_back(keys[i]);
      std::lock_guard<std::mutex> lock(merge);
      members.insert(members.end(), local.begin(), local.end());
    });
    const auto chunk_pfor = [&](int64_t b, int64_t e, const auto& fn) { pfor(b, e, 1, fn); };
    const K threshold = radix_select(static_cast<const K*>(members.data()), pick.count, pick.rank, ws.select,
                                     chunk_pfor);
    update(keys, threshold, false);
    return kept.load();
  }
  // Everything outside the threshold's bucket is decided by its digit; the bucket's few entries wait
  // for their exact order statistic (rank pick.rank among them), then take the same update one by one.
  ws.deferred.clear();
  with_flags(h.use_momentum, o.revise, [&](auto use_momentum, auto revise) {
    pfor(0, n, kElementGrain, [&](int64_t b, int64_t e) {
      std::vector<int64_t>& local = thread_deferred();
      local.clear();
      kept.fetch_add(update_range_deferring<use_momentum.value, revise.value>(
                         b, e, theta, mom, rev, grad, keys, bucket_start, h, decay, one_minus_decay, bucket, local),
                     std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(merge);
      ws.deferred.insert(ws.deferred.end(), local.begin(), local.end());
    });
  });
  std::vector<K>& cand = ws.select.buffers[0];
  cand.resize(ws.deferred.size());
  for (size_t j = 0; j < cand.size(); ++j) cand[j] = keys[ws.deferred[j]];
  std::nth_element(cand.begin(), cand.begin() + pick.rank, cand.end());
  const K threshold = cand[static_cast<size_t>(pick.rank)];
  // In parallel: the entries are scattered, so their cache misses overlap across threads too.
  with_flags(h.use_momentum, o.revise, [&](auto use_momentum, auto revise) {
    pfor(0, int64_t(ws.deferred.size()), kLateGrain, [&](int64_t b, int64_t e) {
      int64_t count = 0;
      for (int64_t j = b; j < e; ++j) {
        const int64_t i = ws.deferred[j];
        count += update_range<true, use_momentum.value, revise.value>(i, i + 1, theta, mom, rev, grad, keys,
                                                                      threshold, false, h, decay, one_minus_decay);
      }
      kept.fetch_add(count, std::memory_order_relaxed);
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
