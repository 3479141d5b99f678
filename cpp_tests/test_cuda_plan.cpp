// ctest of the CUDA step's host planner and plan cache (torch- and CUDA-free, runs without a GPU):
// candidate rooms bounded by the cap, the metadata image's slots, lists and workspace layout, and the
// cache reusing a plan exactly while every input of the plan is unchanged.
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

#include "cuda/plan_cache.h"

namespace {

using cure::DType;
using cure::TensorSlot;
using namespace cure::cuda;

int failures = 0;

void expect(bool ok, const char* what, long long detail) {
  if (!ok) {
    std::printf("FAIL: %s (%lld)\n", what, detail);
    ++failures;
  }
}

// A slot with fake, 16-byte aligned (or, with offset, unaligned) addresses; nothing is dereferenced.
TensorSlot slot(uintptr_t base, int64_t n, int64_t k, DType dtype, bool selective = true, uintptr_t offset = 0) {
  auto at = [&](int i) { return reinterpret_cast<void*>(base + uintptr_t(i) * (uintptr_t(1) << 40) + offset); };
  return TensorSlot{at(0), at(1), selective ? at(2) : nullptr, selective ? at(3) : nullptr, at(4), nullptr,
                    n, selective ? k : 0, dtype, selective ? 1 : 0};
}

std::vector<DevSlot> slots_of(const StepPlan& p) {
  std::vector<DevSlot> d(static_cast<size_t>(p.num_slots));
  std::memcpy(d.data(), p.meta.data(), d.size() * sizeof(DevSlot));
  return d;
}

std::vector<ListEntry> list_of(const StepPlan& p, const ListInfo& l) {
  std::vector<ListEntry> e(static_cast<size_t>(l.count));
  if (l.count) std::memcpy(e.data(), p.meta.data() + l.offset, e.size() * sizeof(ListEntry));
  return e;
}

void test_candidate_room() {
  const std::vector<int64_t> sizes{16385, 100000, 3 * 16384 + 1};
  const std::vector<int64_t> whole = candidate_room(sizes, int64_t(1) << 20);
  expect(whole == std::vector<int64_t>{16388, 100000, 49156}, "under the cap: every tensor whole", whole[0]);
  const int64_t cap = 40000;
  const std::vector<int64_t> share = candidate_room(sizes, cap);
  const int64_t total = std::accumulate(share.begin(), share.end(), int64_t(0));
  expect(total <= cap, "shares fit the cap", total);
  expect(total > cap - 12, "shares lose at most one vector each", total);
  for (const int64_t r : share) expect(r % 4 == 0 && r >= 0, "shares are whole vectors", r);
  expect(share[1] > share[2] && share[2] > share[0], "shares grow with the tensor", share[1]);
  expect(candidate_room(sizes, 0) == std::vector<int64_t>(3, 0), "cap 0: no room", 0);
  const int64_t huge = (int64_t(1) << 31) + 4099;
  const std::vector<int64_t> h = candidate_room({huge, huge}, kDefaultCandCap);
  expect(h[0] + h[1] <= kDefaultCandCap && h[0] > kDefaultCandCap / 2 - 8, "2^31-element tensors share the cap",
         h[0]);
}

void test_plan_layout() {
  const int64_t chunk = kChunk;
  std::vector<TensorSlot> s{
      slot(0x1000, 0, 0, DType::Float32),                    // 0: empty
      slot(0x2000, 7, 3, DType::Float32),                    // 1: one chunk, selection in one block
      slot(0x3000, 3 * chunk + 1, chunk, DType::BFloat16),   // 2: multi-chunk, 32-bit keys
      slot(0x4000, 2 * chunk, 5, DType::Float64, true, 8),   // 3: multi-chunk, 64-bit keys, unaligned
      slot(0x5000, 5 * chunk, 0, DType::Float32),            // 4: k = 0: keep all, no selection
      slot(0x6000, 100, 100, DType::Float16),                // 5: k = n: keep none
      slot(0x7000, 4 * chunk, 0, DType::Float32, false),     // 6: not selective
      slot(0x8000, 9 * chunk, 7, DType::Float32),            // 7: multi-chunk, 32-bit keys
  };
  const int64_t cap = 8 * chunk;  // less than the 12 chunks of tensors 2 and 7
  const StepPlan p = plan_step(s.data(), int32_t(s.size()), cap);
  const std::vector<DevSlot> d = slots_of(p);
  expect(p.num_slots == 8, "slots", p.num_slots);
  expect(!(d[0].flags & kNeedsSelect) && !(d[4].flags & kNeedsSelect) && !(d[6].flags & kNeedsSelect),
         "k = 0, empty and non-selective tensors need no selection", d[4].flags);
  expect(d[4].trivial_threshold == cure::KEEP_ALL && d[5].trivial_threshold == cure::KEEP_NONE,
         "trivial thresholds", int64_t(d[5].trivial_threshold));
  expect((d[1].flags & kNeedsSelect) && d[1].multi == -1, "one-chunk selection", d[1].multi);
  expect(d[2].multi == 0 && d[7].multi == 1 && d[3].multi == 0, "multi indices per key width", d[7].multi);
  expect((d[2].flags & kAligned16) && !(d[3].flags & kAligned16), "alignment flags", d[3].flags);
  expect(d[2].cand_offset == 0 && d[7].cand_offset == d[2].cand_room, "candidate offsets", d[7].cand_offset);
  expect(d[2].cand_room + d[7].cand_room <= cap && d[2].cand_room < d[2].n && d[7].cand_room < d[7].n,
         "32-bit rooms share the cap", d[7].cand_room);
  expect(d[3].cand_room == d[3].n, "64-bit room: the whole tensor, under the cap", d[3].cand_room);
  expect(p.keys32.all.count == 3 && p.keys32.multi.count == 2 && p.keys64.all.count == 1 &&
             p.keys64.multi.count == 1,
         "selection lists", p.keys32.all.count);
  expect(p.keys32.all.chunks == 1 + 4 + 9 && p.keys32.multi.chunks == 4 + 9, "selection chunks",
         p.keys32.all.chunks);
  const std::vector<ListEntry> multi = list_of(p, p.keys32.multi);
  expect(multi[0].slot == 2 && multi[1].slot == 7 && multi[1].first_chunk == 4, "multi list", multi[1].first_chunk);
  expect(p.update[0].count == 4 && p.update[0].chunks == 1 + 5 + 4 + 9, "float32 update list", p.update[0].chunks);
  expect(p.update[1].count == 1 && p.update[2].count == 1 && p.update[3].count == 1, "other update lists",
         p.update[2].count);
  for (const ListInfo* l : {&p.update[0], &p.keys32.all, &p.keys32.multi, &p.keys64.multi})
    expect(l->offset % 16 == 0 && l->offset >= size_t(p.num_slots) * sizeof(DevSlot), "lists after the slots",
           int64_t(l->offset));
  for (size_t at : {p.keys32.hist, p.keys32.cand, p.keys64.cand, p.thresholds, p.keys64.state})
    expect(at % 256 == 0 && at < p.workspace_bytes, "workspace pieces aligned", int64_t(at));
  expect(p.keys32.cand + size_t(cap) * 4 <= p.workspace_bytes, "candidates inside the workspace",
         int64_t(p.workspace_bytes));
  expect(p.zero_bytes <= p.thresholds && p.keys32.count < p.zero_bytes, "counters cleared, keys not",
         int64_t(p.zero_bytes));

  // The workspace does not grow with the tensors past the cap: 2^31 + 4099 bf16 elements.
  const TensorSlot big = slot(0x9000, (int64_t(1) << 31) + 4099, int64_t(1) << 30, DType::BFloat16);
  const StepPlan b = plan_step(&big, 1);
  expect(b.workspace_bytes < size_t(kDefaultCandCap) * 4 + (size_t(1) << 20), "bounded workspace",
         int64_t(b.workspace_bytes));
}

void test_cache() {
  PlanCache<int> cache(2);
  int uploads = 0;
  const auto upload = [&](const StepPlan&) { return ++uploads; };
  std::vector<TensorSlot> a{slot(0x1000, 3 * kChunk, 10, DType::Float32), slot(0x2000, 50, 3, DType::Float16)};
  const PlanPlace here{0, 0x77, kDefaultCandCap};
  const auto first = cache.get(here, a.data(), 2, upload);
  const auto again = cache.get(here, a.data(), 2, upload);
  expect(uploads == 1 && again.upload == 1 && again.plan == first.plan, "unchanged list: plan and upload reused",
         uploads);
  const StepPlan fresh = plan_step(a.data(), 2);
  expect(first.plan->meta == fresh.meta && first.plan->workspace_bytes == fresh.workspace_bytes,
         "the cached plan is the planner's", int64_t(fresh.meta.size()));
  // Every input of the plan is part of the key.
  const auto changed = [&](std::vector<TensorSlot> s, PlanPlace place, const char* what) {
    const int before = uploads;
    cache.get(place, s.data(), int32_t(s.size()), upload);
    expect(uploads == before + 1, what, uploads);
    cache.get(here, a.data(), 2, upload);  // back to the original, which may have been evicted
  };
  auto s = a; s[1].param = reinterpret_cast<void*>(0x99990);  changed(s, here, "pointer changed");
  s = a; s[0].n += 1;                                         changed(s, here, "size changed");
  s = a; s[0].k += 1;                                         changed(s, here, "k changed");
  s = a; s[1].dtype = DType::BFloat16;                        changed(s, here, "dtype changed");
  s = a; s[1].selective = 0; s[1].k = 0;                      changed(s, here, "flag changed");
  s = a; s.pop_back();                                        changed(s, here, "list shortened");
  changed(a, PlanPlace{1, 0x77, kDefaultCandCap}, "device changed");
  changed(a, PlanPlace{0, 0x78, kDefaultCandCap}, "stream changed");
  changed(a, PlanPlace{0, 0x77, 1024}, "cap changed");
  // Capacity 2: the original and the last variant stay, so the original is still a hit.
  const int before = uploads;
  const int64_t hits = cache.hits();
  cache.get(here, a.data(), 2, upload);
  expect(uploads == before && cache.hits() == hits + 1, "recently used entries stay", cache.hits());
  // Three alternating lists through a 2-entry cache: the least recently used one is evicted.
  auto b = a; b[0].k = 1;
  auto c = a; c[0].k = 2;
  cache.get(here, b.data(), 2, upload);
  cache.get(here, c.data(), 2, upload);
  const int at = uploads;
  cache.get(here, a.data(), 2, upload);
  expect(uploads == at + 1, "least recently used entry evicted", uploads);
  cache.get(here, nullptr, 0, upload);
  expect(cache.get(here, nullptr, 0, upload).plan->num_slots == 0, "empty list cached", cache.misses());
}

}  // namespace

int main() {
  test_candidate_room();
  test_plan_layout();
  test_cache();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("CUDA host planner tests passed\n");
  return 0;
}
