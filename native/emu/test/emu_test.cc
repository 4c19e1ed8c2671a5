// Unit tests of the dsv2 CUDA emulator (native/emu), independent of the kernels: the execution
// model (fibers, barriers, warp operations, atomics, shared memory poison, divergence and
// deadlock detection), the runtime (launch limits, errors, streams, events, graphs, occupancy)
// and the PTX instructions, whose expected values come from the PTX ISA's tables written out
// here a second time (lane → element maps checked element by element). Run: build-emu/dsv2_emu_test.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/launch.cuh"
#include "ptx.h"

namespace {

int g_checks = 0, g_failed = 0;
#define CHECK(c)                                                                  \
  do {                                                                            \
    ++g_checks;                                                                   \
    if (!(c)) {                                                                   \
      ++g_failed;                                                                 \
      fprintf(stderr, "  FAILED %s:%d: %s\n", __FILE__, __LINE__, #c);            \
    }                                                                             \
  } while (0)
#define CHECK_EQ(a, b)                                                                                        \
  do {                                                                                                        \
    ++g_checks;                                                                                               \
    const auto va_ = (a);                                                                                     \
    const auto vb_ = (b);                                                                                     \
    if (!(va_ == vb_)) {                                                                                      \
      ++g_failed;                                                                                             \
      fprintf(stderr, "  FAILED %s:%d: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, #b,                \
              static_cast<long long>(va_), static_cast<long long>(vb_));                                     \
    }                                                                                                         \
  } while (0)

template <class T>
T* dev(size_t n) {
  T* p = nullptr;
  cudaMalloc(&p, n * sizeof(T));
  return p;
}
template <class T>
std::vector<T> host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}
uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// ---- kernels ----------------------------------------------------------------------------------------

__global__ void ids_kernel(int* out) {
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int n = blockDim.x * blockDim.y * blockDim.z;
  out[b * n + t] = b * 100000 + static_cast<int>(threadIdx.z * 10000 + threadIdx.y * 100 + threadIdx.x);
}

// Each thread reads its neighbour's shared slot: correct only with the barrier.
__global__ void neighbour_kernel(float* out, bool sync) {
  __shared__ float s[128];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (sync) __syncthreads();
  else __syncwarp();  // lanes meet, warps do not: other warps' slots may be unwritten
  out[threadIdx.x] = s[(threadIdx.x + 32) % 128];
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void exited_barrier_kernel(int* out) {
  if (threadIdx.x >= 64) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void divergent_shfl_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 != 7) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void mixed_ops_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else v = static_cast<int>(__ballot_sync(0xffffffffu, v));
  out[threadIdx.x] = v;
}

struct ShflOut {
  int idx, up, down, bfly, idx16, up16, down16, bfly16;
};
__global__ void shfl_kernel(ShflOut* out, int src, int delta, int xm) {
  const int v = 1000 + threadIdx.x;
  ShflOut o;
  o.idx = __shfl_sync(0xffffffffu, v, src);
  o.up = __shfl_up_sync(0xffffffffu, v, delta);
  o.down = __shfl_down_sync(0xffffffffu, v, delta);
  o.bfly = __shfl_xor_sync(0xffffffffu, v, xm);
  o.idx16 = __shfl_sync(0xffffffffu, v, src, 16);
  o.up16 = __shfl_up_sync(0xffffffffu, v, delta, 16);
  o.down16 = __shfl_down_sync(0xffffffffu, v, delta, 16);
  o.bfly16 = __shfl_xor_sync(0xffffffffu, v, xm, 16);
  out[threadIdx.x] = o;
}

__global__ void shfl_types_kernel(double* d, float* f, long long* l) {
  const double vd = threadIdx.x * 1.5;
  const float vf = threadIdx.x * 0.25f;
  const long long vl = (1ll << 40) + threadIdx.x;
  d[threadIdx.x] = __shfl_xor_sync(0xffffffffu, vd, 3);
  f[threadIdx.x] = __shfl_down_sync(0xffffffffu, vf, 2);
  l[threadIdx.x] = __shfl_sync(0xffffffffu, vl, 31);
}

__global__ void half_mask_kernel(int* out) {
  // Two disjoint groups in one warp, each with its own mask.
  const int lane = threadIdx.x;
  if (lane < 16) out[lane] = __shfl_xor_sync(0x0000ffffu, lane, 1);
  else out[lane] = __shfl_xor_sync(0xffff0000u, lane, 2);
}

__global__ void vote_kernel(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  out[threadIdx.x * 8 + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[threadIdx.x * 8 + 1] = __any_sync(0xffffffffu, lane == 17);
  out[threadIdx.x * 8 + 2] = __all_sync(0xffffffffu, lane < 31);
  out[threadIdx.x * 8 + 3] = __reduce_add_sync(0xffffffffu, lane + 1);
  out[threadIdx.x * 8 + 4] = __reduce_min_sync(0xffffffffu, 100u - lane);
  out[threadIdx.x * 8 + 5] = __reduce_max_sync(0xffffffffu, lane * 7 % 32);
  out[threadIdx.x * 8 + 6] = static_cast<unsigned>(__reduce_min_sync(0xffffffffu, static_cast<int>(lane) - 5));
  out[threadIdx.x * 8 + 7] = static_cast<unsigned>(__reduce_max_sync(0xffffffffu, -static_cast<int>(lane)));
}

__global__ void atomic_kernel(int* ci, float* cf, unsigned long long* cu) {
  atomicAdd(ci, 1);
  atomicAdd(cf, 0.5f);
  atomicAdd(cu, 3ull);
  atomicMax(ci + 1, static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x));
  atomicCAS(ci + 2, 0, 7);
}

__global__ void poison_kernel(uint32_t* out) {
  __shared__ uint32_t s[4];
  DSV2_DYNAMIC_SMEM(uint32_t, d, 16);
  if (threadIdx.x == 0) {
    out[0] = s[2];
    out[1] = d[5];
  }
  __syncthreads();
  s[threadIdx.x % 4] = 1;
  d[threadIdx.x] = 2;
}

// Static shared memory of a template kernel and of a template device function (g++ ignores a section
// attribute there: the emulator must poison it all the same), read before it is written.
template <int N>
__device__ uint32_t template_smem_read(int i) {
  __shared__ uint32_t t[N];
  const uint32_t v = t[i];
  __syncthreads();
  t[threadIdx.x % N] = 3;
  return v;
}
template <int N>
__global__ void template_poison_kernel(uint32_t* out) {
  __shared__ uint32_t s[N];
  const uint32_t a = s[N - 1];
  const uint32_t b = template_smem_read<N + 1>(N);
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = a;
    out[2 * blockIdx.x + 1] = b;
  }
  __syncthreads();
  s[threadIdx.x % N] = 1;
}

__global__ void big_smem_kernel(int* out) {
  DSV2_DYNAMIC_SMEM(int, d, 16);
  d[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = d[(threadIdx.x + 1) % blockDim.x];
}

__global__ void misaligned_kernel(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p + 1);  // 4 bytes past a 16-byte boundary
  out[0] = v.x;
}

__global__ void add_one_kernel(float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}

// ldmatrix: 4 matrices of 8 rows at scattered, 16-byte aligned row addresses; value of element
// (i, r, c) = 0x100 · i + 0x10 · r + c.
__global__ void ldmatrix_kernel(uint32_t* out, int num, bool trans) {
  DSV2_DYNAMIC_SMEM(uint16_t, sm, 16);
  const int lane = threadIdx.x;
  // Row (i, r) lives at 16-byte slot perm(8i + r) = (8i + r) · 5 % 32 + 1.
  for (int k = lane; k < 32; k += 32) {
    const int slot = (k * 5) % 32 + 1;
    for (int c = 0; c < 8; ++c) sm[slot * 8 + c] = static_cast<uint16_t>(0x100 * (k / 8) + 0x10 * (k % 8) + c);
  }
  __syncwarp();
  const uint32_t base = __cvta_generic_to_shared(sm);
  const uint32_t addr = base + 16u * static_cast<uint32_t>((lane * 5) % 32 + 1);
  uint32_t d[4] = {0, 0, 0, 0};
  ::dsv2emu::ptx::ldmatrix(num, trans, d, addr);
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = d[i];
}

__global__ void mma_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d, int f16) {
  const int lane = threadIdx.x;
  float acc[4];
  ::dsv2emu::ptx::mma_m16n8k16(acc, a + 4 * lane, b + 2 * lane, c + 4 * lane,
                               f16 ? ::dsv2emu::ptx::MmaType::kF16 : ::dsv2emu::ptx::MmaType::kBF16);
  for (int i = 0; i < 4; ++i) d[4 * lane + i] = acc[i];
}

// cp.async: two groups; after wait_group 1 the first has landed and the second has not.
__global__ void cp_async_kernel(const uint8_t* src, uint8_t* out, int src_size) {
  DSV2_DYNAMIC_SMEM(uint8_t, sm, 16);
  if (threadIdx.x != 0) return;
  const uint32_t s = __cvta_generic_to_shared(sm);
  namespace P = ::dsv2emu::ptx;
  P::cp_async(s, src, 16, src_size, P::CpCache::kCg);
  P::cp_async(s + 16, src + 16, 8, 8, P::CpCache::kCa);
  P::cp_async(s + 24, src + 24, 4, 2, P::CpCache::kCa);
  P::cp_async_commit_group();
  P::cp_async(s + 32, src + 32, 16, 16, P::CpCache::kCg);
  P::cp_async_commit_group();
  P::cp_async_wait_group(1);
  memcpy(out, sm, 48);  // the second group has not landed: bytes 32..47 still poison
  P::cp_async_wait_group(0);
  memcpy(out + 48, sm, 48);
}

__global__ void cp_async_misaligned_kernel(const uint8_t* src) {
  DSV2_DYNAMIC_SMEM(uint8_t, sm, 16);
  ::dsv2emu::ptx::cp_async(__cvta_generic_to_shared(sm) + 8, src, 16, 16, ::dsv2emu::ptx::CpCache::kCg);
}

// ---- tests ------------------------------------------------------------------------------------------

void test_ids() {
  int* d = dev<int>(2 * 3 * 2 * 4 * 3 * 2);
  DSV2_LAUNCH(ids_kernel, dim3(2, 3, 2), dim3(4, 3, 2), 0, nullptr)(d);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);
  auto h = host(d, 2 * 3 * 2 * 4 * 3 * 2);
  int bad = 0;
  for (int b = 0; b < 12; ++b)
    for (int z = 0; z < 2; ++z)
      for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x)
          if (h[b * 24 + x + 4 * (y + 3 * z)] != b * 100000 + z * 10000 + y * 100 + x) ++bad;
  CHECK_EQ(bad, 0);
  cudaFree(d);
}

