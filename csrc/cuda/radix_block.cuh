// Block-level pieces of the radix select: shared histograms, finding the bin that holds a rank, and
// the "last block of a tensor finishes the pass" protocol that keeps every digit of every tensor in
// one launch without a grid-wide barrier.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "cuda/bin_pick.h"
#include "cuda/device_util.cuh"
#include "cuda/kernels.h"

namespace cure::cuda {

template <typename K>
struct SelectShared {
  unsigned int hist[Digits<K>::kMaxBins];
  union {
    typename cub::BlockScan<unsigned long long, kBlock>::TempStorage scan64;
    typename cub::BlockScan<int, kBlock>::TempStorage scan32;
  } temp;
  BinPick pick;
  unsigned long long base;
  bool last;
};

// Both helpers start with a barrier so the previous user of the histogram is done with it.
__device__ __forceinline__ void zero_hist(unsigned int* hist, int bins) {
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += kBlock) hist[b] = 0;
  __syncthreads();
}

// Adds one to hist[bin] for each lane of the warp, except lanes passing kNoBin. Lanes with equal bins
// (ties, zero gradients) add together with one atomic instead of serialising on the bin. Every lane
// of the warp must call it (full-mask match); kBlock is a whole number of warps.
constexpr unsigned int kNoBin = ~0u;
__device__ __forceinline__ void warp_hist_add(unsigned int* hist, unsigned int bin) {
  const unsigned int peers = __match_any_sync(0xffffffffu, bin);
  if (bin != kNoBin && int(threadIdx.x % 32) == __ffs(peers) - 1) atomicAdd(hist + bin, unsigned(__popc(peers)));
}

__device__ __forceinline__ void flush_hist(const unsigned int* hist, int bins, unsigned long long* global) {
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += kBlock) {
    const unsigned int v = hist[b];
    if (v != 0) atomicAdd(global + b, static_cast<unsigned long long>(v));
  }
}

// The bin holding the candidate of 0-based rank `rank` (< total count), for the whole block. Each
// thread sums bins/kBlock consecutive bins, a block scan gives every thread the count below its bins,
// and the one thread whose range holds the rank walks its bins (claim_bin). The pick starts from
// kNoPick on every pass: when the rank is not below the total (the score inputs changed between
// passes, e.g. a copy into them still running on another stream), no thread claims it, and the kernel
// stops with a device-side assert (cudaErrorAssert at the stream's next synchronisation, an exception
// in torch) instead of using the previous pass's bin. __assert_fail directly: NDEBUG keeps the check.
template <typename K, typename HistAt>
__device__ BinPick find_bin(HistAt at, int bins, uint64_t rank, SelectShared<K>& sh) {
  const int per = bins / kBlock;
  const int first = threadIdx.x * per;
  if (threadIdx.x == 0) sh.pick = BinPick{kNoPick, 0};
  unsigned long long local = 0;
  for (int j = 0; j < per; ++j) local += at(first + j);
  unsigned long long below;
  cub::BlockScan<unsigned long long, kBlock>(sh.temp.scan64).ExclusiveSum(local, below);
  __syncthreads();  // the sentinel is written before any thread may claim the rank
  const BinPick mine = claim_bin(at, first, per, below, local, rank);
  if (mine.bin != kNoPick) sh.pick = mine;
  __syncthreads();
  const BinPick pick = sh.pick;
  __syncthreads();  // sh.pick and sh.temp free for the next use
  if (pick.bin == kNoPick)
    __assert_fail("cure_ext.selective_step: a radix pass counted fewer scores than the rank it selects; the "
                  "score inputs changed during the step (synchronise streams writing nat_grads/adv_grads)",
                  __FILE__, __LINE__, __func__);
  return pick;
}

// Called by every block after flushing its chunk's histogram of digit d into the tensor's global
// histogram. The block that completes the tensor's last chunk picks the digit: it advances the
// tensor's state, or after the last digit writes the threshold (the exact key of rank k).
template <typename K>
__device__ void finish_pass(const SelectArgs<K>& a, int d, int32_t slot, int32_t multi, int64_t chunks,
                            SelectState st, SelectShared<K>& sh) {
  using D = Digits<K>;
  __threadfence();  // this thread's histogram atomics happen before the block's arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int arrived = atomicAdd(a.done + size_t(multi) * D::kCount + d, 1u);
    sh.last = int64_t(arrived) + 1 == chunks;
    __threadfence();  // and the other blocks' atomics before this block's reads
  }
  __syncthreads();
  if (!sh.last) return;
  const unsigned long long* hist = a.hist + size_t(multi) * D::total_bins() + D::hist_base(d);
  const BinPick pick = find_bin<K>([hist](int b) { return __ldcg(hist + b); }, D::bins(d), uint64_t(st.rank), sh);
  if (threadIdx.x == 0) {
    const uint64_t prefix = st.prefix | (uint64_t(pick.bin) << D::shift(d));
    if (d == D::kCount - 1) {
      a.thresholds[slot] = prefix;
    } else {
      a.state[multi] = SelectState{prefix, st.rank - int64_t(pick.below)};
    }
  }
}

}  // namespace cure::cuda
