// The async work of every op: validated params captured by value, inputs kept alive by
// references, outputs allocated on the JS thread before the work is queued. Execute runs
// on a libuv worker with no Napi calls; the promise settles on the JS thread.
#pragma once
#include <napi.h>

#include <functional>
#include <string>
#include <vector>

#include "dsv2/status.h"

namespace dsv2::addon {

// A JS Error with `code` set to the stable code name; lib/errors.ts turns it into Dsv2Error.
Napi::Error make_error(Napi::Env env, Code code, const std::string& message);

class Job : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Finish = std::function<Napi::Value(Napi::Env)>;

  Job(Napi::Env env, Work work, Finish finish);

  // Keeps a JS object (an input or output buffer) alive until the job settles.
  void keep(Napi::Object o) { keep_.push_back(Napi::Persistent(o)); }
  // Adds an output: with no Finish, the promise resolves to the single output or an array.
  void result(Napi::Object o) { results_.push_back(Napi::Persistent(o)); }
  // Queues the job and returns its promise.
  Napi::Promise start();

 protected:
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Finish finish_;
  std::vector<Napi::ObjectReference> keep_;
  std::vector<Napi::ObjectReference> results_;
  Code code_ = Code::kInternal;
  std::string message_;
};

// Runs fn(); a dsv2::Error or Napi::Error thrown before the work is queued becomes a
// rejected promise, so every op reports bad input the same way: asynchronously, coded.
Napi::Value rejecting(Napi::Env env, const std::function<Napi::Value()>& fn);

}  // namespace dsv2::addon