void test_barrier_and_order() {
  float* d = dev<float>(128);
  // With the barrier: right for every seed-driven order.
  for (int rep = 0; rep < 5; ++rep) {
    DSV2_LAUNCH(neighbour_kernel, 1, 128, 0, nullptr)(d, true);
    auto h = host(d, 128);
    int bad = 0;
    for (int i = 0; i < 128; ++i) bad += h[i] != static_cast<float>((i + 32) % 128);
    CHECK_EQ(bad, 0);
  }
  // Without it: the random order leaves some reads of unwritten (NaN) slots in some launch.
  int wrong = 0;
  for (int rep = 0; rep < 5; ++rep) {
    DSV2_LAUNCH(neighbour_kernel, 1, 128, 0, nullptr)(d, false);
    auto h = host(d, 128);
    for (int i = 0; i < 128; ++i) wrong += !(h[i] == static_cast<float>((i + 32) % 128));
  }
  CHECK(wrong > 0);
  cudaFree(d);
}

bool fails_with(cudaError_t got, const char* needle) {
  const bool ok = got == cudaErrorLaunchFailure && strstr(cudaGetErrorString(got), needle) != nullptr;
  if (!ok) fprintf(stderr, "  (got %s: %s)\n", cudaGetErrorName(got), cudaGetErrorString(got));
  return ok;
}

