// dsv2 CUDA emulator: the CUDA runtime API subset that native/ calls, on an emulated H100.
//
// Device memory is host memory (so AddressSanitizer sees out-of-bounds device accesses); every
// operation runs when it is enqueued, in order (so a stream is trivially in order and an event
// records the host time of that moment); a capturing stream records operations into a graph
// instead, which cudaGraphLaunch replays. Launch configurations are checked as the real runtime
// checks them, and errors follow cudaGetLastError's rules (the last error of the host thread,
// cleared by reading it). A fault found while a kernel runs (emu.h) fails that launch with
// cudaErrorLaunchFailure, whose cudaGetErrorString is the fault's description.
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "emu.h"

namespace dsv2emu {
namespace {

// H100 SXM (compute capability 9.0).
constexpr int kSMs = 132;
constexpr size_t kSmemDefault = 48 * 1024;       // per block without opt-in
constexpr size_t kSmemOptin = 227 * 1024;        // per block with opt-in (232448 bytes)
constexpr size_t kSmemPerSM = 228 * 1024;
constexpr size_t kSmemReservedPerBlock = 1024;   // the runtime's reservation per block
constexpr size_t kTotalMem = 80ull << 30;
constexpr int kMaxThreadsPerSM = 2048, kMaxBlocksPerSM = 32;

thread_local cudaError_t t_last = cudaSuccess;
thread_local std::string t_fault;  // description of the last launch failure on this thread

std::recursive_mutex& api_mutex() {
  static std::recursive_mutex m;
  return m;
}
std::mutex& device_mutex() {  // one kernel at a time
  static std::mutex m;
  return m;
}

cudaError_t fail(cudaError_t e) {
  t_last = e;
  return e;
}

struct Stream;
struct Graph {
  std::vector<std::function<cudaError_t()>> nodes;
  std::vector<std::shared_ptr<void>> owned;  // memory allocated by cudaMallocAsync during capture
};
struct Stream {
  unsigned flags = 0;
  bool capturing = false, invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  Graph* graph = nullptr;
};
struct Event {
  double ms = 0;
  bool recorded = false;
};

struct State {
  std::map<void*, size_t> allocs;
  size_t allocated = 0;
  std::set<Stream*> streams;
  std::set<Event*> events;
  std::set<Graph*> graphs, execs;
  std::map<const void*, int> max_dyn_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  uint64_t launches = 0;
  size_t release_threshold = 0;
};
State& st() {
  static State s;
  return s;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

Stream* stream_of(cudaStream_t s) { return reinterpret_cast<Stream*>(s); }
bool valid_stream(cudaStream_t s) { return !s || st().streams.count(stream_of(s)); }

// Runs op now, or records it into the capture of stream s.
cudaError_t enqueue(cudaStream_t s, std::function<cudaError_t()> op) {
  Stream* x = stream_of(s);
  if (x && x->capturing) {
    if (!x->invalidated) x->graph->nodes.push_back(std::move(op));
    return cudaSuccess;
  }
  const cudaError_t e = op();
  return e == cudaSuccess ? e : fail(e);
}

// A synchronising call on a capturing stream is not allowed, and invalidates the capture.
bool reject_if_capturing(cudaStream_t s) {
  Stream* x = stream_of(s);
  if (x && x->capturing) {
    x->invalidated = true;
    fail(cudaErrorStreamCaptureUnsupported);
    return true;
  }
  return false;
}

bool any_global_capture() {
  for (Stream* s : st().streams)
    if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed) return true;
  return false;
}

void* dev_alloc(size_t bytes) {
  char* p = static_cast<char*>(::operator new(bytes ? bytes : 1, std::align_val_t(256), std::nothrow));
  if (!p) return nullptr;
  memset(p, 0xff, bytes);  // uninitialised device memory reads as NaN
  return p;
}
void dev_free(void* p) { ::operator delete(p, std::align_val_t(256)); }

cudaError_t run_kernel(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem,
                       const std::function<void()>& body, uint64_t seed) {
  GridRun g;
  g.kernel = name;
  g.grid = grid;
  g.block = block;
  g.dyn_smem = smem;
  g.body = &body;
  g.seed = seed;
  std::string err;
  {
    std::lock_guard<std::mutex> lock(device_mutex());
    err = run_grid(g);
  }
  if (err.empty()) return cudaSuccess;
  t_fault = "dsv2 emulator: " + err;
  if (getenv("DSV2_EMU_QUIET") == nullptr) fprintf(stderr, "%s\n", t_fault.c_str());
  return cudaErrorLaunchFailure;
}

}  // namespace

cudaError_t launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                   std::function<void()> body) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  // The real runtime's configuration checks (cudaErrorInvalidConfiguration for the shape, and
  // too much dynamic shared memory for the function's limit).
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 || threads > 1024 ||
      block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return fail(cudaErrorInvalidConfiguration);
  auto it = st().max_dyn_smem.find(kernel);
  const size_t limit = it == st().max_dyn_smem.end() ? kSmemDefault : static_cast<size_t>(it->second);
  if (smem > limit) return fail(cudaErrorInvalidValue);
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  const uint64_t seed = base_seed() * 0x2545f4914f6cdd1dull + (++st().launches);
  auto shared_body = std::make_shared<std::function<void()>>(std::move(body));
  std::string kname = name;
  return enqueue(s, [kernel, kname, grid, block, smem, shared_body, seed]() {
    return run_kernel(kernel, kname.c_str(), grid, block, smem, *shared_body, seed);
  });
}

}  // namespace dsv2emu

