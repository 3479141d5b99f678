// Exact per-tensor thresholds on the device: an MSD radix select over the scores' order keys,
// computed on the fly from nat_grads and adv_grads (only the candidates' keys are ever stored).
//   first_digit: one read of the score inputs histograms the 12-bit first digit of every tensor;
//                tensors of one chunk are selected completely inside their block instead.
//   compact:     a second read keeps the keys whose first digit is the chosen one (candidates) and
//                histograms their second digit.
//   refine:      one launch per later digit, over the candidates only.
// Each launch covers all tensors of the key width; the block finishing a tensor's last chunk picks
// that tensor's digit (radix_block.cuh), so no pass waits on the host.
#include <cub/block/block_scan.cuh>

#include "cuda/radix_block.cuh"

namespace cure::cuda {
namespace {

// Resident blocks per SM the selection kernels are register-limited to (64 registers): left free, the
// compiler keeps every unrolled key of a pack live across the warp matches (178 registers, one block
// per SM).
constexpr int kMinBlocks = 4;

// Histograms digit d of the score keys in [begin, end) whose higher digits equal those of prefix.
// Every thread of the block runs every iteration (warp_hist_add needs whole warps). Not inlined: under
// the register cap its hot loop then spills nothing; the callers' per-chunk state spills instead.
template <typename K, typename T>
__device__ __noinline__ void hist_scores(const DevSlot& s, int64_t begin, int64_t end, int d, uint64_t prefix, double alpha,
                            ScoreMode mode, unsigned int* hist) {
  using D = Digits<K>;
  constexpr int V = kVec<T>;
  const ScoreCoeffs<typename Acc<T>::type> c(alpha);
  const T* nat = static_cast<const T*>(s.nat);
  const T* adv = static_cast<const T*>(s.adv);
  const int shift = D::shift(d);
  const int high = d > 0 ? D::shift(d - 1) : 0;  // used only when d > 0
  const K want = d > 0 ? K(prefix >> high) : K(0);
  const K mask = K(D::bins(d) - 1);
  const auto bin = [&](T x, T y) {
    const K key = score_key(x, y, c, mode);
    return d == 0 || (key >> high) == want ? unsigned(key >> shift & mask) : kNoBin;
  };
  const int64_t vend = vector_end<T>(begin, end, (s.flags & kAligned16) != 0);
  for (int64_t base = begin; base < vend; base += int64_t(kBlock) * V) {
    const int64_t i = base + int64_t(threadIdx.x) * V;
    const bool in = i < vend;
    Pack<T> x, y;
    if (in) x = load_pack(nat + i), y = load_pack(adv + i);
#pragma unroll
    for (int j = 0; j < V; ++j) warp_hist_add(hist, in ? bin(x.v[j], y.v[j]) : kNoBin);
  }
  for (int64_t base = vend; base < end; base += kBlock) {
    const int64_t i = base + threadIdx.x;
    warp_hist_add(hist, i < end ? bin(nat[i], adv[i]) : kNoBin);
  }
}

// A tensor of one chunk, all digits inside this block; its inputs stay in L2 between digits.
template <typename K, typename T>
__device__ void select_in_block(const SelectArgs<K>& a, const DevSlot& s, int32_t slot, SelectShared<K>& sh) {
  using D = Digits<K>;
  uint64_t prefix = 0, rank = uint64_t(s.k);
  for (int d = 0; d < D::kCount; ++d) {
    zero_hist(sh.hist, D::bins(d));
    hist_scores<K, T>(s, 0, s.n, d, prefix, a.alpha, a.mode, sh.hist);
    __syncthreads();
    const unsigned int* hist = sh.hist;
    const BinPick pick = find_bin<K>([hist](int b) { return hist[b]; }, D::bins(d), rank, sh);
    prefix |= uint64_t(pick.bin) << D::shift(d);
    rank -= pick.below;
  }
  if (threadIdx.x == 0) a.thresholds[slot] = prefix;
}

template <typename K>
__global__ void __launch_bounds__(kBlock, kMinBlocks) first_digit_kernel(const SelectArgs<K> a) {
  using D = Digits<K>;
  __shared__ SelectShared<K> sh;
  for (int64_t c = blockIdx.x; c < a.all_chunks; c += gridDim.x) {
    const Work w = locate(a.all, a.all_count, c);
    const DevSlot s = a.slots[w.slot];
    dispatch_keyed<K>(s.dtype, [&](auto type) {
      using T = typename decltype(type)::type;
      if (s.multi < 0) {
        select_in_block<K, T>(a, s, w.slot, sh);
        return;
      }
      const int64_t begin = w.chunk * kChunk, end = min64(s.n, begin + kChunk);
      zero_hist(sh.hist, D::bins(0));
      hist_scores<K, T>(s, begin, end, 0, 0, a.alpha, a.mode, sh.hist);
      flush_hist(sh.hist, D::bins(0), a.hist + size_t(s.multi) * D::total_bins() + D::hist_base(0));
      finish_pass(a, 0, w.slot, s.multi, chunk_count(s.n), SelectState{0, s.k}, sh);
    });
  }
}

// Appends the chunk's keys with the chosen first digit to the tensor's candidates and histograms
// their second digit. Per step the block scans its match counts and reserves room with one atomic.
// The count goes on past the tensor's candidate room; keys past it are not stored (see refine).
template <typename K, typename T>
__device__ void compact_chunk(const SelectArgs<K>& a, const DevSlot& s, int64_t begin, int64_t end,
                              const SelectState& st, SelectShared<K>& sh) {
  using D = Digits<K>;
  constexpr int V = kVec<T>;
  const ScoreCoeffs<typename Acc<T>::type> c(a.alpha);
  const T* nat = static_cast<const T*>(s.nat);
  const T* adv = static_cast<const T*>(s.adv);
  const int high = D::shift(0), shift = D::shift(1);
  const K want = K(st.prefix >> high), mask = K(D::bins(1) - 1);
  K* out = a.cand + s.cand_offset;
  const int64_t room = s.cand_room;
  unsigned long long* count = a.count + s.multi;
  // One block-wide step over this thread's cnt keys; every thread joins every step.
  const auto step = [&](const K (&keys)[V], int cnt) {
    unsigned int take = 0;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const bool match = j < cnt && (keys[j] >> high) == want;
      take |= unsigned(match) << j;
      warp_hist_add(sh.hist, match ? unsigned(keys[j] >> shift & mask) : kNoBin);
    }
    int offset, total;
    cub::BlockScan<int, kBlock>(sh.temp.scan32).ExclusiveSum(__popc(take), offset, total);
    if (threadIdx.x == 0 && total > 0) sh.base = atomicAdd(count, static_cast<unsigned long long>(total));
    __syncthreads();
    int64_t at = int64_t(sh.base) + offset;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (take >> j & 1u) {
        if (at < room) out[at] = keys[j];
        ++at;
      }
    }
    __syncthreads();  // sh.base and sh.temp free for the next step
  };
  zero_hist(sh.hist, D::bins(1));
  const int64_t vend = vector_end<T>(begin, end, (s.flags & kAligned16) != 0);
  for (int64_t base = begin; base < vend; base += int64_t(kBlock) * V) {
    const int64_t i = base + int64_t(threadIdx.x) * V;
    K keys[V];
    const int cnt = i < vend ? V : 0;
    if (cnt > 0) {
      const Pack<T> x = load_pack(nat + i), y = load_pack(adv + i);
#pragma unroll
      for (int j = 0; j < V; ++j) keys[j] = score_key(x.v[j], y.v[j], c, a.mode);
    }
    step(keys, cnt);
  }
  for (int64_t base = vend; base < end; base += kBlock) {
    const int64_t i = base + threadIdx.x;
    K keys[V];
    const int cnt = i < end ? 1 : 0;
    if (cnt > 0) keys[0] = score_key(nat[i], adv[i], c, a.mode);
    step(keys, cnt);
  }
}

