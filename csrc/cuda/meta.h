// Layout shared by the host planner and the device kernels of the CUDA selective step: the per-tensor
// metadata uploaded once per call, the chunk lists the persistent kernels walk, the radix digit plan.
// Plain C++ (no CUDA runtime, no torch), so the planner and the kernels agree by construction.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cure_math.h"

namespace cure::cuda {

constexpr int kBlock = 256;                   // threads per block, every kernel
constexpr int64_t kChunk = int64_t(1) << 14;  // elements per chunk: one block's unit of work

enum SlotFlag : int32_t {
  kNeedsSelect = 1,  // threshold found on the device (0 < k < n)
  kAligned16 = 2,    // every pointer of the slot is 16-byte aligned: vector loads and stores
};

// One tensor of the call as the kernels see it.
struct DevSlot {
  void* param;
  const void* grad;
  const void* nat;
  const void* adv;
  void* mom;
  void* rev;
  int64_t n;
  int64_t k;
  uint64_t trivial_threshold;  // the threshold when kNeedsSelect is not set
  int64_t cand_offset;         // first candidate slot in its key width's candidate buffer
  int64_t cand_room;           // candidate slots it owns there; more candidates: keys recomputed
  int32_t dtype;               // cure::DType
  int32_t flags;               // SlotFlag bits
  int32_t multi;               // index among the multi-chunk selections of its key width, or -1
  int32_t pad;
};

// A list of tensors cut into kChunk-element chunks, numbered consecutively across the list; a block
// finds its tensor by binary search on first_chunk, so the list is O(tensors), not O(chunks).
struct ListEntry {
  int64_t first_chunk;
  int32_t slot;
  int32_t pad;
};

struct ListInfo {
  size_t offset;  // byte offset of the ListEntry array in the metadata
  int32_t count;
  int64_t chunks;
};

// Radix select state of one multi-chunk tensor between passes: key bits fixed so far, and the rank of
// the wanted key among the candidates that share them.
struct SelectState {
  uint64_t prefix;
  int64_t rank;
};

// Digits of a key, most significant first: a 12-bit first digit (sign, exponent and 3 mantissa bits of
// a float32 score: 8 bins per octave), then digits of at most 11 bits. 32-bit keys: 12+10+10;
// 64-bit keys: 12+11+11+10+10+10.
template <typename K>
struct Digits {
  static constexpr int kBits = int(sizeof(K) * 8);
  static constexpr int kFirst = 12;
  static constexpr int kCount = kBits == 32 ? 3 : 6;
  static constexpr int kMaxBins = 1 << kFirst;

  static constexpr CURE_HD int width(int d) {
    constexpr int rest = kBits - kFirst, later = kCount - 1;
    return d == 0 ? kFirst : rest / later + ((d - 1) < rest % later ? 1 : 0);
  }
  static constexpr CURE_HD int bins(int d) { return 1 << width(d); }
  // Bits of the key below digit d.
  static constexpr CURE_HD int shift(int d) {
    int s = kBits;
    for (int e = 0; e <= d; ++e) s -= width(e);
    return s;
  }
  // Offset of digit d's histogram in a tensor's histogram block.
  static constexpr CURE_HD int hist_base(int d) {
    int b = 0;
    for (int e = 0; e < d; ++e) b += bins(e);
    return b;
  }
  static constexpr CURE_HD int total_bins() { return hist_base(kCount); }
};

static_assert(Digits<uint32_t>::shift(Digits<uint32_t>::kCount - 1) == 0, "32-bit digits must cover the key");
static_assert(Digits<uint64_t>::shift(Digits<uint64_t>::kCount - 1) == 0, "64-bit digits must cover the key");
static_assert(Digits<uint64_t>::width(1) == 11 && Digits<uint64_t>::width(5) == 10, "later digits <= 11 bits");
static_assert(Digits<uint32_t>::bins(2) >= kBlock, "every histogram spans at least one bin per thread");
static_assert(kBlock % 32 == 0, "blocks are whole warps (warp-aggregated histograms)");
static_assert(kChunk % (kBlock * 8) == 0, "chunks hold whole 16-byte vectors of every thread");

// Where one key width's selections live. Metadata: the lists. Workspace: the zero-initialised
// histograms, finished-chunk counters and candidate counts, then the states and the candidate keys.
struct GroupLayout {
  ListInfo all;    // every tensor needing a selection
  ListInfo multi;  // those with more than one chunk (the others are selected inside one block)
  size_t hist;     // uint64 [multi.count][Digits::total_bins()]
  size_t done;     // uint32 [multi.count][Digits::kCount]
  size_t count;    // uint64 [multi.count]
  size_t state;    // SelectState [multi.count]
  size_t cand;     // key [sum of the multi tensors' candidate rooms, at most the cap]
};

}  // namespace cure::cuda
