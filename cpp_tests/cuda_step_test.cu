// Tests of the CUDA selective step (torch-free launcher) on data prepared on the host: the updated
// weights (which reveal every keep decision), momentum and revision buffers must equal, bit for bit,
// a plain host computation with cure_math.h and std::nth_element; kept counts must be exact. Cases
// cover every dtype, sizes around the chunk size, unaligned tensors, ties, NaN/±0/±inf, all options,
// many tensors, a CUDA-graph replay, and candidate caps small enough that selections recompute their
// keys from the gradients. CURE_TEST_HUGE=1 adds a tensor of more than 2^31 elements. With --small,
// a short run that still reaches every kernel and path (for compute-sanitizer's memcheck and
// racecheck). Exit code 77 (ctest: skipped) without a CUDA device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/launch.h"

namespace {

using cure::DType;
using cure::StepOptions;
using cure::TensorSlot;

#define CHECK_CUDA(expr)                                                                              \
  do {                                                                                                \
    const cudaError_t err_ = (expr);                                                                  \
    if (err_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)

int failures = 0;

void fail(const std::string& what) {
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  ++failures;
}

// Host conversions between storage and arithmetic types (the cuda_fp16/bf16 ones are host-callable).
float acc(float x) { return x; }
double acc(double x) { return x; }
float acc(__half x) { return __half2float(x); }
float acc(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T store(typename cure::Acc<T>::type a);
template <> float store<float>(float a) { return a; }
template <> double store<double>(double a) { return a; }
template <> __half store<__half>(float a) { return __float2half_rn(a); }
template <> __nv_bfloat16 store<__nv_bfloat16>(float a) { return __float2bfloat16_rn(a); }

size_t size_of(DType t) { return t == DType::Float64 ? 8 : t == DType::Float32 ? 4 : 2; }

enum class Kind { Normal, Ties, Zeros, Special };

// One tensor of a call, host side: storage bytes of each array.
struct Tensor {
  DType dtype;
  int64_t n;
  bool selective;
  int64_t offset;  // elements before the data in each device allocation (offset 1 makes it unaligned)
  Kind kind;
  std::vector<unsigned char> param, grad, nat, adv, mom, rev;
};

double draw(Kind kind, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> exponent(-8, 8), small(-2, 2), pick(0, 9);
  const double v = normal(rng) * std::ldexp(1.0, exponent(rng));
  switch (kind) {
    case Kind::Normal: return v;
    case Kind::Ties: return 0.25 * small(rng);
    case Kind::Zeros: return 0.0;
    case Kind::Special:
      switch (pick(rng)) {
        case 0: return std::numeric_limits<double>::quiet_NaN();
        case 1: return std::numeric_limits<double>::infinity();
        case 2: return -std::numeric_limits<double>::infinity();
        case 3: return -0.0;
        case 4: return 0.0;
        default: return v;
      }
  }
  return v;
}

template <typename T>
void fill(std::vector<unsigned char>& bytes, int64_t n, Kind kind, std::mt19937_64& rng) {
  bytes.resize(static_cast<size_t>(n) * sizeof(T));
  T* p = reinterpret_cast<T*>(bytes.data());
  for (int64_t i = 0; i < n; ++i) p[i] = store<T>(static_cast<typename cure::Acc<T>::type>(draw(kind, rng)));
}

template <typename T>
void fill_tensor(Tensor& t, std::mt19937_64& rng) {
  fill<T>(t.param, t.n, Kind::Normal, rng);
  fill<T>(t.grad, t.n, Kind::Normal, rng);
  fill<T>(t.nat, t.n, t.kind, rng);
  fill<T>(t.adv, t.n, t.kind, rng);
  fill<T>(t.mom, t.n, Kind::Normal, rng);
  fill<T>(t.rev, t.n, Kind::Normal, rng);
}

Tensor make(DType dtype, int64_t n, Kind kind, std::mt19937_64& rng, bool selective = true, int64_t offset = 0) {
  Tensor t{dtype, n, selective, offset, kind, {}, {}, {}, {}, {}, {}};
  switch (dtype) {
    case DType::Float32: fill_tensor<float>(t, rng); break;
    case DType::Float64: fill_tensor<double>(t, rng); break;
    case DType::Float16: fill_tensor<__half>(t, rng); break;
    case DType::BFloat16: fill_tensor<__nv_bfloat16>(t, rng); break;
  }
  return t;
}

// The step of SPEC §2 on one tensor, on the host: updates t in place, returns the kept count.
template <typename T>
int64_t reference(Tensor& t, const StepOptions& o, int64_t k) {
  using A = typename cure::Acc<T>::type;
  using K = typename cure::KeyOf<A>::type;
  T* theta = reinterpret_cast<T*>(t.param.data());
  T* mom = reinterpret_cast<T*>(t.mom.data());
  T* rev = reinterpret_cast<T*>(t.rev.data());
  const T* grad = reinterpret_cast<const T*>(t.grad.data());
  const T* nat = reinterpret_cast<const T*>(t.nat.data());
  const T* adv = reinterpret_cast<const T*>(t.adv.data());
  const TensorSlot shape{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, t.n, k, t.dtype, t.selective};
  const cure::ScoreCoeffs<A> c(o.alpha);
  std::vector<K> keys;
  uint64_t threshold = cure::trivial_threshold(shape);
  if (cure::needs_selection(shape)) {
    keys.resize(static_cast<size_t>(t.n));
    for (int64_t i = 0; i < t.n; ++i) keys[i] = cure::order_key(cure::score(acc(nat[i]), acc(adv[i]), c, o.score));
    std::vector<K> sorted = keys;
    std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
    threshold = sorted[static_cast<size_t>(k)];
  }
  const cure::SgdHyper<A> h = cure::sgd_hyper<A>(o);
  const A decay = A(o.revision_decay), one_minus_decay = A(1.0 - o.revision_decay);
  int64_t kept = 0;
  for (int64_t i = 0; i < t.n; ++i) {
    const bool kp = keys.empty() ? threshold == cure::KEEP_ALL : cure::keep(keys[i], threshold);
    kept += kp;
    A th = acc(theta[i]);
    A m = h.use_momentum ? acc(mom[i]) : A(0);
    cure::sgd_update(th, m, acc(grad[i]), kp, h);
    theta[i] = store<T>(th);
    if (h.use_momentum) mom[i] = store<T>(m);
    if (o.revise) rev[i] = store<T>(cure::revise(acc(rev[i]), acc(theta[i]), decay, one_minus_decay));
  }
  return kept;
}

int64_t reference_any(Tensor& t, const StepOptions& o, int64_t k) {
  switch (t.dtype) {
    case DType::Float32: return reference<float>(t, o, k);
    case DType::Float64: return reference<double>(t, o, k);
    case DType::Float16: return reference<__half>(t, o, k);
    case DType::BFloat16: return reference<__nv_bfloat16>(t, o, k);
  }
  return -1;
}

// Device copies of a call's tensors and the launcher's buffers.
struct DeviceCall {
  std::vector<void*> allocations;
  std::vector<TensorSlot> slots;
  cure::cuda::StepPlan plan;
  void* meta = nullptr;
  void* workspace = nullptr;
  int64_t* kept = nullptr;
  int sms = 0;

  void* upload(const std::vector<unsigned char>& bytes, const Tensor& t) {
    const size_t elem = size_of(t.dtype), skip = static_cast<size_t>(t.offset) * elem;
    unsigned char* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, skip + bytes.size() + 1));
    allocations.push_back(p);
    if (!bytes.empty()) CHECK_CUDA(cudaMemcpy(p + skip, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
    return p + skip;
  }

  DeviceCall(const std::vector<Tensor>& tensors, const StepOptions& o, double percentile,
             int64_t cand_cap = cure::cuda::kDefaultCandCap) {
    for (const Tensor& t : tensors) {
      TensorSlot s{};
      s.dtype = t.dtype;
      s.n = t.n;
      s.selective = t.selective;
      s.param = upload(t.param, t);
      s.grad = upload(t.grad, t);
      if (t.selective) {
        s.nat = upload(t.nat, t);
        s.adv = upload(t.adv, t);
        s.k = cure::conserve_count(percentile, t.n);
      }
      if (o.momentum > 0.0) s.mom = upload(t.mom, t);
      if (o.revise) s.rev = upload(t.rev, t);
      slots.push_back(s);
    }
    plan = cure::cuda::plan_step(slots.data(), static_cast<int32_t>(slots.size()), cand_cap);
    CHECK_CUDA(cudaMalloc(&meta, plan.meta.size()));
    CHECK_CUDA(cudaMemcpy(meta, plan.meta.data(), plan.meta.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMalloc(&workspace, plan.workspace_bytes));
    CHECK_CUDA(cudaMalloc(&kept, slots.size() * sizeof(int64_t) + 1));
    int device = 0;
    CHECK_CUDA(cudaGetDevice(&device));
    CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  }
  ~DeviceCall() {
    for (void* p : allocations) cudaFree(p);
    cudaFree(meta);
    cudaFree(workspace);
    cudaFree(kept);
  }

  // Enqueues one step (kept cleared first) on stream.
  void enqueue(const StepOptions& o, cudaStream_t stream) {
    CHECK_CUDA(cudaMemsetAsync(kept, 0, slots.size() * sizeof(int64_t), stream));
    CHECK_CUDA(cure::cuda::launch_step(plan, meta, workspace, kept, o, sms, stream));
  }
};

void download(const void* device, std::vector<unsigned char>& host) {
  if (!host.empty()) CHECK_CUDA(cudaMemcpy(host.data(), device, host.size(), cudaMemcpyDeviceToHost));
}

void compare_bytes(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want, size_t elem,
                   const std::string& what) {
  if (got == want) return;
  for (size_t i = 0; i < got.size(); i += elem) {
    if (std::memcmp(&got[i], &want[i], elem) != 0) {
      fail(what + ": first mismatch at element " + std::to_string(i / elem) + " of " +
           std::to_string(got.size() / elem));
      return;
    }
  }
}

// Compares the device state after `steps` steps with the host reference applied `steps` times.
void check(const std::string& name, const DeviceCall& call, std::vector<Tensor> want, const StepOptions& o,
           int steps) {
  std::vector<int64_t> kept(call.slots.size()), kept_want(call.slots.size());
  CHECK_CUDA(cudaMemcpy(kept.data(), call.kept, kept.size() * sizeof(int64_t), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < want.size(); ++i) {
    Tensor& t = want[i];
    for (int s = 0; s < steps; ++s) kept_want[i] = reference_any(t, o, call.slots[i].k);
    const std::string where = name + " tensor " + std::to_string(i) + " (n=" + std::to_string(t.n) + ")";
    if (kept[i] != kept_want[i])
      fail(where + ": kept " + std::to_string(kept[i]) + ", want " + std::to_string(kept_want[i]));
    const size_t elem = size_of(t.dtype);
    std::vector<unsigned char> got(t.param.size());
    download(call.slots[i].param, got);
    compare_bytes(got, t.param, elem, where + " param");
    if (call.slots[i].mom) {
      download(call.slots[i].mom, got);
      compare_bytes(got, t.mom, elem, where + " momentum");
    }
    if (call.slots[i].rev) {
      download(call.slots[i].rev, got);
      compare_bytes(got, t.rev, elem, where + " revision");
    }
  }
  std::printf("%-28s %zu tensors, %s\n", name.c_str(), want.size(), failures ? "with failures so far" : "ok");
}

void run_case(const std::string& name, const std::vector<Tensor>& tensors, const StepOptions& o, double percentile,
              int64_t cand_cap = cure::cuda::kDefaultCandCap) {
  DeviceCall call(tensors, o, percentile, cand_cap);
  call.enqueue(o, nullptr);
  CHECK_CUDA(cudaDeviceSynchronize());
  check(name, call, tensors, o, 1);
}

// The step captured once into a CUDA graph and replayed twice: the replays must equal two steps.
void run_graph_case(const std::string& name, const std::vector<Tensor>& tensors, const StepOptions& o,
                    double percentile) {
  DeviceCall call(tensors, o, percentile);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  call.enqueue(o, stream);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  check(name, call, tensors, o, 2);
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  CHECK_CUDA(cudaStreamDestroy(stream));
}

StepOptions options(double momentum, double dampening, double weight_decay, bool nesterov, cure::ScoreMode score,
                    cure::ConserveMode conserve, bool revise) {
  return StepOptions{0.1, momentum, dampening, weight_decay, nesterov, 0.1, score, conserve, revise, 0.999};
}

// Tensors > 2^31 elements (64-bit indexing): bf16 nat = adv = (i * 7919) % 251, exact small integers,
// so the score is increasing in that value and the kept count and every weight are known in closed form.
__global__ void fill_huge(__nv_bfloat16* param, __nv_bfloat16* grad, __nv_bfloat16* score, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    param[i] = __float2bfloat16_rn(0.0f);
    grad[i] = __float2bfloat16_rn(1.0f);
    score[i] = __float2bfloat16_rn(float(i * 7919 % 251));
  }
}

void run_huge_case() {
  const int64_t n = (int64_t(1) << 31) + 4099;
  const double percentile = 0.3;
  __nv_bfloat16 *param, *grad, *score;
  CHECK_CUDA(cudaMalloc(&param, n * 2));
  CHECK_CUDA(cudaMalloc(&grad, n * 2));
  CHECK_CUDA(cudaMalloc(&score, n * 2));
  fill_huge<<<4096, 256>>>(param, grad, score, n);
  CHECK_CUDA(cudaGetLastError());
  const StepOptions o{1.0, 0.0, 0.0, 0.0, false, 0.1, cure::ScoreMode::Abs, cure::ConserveMode::Grad, false, 0.999};
  const int64_t k = cure::conserve_count(percentile, n);
  TensorSlot slot{param, grad, score, score, nullptr, nullptr, n, k, DType::BFloat16, 1};
  const cure::cuda::StepPlan plan = cure::cuda::plan_step(&slot, 1);
  void *meta, *workspace;
  int64_t* kept;
  CHECK_CUDA(cudaMalloc(&meta, plan.meta.size()));
  CHECK_CUDA(cudaMemcpy(meta, plan.meta.data(), plan.meta.size(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMalloc(&workspace, plan.workspace_bytes));
  CHECK_CUDA(cudaMalloc(&kept, sizeof(int64_t)));
  CHECK_CUDA(cudaMemset(kept, 0, sizeof(int64_t)));
  int sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK_CUDA(cure::cuda::launch_step(plan, meta, workspace, kept, o, sms, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());

  // Count of each value: whole periods of 251, then the first n % 251 residues of a period.
  std::vector<int64_t> count(251, n / 251);
  for (int64_t r = 0; r < n % 251; ++r) ++count[r * 7919 % 251];
  int64_t below = 0, cut = 0;
  while (below + count[cut] <= k) below += count[cut++];
  int64_t kept_want = 0;
  for (int64_t v = cut; v < 251; ++v) kept_want += count[v];
  int64_t got = 0;
  CHECK_CUDA(cudaMemcpy(&got, kept, sizeof got, cudaMemcpyDeviceToHost));
  if (got != kept_want) fail("huge: kept " + std::to_string(got) + ", want " + std::to_string(kept_want));
  for (const int64_t at : {int64_t(0), (int64_t(1) << 31) - 5000, n - 5000}) {
    std::vector<__nv_bfloat16> window(5000);
    CHECK_CUDA(cudaMemcpy(window.data(), param + at, 5000 * 2, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < 5000; ++i) {
      const float want = (at + i) * 7919 % 251 >= cut ? -1.0f : 0.0f;
      if (__bfloat162float(window[i]) != want) {
        fail("huge: param[" + std::to_string(at + i) + "] wrong");
        break;
      }
    }
  }
  std::printf("%-28s n=%lld, %s\n", "huge (>2^31 elements)", static_cast<long long>(n), failures ? "failures" : "ok");
  cudaFree(param);
  cudaFree(grad);
  cudaFree(score);
  cudaFree(meta);
  cudaFree(workspace);
  cudaFree(kept);
}

// Every kernel and path in a few small calls: warp-sized, empty and multi-chunk tensors of every
// dtype, k = 0 and k = n, selections inside one block and across chunks, candidates that fit and
// candidates that overflow (recomputed keys) for both key widths, a graph replay.
void run_small_cases(std::mt19937_64& rng) {
  using cure::ConserveMode;
  using cure::ScoreMode;
  const int64_t chunk = cure::cuda::kChunk;
  std::vector<Tensor> t;
  for (DType d : {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16}) {
    t.push_back(make(d, 0, Kind::Normal, rng));
    t.push_back(make(d, 32, Kind::Normal, rng));
    t.push_back(make(d, 1000, Kind::Ties, rng, true, 1));
    t.push_back(make(d, chunk + 33, Kind::Normal, rng));
    t.push_back(make(d, 2 * chunk + 5, Kind::Zeros, rng));
  }
  t.push_back(make(DType::Float32, 3000, Kind::Normal, rng, false));
  const StepOptions o = options(0.9, 0.1, 5e-4, true, ScoreMode::Abs, ConserveMode::Grad, true);
  for (double p : {0.0, 1.0, 0.3}) run_case("small, percentile " + std::to_string(p), t, o, p);
  run_case("small, candidates overflow", t, o, 0.4, 1024);
  run_graph_case("small, graph replay", t, o, 0.3);
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  std::mt19937_64 rng(1234);
  if (argc > 1 && std::string(argv[1]) == "--small") {
    run_small_cases(rng);
    if (failures) {
      std::printf("%d failure(s)\n", failures);
      return 1;
    }
    std::printf("small CUDA step tests passed\n");
    return 0;
  }
  using cure::ConserveMode;
  using cure::ScoreMode;
  const int64_t chunk = cure::cuda::kChunk;
  std::vector<Tensor> mixed;
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(1000), chunk, chunk + 1, int64_t(300000)})
    mixed.push_back(make(DType::Float32, n, Kind::Normal, rng));
  mixed.push_back(make(DType::Float32, 50001, Kind::Normal, rng, true, 1));  // unaligned
  mixed.push_back(make(DType::Float32, 5000, Kind::Normal, rng, false));     // not selective
  mixed.push_back(make(DType::Float16, 333, Kind::Normal, rng));
  mixed.push_back(make(DType::Float16, 40000, Kind::Ties, rng, true, 3));
  mixed.push_back(make(DType::Float16, 70000, Kind::Normal, rng, false));
  mixed.push_back(make(DType::BFloat16, 20000, Kind::Special, rng));
  mixed.push_back(make(DType::BFloat16, 3 * chunk, Kind::Normal, rng));
  mixed.push_back(make(DType::Float64, 5, Kind::Normal, rng));
  mixed.push_back(make(DType::Float64, chunk + 17, Kind::Special, rng));
  mixed.push_back(make(DType::Float64, 100000, Kind::Normal, rng, true, 1));
  const StepOptions sgd = options(0.9, 0.0, 5e-4, false, ScoreMode::Abs, ConserveMode::Grad, true);
  run_case("mixed dtypes and sizes", mixed, sgd, 0.3);
  run_graph_case("graph replay", mixed, sgd, 0.3);

  std::vector<Tensor> ties;
  ties.push_back(make(DType::Float32, 70000, Kind::Zeros, rng));
  ties.push_back(make(DType::Float32, 40000, Kind::Ties, rng));
  ties.push_back(make(DType::Float32, 9000, Kind::Zeros, rng));
  ties.push_back(make(DType::Float64, 30000, Kind::Ties, rng));
  ties.push_back(make(DType::Float64, 3000, Kind::Special, rng));
  ties.push_back(make(DType::BFloat16, 20000, Kind::Ties, rng));
  ties.push_back(make(DType::Float16, 33333, Kind::Special, rng));
  ties.push_back(make(DType::Float32, 100003, Kind::Special, rng, true, 2));
  run_case("ties, signed, freeze", ties, options(0.9, 0.0, 1e-3, true, ScoreMode::Signed, ConserveMode::Freeze, false),
           0.5);

  std::vector<Tensor> edges;
  for (int64_t n : {int64_t(1), int64_t(10), int64_t(100000), int64_t(300001)})
    edges.push_back(make(DType::Float32, n, Kind::Normal, rng));
  edges.push_back(make(DType::Float64, 100000, Kind::Normal, rng));
  edges.push_back(make(DType::Float16, 5000, Kind::Normal, rng));
  const StepOptions plain = options(0.0, 0.0, 0.0, false, ScoreMode::Abs, ConserveMode::Grad, false);
  for (double p : {0.0, 1.0, 1e-5, 0.99999, 0.5}) run_case("percentile " + std::to_string(p), edges, plain, p);

  std::vector<Tensor> many;
  std::uniform_int_distribution<int64_t> size(1, 5000);
  std::uniform_int_distribution<int> type(0, 3), coin(0, 4);
  for (int i = 0; i < 200; ++i)
    many.push_back(make(static_cast<DType>(type(rng)), size(rng), coin(rng) ? Kind::Normal : Kind::Ties, rng,
                        coin(rng) != 0, coin(rng) == 0 ? 1 : 0));
  many.push_back(make(DType::Float32, 123457, Kind::Normal, rng));
  many.push_back(make(DType::Float64, 40001, Kind::Normal, rng));
  many.push_back(make(DType::BFloat16, chunk * 4 + 3, Kind::Normal, rng, true, 1));
  run_case("200 tensors, no momentum", many,
           options(0.0, 0.0, 1e-2, false, ScoreMode::Abs, ConserveMode::Grad, true), 0.3);
  run_case("200 tensors, dampening", many,
           options(0.8, 0.3, 0.0, false, ScoreMode::Signed, ConserveMode::Freeze, true), 0.7);

  // Candidate caps below the candidates: tensors whose candidates overflow their room recompute the
  // later digits' keys from the gradients (ties put every key in one first-digit bin); others fit.
  for (int64_t cap : {int64_t(0), int64_t(4096), int64_t(60000)}) {
    run_case("cap " + std::to_string(cap) + ", mixed", mixed, sgd, 0.3, cap);
    run_case("cap " + std::to_string(cap) + ", ties", ties,
             options(0.9, 0.0, 1e-3, true, ScoreMode::Signed, ConserveMode::Freeze, false), 0.5, cap);
  }

  const char* huge = std::getenv("CURE_TEST_HUGE");
  if (huge && std::string(huge) == "1") run_huge_case();

  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all CUDA step tests passed\n");
  return 0;
}
