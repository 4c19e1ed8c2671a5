// One op call from JS: reads arguments into core types (naming each argument in its
// errors), allocates the outputs as JS typed arrays, and queues the work as a Job.
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>
#include <memory>
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

  // A private copy of small index data (slots, block tables, lengths, ids) that lives as long
  // as the work: checks and the work then read the same values, whatever JS does meanwhile.
  const void* snapshot(const void* data, size_t bytes);

  // Allocates the outputs (zero-filled typed arrays) and returns their data pointers.
  std::vector<void*> outputs(const std::vector<OutSpec>& specs);
  // Queues work; the promise resolves to the single output, an array of them, or
  // undefined when `resolve_undefined` (ops that only write into an object, e.g. a cache).
  // `cost` estimates the work in scalar operations: below kInlineCost it runs right here on
  // the JS thread (a few µs) instead of paying the worker round trip (~20–30 µs); the
  // promise is still the only result, already settled.
  Napi::Value start(std::function<void()> work, bool resolve_undefined = false, double cost = 1e300);

  // Work below this many scalar operations (≈ 10 µs on one core) runs inline.
  static constexpr double kInlineCost = 3e4;

 private:
  const Napi::CallbackInfo& info_;
  Napi::Env env_;
  std::vector<Napi::Object> keep_;
  std::vector<Napi::Object> outs_;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> snapshots_;
};

// Binds one op: `body(call)` reads arguments, checks, allocates outputs and returns
// call.start(...); anything thrown before the work is queued becomes a rejected promise.
Napi::Value run_op(const Napi::CallbackInfo& info, const std::function<Napi::Value(Call&)>& body);

// Reads a number property (`name` for messages), or `fallback` when absent.
double get_number(Napi::Object o, const char* key, const std::string& name, double fallback);
bool has(Napi::Object o, const char* key);
// Like get_number, but the value must be an integer (E_RANGE naming `name` otherwise).
int64_t get_integer(Napi::Object o, const char* key, const std::string& name, double fallback);

}  // namespace dsv2::addon
