// Exact k-th smallest key by most-significant-digit radix select (torch-free). Each pass histograms
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

// Chunk length of the parallel passes: at least kSelectChunk, at most 256 chunks' histograms.
inline int64_t select_chunk(int64_t n) { return std::max(kSelectChunk, (n + 255) / 256); }

// Returns the key of 0-based rank k (0 <= k < n) among keys[0..n); the keys are not modified.
// ParallelFor: callable as pfor(begin, end, fn) running fn(b, e) over disjoint sub-ranges.
template <typename Key, typename ParallelFor>
Key radix_select(const Key* keys, int64_t n, int64_t k, ParallelFor&& pfor) {
  constexpr int key_bits = int(sizeof(Key) * 8);
  std::vector<Key> buffers[2];
  const Key* src = keys;
  Key prefix = 0;
  int next = 0;  // the buffer the next compaction writes; src is never it
  for (int shift = key_bits - kRadixBits;; shift -= kRadixBits) {
    const int s = std::max(shift, 0);  // the last digit may overlap the previous one: harmless
    const auto digit = [s](Key key) { return int64_t((key >> s) & Key(kRadixBuckets - 1)); };
    const int64_t len = select_chunk(n);
    const int64_t chunks = (n + len - 1) / len;
    // Per-chunk histograms over a fixed partition, so the compaction knows each chunk's offset.
    std::vector<int64_t> hist(static_cast<size_t>(chunks * kRadixBuckets), 0);
    pfor(0, chunks, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        int64_t* h = hist.data() + c * kRadixBuckets;
        for (int64_t i = c * len, end = std::min(n, (c + 1) * len); i < end; ++i) ++h[digit(src[i])];
      }
    });
    std::vector<int64_t> total(kRadixBuckets, 0);
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t b = 0; b < kRadixBuckets; ++b) total[b] += hist[c * kRadixBuckets + b];
    int64_t bucket = 0;
    while (k >= total[bucket]) k -= total[bucket++];
    prefix |= Key(bucket) << s;
    if (s == 0) return prefix;
    if (total[bucket] == n) continue;  // every candidate shares this digit: nothing to compact
    std::vector<int64_t> offset(chunks + 1, 0);
    for (int64_t c = 0; c < chunks; ++c) offset[c + 1] = offset[c] + hist[c * kRadixBuckets + bucket];
    std::vector<Key>& dst = buffers[next];
    next ^= 1;
    dst.resize(static_cast<size_t>(offset[chunks]));
    pfor(0, chunks, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        Key* out = dst.data() + offset[c];
        for (int64_t i = c * len, end = std::min(n, (c + 1) * len); i < end; ++i)
          if (digit(src[i]) == bucket) *out++ = src[i];
      }
    });
    if (offset[chunks] == 1) return dst[0];
    src = dst.data();
    n = offset[chunks];
  }
}

}  // namespace cure