void test_divergence_detected() {
  int* d = dev<int>(128);
  DSV2_LAUNCH(divergent_barrier_kernel, 2, 64, 0, nullptr)(d);
  CHECK(fails_with(cudaGetLastError(), "divergent_barrier_kernel"));
  DSV2_LAUNCH(exited_barrier_kernel, 1, 128, 0, nullptr)(d);
  const cudaError_t e = cudaGetLastError();
  CHECK(fails_with(e, "__syncthreads() not reached"));
  CHECK(strstr(cudaGetErrorString(e), "exited_barrier_kernel") != nullptr);
  DSV2_LAUNCH(divergent_shfl_kernel, 1, 64, 0, nullptr)(d);
  CHECK(fails_with(cudaGetLastError(), "__shfl_xor_sync"));
  DSV2_LAUNCH(mixed_ops_kernel, 1, 32, 0, nullptr)(d);
  CHECK(fails_with(cudaGetLastError(), "divergent warp"));
  // A mask naming lanes beyond the block.
  DSV2_LAUNCH(divergent_shfl_kernel, 1, 20, 0, nullptr)(d);
  CHECK(fails_with(cudaGetLastError(), "do not exist"));
  // The error was read: the next launch starts clean.
  DSV2_LAUNCH(ids_kernel, 1, 32, 0, nullptr)(d);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(d);
}

// The PTX ISA's shfl.sync source lane, written out per mode for width w (CUDA's c operand).
int shfl_expect(int lane, int mode, int b, int w) {
  const int seg0 = lane / w * w, seg1 = seg0 + w - 1;
  int j;
  switch (mode) {
    case 0: j = seg0 + (b % w); return j;                       // idx within the segment
    case 1: j = lane - b; return j >= seg0 ? j : lane;          // up: below the segment keeps own
    case 2: j = lane + b; return j <= seg1 ? j : lane;          // down: past the segment keeps own
    default: j = lane ^ b; return j <= seg1 ? j : lane;         // bfly
  }
}

