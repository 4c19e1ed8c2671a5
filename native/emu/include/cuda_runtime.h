// dsv2 CUDA emulator: the CUDA runtime header as the kernels of native/src/cuda see it when they
// are compiled as plain C++ (the DSV2_CUDA_EMULATOR build; never shipped). It maps the CUDA
// keywords and built-ins onto the emulated device of native/emu: a block's threads are fibers
// (emu.h), warp-wide operations are rendezvous of the lanes, the runtime API runs on host memory.
// Only what native/ uses is here; anything else fails to compile, on purpose.
#pragma once
#define DSV2_CUDA_EMU 1

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- keywords ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: thread-local statics (one copy per host thread; a block runs on one host
// thread, blocks one at a time), in .tbss between the markers of native/emu/smem_begin.cc and
// smem_end.cc, which the emulator fills with NaN before every block. Thread-local rather than a
// named section: g++ (12) drops the section attribute of a static local in a template, which
// left template kernels' static shared memory unpoisoned; the storage class is kept. A
// __shared__ variable cannot have an initializer or a constructor (as in CUDA): __thread requires
// a constant (zero) initializer. Dynamic shared memory: DSV2_DYNAMIC_SMEM.
#define __shared__ static __thread

// ---- vector types -----------------------------------------------------------------------------
// Aligned as CUDA aligns them, so that -fsanitize=alignment reports a misaligned vector access.
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
constexpr int warpSize = 32;

// ---- runtime types ----------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidPitchValue = 12,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureWrongThread = 908,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1,
                             cudaStreamCaptureModeRelaxed = 2 };
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1,
                               cudaStreamCaptureStatusInvalidated = 2 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
                         cudaFuncAttributePreferredSharedMemoryCarveout = 9 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMemoryPoolsSupported = 115,
};
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct CUgraph_st* cudaGraph_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;
typedef struct CUmemPoolHandle_st* cudaMemPool_t;

// The fields of cudaDeviceProp that native/ reads (the real struct has many more).
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major, minor;
  int multiProcessorCount;
  int maxThreadsPerMultiProcessor;
  int maxBlocksPerMultiProcessor;
};

// ---- runtime API (native/emu/runtime.cc) ------------------------------------------------------
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T> cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t s);
template <class T> cudaError_t cudaMallocAsync(T** p, size_t bytes, cudaStream_t s) {
  return cudaMallocAsync(reinterpret_cast<void**>(p), bytes, s);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr a, void* v);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr a, void* v);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind k, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaFuncSetAttribute(const void* f, cudaFuncAttribute a, int v);
template <class T> cudaError_t cudaFuncSetAttribute(T* f, cudaFuncAttribute a, int v) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(f), a, v);
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* f, int threads, size_t smem);
template <class T> cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, T* f, int threads, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, reinterpret_cast<const void*>(f), threads, smem);
}

// ---- the emulated device, as kernels see it (native/emu/fiber.cc) ----------------------------
namespace dsv2emu {

// The built-in variables of the running fiber (thread) of the running block.
struct ThreadVars {
  uint3 tid, bid;
  dim3 bdim, gdim;
};
extern __attribute__((visibility("hidden"))) ThreadVars* t_vars;  // one block runs at a time (fiber.cc)

void syncthreads();
void syncwarp(unsigned mask);
// Warp rendezvous: every lane of `mask` (which must hold the caller's lane) calls it with the same
// `op`; when the last one arrives, fn(mask, args) runs once with each lane's `arg` in args[lane].
void warp_collective(unsigned mask, const char* op, void* arg, void (*fn)(unsigned mask, void** args));
uint64_t shfl(unsigned mask, uint64_t v, int b, int c, int mode);  // mode: 0 idx, 1 up, 2 down, 3 bfly
unsigned ballot(unsigned mask, bool pred);
unsigned reduce_u32(unsigned mask, unsigned v, int op);  // op: 0 add, 1 min, 2 max (unsigned)
int reduce_i32(unsigned mask, int v, int op);            // op: 0 add, 1 min, 2 max (signed)
unsigned activemask();
// Shared memory: DSV2_DYNAMIC_SMEM's buffer, and the 32-bit .shared address space
// (cvta.to.shared and back): static shared at [kStaticBase, …), dynamic at [kDynBase, …).
void* dynamic_smem(size_t align);
uint32_t cvta_to_shared(const void* p);
void* shared_ptr(uint32_t addr, size_t bytes, size_t align, const char* op);
// Reports an emulator-detected fault of the running kernel (never returns).
[[noreturn]] void fault(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// A kernel launch (runtime.cc): checks the configuration as the real runtime does, then runs
// `body` once per thread of every block, or records it when `s` is capturing.
cudaError_t launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                   std::function<void()> body);

template <class... P>
struct Launch {
  void (*k)(P...);
  const char* name;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Launch(void (*k_)(P...), const char* name_, dim3 g, dim3 b, size_t sm, cudaStream_t s)
      : k(k_), name(name_), grid(g), block(b), smem(sm), stream(s) {}
  template <class... A>
  void operator()(A&&... a) const {
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    auto k_ = k;
    launch(reinterpret_cast<const void*>(k), name, grid, block, smem, stream,
           [k_, args]() { std::apply(k_, args); });
  }
};

}  // namespace dsv2emu

