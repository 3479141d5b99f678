// ctest of the torch-free CPU core: radix select against std::nth_element over order keys, and the
// step kernel's masks against a direct reading of SPEC §2. Serial and chunked "parallel" loops.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "cpu/step_kernel.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what, long long detail) {
  if (!ok) {
    std::printf("FAIL: %s (%lld)\n", what, detail);
    ++failures;
  }
}

// Runs fn over [b, e) in sub-ranges of `grain`, like a thread pool would split it.
const auto chunked_for = [](int64_t b, int64_t e, int64_t grain, const auto& fn) {
  for (int64_t s = b; s < e; s += grain) fn(s, std::min(e, s + grain));
};

template <typename S> std::vector<S> random_scores(std::mt19937_64& rng, int64_t n, int kind) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(-3, 3), special(0, 9);
  std::vector<S> v(static_cast<size_t>(n));
  for (auto& x : v) {
    x = kind == 0 ? S(normal(rng)) : S(small(rng));  // kind 1: heavy ties
    if (kind == 2) {
      const int s = special(rng);
      if (s == 0) x = std::numeric_limits<S>::quiet_NaN();
      if (s == 1) x = std::numeric_limits<S>::infinity();
      if (s == 2) x = -std::numeric_limits<S>::infinity();
      if (s == 3) x = S(-0.0);
      if (s == 4) x = S(0.0);
    }
  }
  return v;
}

template <typename S> void test_select(std::mt19937_64& rng) {
  using K = typename cure::KeyOf<S>::type;
  cure::SelectScratch<K> scratch;
  for (int64_t n : {2, 3, 17, 1000, 70000, 300001}) {
    for (int kind = 0; kind < 3; ++kind) {
      const auto scores = random_scores<S>(rng, n, kind);
      std::vector<K> keys(scores.size());
      std::transform(scores.begin(), scores.end(), keys.begin(), [](S s) { return cure::order_key(s); });
      for (int64_t k : {int64_t(0), int64_t(1), n / 3, n / 2, n - 1}) {
        std::vector<K> sorted = keys;
        std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
        const K got = cure::radix_select(keys.data(), n, k, scratch, [](int64_t b, int64_t e, const auto& fn) {
          chunked_for(b, e, 3, fn);
        });
        expect(got == sorted[k], "radix_select equals nth_element", n);
      }
    }
  }
}

void test_order_key() {
  using cure::order_key;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  expect(order_key(-0.0f) == order_key(0.0f), "-0 == +0", 0);
  expect(order_key(nan) == order_key(-nan), "all NaNs equal", 0);
  expect(order_key(nan) > order_key(inf), "NaN above +inf", 0);
  expect(order_key(-inf) < order_key(-1e30f), "-inf lowest", 0);
  expect(order_key(-2.0f) < order_key(-1.0f) && order_key(-1.0f) < order_key(0.0f), "negatives ordered", 0);
  expect(order_key(1e-45f) > order_key(0.0f), "denormal above zero", 0);
  expect(uint64_t(order_key(nan)) < cure::KEEP_NONE && order_key(std::nan("")) < cure::KEEP_NONE,
         "KEEP_NONE above every key", 0);
}

// Tensors above kSortSelectMax whose threshold's 16-bit bucket is sparse (the update sets it aside)
// and dense (an exact radix select first), as the kernel decides: the cases must cover both.
int64_t sparse_buckets = 0, dense_buckets = 0;

