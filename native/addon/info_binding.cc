// Build and device information: what `dsv2 info` prints.
#include <memory>

#include "bindings.h"
#include "job.h"
#include "../src/core/device.h"
#include "../src/core/thread_pool.h"
#include "../src/cpu/cpu_ops.h"
#include "../src/ops_cuda.h"
#ifdef DSV2_WITH_CUDA
#include "../src/cuda/cuda_ops.h"
#include "../src/cuda/model_ops.h"
#endif

#ifndef DSV2_VERSION
#define DSV2_VERSION "0.0.0"
#endif

namespace dsv2::addon {
namespace {

// buildInfo() -> {version, cuda, cudaArchs, threads, cpuIsa, compiler}; synchronous and cheap.
Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", DSV2_VERSION);
#ifdef DSV2_WITH_CUDA
  o.Set("cuda", true);
#ifdef DSV2_CUDA_ARCHS
  o.Set("cudaArchs", DSV2_CUDA_ARCHS);
#endif
#else
  o.Set("cuda", false);
  o.Set("cudaArchs", "");
#endif
  o.Set("threads", num_threads());
  o.Set("cpuIsa", cpu::gemm_fast_isa());
#if defined(__clang__)
  o.Set("compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  o.Set("compiler", "gcc " __VERSION__);
#endif
  return o;
}

// cudaTestError() -> Promise that rejects with E_CUDA (cudaErrorInvalidConfiguration) from a
// deliberately bad launch, or E_UNSUPPORTED without CUDA: tests that CUDA errors are coded
// errors the process survives.
Napi::Value CudaTestError(const Napi::CallbackInfo& info) {
  auto* job = new Job(
      info.Env(),
      [] {
        ops::require_cuda_usable("cudaTestError");
#ifdef DSV2_WITH_CUDA
        void* s = cuda::stream_create();
        try {
          cuda::provoke_launch_error(s);
        } catch (...) {
          cuda::stream_destroy(s);
          throw;
        }
        cuda::stream_destroy(s);
#endif
      },
      [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
  return job->start();
}

// cudaInfo() -> Promise<{compiled, archs, runtimeVersion, driverVersion, devices, unavailable}>.
// Async: the first probe initialises the CUDA runtime (up to seconds with a driver).
Napi::Value CudaInfoFn(const Napi::CallbackInfo& info) {
  auto* job = new Job(
      info.Env(), [] { cuda_info(); },
      [](Napi::Env env) -> Napi::Value {
        const CudaInfo& c = cuda_info();
        Napi::Object o = Napi::Object::New(env);
        o.Set("compiled", c.compiled);
        o.Set("emulated", c.emulated);
        o.Set("archs", c.archs);
        o.Set("runtimeVersion", c.runtime_version);
        o.Set("driverVersion", c.driver_version);
        o.Set("unavailable", c.unavailable.empty() ? env.Null() : Napi::String::New(env, c.unavailable));
        Napi::Array devs = Napi::Array::New(env, c.devices.size());
        for (size_t i = 0; i < c.devices.size(); ++i) {
          const CudaDeviceInfo& d = c.devices[i];
          Napi::Object x = Napi::Object::New(env);
          x.Set("index", d.index);
          x.Set("name", d.name);
          x.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
          x.Set("totalMemory", static_cast<double>(d.total_memory));
          x.Set("freeMemory", static_cast<double>(d.free_memory));
          x.Set("multiprocessors", d.multiprocessors);
          x.Set("kernelOk", d.kernel_ok);
          x.Set("kernelError", d.kernel_error.empty() ? env.Null() : Napi::String::New(env, d.kernel_error));
          devs.Set(i, x);
        }
        o.Set("devices", devs);
        return o;
      });
  return job->start();
}

}  // namespace

void register_info(Napi::Env env, Napi::Object exports) {
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfoFn, "cudaInfo"));
  exports.Set("cudaTestError", Napi::Function::New(env, CudaTestError, "cudaTestError"));
}

}  // namespace dsv2::addon
