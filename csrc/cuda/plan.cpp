// Host planner of the CUDA selective step: classifies the tensors, lays out the metadata image that is
// uploaded with one copy, and the workspace (histograms, counters, states, candidate keys).
#include "cuda/plan.h"

#include <algorithm>
#include <cstring>

namespace cure::cuda {
namespace {

constexpr size_t kAlign = 256;

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }
int64_t round4(int64_t n) { return (n + 3) / 4 * 4; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Consecutive chunk numbering of a list under construction.
struct ListBuilder {
  std::vector<ListEntry> entries;
  int64_t chunks = 0;
  void add(int32_t slot, int64_t n) {
    entries.push_back(ListEntry{chunks, slot, 0});
    chunks += chunks_of(n);
  }
};

// Bump allocator over a byte range; each piece aligned for vector access.
struct Bump {
  size_t size = 0;
  size_t take(size_t bytes) {
    const size_t at = align_up(size, kAlign);
    size = at + bytes;
    return at;
  }
};

ListInfo place_list(const ListBuilder& b, std::vector<unsigned char>& image) {
  const size_t at = align_up(image.size(), 16);
  image.resize(at + b.entries.size() * sizeof(ListEntry));
  if (!b.entries.empty()) std::memcpy(image.data() + at, b.entries.data(), b.entries.size() * sizeof(ListEntry));
  return ListInfo{at, static_cast<int32_t>(b.entries.size()), b.chunks};
}

// One key width's selections: lists in the metadata, then its pieces of the workspace.
template <typename K>
struct GroupBuilder {
  ListBuilder all, multi;
  int64_t cand_keys = 0;

  // Registers a tensor needing a selection; a multi-chunk one also gets its histograms.
  void add(int32_t slot, DevSlot& d) {
    all.add(slot, d.n);
    if (chunks_of(d.n) == 1) return;
    d.multi = static_cast<int32_t>(multi.entries.size());
    multi.add(slot, d.n);
  }

  // Candidate rooms, once every tensor is known (the shares depend on the total).
  void place_candidates(std::vector<DevSlot>& dev, int64_t cap) {
    std::vector<int64_t> sizes;
    for (const ListEntry& e : multi.entries) sizes.push_back(dev[static_cast<size_t>(e.slot)].n);
    const std::vector<int64_t> room = candidate_room(sizes, cap);
    for (size_t i = 0; i < room.size(); ++i) {
      DevSlot& d = dev[static_cast<size_t>(multi.entries[i].slot)];
      d.cand_offset = cand_keys;
      d.cand_room = room[i];
      cand_keys += room[i];
    }
  }

  GroupLayout place_lists(std::vector<unsigned char>& image) const {
    GroupLayout g{};
    g.all = place_list(all, image);
    g.multi = place_list(multi, image);
    return g;
  }
  void place_zeroed(GroupLayout& g, Bump& ws) const {
    const size_t m = multi.entries.size();
    g.hist = ws.take(m * Digits<K>::total_bins() * sizeof(unsigned long long));
    g.done = ws.take(m * Digits<K>::kCount * sizeof(unsigned int));
    g.count = ws.take(m * sizeof(unsigned long long));
  }
  void place_rest(GroupLayout& g, Bump& ws) const {
    g.state = ws.take(multi.entries.size() * sizeof(SelectState));
    g.cand = ws.take(static_cast<size_t>(cand_keys) * sizeof(K));
  }
};

}  // namespace

std::vector<int64_t> candidate_room(const std::vector<int64_t>& sizes, int64_t cap) {
  int64_t whole = 0;
  for (const int64_t n : sizes) whole += round4(n);
  std::vector<int64_t> room(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    // Shares rounded down to whole vectors; in long double, as n * cap overflows int64.
    room[i] = whole <= cap ? round4(sizes[i])
                           : static_cast<int64_t>(static_cast<long double>(round4(sizes[i])) * cap / whole) / 4 * 4;
  }
  return room;
}

StepPlan plan_step(const TensorSlot* slots, int32_t count, int64_t cand_cap) {
  StepPlan plan;
  plan.num_slots = count;
  std::vector<DevSlot> dev(static_cast<size_t>(count));
  ListBuilder update[4];  // by DType: one update launch per dtype present
  GroupBuilder<uint32_t> g32;
  GroupBuilder<uint64_t> g64;
  for (int32_t i = 0; i < count; ++i) {
    const TensorSlot& s = slots[i];
    DevSlot& d = dev[static_cast<size_t>(i)];
    d = DevSlot{s.param, s.grad, s.nat, s.adv, s.mom, s.rev, s.n, s.k, trivial_threshold(s), 0, 0,
                static_cast<int32_t>(s.dtype), 0, -1, 0};
    const bool aligned = aligned16(s.param) && aligned16(s.grad) && aligned16(s.nat) && aligned16(s.adv) &&
                         aligned16(s.mom) && aligned16(s.rev);  // null pointers count as aligned
    if (aligned) d.flags |= kAligned16;
    if (s.n > 0) update[static_cast<int>(s.dtype)].add(i, s.n);
    if (!needs_selection(s)) continue;
    d.flags |= kNeedsSelect;
    if (s.dtype == DType::Float64) {
      g64.add(i, d);
    } else {
      g32.add(i, d);
    }
  }
  g32.place_candidates(dev, cand_cap);
  g64.place_candidates(dev, cand_cap);

  plan.meta.resize(dev.size() * sizeof(DevSlot));
  std::memcpy(plan.meta.data(), dev.data(), plan.meta.size());
  for (int t = 0; t < 4; ++t) plan.update[t] = place_list(update[t], plan.meta);
  plan.keys32 = g32.place_lists(plan.meta);
  plan.keys64 = g64.place_lists(plan.meta);

  Bump ws;
  g32.place_zeroed(plan.keys32, ws);
  g64.place_zeroed(plan.keys64, ws);
  plan.zero_bytes = ws.size;
  plan.thresholds = ws.take(static_cast<size_t>(count) * sizeof(uint64_t));
  g32.place_rest(plan.keys32, ws);
  g64.place_rest(plan.keys64, ws);
  plan.workspace_bytes = std::max<size_t>(ws.size, 1);
  return plan;
}

}  // namespace cure::cuda