// Float32 tensors of the given sizes through one call of the step kernel vs SPEC §2 computed directly:
// large tensors run in parallel inside, small ones whole per task; abs scores of normal gradients give
// sparse buckets, signed scores of few distinct values dense ones.
void test_step(std::mt19937_64& rng, const std::vector<int64_t>& sizes) {
  for (int mode = 0; mode < 2; ++mode) {
    const double alpha = 0.3, percentile = 0.37;
    const cure::ScoreCoeffs<float> c(alpha);
    const auto score_mode = mode == 0 ? cure::ScoreMode::Abs : cure::ScoreMode::Signed;
    struct Tensor {
      std::vector<float> nat, adv, theta, grad, mom, rev, start;
      std::vector<uint32_t> keys;
      int64_t k;
      uint32_t threshold;
    };
    std::vector<Tensor> ts;
    std::vector<cure::TensorSlot> slots;
    for (const int64_t n : sizes) {
      Tensor t;
      t.nat = random_scores<float>(rng, n, mode == 0 ? 0 : 2);
      t.adv = random_scores<float>(rng, n, 1);
      t.theta = random_scores<float>(rng, n, 0);
      t.grad = random_scores<float>(rng, n, 0);
      t.mom.assign(static_cast<size_t>(n), 0.5f);
      t.rev.assign(static_cast<size_t>(n), 1.0f);
      t.start = t.theta;
      t.keys.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) t.keys[i] = cure::order_key(cure::score(t.nat[i], t.adv[i], c, score_mode));
      t.k = cure::conserve_count(percentile, n);
      std::vector<uint32_t> sorted = t.keys;
      std::nth_element(sorted.begin(), sorted.begin() + t.k, sorted.end());
      t.threshold = sorted[t.k];
      if (n > cure::kSortSelectMax) {
        const auto in_bucket = std::count_if(t.keys.begin(), t.keys.end(), [&](uint32_t key) {
          return cure::bucket_of(key) == cure::bucket_of(t.threshold);
        });
        ++(in_bucket * cure::kDeferShare > n ? dense_buckets : sparse_buckets);
      }
      ts.push_back(std::move(t));
    }
    for (auto& t : ts)
      slots.push_back(cure::TensorSlot{t.theta.data(), t.grad.data(), t.nat.data(), t.adv.data(), t.mom.data(),
                                       t.rev.data(), int64_t(t.theta.size()), t.k, cure::DType::Float32, 1});
    const cure::StepOptions o{0.1, 0.9, 0.0, 0.0, false, alpha, score_mode, cure::ConserveMode::Freeze, true, 0.9};
    std::vector<int64_t> kept(slots.size());
    cure::selective_step_cpu<float, float>(slots, o, kept.data(), chunked_for);

    for (size_t j = 0; j < ts.size(); ++j) {
      const Tensor& t = ts[j];
      int64_t expect_kept = 0;
      bool masks_match = true;
      for (size_t i = 0; i < t.theta.size(); ++i) {
        const bool kp = t.keys[i] >= t.threshold;
        expect_kept += kp;
        // freeze: conserved entries (and their momentum) unchanged; kept ones moved by lr * (0.9 * 0.5 + g).
        const float want = kp ? t.start[i] - 0.1f * (0.9f * 0.5f + t.grad[i]) : t.start[i];
        masks_match &= kp ? std::fabs(t.theta[i] - want) <= 1e-5f * (1 + std::fabs(want)) : t.theta[i] == want;
        const float want_mom = kp ? 0.9f * 0.5f + t.grad[i] : 0.5f;
        masks_match &= kp ? std::fabs(t.mom[i] - want_mom) <= 1e-5f * (1 + std::fabs(want_mom)) : t.mom[i] == 0.5f;
        // Every entry's revision moves toward its (new or conserved) weight: 0.9 * 1 + 0.1 * theta.
        const float want_rev = 0.9f + 0.1f * t.theta[i];
        masks_match &= std::fabs(t.rev[i] - want_rev) <= 1e-5f * (1 + std::fabs(want_rev));
      }
      expect(kept[j] == expect_kept, "kept count", static_cast<long long>(t.theta.size()));
      expect(masks_match, "step applies the exact mask", static_cast<long long>(t.theta.size()));
    }
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(12345);
  test_order_key();
  test_select<float>(rng);
  test_select<double>(rng);
  test_step(rng, {100003});
  test_step(rng, {3, 17, 2048, 2049, 32768, 100003, 1, 5000, 32769});
  expect(sparse_buckets > 0 && dense_buckets > 0, "both select paths taken", sparse_buckets);
  std::printf(failures ? "%d checks failed\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