void test_shfl() {
  ShflOut* d = dev<ShflOut>(32);
  int bad = 0;
  for (int src : {0, 5, 19, 31})
    for (int delta : {1, 3, 16})
      for (int xm : {1, 6, 16, 31}) {
        DSV2_LAUNCH(shfl_kernel, 1, 32, 0, nullptr)(d, src, delta, xm);
        auto h = host(d, 32);
        for (int l = 0; l < 32; ++l) {
          bad += h[l].idx != 1000 + shfl_expect(l, 0, src, 32);
          bad += h[l].up != 1000 + shfl_expect(l, 1, delta, 32);
          bad += h[l].down != 1000 + shfl_expect(l, 2, delta, 32);
          bad += h[l].bfly != 1000 + shfl_expect(l, 3, xm, 32);
          bad += h[l].idx16 != 1000 + shfl_expect(l, 0, src, 16);
          bad += h[l].up16 != 1000 + shfl_expect(l, 1, delta, 16);
          bad += h[l].down16 != 1000 + shfl_expect(l, 2, delta, 16);
          bad += h[l].bfly16 != 1000 + shfl_expect(l, 3, xm, 16);
        }
      }
  CHECK_EQ(bad, 0);
  // Concrete rows of the ISA's examples: lane 0 of shfl.up by 1 keeps its value; lane 31 of down.
  DSV2_LAUNCH(shfl_kernel, 1, 32, 0, nullptr)(d, 3, 1, 1);
  auto h = host(d, 32);
  CHECK_EQ(h[0].up, 1000);
  CHECK_EQ(h[1].up, 1000);
  CHECK_EQ(h[31].down, 1031);
  CHECK_EQ(h[30].down, 1031);
  CHECK_EQ(h[4].bfly, 1005);
  CHECK_EQ(h[20].idx16, 1019);
  CHECK_EQ(h[16].up16, 1016);
  CHECK_EQ(h[15].down16, 1015);
  cudaFree(d);

  double* dd = dev<double>(32);
  float* df = dev<float>(32);
  long long* dl = dev<long long>(32);
  DSV2_LAUNCH(shfl_types_kernel, 1, 32, 0, nullptr)(dd, df, dl);
  auto hd = host(dd, 32);
  auto hf = host(df, 32);
  auto hl = host(dl, 32);
  bad = 0;
  for (int l = 0; l < 32; ++l) {
    bad += hd[l] != (l ^ 3) * 1.5;
    bad += hf[l] != (l + 2 < 32 ? l + 2 : l) * 0.25f;
    bad += hl[l] != (1ll << 40) + 31;
  }
  CHECK_EQ(bad, 0);
  cudaFree(dd);
  cudaFree(df);
  cudaFree(dl);

  int* di = dev<int>(32);
  DSV2_LAUNCH(half_mask_kernel, 1, 32, 0, nullptr)(di);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);
  auto hi = host(di, 32);
  bad = 0;
  for (int l = 0; l < 32; ++l) bad += hi[l] != (l < 16 ? (l ^ 1) : (l ^ 2));
  CHECK_EQ(bad, 0);
  cudaFree(di);
}

void test_votes() {
  unsigned* d = dev<unsigned>(64 * 8);
  DSV2_LAUNCH(vote_kernel, 1, 64, 0, nullptr)(d);
  auto h = host(d, 64 * 8);
  unsigned ballot = 0, sum = 0, mx = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (l % 3 == 0) ballot |= 1u << l;
    sum += l + 1;
    mx = std::max(mx, l * 7 % 32);
  }
  int bad = 0;
  for (int t = 0; t < 64; ++t) {
    bad += h[t * 8 + 0] != ballot;
    bad += h[t * 8 + 1] != 1u;
    bad += h[t * 8 + 2] != 0u;
    bad += h[t * 8 + 3] != sum;
    bad += h[t * 8 + 4] != 100u - 31u;
    bad += h[t * 8 + 5] != mx;
    bad += static_cast<int>(h[t * 8 + 6]) != -5;
    bad += static_cast<int>(h[t * 8 + 7]) != 0;
  }
  CHECK_EQ(bad, 0);
  cudaFree(d);
}

void test_atomics() {
  int* ci = dev<int>(3);
  float* cf = dev<float>(1);
  unsigned long long* cu = dev<unsigned long long>(1);
  cudaMemset(ci, 0, 12);
  cudaMemset(cf, 0, 4);
  cudaMemset(cu, 0, 8);
  DSV2_LAUNCH(atomic_kernel, 7, 96, 0, nullptr)(ci, cf, cu);
  auto hi = host(ci, 3);
  CHECK_EQ(hi[0], 7 * 96);
  CHECK_EQ(hi[1], 7 * 96 - 1);
  CHECK_EQ(hi[2], 7);
  CHECK(host(cf, 1)[0] == 7 * 96 * 0.5f);
  CHECK_EQ(host(cu, 1)[0], 3ull * 7 * 96);
  cudaFree(ci);
  cudaFree(cf);
  cudaFree(cu);
}

