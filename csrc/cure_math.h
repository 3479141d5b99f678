// The per-element math of cure_ext.selective_step (SPEC §2), shared by the CPU and CUDA kernels so
// the two cannot drift. Torch-free: plain C++ that nvcc compiles as __host__ __device__.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CURE_HD __host__ __device__ __forceinline__
#else
#define CURE_HD inline
#endif

namespace cure {

enum class ScoreMode : int32_t { Abs = 0, Signed = 1 };
enum class ConserveMode : int32_t { Grad = 0, Freeze = 1 };

// Arithmetic type: float32 for 16/32-bit storage, float64 for float64 (SPEC §2).
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// Unsigned key whose integer order is the score order of SPEC §2 (step 2).
template <typename S> struct KeyOf;
// nan_key is the key of every NaN: one above the key of +inf.
template <> struct KeyOf<float> { using type = uint32_t; static constexpr uint32_t nan_key = 0xFF800001u; };
template <> struct KeyOf<double> {
  using type = uint64_t;
  static constexpr uint64_t nan_key = 0xFFF0000000000001ull;
};

// Thresholds are stored as 64-bit keys for every score type. KEEP_ALL keeps every entry (k == 0 or
// a non-selective tensor); KEEP_NONE is above every key, NaN's included (k == n).
constexpr uint64_t KEEP_ALL = 0;
constexpr uint64_t KEEP_NONE = ~uint64_t(0);

// Products and sums rounded one by one: the score must be bit-exact on every device, so no FMA.
// Host code is compiled with -ffp-contract=off for the same reason.
CURE_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
CURE_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
CURE_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
CURE_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// |x| by clearing the sign bit (−0 becomes +0): branch-free, gradient signs are random.
CURE_HD float abs_value(float x) { return fabsf(x); }
CURE_HD double abs_value(double x) { return fabs(x); }

// Score coefficients: c_nat = S(alpha), c_adv = S(1 - alpha) with the subtraction in double.
template <typename S> struct ScoreCoeffs {
  S c_nat, c_adv;
  CURE_HD explicit ScoreCoeffs(double alpha) : c_nat(static_cast<S>(alpha)), c_adv(static_cast<S>(1.0 - alpha)) {}
};

// Gradient prominence of one entry from its natural and adversarial gradients.
template <typename S> CURE_HD S score(S a, S b, const ScoreCoeffs<S>& c, ScoreMode mode) {
  if (mode == ScoreMode::Abs) {
    a = abs_value(a);
    b = abs_value(b);
  }
  return add_rn(mul_rn(c.c_nat, a), mul_rn(c.c_adv, b));
}

CURE_HD uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
CURE_HD uint64_t bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

// Order-preserving key: negatives flipped, positives offset by the sign bit, −0 mapped to +0 and
// every NaN to one key just above +inf (so KEEP_NONE stays above all keys).
// Written branch-free (selects, not jumps): signs are random in signed scores.
template <typename S> CURE_HD typename KeyOf<S>::type order_key(S s) {
  using K = typename KeyOf<S>::type;
  constexpr int top = int(sizeof(K) * 8 - 1);
  constexpr K sign = K(1) << top;
  K u = bits_of(s);
  u = u == sign ? K(0) : u;                 // −0 -> +0
  const K flip = (K(0) - (u >> top)) | sign;  // all ones for negatives, the sign bit for positives
  return s != s ? KeyOf<S>::nan_key : u ^ flip;
}

// Keep test of SPEC §2 step 3: an entry is updated iff its key is at or above the threshold key.
CURE_HD bool keep(uint64_t key, uint64_t threshold) { return key >= threshold; }
// The same test in the key's own width, once a real threshold (not KEEP_NONE) is known to fit: keeps
// vector lanes of 32-bit keys 32 bits wide.
template <typename K> CURE_HD bool keep(K key, K threshold) { return key >= threshold; }

// k = floor(percentile * n) in IEEE double.
CURE_HD int64_t conserve_count(double percentile, int64_t n) {
  const double k = percentile * static_cast<double>(n);
  const int64_t ki = static_cast<int64_t>(k);  // k >= 0, so truncation is floor
  return ki > n ? n : ki;
}

// SGD hyper-parameters in the arithmetic type.
template <typename A> struct SgdHyper {
  A lr, momentum, one_minus_dampening, weight_decay;
  bool use_momentum, nesterov, freeze;
};

// SPEC §2 step 4 on one entry: theta and m are updated in place. Selects only, no branches, so that
// loops over entries vectorise (the keep mask is random); a frozen entry keeps theta and m.
template <typename A> CURE_HD void sgd_update(A& theta, A& m, A g, bool kept, const SgdHyper<A>& h) {
  const bool moves = kept | !h.freeze;  // bitwise: && and || are branches to a vectoriser
  const A d = (kept ? g : A(0)) + h.weight_decay * theta;
  const A m_new = h.momentum * m + h.one_minus_dampening * d;
  const A nesterov_step = d + h.momentum * m_new;  // computed unconditionally: selects, not branches
  const A momentum_step = h.nesterov ? nesterov_step : m_new;
  const A theta_new = theta - h.lr * (h.use_momentum ? momentum_step : d);
  m = (h.use_momentum & moves) ? m_new : m;
  theta = moves ? theta_new : theta;
}

// SPEC §2 step 5: the revision (EMA) model moves toward the new weights.
template <typename A> CURE_HD A revise(A theta_rev, A theta_new, A decay, A one_minus_decay) {
  return decay * theta_rev + one_minus_decay * theta_new;
}

}  // namespace cure
