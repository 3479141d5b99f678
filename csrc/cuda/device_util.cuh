// Device helpers shared by the selection and update kernels: storage <-> arithmetic conversions,
// 16-byte vector access, finding a chunk's tensor, and the per-dtype dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/meta.h"
#include "step_args.h"

namespace cure::cuda {

// Explicit intrinsics: torch builds pass -D__CUDA_NO_HALF_CONVERSIONS__ (and the bfloat16 twin), and
// stores must round to nearest even like c10::Half / c10::BFloat16 on the CPU.
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type a);
template <> __device__ __forceinline__ float from_acc<float>(float a) { return a; }
template <> __device__ __forceinline__ double from_acc<double>(double a) { return a; }
template <> __device__ __forceinline__ __half from_acc<__half>(float a) { return __float2half_rn(a); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float a) {
  return __float2bfloat16_rn(a);
}

template <typename T> __device__ __forceinline__ typename KeyOf<typename Acc<T>::type>::type score_key(
    T a, T b, const ScoreCoeffs<typename Acc<T>::type>& c, ScoreMode mode) {
  return order_key(score(to_acc(a), to_acc(b), c, mode));
}

// Elements per 16-byte vector. Aligned tensors are walked in whole vectors, one per thread and step,
// with a scalar loop for the rest of the chunk (and for unaligned tensors, one element per thread).
template <typename T> constexpr int kVec = 16 / int(sizeof(T));

template <typename T>
struct alignas(16) Pack {
  T v[kVec<T>];
};

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

// End of the whole-vector part of [begin, end); begin is a multiple of kVec<T> (chunk start).
template <typename T> __device__ __forceinline__ int64_t vector_end(int64_t begin, int64_t end, bool aligned) {
  return aligned ? begin + (end - begin) / kVec<T> * kVec<T> : begin;
}

// Chunk c of a list: its entry, tensor and chunk number inside the tensor. Every thread of a block
// runs the same search on the same addresses, so the loads are broadcasts.
struct Work {
  int32_t entry;
  int32_t slot;
  int64_t chunk;
};

__device__ __forceinline__ Work locate(const ListEntry* list, int32_t count, int64_t c) {
  int32_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) >> 1;
    if (list[mid].first_chunk <= c) lo = mid; else hi = mid - 1;
  }
  return Work{lo, list[lo].slot, c - list[lo].first_chunk};
}

__device__ __forceinline__ int64_t chunk_count(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Plain device min: std::min is a host constexpr function without --expt-relaxed-constexpr.
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T> struct Type { using type = T; };

// Calls f(Type<T>{}) with the storage type of a key width's dtype: float64 alone has 64-bit keys.
template <typename K, typename F> __device__ __forceinline__ void dispatch_keyed(int32_t dtype, F&& f) {
  if constexpr (sizeof(K) == 8) {
    f(Type<double>{});
  } else if (dtype == int32_t(DType::Float16)) {
    f(Type<__half>{});
  } else if (dtype == int32_t(DType::BFloat16)) {
    f(Type<__nv_bfloat16>{});
  } else {
    f(Type<float>{});
  }
}

}  // namespace cure::cuda