void test_shared_poison_and_limits() {
  uint32_t* d = dev<uint32_t>(2);
  DSV2_LAUNCH(poison_kernel, 3, 64, 64 * 4, nullptr)(d);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);
  auto h = host(d, 2);  // written by block 2, after blocks 0 and 1 wrote their shared memory
  CHECK(std::isnan(u2f(h[0])));
  CHECK(std::isnan(u2f(h[1])));
  cudaFree(d);
  d = dev<uint32_t>(6);
  DSV2_LAUNCH(template_poison_kernel<8>, 3, 64, 0, nullptr)(d);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);
  h = host(d, 6);  // every block, the template kernel's and the template helper's static arrays read NaN
  for (int i = 0; i < 6; ++i) CHECK_EQ(h[i], 0xffffffffu);
  cudaFree(d);

  int* o = dev<int>(1024);
  // 64 KiB of dynamic shared memory: over the 48 KiB default until the attribute raises it.
  DSV2_LAUNCH(big_smem_kernel, 1, 1024, 64 * 1024, nullptr)(o);
  CHECK_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);  // read once, then cleared
  CHECK_EQ(cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024), cudaSuccess);
  DSV2_LAUNCH(big_smem_kernel, 1, 1024, 64 * 1024, nullptr)(o);
  CHECK_EQ(cudaGetLastError(), cudaSuccess);
  CHECK_EQ(host(o, 1024)[1023], 0);
  CHECK_EQ(cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024 + 1),
           cudaErrorInvalidValue);
  cudaGetLastError();
  // Launch shape limits.
  DSV2_LAUNCH(ids_kernel, 1, 1025, 0, nullptr)(o);
  CHECK_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  DSV2_LAUNCH(ids_kernel, 1, dim3(32, 32, 2), 0, nullptr)(o);
  CHECK_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  DSV2_LAUNCH(ids_kernel, dim3(1, 65536), 32, 0, nullptr)(o);
  CHECK_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  DSV2_LAUNCH(ids_kernel, 0, 32, 0, nullptr)(o);
  CHECK_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  cudaFree(o);

  float* f = dev<float>(8);
  DSV2_LAUNCH(misaligned_kernel, 1, 1, 0, nullptr)(f, f);
  CHECK(fails_with(cudaGetLastError(), "misaligned"));
  cudaFree(f);

  int n = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ids_kernel, 256, 0);
  CHECK_EQ(n, 8);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ids_kernel, 128, 100 * 1024);
  CHECK_EQ(n, 2);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ids_kernel, 32, 0);
  CHECK_EQ(n, 32);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  CHECK_EQ(prop.multiProcessorCount, 132);
  CHECK_EQ(prop.major * 10 + prop.minor, 90);
  CHECK(strstr(prop.name, "emulated") != nullptr);
  int v = 0;
  cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  CHECK_EQ(v, 232448);
}

void test_streams_events_graphs() {
  cudaStream_t s;
  CHECK_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  float* x = dev<float>(100);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, s);
  CHECK_EQ(cudaMemsetAsync(x, 0, 400, s), cudaSuccess);
  CHECK_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  DSV2_LAUNCH(add_one_kernel, 4, 32, 0, s)(x, 100);
  DSV2_LAUNCH(add_one_kernel, 4, 32, 0, s)(x, 100);
  float* scratch = nullptr;
  CHECK_EQ(cudaMallocAsync(&scratch, 400, s), cudaSuccess);
  cudaMemcpyAsync(scratch, x, 400, cudaMemcpyDeviceToDevice, s);
  cudaFreeAsync(scratch, s);
  cudaGraph_t g;
  CHECK_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  CHECK(host(x, 100)[50] == 0.0f);  // captured, not run
  cudaGraphExec_t e;
  CHECK_EQ(cudaGraphInstantiate(&e, g, 0), cudaSuccess);
  cudaGraphDestroy(g);
  CHECK_EQ(cudaGraphLaunch(e, s), cudaSuccess);
  CHECK_EQ(cudaGraphLaunch(e, s), cudaSuccess);
  cudaEventRecord(b, s);
  cudaStreamSynchronize(s);
  CHECK(host(x, 100)[99] == 4.0f);
  float ms = -1;
  CHECK_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  CHECK(ms >= 0);
  cudaGraphExecDestroy(e);
  // A synchronising call invalidates the capture.
  CHECK_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  DSV2_LAUNCH(add_one_kernel, 4, 32, 0, s)(x, 100);
  CHECK_EQ(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
  CHECK_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  CHECK(g == nullptr);
  cudaGetLastError();
  CHECK(host(x, 100)[0] == 4.0f);
  // A kernel fault inside a graph fails the graph launch.
  int* d = dev<int>(64);
  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  DSV2_LAUNCH(divergent_barrier_kernel, 1, 64, 0, s)(d);
  CHECK_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  cudaGraphInstantiate(&e, g, 0);
  CHECK_EQ(cudaGraphLaunch(e, s), cudaErrorLaunchFailure);
  cudaGetLastError();
  cudaGraphExecDestroy(e);
  cudaGraphDestroy(g);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(s);
  cudaFree(x);
  cudaFree(d);
}

