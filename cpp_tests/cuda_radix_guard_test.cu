// ctest of the radix select's guard (needs a GPU; exit code 77, ctest: skipped, without one): a pass
// whose histogram counts fewer keys than the rank it selects (the score inputs changed under the op)
// must stop the kernel with a device-side assert, not reuse the bin the block picked in its previous
// pass. One block finishes digit 1 of a 32-bit selection, then digit 2: first with consistent counts
// (the state and threshold are checked exactly), then with digit 2 counting one key below rank 1.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "cuda/radix_block.cuh"

namespace {

using cure::cuda::Digits;
using cure::cuda::SelectArgs;
using cure::cuda::SelectShared;
using cure::cuda::SelectState;
using K = uint32_t;
using D = Digits<K>;

constexpr int kBin1 = 700, kBin2 = 3;

__global__ void two_passes(const SelectArgs<K> a, int64_t rank1, int64_t rank2) {
  __shared__ SelectShared<K> sh;
  cure::cuda::finish_pass(a, 1, 0, 0, 1, SelectState{0, rank1}, sh);
  cure::cuda::finish_pass(a, 2, 0, 0, 1, SelectState{uint64_t(kBin1) << D::shift(1), rank2}, sh);
}

int check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return 0;
  std::printf("FAIL: %s: %s\n", what, cudaGetErrorString(err));
  return 1;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  // Digit 1: 10 keys in bin 300, 5 in kBin1, so rank 12 is in kBin1 with 10 below. Digit 2: one key.
  std::vector<unsigned long long> hist(D::total_bins(), 0);
  hist[D::hist_base(1) + 300] = 10;
  hist[D::hist_base(1) + kBin1] = 5;
  hist[D::hist_base(2) + kBin2] = 1;
  SelectArgs<K> a{};
  uint64_t* thresholds = nullptr;
  if (check(cudaMalloc(&a.hist, hist.size() * sizeof(hist[0])), "cudaMalloc") ||
      check(cudaMalloc(&a.done, D::kCount * sizeof(unsigned int)), "cudaMalloc") ||
      check(cudaMalloc(&a.state, sizeof(SelectState)), "cudaMalloc") ||
      check(cudaMalloc(&thresholds, sizeof(uint64_t)), "cudaMalloc") ||
      check(cudaMemcpy(a.hist, hist.data(), hist.size() * sizeof(hist[0]), cudaMemcpyHostToDevice), "upload"))
    return 1;
  a.thresholds = thresholds;

  // Consistent counts: digit 1 leaves rank 2 inside kBin1, digit 2 picks its only key (rank 0).
  if (check(cudaMemset(a.done, 0, D::kCount * sizeof(unsigned int)), "cudaMemset")) return 1;
  two_passes<<<1, cure::cuda::kBlock>>>(a, 12, 0);
  SelectState state{};
  uint64_t threshold = 0;
  if (check(cudaDeviceSynchronize(), "consistent passes") ||
      check(cudaMemcpy(&state, a.state, sizeof state, cudaMemcpyDeviceToHost), "download") ||
      check(cudaMemcpy(&threshold, thresholds, sizeof threshold, cudaMemcpyDeviceToHost), "download"))
    return 1;
  const uint64_t prefix = uint64_t(kBin1) << D::shift(1);
  int failures = 0;
  if (state.prefix != prefix || state.rank != 2) {
    std::printf("FAIL: digit 1 state (prefix %llu, rank %lld)\n", (unsigned long long)state.prefix,
                (long long)state.rank);
    ++failures;
  }
  if (threshold != (prefix | kBin2)) {
    std::printf("FAIL: threshold %llu, want %llu\n", (unsigned long long)threshold,
                (unsigned long long)(prefix | kBin2));
    ++failures;
  }

  // Digit 2 now asked for rank 1 of its single key: no bin holds it. The kernel must stop with a
  // device-side assert (printed below) rather than write kBin1, the block's previous pick.
  if (check(cudaMemset(a.done, 0, D::kCount * sizeof(unsigned int)), "cudaMemset")) return 1;
  std::printf("an assertion about a radix pass is expected next:\n");
  std::fflush(stdout);
  two_passes<<<1, cure::cuda::kBlock>>>(a, 12, 1);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaErrorAssert) {
    std::printf("FAIL: inconsistent counts gave '%s', want a device-side assert\n", cudaGetErrorString(err));
    ++failures;
  }
  // The context is unusable after the assert: nothing is freed or read back.
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("radix guard test passed\n");
  return 0;
}
