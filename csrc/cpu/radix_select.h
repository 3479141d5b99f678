// Exact k-th smallest key by most-significant-digit radix select (torch-free); the CPU step's select
// when many equal scores crowd the threshold's bucket (see bucket_select.h). Each pass histograms
// one digit over the surviving candidates, picks the bucket holding rank k and compacts its members;
// the first digit is 11 bits wide because non-negative scores share few exponent buckets.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace cure {

constexpr int kRadixBits = 11;
constexpr int64_t kRadixBuckets = int64_t(1) << kRadixBits;
constexpr int64_t kSelectChunk = int64_t(1) << 16;  // per-task range of the parallel passes
constexpr int kLanes = 4;                            // interleaved sub-histograms per chunk (<= 2^32 keys each)

// Chunk length of the parallel passes: at least kSelectChunk, at most 256 chunks' histograms.
inline int64_t select_chunk(int64_t n) { return std::max(kSelectChunk, (n + 255) / 256); }

// The first digit's shift: the most significant kRadixBits of the key.
template <typename Key> constexpr int first_shift() { return int(sizeof(Key) * 8) - kRadixBits; }

// Adds the counts of the digit at shift s of keys[begin, end) to h (kRadixBuckets counters), using
// kLanes interleaved sub-histograms: scores crowd into few buckets, and increments of one counter
// would otherwise wait on each other.
template <typename Key> void count_digits(const Key* keys, int64_t begin, int64_t end, int s, int64_t* h) {
  // Per thread and reused: a fresh 32 KiB vector per call costs more than counting a small tensor.
  static thread_local std::vector<uint32_t> lanes;
  lanes.assign(kLanes * kRadixBuckets, 0u);  // a chunk holds < 2^32 keys
  const auto digit = [s](Key key) { return int64_t((key >> s) & Key(kRadixBuckets - 1)); };
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (int l = 0; l < kLanes; ++l) ++lanes[l * kRadixBuckets + digit(keys[i + l])];
  for (; i < end; ++i) ++lanes[digit(keys[i])];
  for (int64_t b = 0; b < kRadixBuckets; ++b)
    for (int l = 0; l < kLanes; ++l) h[b] += lanes[l * kRadixBuckets + b];
}

// Scratch memory of the select, kept across calls: fresh large allocations are page-faulted anew on
// every step, which costs more than the select itself.
template <typename Key> struct SelectScratch {
  std::vector<int64_t> hist, total, offset;
  std::vector<Key> buffers[2];
};

// Returns the key of 0-based rank k (0 <= k < n) among keys[0..n); the keys are not modified.
// ParallelFor: callable as pfor(begin, end, fn) running fn(b, e) over disjoint sub-ranges.
template <typename Key, typename ParallelFor>
Key radix_select(const Key* keys, int64_t n, int64_t k, SelectScratch<Key>& scratch, ParallelFor&& pfor) {
  const Key* src = keys;
  Key prefix = 0;
  int next = 0;  // the buffer the next compaction writes; src is never it
  for (int shift = first_shift<Key>();; shift -= kRadixBits) {
    const int s = std::max(shift, 0);  // the last digit may overlap the previous one: harmless
    const auto digit = [s](Key key) { return int64_t((key >> s) & Key(kRadixBuckets - 1)); };
    const int64_t len = select_chunk(n);
    const int64_t chunks = (n + len - 1) / len;
    // Per-chunk histograms over a fixed partition, so the compaction knows each chunk's offset.
    std::vector<int64_t>& hist = scratch.hist;
    hist.assign(static_cast<size_t>(chunks * kRadixBuckets), 0);
    pfor(0, chunks, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c)
        count_digits(src, c * len, std::min(n, (c + 1) * len), s, hist.data() + c * kRadixBuckets);
    });
    std::vector<int64_t>& total = scratch.total;
    total.assign(kRadixBuckets, 0);
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t b = 0; b < kRadixBuckets; ++b) total[b] += hist[c * kRadixBuckets + b];
    int64_t bucket = 0;
    while (k >= total[bucket]) k -= total[bucket++];
    prefix |= Key(bucket) << s;
    if (s == 0) return prefix;
    if (total[bucket] == n) continue;  // every candidate shares this digit: nothing to compact
    std::vector<int64_t>& offset = scratch.offset;
    offset.assign(static_cast<size_t>(chunks + 1), 0);
    for (int64_t c = 0; c < chunks; ++c) offset[c + 1] = offset[c] + hist[c * kRadixBuckets + bucket];
    std::vector<Key>& dst = scratch.buffers[next];
    next ^= 1;
    if (dst.size() < static_cast<size_t>(offset[chunks])) dst.resize(static_cast<size_t>(offset[chunks]));
    pfor(0, chunks, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        Key* out = dst.data() + offset[c];
        int64_t count = 0;
        const int64_t end = std::min(n, (c + 1) * len), last = offset[c + 1] - offset[c];
        // Branch-free: write every key, advance past the matches only (last: stay inside the chunk's part).
        for (int64_t i = c * len; i < end && count < last; ++i) {
          out[count] = src[i];
          count += digit(src[i]) == bucket;
        }
      }
    });
    if (offset[chunks] == 1) return dst[0];
    src = dst.data();
    n = offset[chunks];
  }
}

}  // namespace cure