using namespace dsv2emu;

// ---- errors -------------------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_last; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidPitchValue: return "cudaErrorInvalidPitchValue";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return t_fault.empty() ? "unspecified launch failure" : t_fault.c_str();
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return cudaGetErrorName(e);
  }
}

// ---- device ---------------------------------------------------------------------------------------
cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice);
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "dsv2 emulated CUDA device (H100 properties; no GPU)");
  p->totalGlobalMem = kTotalMem;
  p->sharedMemPerBlock = kSmemDefault;
  p->sharedMemPerBlockOptin = kSmemOptin;
  p->sharedMemPerMultiprocessor = kSmemPerSM;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
  p->major = 9, p->minor = 0;
  p->multiProcessorCount = kSMs;
  p->maxThreadsPerMultiProcessor = kMaxThreadsPerSM;
  p->maxBlocksPerMultiProcessor = kMaxBlocksPerSM;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxBlockDimX: *v = 1024; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = static_cast<int>(kSmemDefault); break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = kSMs; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = static_cast<int>(kSmemPerSM); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(kSmemOptin); break;
    case cudaDevAttrMemoryPoolsSupported: *v = 1; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* f, cudaFuncAttribute a, int v) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (!f) return fail(cudaErrorInvalidDeviceFunction);
  if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (v < 0 || static_cast<size_t>(v) > kSmemOptin) return fail(cudaErrorInvalidValue);
    st().max_dyn_smem[f] = v;
    return cudaSuccess;
  }
  if (a == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  return fail(cudaErrorInvalidValue);
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* f, int threads, size_t smem) {
  if (!f || threads <= 0 || threads > 1024) return fail(cudaErrorInvalidValue);
  const int warps = (threads + 31) / 32;
  int by_threads = kMaxThreadsPerSM / (warps * 32);
  int by_smem = static_cast<int>(kSmemPerSM / (smem + kSmemReservedPerBlock));
  *n = std::max(0, std::min({by_threads, by_smem, kMaxBlocksPerSM}));
  return cudaSuccess;
}

// ---- memory ---------------------------------------------------------------------------------------
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  *total_b = kTotalMem;
  *free_b = kTotalMem - std::min(kTotalMem, st().allocated);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  *p = nullptr;
  if (any_global_capture()) return fail(cudaErrorStreamCaptureUnsupported);
  if (bytes > kTotalMem - std::min(kTotalMem, st().allocated)) return fail(cudaErrorMemoryAllocation);
  void* m = dev_alloc(bytes);
  if (!m) return fail(cudaErrorMemoryAllocation);
  st().allocs[m] = bytes;
  st().allocated += bytes;
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (!p) return cudaSuccess;
  auto it = st().allocs.find(p);
  if (it == st().allocs.end()) return fail(cudaErrorInvalidValue);
  st().allocated -= it->second;
  st().allocs.erase(it);
  dev_free(p);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  Stream* x = stream_of(s);
  if (x && x->capturing) {  // a graph allocation: lives as long as the graph (and its executables)
    void* m = dev_alloc(bytes);
    if (!m) return fail(cudaErrorMemoryAllocation);
    x->graph->owned.emplace_back(m, dev_free);
    *p = m;
    return cudaSuccess;
  }
  return cudaMalloc(p, bytes);
}

cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Stream* x = stream_of(s);
  if (x && x->capturing) return cudaSuccess;  // freed with the graph
  return cudaFree(p);
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice);
  *pool = reinterpret_cast<cudaMemPool_t>(&st());
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr a, void* v) {
  if (a != cudaMemPoolAttrReleaseThreshold) return fail(cudaErrorInvalidValue);
  *static_cast<uint64_t*>(v) = st().release_threshold;
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr a, void* v) {
  if (a != cudaMemPoolAttrReleaseThreshold) return fail(cudaErrorInvalidValue);
  st().release_threshold = *static_cast<uint64_t*>(v);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind k) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (any_global_capture()) return fail(cudaErrorStreamCaptureUnsupported);
  if (bytes) memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind k, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  return enqueue(s, [dst, src, bytes]() {
    if (bytes) memcpy(dst, src, bytes);
    return cudaSuccess;
  });
}

cudaError_t cudaMemset(void* p, int v, size_t bytes) {
  if (bytes) memset(p, v, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  return enqueue(s, [p, v, bytes]() {
    if (bytes) memset(p, v, bytes);
    return cudaSuccess;
  });
}

// ---- streams, graphs, events ----------------------------------------------------------------------
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Stream* x = new Stream;
  x->flags = flags;
  st().streams.insert(x);
  *s = reinterpret_cast<cudaStream_t>(x);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Stream* x = stream_of(s);
  if (!x || !st().streams.erase(x)) return fail(cudaErrorInvalidResourceHandle);
  if (x->graph) delete x->graph;
  delete x;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (reject_if_capturing(s)) return cudaErrorStreamCaptureUnsupported;
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t, unsigned) {
  return valid_stream(s) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Stream* x = stream_of(s);
  if (!x) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot be captured
  if (!st().streams.count(x)) return fail(cudaErrorInvalidResourceHandle);
  if (x->capturing) return fail(cudaErrorIllegalState);
  x->capturing = true;
  x->invalidated = false;
  x->mode = mode;
  x->graph = new Graph;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Stream* x = stream_of(s);
  *g = nullptr;
  if (!x || !st().streams.count(x) || !x->capturing) return fail(cudaErrorInvalidValue);
  x->capturing = false;
  Graph* graph = x->graph;
  x->graph = nullptr;
  if (x->invalidated) {
    delete graph;
    return fail(cudaErrorStreamCaptureInvalidated);
  }
  st().graphs.insert(graph);
  *g = reinterpret_cast<cudaGraph_t>(graph);
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Stream* x = stream_of(s);
  *status = !x || !x->capturing ? cudaStreamCaptureStatusNone
                                : (x->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive);
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Graph* graph = reinterpret_cast<Graph*>(g);
  if (!graph || !st().graphs.count(graph)) return fail(cudaErrorInvalidValue);
  Graph* e = new Graph(*graph);  // the executable keeps its own copy of the nodes (and the allocations)
  st().execs.insert(e);
  *exec = reinterpret_cast<cudaGraphExec_t>(e);
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Graph* e = reinterpret_cast<Graph*>(exec);
  if (!e || !st().execs.count(e)) return fail(cudaErrorInvalidValue);
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  return enqueue(s, [e]() {
    for (auto& node : e->nodes) {
      const cudaError_t r = node();
      if (r != cudaSuccess) return r;
    }
    return cudaSuccess;
  });
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Graph* graph = reinterpret_cast<Graph*>(g);
  if (!graph || !st().graphs.erase(graph)) return fail(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Graph* e = reinterpret_cast<Graph*>(exec);
  if (!e || !st().execs.erase(e)) return fail(cudaErrorInvalidValue);
  delete e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Event* x = new Event;
  st().events.insert(x);
  *e = reinterpret_cast<cudaEvent_t>(x);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Event* x = reinterpret_cast<Event*>(e);
  if (!x || !st().events.erase(x)) return fail(cudaErrorInvalidResourceHandle);
  delete x;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Event* x = reinterpret_cast<Event*>(e);
  if (!x || !st().events.count(x)) return fail(cudaErrorInvalidResourceHandle);
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle);
  return enqueue(s, [x]() {
    x->ms = now_ms();
    x->recorded = true;
    return cudaSuccess;
  });
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  Event* x = reinterpret_cast<Event*>(e);
  if (!x || !st().events.count(x)) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  std::lock_guard<std::recursive_mutex> lock(api_mutex());
  Event* x = reinterpret_cast<Event*>(a);
  Event* y = reinterpret_cast<Event*>(b);
  if (!x || !y || !st().events.count(x) || !st().events.count(y)) return fail(cudaErrorInvalidResourceHandle);
  if (!x->recorded || !y->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = static_cast<float>(y->ms - x->ms);
  return cudaSuccess;
}
