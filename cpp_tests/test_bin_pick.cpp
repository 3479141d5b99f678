// ctest of claim_bin (cuda/bin_pick.h), the per-thread part of the CUDA radix select's bin search, on
// the host (no GPU): every thread of a simulated block claims its share of a histogram with the counts
// the block scan would give it. A rank below the total is claimed by exactly one thread, with the bin
// and lower count a linear scan finds; a rank at or past the total (counts that changed between passes)
// is claimed by none, so the block's pick stays kNoPick and the kernel stops instead of reusing a bin.
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/bin_pick.h"
#include "cuda/meta.h"

namespace {

using cure::cuda::BinPick;
using cure::cuda::kBlock;
using cure::cuda::kNoPick;

int failures = 0;

void expect(bool ok, const char* what, long long detail) {
  if (!ok) {
    std::printf("FAIL: %s (%lld)\n", what, detail);
    ++failures;
  }
}

// Every thread's claim for `rank`, as find_bin runs them; returns the claims made.
std::vector<BinPick> claims(const std::vector<uint64_t>& hist, uint64_t rank) {
  const int per = int(hist.size()) / kBlock;
  const auto at = [&](int b) { return hist[size_t(b)]; };
  std::vector<BinPick> made;
  uint64_t below = 0;  // the exclusive block scan of the threads' sums
  for (int t = 0; t < kBlock; ++t) {
    uint64_t local = 0;
    for (int j = 0; j < per; ++j) local += at(t * per + j);
    const BinPick p = cure::cuda::claim_bin(at, t * per, per, below, local, rank);
    if (p.bin != kNoPick) made.push_back(p);
    below += local;
  }
  return made;
}

void check_histogram(const std::vector<uint64_t>& hist, const char* name) {
  uint64_t total = 0;
  for (const uint64_t h : hist) total += h;
  std::vector<uint64_t> ranks{0, total / 3, total / 2, total - 1};
  for (uint64_t r = 0; r < total; r += total / 97 + 1) ranks.push_back(r);
  for (const uint64_t rank : ranks) {
    int bin = 0;
    uint64_t below = 0;
    while (below + hist[size_t(bin)] <= rank) below += hist[size_t(bin++)];
    const std::vector<BinPick> made = claims(hist, rank);
    expect(made.size() == 1, name, (long long)made.size());
    if (made.size() == 1) expect(made[0].bin == bin && made[0].below == below, name, made[0].bin);
  }
  for (const uint64_t rank : {total, total + 1, total + 1000})
    expect(claims(hist, rank).empty(), "a rank past the total is claimed by no thread", (long long)rank);
}

}  // namespace

int main() {
  std::mt19937_64 rng(7);
  for (const int bins : {1024, 2048, 4096}) {  // the digit sizes: 10, 11 and 12 bits
    const size_t n = static_cast<size_t>(bins);
    std::vector<uint64_t> sparse(n, 0), dense(n, 0), single(n, 0);
    std::uniform_int_distribution<int> pick(0, bins - 1), count(0, 50);
    for (int i = 0; i < 40; ++i) sparse[size_t(pick(rng))] += 1 + count(rng);
    for (uint64_t& h : dense) h = uint64_t(count(rng));
    single[n - 1] = 5;  // every key in the last bin (ties), zero below it
    check_histogram(sparse, "sparse histogram: one claim, the right bin");
    check_histogram(dense, "dense histogram: one claim, the right bin");
    check_histogram(single, "single-bin histogram: one claim, the right bin");
  }
  expect(claims(std::vector<uint64_t>(1024, 0), 0).empty(), "an empty histogram: no claim", 0);
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("radix bin claim tests passed\n");
  return 0;
}
