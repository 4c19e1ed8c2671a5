#include "job.h"

#include <new>

namespace dsv2::addon {

Napi::Error make_error(Napi::Env env, Code code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, code_name(code)));
  return err;
}

Job::Job(Napi::Env env, Work work, Finish finish)
    : Napi::AsyncWorker(env, "dsv2:op"),
      deferred_(Napi::Promise::Deferred::New(env)),
      work_(std::move(work)),
      finish_(std::move(finish)) {}

Napi::Promise Job::start() {
  Napi::Promise p = deferred_.Promise();
  Queue();
  return p;
}

void Job::Execute() {
  try {
    work_();
  } catch (const Error& e) {
    code_ = e.code();
    message_ = e.what();
  } catch (const std::bad_alloc&) {
    code_ = Code::kOom;
    message_ = "out of host memory while running the op";
  } catch (const std::exception& e) {
    code_ = Code::kInternal;
    message_ = std::string("internal error: ") + e.what();
  }
  if (!message_.empty()) SetError(message_);
}

void Job::OnOK() {
  Napi::Env env = Env();
  try {
    if (finish_) {
      deferred_.Resolve(finish_(env));
    } else if (results_.size() == 1) {
      deferred_.Resolve(results_[0].Value());
    } else {
      Napi::Array a = Napi::Array::New(env, results_.size());
      for (size_t i = 0; i < results_.size(); ++i) a.Set(i, results_[i].Value());
      deferred_.Resolve(a);
    }
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  }
}

void Job::OnError(const Napi::Error&) { deferred_.Reject(make_error(Env(), code_, message_).Value()); }

Napi::Value rejecting(Napi::Env env, const std::function<Napi::Value()>& fn) {
  auto reject = [&](Napi::Value err) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(err);
    return d.Promise();
  };
  try {
    return fn();
  } catch (const Error& e) {
    return reject(make_error(env, e.code(), e.what()).Value());
  } catch (const Napi::Error& e) {
    return reject(e.Value());
  } catch (const std::bad_alloc&) {
    return reject(make_error(env, Code::kOom, "out of host memory while preparing the op").Value());
  } catch (const std::exception& e) {
    // Anything else (work run inline included) must not escape into N-API: that would
    // terminate the process.
    return reject(make_error(env, Code::kInternal, std::string("internal error: ") + e.what()).Value());
  }
}

}  // namespace dsv2::addon
