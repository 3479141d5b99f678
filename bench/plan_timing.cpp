// Host cost per call of the CUDA step's planner (bench/host_plan.py builds and runs this; no GPU):
// a call whose tensor list changed (plan built, cached) against one whose list is unchanged (cache
// hit). Usage: plan_timing N_TENSORS NUMEL CALLS; prints one JSON object, microseconds per call.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/plan_cache.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: plan_timing N_TENSORS NUMEL CALLS\n");
    return 2;
  }
  const int32_t tensors = std::atoi(argv[1]);
  const int64_t numel = std::atoll(argv[2]);
  const int calls = std::atoi(argv[3]);
  if (tensors < 0 || numel < 0 || calls < 1) {
    std::fprintf(stderr, "plan_timing: N_TENSORS and NUMEL must be >= 0, CALLS >= 1\n");
    return 2;
  }
  // A float32 list with momentum and revision, as CURESGD passes it; the addresses are never read.
  std::vector<cure::TensorSlot> slots;
  const auto at = [&](int32_t i, int j) { return reinterpret_cast<void*>(uintptr_t(0x10000000) * (j + 1) + uintptr_t(i) * 4096 * ((numel * 4 + 4095) / 4096)); };
  for (int32_t i = 0; i < tensors; ++i)
    slots.push_back(cure::TensorSlot{at(i, 0), at(i, 1), at(i, 2), at(i, 3), at(i, 4), at(i, 5), numel,
                                     cure::conserve_count(0.3, numel), cure::DType::Float32, 1});
  cure::cuda::PlanCache<int> cache(8);
  const auto upload = [](const cure::cuda::StepPlan& plan) { return int(plan.meta.size()); };
  using clock = std::chrono::steady_clock;
  const auto per_call = [&](clock::time_point start) {
    return std::chrono::duration<double, std::micro>(clock::now() - start).count() / calls;
  };
  volatile size_t sink = 0;
  // Changed list: another stream each call, so every call plans and caches (evicting the oldest).
  auto start = clock::now();
  for (int c = 0; c < calls; ++c)
    sink = sink + cache.get({0, uintptr_t(c + 1), cure::cuda::kDefaultCandCap}, slots.data(), tensors, upload)
                      .plan->workspace_bytes;
  const double first = per_call(start);
  start = clock::now();
  for (int c = 0; c < calls; ++c)
    sink = sink + cache.get({0, uintptr_t(calls), cure::cuda::kDefaultCandCap}, slots.data(), tensors, upload)
                      .plan->workspace_bytes;
  const double cached = per_call(start);
  std::printf("{\"first_us\": %.3f, \"cached_us\": %.3f, \"hits\": %lld, \"misses\": %lld}\n", first, cached,
              static_cast<long long>(cache.hits()), static_cast<long long>(cache.misses()));
  return 0;
}
