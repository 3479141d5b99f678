// The CPU step's first selection pass (torch-free): counts of the keys' top 16 bits (their bucket),
// per thread and then merged, and the bucket holding the k-th key. A 16-bit bucket of a float32 score
// spans 1/128 of an octave, so the threshold's bucket holds a few entries per thousand (of a float64
// score, 1/16 of an octave: a few per hundred).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace cure {

constexpr int kBucketBits = 16;
constexpr int64_t kBucketCount = int64_t(1) << kBucketBits;
constexpr int64_t kFlushCount = int64_t(1) << 30;  // per-thread counts are 32-bit: merge well before 2^32

template <typename K> constexpr int bucket_shift() { return int(sizeof(K) * 8) - kBucketBits; }
template <typename K> K bucket_of(K key) { return key >> bucket_shift<K>(); }  // K-wide: vector lanes

// The bucket holding the key of rank k, how many keys it holds and k's rank among them.
struct BucketPick {
  int64_t bucket, count, rank;
};

// One tensor's merged counts. Only [lo, hi] is ever non-zero, so picking and clearing cost the range
// the scores span, not 2^16 buckets.
struct BucketSelect {
  std::vector<int64_t> counts = std::vector<int64_t>(kBucketCount, 0);
  int64_t lo = kBucketCount, hi = -1;

  // The bucket of rank k (0 <= k < the number counted); leaves every count zero for the next tensor.
  BucketPick pick(int64_t k) {
    BucketPick p{lo, 0, k};
    while (p.rank >= counts[p.bucket]) p.rank -= counts[p.bucket++];
    p.count = counts[p.bucket];
    std::fill(counts.begin() + lo, counts.begin() + hi + 1, 0);
    lo = kBucketCount;
    hi = -1;
    return p;
  }
};

// One thread's counts since its last merge, in kBucketLanes interleaved copies: consecutive keys
// count into different copies, so increments of equal buckets (score crowds) need not wait on each
// other.
constexpr int kBucketLanes = 2;
template <typename K> struct BucketCounts {
  std::vector<uint32_t> counts = std::vector<uint32_t>(kBucketLanes * kBucketCount, 0u);
  int64_t lo = kBucketCount, hi = -1, total = 0;

  void count(const K* keys, int64_t b, int64_t e) {
    K low = ~K(0), high = 0;  // keys order like their buckets: the range from a vectorised min/max
    for (int64_t i = b; i < e; ++i) {
      low = std::min(low, keys[i]);
      high = std::max(high, keys[i]);
    }
    int64_t i = b;
    for (; i + kBucketLanes <= e; i += kBucketLanes)
      for (int l = 0; l < kBucketLanes; ++l) ++counts[l * kBucketCount + bucket_of(keys[i + l])];
    for (; i < e; ++i) ++counts[bucket_of(keys[i])];
    lo = std::min(lo, int64_t(bucket_of(low)));
    hi = std::max(hi, int64_t(bucket_of(high)));
    total += e - b;
  }

  // Adds the counts to `to` and clears them (the caller holds the merge lock).
  void flush_into(BucketSelect& to) {
    for (int l = 0; l < kBucketLanes; ++l) {
      uint32_t* lane = counts.data() + l * kBucketCount;
      for (int64_t b = lo; b <= hi; ++b) {
        to.counts[b] += lane[b];
        lane[b] = 0;
      }
    }
    to.lo = std::min(to.lo, lo);
    to.hi = std::max(to.hi, hi);
    lo = kBucketCount;
    hi = -1;
    total = 0;
  }
};

// The calling thread's counts (a parallel pass's tasks each count on their own thread).
template <typename K> BucketCounts<K>& thread_bucket_counts() {
  static thread_local BucketCounts<K> counts;
  return counts;
}

}  // namespace cure