#define threadIdx (::dsv2emu::t_vars->tid)
#define blockIdx (::dsv2emu::t_vars->bid)
#define blockDim (::dsv2emu::t_vars->bdim)
#define gridDim (::dsv2emu::t_vars->gdim)

// ---- device built-ins -------------------------------------------------------------------------
inline void __syncthreads() { ::dsv2emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::dsv2emu::syncwarp(mask); }
inline unsigned __activemask() { return ::dsv2emu::activemask(); }

namespace dsv2emu {
template <class T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 64 bits");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof(T));
  return v;
}
}  // namespace dsv2emu
// c operands as CUDA's own __shfl_*_sync pass them to shfl.sync (segment mask in bits 8..12).
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::dsv2emu::from_bits<T>(::dsv2emu::shfl(mask, ::dsv2emu::to_bits(v), src, ((32 - width) << 8) | 0x1f, 0));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::dsv2emu::from_bits<T>(::dsv2emu::shfl(mask, ::dsv2emu::to_bits(v), static_cast<int>(delta), (32 - width) << 8, 1));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::dsv2emu::from_bits<T>(::dsv2emu::shfl(mask, ::dsv2emu::to_bits(v), static_cast<int>(delta), ((32 - width) << 8) | 0x1f, 2));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::dsv2emu::from_bits<T>(::dsv2emu::shfl(mask, ::dsv2emu::to_bits(v), lane_mask, ((32 - width) << 8) | 0x1f, 3));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::dsv2emu::ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return ::dsv2emu::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) { return ::dsv2emu::ballot(mask, pred != 0) == mask; }
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return ::dsv2emu::reduce_u32(mask, v, 0); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return ::dsv2emu::reduce_u32(mask, v, 1); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return ::dsv2emu::reduce_u32(mask, v, 2); }
inline int __reduce_add_sync(unsigned mask, int v) { return ::dsv2emu::reduce_i32(mask, v, 0); }
inline int __reduce_min_sync(unsigned mask, int v) { return ::dsv2emu::reduce_i32(mask, v, 1); }
inline int __reduce_max_sync(unsigned mask, int v) { return ::dsv2emu::reduce_i32(mask, v, 2); }

// Atomics: blocks run one at a time and fibers switch only at synchronisation points, so a
// plain read-modify-write is atomic; the __atomic built-ins keep them so for any host thread.
template <class T>
inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  } else {
    T old, nv;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
      nv = old + v;
    } while (!__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
  }
}
template <class T> inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
template <class T> inline T atomicCAS(T* p, T cmp, T v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
template <class T> inline T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <class T> inline T atomicMin(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

template <class T> inline T __ldg(const T* p) { return *p; }

inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline long long __double_as_longlong(double d) { long long u; memcpy(&u, &d, 8); return u; }
inline double __longlong_as_double(long long u) { double d; memcpy(&d, &u, 8); return d; }
// The _rn arithmetic: IEEE single operations, never contracted into an FMA.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline unsigned long long __double2ull_rn(double d) { return static_cast<unsigned long long>(std::nearbyint(d)); }
inline long long __double2ll_rn(double d) { return static_cast<long long>(std::nearbyint(d)); }
inline int __float2int_rn(float f) { return static_cast<int>(std::nearbyintf(f)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// prmt.b32 (default mode): byte i of the result is byte s[i] of the 8-byte value {y, x}
// (x bytes 0..3, y bytes 4..7), s[i] = bits 4i..4i+2 of s; bit 4i+3 replicates its sign bit.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) {
    const unsigned sel = (s >> (4 * i)) & 0xfu;
    unsigned b = static_cast<unsigned>(v >> (8 * (sel & 7u))) & 0xffu;
    if (sel & 8u) b = (b & 0x80u) ? 0xffu : 0u;
    r |= b << (8 * i);
  }
  return r;
}
inline size_t __cvta_generic_to_shared(const void* p) { return ::dsv2emu::cvta_to_shared(p); }

// CUDA's global min / max overloads for the arithmetic types (mixed types: the common type).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
// CUDA's global classification functions (C++ has them in std).
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;
