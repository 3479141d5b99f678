// The per-thread part of finding the radix bin that holds a rank (find_bin in radix_block.cuh): plain
// C++, so host tests can run every thread of a block through it without a GPU.
#pragma once

#include <cstdint>

#include "cure_math.h"

namespace cure::cuda {

struct BinPick {
  int bin;
  uint64_t below;  // candidates in lower bins
};

// A block's pick before a thread has claimed the rank: no real bin is negative.
constexpr int kNoPick = -1;

// One thread's claim: its bins [first, first + per) hold `local` candidates, `below` candidates lie in
// lower bins. The bin holding the candidate of 0-based rank `rank` if this range holds it, else kNoPick.
// Over a block's threads at most one claims a rank, and none does when rank >= the total count.
template <typename HistAt>
CURE_HD BinPick claim_bin(HistAt at, int first, int per, uint64_t below, uint64_t local, uint64_t rank) {
  if (rank < below || rank - below >= local) return BinPick{kNoPick, 0};
  for (int j = 0; j < per; ++j) {
    const uint64_t h = at(first + j);
    if (rank - below < h) return BinPick{first + j, below};
    below += h;
  }
  return BinPick{kNoPick, 0};  // the bins hold fewer than `local` candidates: no claim
}

}  // namespace cure::cuda
