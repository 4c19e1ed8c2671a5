// One op call from JS: reads arguments into core types (naming each argument in its
// errors), allocates the outputs as JS typed arrays, and queues the work as a Job.
#pragma once
#include <napi.h>

#include <functional>
#include <string>
#include <vector>

#include "dsv2/dense.h"
#include "dsv2/tensor.h"

namespace dsv2::addon {

class Call {
 public:
  explicit Call(const Napi::CallbackInfo& info) : info_(info), env_(info.Env()) {}

  Napi::Env env() const { return env_; }
  // A tensor argument: {dtype, shape, data, device}. Its data stays alive until the job ends.
  TensorView tensor(size_t i, const char* name);
  // Like tensor(), but null/undefined gives false.
  bool optional_tensor(size_t i, const char* name, TensorView* out);
  double number(size_t i, const char* name);
  bool boolean(size_t i, const char* name);
  std::string string(size_t i, const char* name);
  Napi::Object object(size_t i, const char* name);
  Impl impl(size_t i);

  // Allocates the outputs (zero-filled typed arrays) and returns their data pointers.
  std::vector<void*> outputs(const std::vector<OutSpec>& specs);
  // Queues work; the promise resolves to the single output, or an array of them.
  Napi::Value start(std::function<void()> work);

 private:
  const Napi::CallbackInfo& info_;
  Napi::Env env_;
  std::vector<Napi::Object> keep_;
  std::vector<Napi::Object> outs_;
};

// Reads a number property (`name` for messages), or `fallback` when absent.
double get_number(Napi::Object o, const char* key, const std::string& name, double fallback);
bool has(Napi::Object o, const char* key);

}  // namespace dsv2::addon