template <typename K>
__global__ void __launch_bounds__(kBlock, kMinBlocks) compact_kernel(const SelectArgs<K> a) {
  using D = Digits<K>;
  __shared__ SelectShared<K> sh;
  for (int64_t c = blockIdx.x; c < a.multi_chunks; c += gridDim.x) {
    const Work w = locate(a.multi, a.multi_count, c);
    const DevSlot s = a.slots[w.slot];
    const SelectState st = a.state[s.multi];
    const int64_t begin = w.chunk * kChunk, end = min64(s.n, begin + kChunk);
    dispatch_keyed<K>(s.dtype, [&](auto type) {
      compact_chunk<K, typename decltype(type)::type>(a, s, begin, end, st, sh);
    });
    flush_hist(sh.hist, D::bins(1), a.hist + size_t(s.multi) * D::total_bins() + D::hist_base(1));
    finish_pass(a, 1, w.slot, s.multi, chunk_count(s.n), st, sh);
  }
}

// Digit d >= 2 of a multi-chunk tensor, cut into the tensor's chunks: over its candidates when they
// all fit its room (chunks past the candidate count only report their arrival), else over keys
// recomputed from the gradients, filtered by the digits chosen so far. Both count the same keys.
template <typename K>
__global__ void __launch_bounds__(kBlock, kMinBlocks) refine_kernel(const SelectArgs<K> a, int d) {
  using D = Digits<K>;
  constexpr int V = kVec<K>;
  __shared__ SelectShared<K> sh;
  const int high = D::shift(d - 1), shift = D::shift(d);
  const K mask = K(D::bins(d) - 1);
  for (int64_t c = blockIdx.x; c < a.multi_chunks; c += gridDim.x) {
    const Work w = locate(a.multi, a.multi_count, c);
    const DevSlot s = a.slots[w.slot];
    const SelectState st = a.state[s.multi];
    const int64_t found = int64_t(a.count[s.multi]);
    const int64_t begin = w.chunk * kChunk;
    unsigned long long* global = a.hist + size_t(s.multi) * D::total_bins() + D::hist_base(d);
    if (found > s.cand_room) {
      zero_hist(sh.hist, D::bins(d));
      dispatch_keyed<K>(s.dtype, [&](auto type) {
        hist_scores<K, typename decltype(type)::type>(s, begin, min64(s.n, begin + kChunk), d, st.prefix, a.alpha,
                                                      a.mode, sh.hist);
      });
      flush_hist(sh.hist, D::bins(d), global);
    } else if (const int64_t end = min64(found, begin + kChunk); begin < end) {
      const K want = K(st.prefix >> high);
      const K* keys = a.cand + s.cand_offset;  // 16-byte aligned (plan.cpp)
      const auto bin = [&](K key) { return (key >> high) == want ? unsigned(key >> shift & mask) : kNoBin; };
      zero_hist(sh.hist, D::bins(d));
      const int64_t vend = vector_end<K>(begin, end, true);
      for (int64_t base = begin; base < vend; base += int64_t(kBlock) * V) {
        const int64_t i = base + int64_t(threadIdx.x) * V;
        const bool in = i < vend;
        Pack<K> k;
        if (in) k = load_pack(keys + i);
#pragma unroll
        for (int j = 0; j < V; ++j) warp_hist_add(sh.hist, in ? bin(k.v[j]) : kNoBin);
      }
      for (int64_t base = vend; base < end; base += kBlock) {
        const int64_t i = base + threadIdx.x;
        warp_hist_add(sh.hist, i < end ? bin(keys[i]) : kNoBin);
      }
      flush_hist(sh.hist, D::bins(d), global);
    }
    finish_pass(a, d, w.slot, s.multi, chunk_count(s.n), st, sh);
  }
}

}  // namespace

template <typename K>
void launch_select(const SelectArgs<K>& a, int sm_count, cudaStream_t stream) {
  if (a.all_count == 0) return;
  const auto first = first_digit_kernel<K>;
  first<<<persistent_grid(first, a.all_chunks, sm_count), kBlock, 0, stream>>>(a);
  if (a.multi_count == 0) return;
  const auto compact = compact_kernel<K>;
  compact<<<persistent_grid(compact, a.multi_chunks, sm_count), kBlock, 0, stream>>>(a);
  const auto refine = refine_kernel<K>;
  const int grid = persistent_grid(refine, a.multi_chunks, sm_count);
  for (int d = 2; d < Digits<K>::kCount; ++d) refine<<<grid, kBlock, 0, stream>>>(a, d);
}

template void launch_select<uint32_t>(const SelectArgs<uint32_t>&, int, cudaStream_t);
template void launch_select<uint64_t>(const SelectArgs<uint64_t>&, int, cudaStream_t);

}  // namespace cure::cuda