// ldmatrix, from the ISA: "each thread receives... row = laneid / 4, elements 2·(laneid % 4) and
// +1" per matrix; .trans the same of the transposed matrix. Written out as the figure's table for
// a few lanes, then for all lanes.
void test_ldmatrix() {
  uint32_t* d = dev<uint32_t>(128);
  const size_t smem = 33 * 16;
  for (int num : {1, 2, 4})
    for (bool trans : {false, true}) {
      DSV2_LAUNCH(ldmatrix_kernel, 1, 32, smem, nullptr)(d, num, trans);
      CHECK_EQ(cudaGetLastError(), cudaSuccess);
      auto h = host(d, 128);
      auto elem = [](int i, int r, int c) { return static_cast<uint32_t>(0x100 * i + 0x10 * r + c); };
      int bad = 0;
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < num; ++i) {
          const uint32_t lo = h[lane * 4 + i] & 0xffff, hi = h[lane * 4 + i] >> 16;
          const int r = lane / 4, c = 2 * (lane % 4);
          if (!trans) bad += lo != elem(i, r, c) || hi != elem(i, r, c + 1);
          else bad += lo != elem(i, c, r) || hi != elem(i, c + 1, r);
        }
      CHECK_EQ(bad, 0);
      // The figure's corners: lane 0 holds (0,0),(0,1); lane 1 (0,2),(0,3); lane 4 (1,0),(1,1);
      // lane 31 (7,6),(7,7). Transposed: lane 1 holds stored (2,0),(3,0); lane 31 (6,7),(7,7).
      if (!trans) {
        CHECK_EQ(h[0 * 4], 0x00010000u);
        CHECK_EQ(h[1 * 4], 0x00030002u);
        CHECK_EQ(h[4 * 4], 0x00110010u);
        CHECK_EQ(h[31 * 4], 0x00770076u);
      } else {
        CHECK_EQ(h[1 * 4], 0x00300020u);
        CHECK_EQ(h[31 * 4], 0x00770067u);
      }
      if (num == 4) CHECK_EQ(h[9 * 4 + 3], !trans ? 0x03230322u : 0x03320322u);
    }
  cudaFree(d);
}

uint16_t bf16_bits(float f) { return static_cast<uint16_t>(f2u(f) >> 16); }  // exact for the values used
uint16_t f16_bits(float f) {  // exact for small integers and halves
  if (f == 0) return 0;
  const int sign = f < 0;
  float a = std::fabs(f);
  int e = 0;
  while (a >= 2) a /= 2, ++e;
  while (a < 1) a *= 2, --e;
  return static_cast<uint16_t>((sign << 15) | ((e + 15) << 10) | static_cast<int>((a - 1) * 1024));
}

