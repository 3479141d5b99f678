// Reuse of a call's plan and its uploaded metadata while the call's tensor list is unchanged: what a
// plan depends on (every slot's pointers, sizes, dtype, flags and k, the device, the stream, the
// candidate cap) is the key, so an equal key means an identical metadata image. Torch-free: the
// launcher instantiates it with its device copy of the metadata, the C++ tests with a counter.
#pragma once

#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/plan.h"

namespace cure::cuda {

static_assert(sizeof(TensorSlot) == 6 * sizeof(void*) + 2 * sizeof(int64_t) + 2 * sizeof(int32_t),
              "TensorSlot has no padding, so keys compare with memcmp");

// Where and how a call runs, besides its slots.
struct PlanPlace {
  int device;
  uintptr_t stream;  // the upload and the kernels are ordered on it; another stream uploads again
  int64_t cand_cap;
  bool operator==(const PlanPlace& o) const {
    return device == o.device && stream == o.stream && cand_cap == o.cand_cap;
  }
};

template <typename Upload>
class PlanCache {
 public:
  struct Entry {
    std::shared_ptr<const StepPlan> plan;
    Upload upload;
  };

  explicit PlanCache(size_t capacity) : capacity_(capacity) {}

  // The entry for this call: a cached one when the key is unchanged (no allocation, one comparison
  // of the slots), else a new plan whose metadata upload(plan) sends, replacing the least recently
  // used entry. upload runs under the cache's lock.
  template <typename UploadFn>
  Entry get(const PlanPlace& place, const TensorSlot* slots, int32_t count, UploadFn&& upload) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->place == place && it->slots.size() == size_t(count) &&
          (count == 0 || std::memcmp(it->slots.data(), slots, size_t(count) * sizeof(TensorSlot)) == 0)) {
        ++hits_;
        entries_.splice(entries_.begin(), entries_, it);
        return entries_.front().entry;
      }
    }
    ++misses_;
    auto plan = std::make_shared<const StepPlan>(plan_step(slots, count, place.cand_cap));
    Upload sent = upload(*plan);
    if (entries_.size() >= capacity_ && !entries_.empty()) entries_.pop_back();
    entries_.push_front(Stored{place, std::vector<TensorSlot>(slots, slots + count), Entry{plan, std::move(sent)}});
    return entries_.front().entry;
  }

  int64_t hits() const { const std::lock_guard<std::mutex> lock(mutex_); return hits_; }
  int64_t misses() const { const std::lock_guard<std::mutex> lock(mutex_); return misses_; }

 private:
  struct Stored {
    PlanPlace place;
    std::vector<TensorSlot> slots;
    Entry entry;
  };
  size_t capacity_;
  mutable std::mutex mutex_;
  std::list<Stored> entries_;  // most recently used first
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace cure::cuda
