// The fused update pass over every tensor of the call, one launch per dtype: per element the keep test against
// the tensor's threshold (score recomputed from nat/adv), the SGD-momentum update, the revision, and
// the per-tensor count of kept entries. The per-element math is cure_math.h's, as on the CPU.
#include <cub/block/block_reduce.cuh>

#include <type_traits>

#include "cuda/device_util.cuh"
#include "cuda/kernels.h"

namespace cure::cuda {
namespace {

template <typename A> __device__ __forceinline__ const SgdHyper<A>& hyper(const UpdateArgs& a) {
  if constexpr (std::is_same_v<A, double>) return a.hyper64; else return a.hyper32;
}

// Updates [begin, end) of one tensor; returns this thread's number of kept entries.
template <typename T>
__device__ unsigned long long update_range(const UpdateArgs& a, const DevSlot& s, uint64_t threshold, int64_t begin,
                                           int64_t end) {
  using A = typename Acc<T>::type;
  constexpr int V = kVec<T>;
  const SgdHyper<A>& h = hyper<A>(a);
  const A decay = std::is_same_v<A, double> ? A(a.decay64) : A(a.decay32);
  const A one_minus_decay = std::is_same_v<A, double> ? A(a.one_minus_decay64) : A(a.one_minus_decay32);
  const ScoreCoeffs<A> c(a.alpha);
  const bool select = (s.flags & kNeedsSelect) != 0;
  const bool keep_all = threshold == KEEP_ALL;  // the answer for every entry when !select
  T* theta = static_cast<T*>(s.param);
  const T* grad = static_cast<const T*>(s.grad);
  const T* nat = static_cast<const T*>(s.nat);
  const T* adv = static_cast<const T*>(s.adv);
  T* mom = static_cast<T*>(s.mom);
  T* rev = static_cast<T*>(s.rev);
  unsigned long long kept = 0;
  // One entry: keep test, SGD step, revision (reading the new weight as stored, like the CPU kernel).
  const auto one = [&](T& th, T g, T& m, T& r, T x, T y) {
    const bool k = select ? keep(score_key(x, y, c, a.mode), threshold) : keep_all;
    kept += k;
    A t = to_acc(th);
    A mj = h.use_momentum ? to_acc(m) : A(0);
    sgd_update(t, mj, to_acc(g), k, h);
    th = from_acc<T>(t);
    if (h.use_momentum) m = from_acc<T>(mj);
    if (a.revise) r = from_acc<T>(revise(to_acc(r), to_acc(th), decay, one_minus_decay));
  };
  const int64_t vend = vector_end<T>(begin, end, (s.flags & kAligned16) != 0);
  for (int64_t i = begin + int64_t(threadIdx.x) * V; i < vend; i += int64_t(kBlock) * V) {
    Pack<T> th = load_pack(theta + i), m, r, x, y;
    const Pack<T> g = load_pack(grad + i);
    if (h.use_momentum) m = load_pack(mom + i);
    if (select) x = load_pack(nat + i), y = load_pack(adv + i);
    if (a.revise) r = load_pack(rev + i);
#pragma unroll
    for (int j = 0; j < V; ++j) one(th.v[j], g.v[j], m.v[j], r.v[j], x.v[j], y.v[j]);
    store_pack(theta + i, th);
    if (h.use_momentum) store_pack(mom + i, m);
    if (a.revise) store_pack(rev + i, r);
  }
  for (int64_t i = vend + threadIdx.x; i < end; i += kBlock) {
    T th = theta[i], m{}, r{}, x{}, y{};
    if (h.use_momentum) m = mom[i];
    if (select) x = nat[i], y = adv[i];
    if (a.revise) r = rev[i];
    one(th, grad[i], m, r, x, y);
    theta[i] = th;
    if (h.use_momentum) mom[i] = m;
    if (a.revise) rev[i] = r;
  }
  return kept;
}

// One launch per dtype present (at most 4): a kernel specialised for one storage type keeps its
// registers low, which a per-chunk dtype switch inside one kernel does not.
template <typename T>
__global__ void __launch_bounds__(kBlock) update_kernel(const UpdateArgs a) {
  using Reduce = cub::BlockReduce<unsigned long long, kBlock>;
  __shared__ typename Reduce::TempStorage temp;
  for (int64_t c = blockIdx.x; c < a.chunks; c += gridDim.x) {
    const Work w = locate(a.list, a.count, c);
    const DevSlot s = a.slots[w.slot];
    const uint64_t threshold = (s.flags & kNeedsSelect) ? a.thresholds[w.slot] : s.trivial_threshold;
    const int64_t begin = w.chunk * kChunk, end = min64(s.n, begin + kChunk);
    const unsigned long long kept = Reduce(temp).Sum(update_range<T>(a, s, threshold, begin, end));
    if (threadIdx.x == 0 && kept != 0) atomicAdd(a.kept + w.slot, kept);
    __syncthreads();  // temp free for the next chunk
  }
}

template <typename T> void launch_typed(const UpdateArgs& a, int sm_count, cudaStream_t stream) {
  const auto kernel = update_kernel<T>;
  kernel<<<persistent_grid(kernel, a.chunks, sm_count), kBlock, 0, stream>>>(a);
}

}  // namespace

void launch_update(const UpdateArgs& a, DType dtype, int sm_count, cudaStream_t stream) {
  if (a.count == 0) return;
  switch (dtype) {
    case DType::Float32: launch_typed<float>(a, sm_count, stream); break;
    case DType::Float64: launch_typed<double>(a, sm_count, stream); break;
    case DType::Float16: launch_typed<__half>(a, sm_count, stream); break;
    case DType::BFloat16: launch_typed<__nv_bfloat16>(a, sm_count, stream); break;
  }
}

}  // namespace cure::cuda