// mma.m16n8k16: the fragment tables of the ISA ("Matrix Fragments for mma.m16n8k16"), written as
// explicit (register, half) → (row, col) lists for each lane.
void test_mma() {
  uint32_t* da = dev<uint32_t>(128);
  uint32_t* db = dev<uint32_t>(64);
  float* dc = dev<float>(128);
  float* dd = dev<float>(128);
  for (int f16 : {0, 1}) {
    auto bits = [&](float v) { return f16 ? f16_bits(v) : bf16_bits(v); };
    float A[16][16], B[16][8], C[16][8];
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 16; ++k) A[r][k] = static_cast<float>((r * 3 + k * 5) % 11 - 5) * 0.5f;
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; ++n) B[k][n] = static_cast<float>((k * 7 + n * 2) % 9 - 4);
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) C[r][n] = static_cast<float>(r * 8 + n) * 0.125f;
    std::vector<uint32_t> ha(128), hb(64);
    std::vector<float> hc(128);
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      // A: {a0,a1} (g, 2t..2t+1), {a2,a3} (g+8, 2t..), {a4,a5} (g, 2t+8..), {a6,a7} (g+8, 2t+8..)
      const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int q = 0; q < 4; ++q) ha[lane * 4 + q] = bits(A[ar[q]][ac[q]]) | (bits(A[ar[q]][ac[q] + 1]) << 16);
      // B: {b0,b1} (k = 2t..2t+1, n = g), {b2,b3} (k = 2t+8..2t+9, n = g)
      hb[lane * 2 + 0] = bits(B[2 * t][g]) | (bits(B[2 * t + 1][g]) << 16);
      hb[lane * 2 + 1] = bits(B[2 * t + 8][g]) | (bits(B[2 * t + 9][g]) << 16);
      // C: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
      hc[lane * 4 + 0] = C[g][2 * t], hc[lane * 4 + 1] = C[g][2 * t + 1];
      hc[lane * 4 + 2] = C[g + 8][2 * t], hc[lane * 4 + 3] = C[g + 8][2 * t + 1];
    }
    cudaMemcpy(da, ha.data(), 512, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb.data(), 256, cudaMemcpyHostToDevice);
    cudaMemcpy(dc, hc.data(), 512, cudaMemcpyHostToDevice);
    DSV2_LAUNCH(mma_kernel, 1, 32, 0, nullptr)(da, db, dc, dd, f16);
    CHECK_EQ(cudaGetLastError(), cudaSuccess);
    auto hd = host(dd, 128);
    int bad = 0;
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      const int dr[4] = {g, g, g + 8, g + 8}, dn[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
      for (int q = 0; q < 4; ++q) {
        double s = C[dr[q]][dn[q]];
        for (int k = 0; k < 16; ++k) s += static_cast<double>(A[dr[q]][k]) * B[k][dn[q]];
        bad += hd[lane * 4 + q] != static_cast<float>(s);
      }
    }
    CHECK_EQ(bad, 0);
  }
  // One-hot: A = e_(r,k), B = e_(k,n), C = 0 → D = e_(r,n), which must land in lane
  // 4·(r % 8) + n / 2, register 2·(r / 8) + n % 2 (the C table), and nowhere else.
  int bad = 0;
  std::vector<float> zero(128, 0.0f);
  cudaMemcpy(dc, zero.data(), 512, cudaMemcpyHostToDevice);
  for (int r = 0; r < 16; r += 3)
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; n += 3) {
        std::vector<uint32_t> ha(128, 0), hb(64, 0);
        // A element (r, k): lane 4·(r % 8) + (k % 8) / 2, register (r / 8) + 2·(k / 8), half k % 2.
        ha[(4 * (r % 8) + (k % 8) / 2) * 4 + (r / 8) + 2 * (k / 8)] |= 0x3f80u << (16 * (k % 2));
        // B element (k, n): lane 4·n + (k % 8) / 2, register k / 8, half k % 2.
        hb[(4 * n + (k % 8) / 2) * 2 + k / 8] |= 0x3f80u << (16 * (k % 2));
        cudaMemcpy(da, ha.data(), 512, cudaMemcpyHostToDevice);
        cudaMemcpy(db, hb.data(), 256, cudaMemcpyHostToDevice);
        DSV2_LAUNCH(mma_kernel, 1, 32, 0, nullptr)(da, db, dc, dd, 0);
        auto hd = host(dd, 128);
        for (int lane = 0; lane < 32; ++lane)
          for (int q = 0; q < 4; ++q) {
            const bool here = lane == 4 * (r % 8) + n / 2 && q == 2 * (r / 8) + n % 2;
            bad += hd[lane * 4 + q] != (here ? 1.0f : 0.0f);
          }
      }
  CHECK_EQ(bad, 0);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  cudaFree(dd);
}

void test_cp_async() {
  uint8_t* src = dev<uint8_t>(64);
  uint8_t* out = dev<uint8_t>(96);
  std::vector<uint8_t> h(64);
  for (int i = 0; i < 64; ++i) h[i] = static_cast<uint8_t>(i + 1);
  cudaMemcpy(src, h.data(), 64, cudaMemcpyHostToDevice);
  for (int src_size : {16, 5, 0}) {
    DSV2_LAUNCH(cp_async_kernel, 1, 32, 64, nullptr)(src, out, src_size);
    CHECK_EQ(cudaGetLastError(), cudaSuccess);
    auto o = host(out, 96);
    int bad = 0;
    for (int i = 0; i < 16; ++i) bad += o[i] != (i < src_size ? i + 1 : 0);  // zero fill past src-size
    for (int i = 16; i < 24; ++i) bad += o[i] != i + 1;
    for (int i = 24; i < 28; ++i) bad += o[i] != (i < 26 ? i + 1 : 0);
    for (int i = 32; i < 48; ++i) bad += o[i] != 0xff;  // group 2 pending after wait_group 1
    for (int i = 0; i < 32; ++i) bad += o[48 + i] != o[i];
    for (int i = 32; i < 48; ++i) bad += o[48 + i] != i + 1;
    CHECK_EQ(bad, 0);
  }
  DSV2_LAUNCH(cp_async_misaligned_kernel, 1, 1, 64, nullptr)(src);
  CHECK(fails_with(cudaGetLastError(), "not 16-byte aligned"));
  DSV2_LAUNCH(cp_async_misaligned_kernel, 1, 1, 16, nullptr)(src);  // and out of the 16 bytes
  CHECK(fails_with(cudaGetLastError(), "aligned"));
  cudaFree(src);
  cudaFree(out);
}

void test_conversions() {
  namespace P = ::dsv2emu::ptx;
  // cvt.rn.bf16x2.f32 d, a, b: a to the upper half.
  CHECK_EQ(P::cvt_rn_bf16x2_f32(1.0f, 2.0f), 0x3f804000u);
  // Ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 → 1; 1 + 3·2^-8 → 1 + 2^-6.
  CHECK_EQ(P::cvt_rn_bf16x2_f32(0.0f, 1.00390625f) & 0xffff, 0x3f80u);
  CHECK_EQ(P::cvt_rn_bf16x2_f32(0.0f, 1.01171875f) & 0xffff, 0x3f82u);
  CHECK_EQ(P::cvt_rn_bf16x2_f32(0.0f, NAN) & 0xffff, 0x7fffu);
  CHECK_EQ(P::cvt_rn_bf16x2_f32(0.0f, u2f(0x7f7fffffu)) & 0xffff, 0x7f80u);  // FLT_MAX rounds to inf
  CHECK_EQ(P::cvt_rn_bf16x2_f32(-0.0f, 0.0f) >> 16, 0x8000u);
  // cvt.rn.f16x2.e4m3x2 over all 256 codes: e4m3 (OCP FP8 E4M3FN) is 1 sign, 4 exponent bits of
  // bias 7, 3 mantissa bits, subnormals m · 2^-9, S.1111.111 NaN, no infinities.
  int bad = 0;
  for (int c = 0; c < 256; ++c) {
    const uint32_t d = P::cvt_rn_f16x2_e4m3x2(static_cast<uint16_t>(c | (0x38 << 8)));  // high byte: 1.0
    const uint16_t lo = d & 0xffff, hi = d >> 16;
    bad += hi != 0x3c00;
    const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7) {
      bad += (lo & 0x7c00) != 0x7c00 || (lo & 0x3ff) == 0;
      continue;
    }
    const double v = (s ? -1 : 1) * (e ? (1 + m / 8.0) * std::pow(2.0, e - 7) : m / 8.0 * std::pow(2.0, -6));
    // decode the f16 independently
    const int fs = lo >> 15, fe = (lo >> 10) & 31, fm = lo & 1023;
    const double fv = (fs ? -1 : 1) * (fe ? (1 + fm / 1024.0) * std::pow(2.0, fe - 15) : fm / 1024.0 * std::pow(2.0, -14));
    bad += fv != v || (v == 0 && fs != s);
  }
  CHECK_EQ(bad, 0);
  // mul.rn.f32 keeps subnormals.
  CHECK(P::mul_rn_f32(u2f(0x00000010u), 2.0f) == u2f(0x00000020u));
  CHECK(P::mul_rn_f32(u2f(0x00800000u), 0.5f) == u2f(0x00400000u));
  // __byte_perm (prmt): selector 0x4140 → bytes x0, y0, x1, y0 ... from the ISA's byte numbering.
  CHECK_EQ(__byte_perm(0x44332211u, 0x88776655u, 0x3210u), 0x44332211u);
  CHECK_EQ(__byte_perm(0x44332211u, 0x88776655u, 0x7654u), 0x88776655u);
  CHECK_EQ(__byte_perm(0x44332211u, 0u, 0x4140u), 0x00220011u);
  CHECK_EQ(__byte_perm(0x000080ffu, 0u, 0x4449u), 0x000000ffu);  // sign replicate of byte 1 (0x80)
}

}  // namespace

int main() {
  struct T {
    const char* name;
    void (*fn)();
  } tests[] = {
      {"ids", test_ids},
      {"barrier and fiber order", test_barrier_and_order},
      {"divergence detection", test_divergence_detected},
      {"shfl", test_shfl},
      {"votes and reductions", test_votes},
      {"atomics", test_atomics},
      {"shared poison and limits", test_shared_poison_and_limits},
      {"streams events graphs", test_streams_events_graphs},
      {"ldmatrix", test_ldmatrix},
      {"mma m16n8k16", test_mma},
      {"cp.async", test_cp_async},
      {"conversions", test_conversions},
  };
  setenv("DSV2_EMU_QUIET", "1", 1);
  int failed_tests = 0;
  for (const T& t : tests) {
    const int before = g_failed;
    t.fn();
    const bool ok = g_failed == before;
    failed_tests += !ok;
    printf("%s %s\n", ok ? "ok  " : "FAIL", t.name);
  }
  printf("emulator unit tests: %d checks, %d failed, %d of %zu tests failed\n", g_checks, g_failed, failed_tests,
         sizeof tests / sizeof tests[0]);
  return g_failed ? 1 : 0;
}
