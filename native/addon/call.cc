#include "call.h"

#include <cmath>
#include <memory>
#include <cstdlib>

#include "dsv2/status.h"
#include "job.h"

namespace dsv2::addon {
namespace {

// The typed array that holds each dtype's host data.
napi_typedarray_type array_type(DType t) {
  switch (t) {
    case DType::kF32: return napi_float32_array;
    case DType::kBF16: case DType::kF16: return napi_uint16_array;
    case DType::kFP8E4M3: return napi_uint8_array;
    case DType::kI32: return napi_int32_array;
    case DType::kI64: return napi_bigint64_array;
    case DType::kI8: return napi_int8_array;
  }
  return napi_uint8_array;
}

const char* array_name(napi_typedarray_type t) {
  switch (t) {
    case napi_float32_array: return "Float32Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_int32_array: return "Int32Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_int8_array: return "Int8Array";
    default: return "another typed array";
  }
}

constexpr double kMaxSafe = 9007199254740991.0;  // 2^53 - 1
constexpr double kMaxOutputBytes = 4294967296.0 * 1024;  // 4 TiB: beyond any host, below size_t overflow

}  // namespace

bool has(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

double get_number(Napi::Object o, const char* key, const std::string& name, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  DSV2_CHECK(v.IsNumber(), kArg, name << " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t get_integer(Napi::Object o, const char* key, const std::string& name, double fallback) {
  const double v = get_number(o, key, name, fallback);
  DSV2_CHECK(v == std::floor(v) && std::fabs(v) <= kMaxSafe, kRange, name << " = " << v << " must be an integer");
  return static_cast<int64_t>(v);
}

TensorView Call::tensor(size_t i, const char* name) {
  Napi::Value v = info_[i];
  DSV2_CHECK(v.IsObject(), kArg, name << " must be a Tensor");
  Napi::Object o = v.As<Napi::Object>();
  TensorView t;
  Napi::Value dt = o.Get("dtype");
  DSV2_CHECK(dt.IsString(), kArg, name << ".dtype must be a string");
  std::string dts = dt.As<Napi::String>().Utf8Value();
  DSV2_CHECK(parse_dtype(dts, &t.dtype), kDtype, name << ".dtype '" << dts << "' is not a dsv2 dtype");
  Napi::Value dev = o.Get("device");
  if (dev.IsString() && dev.As<Napi::String>().Utf8Value() == "cuda") t.device = Device::kCuda;
  Napi::Value sh = o.Get("shape");
  DSV2_CHECK(sh.IsArray(), kArg, name << ".shape must be an array");
  Napi::Array arr = sh.As<Napi::Array>();
  DSV2_CHECK(arr.Length() <= 8, kShape, name << ": rank " << arr.Length() << " exceeds 8");
  double numel = 1, span = 1;  // span: the product of the non-zero dims (bounds every sub-product)
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value d = arr.Get(k);
    double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    DSV2_CHECK(x >= 0 && x == std::floor(x) && x <= kMaxSafe, kShape,
               name << ".shape[" << k << "] must be a non-negative integer");
    t.shape.push_back(static_cast<int64_t>(x));
    numel *= x;
    span *= x > 0 ? x : 1;
  }
  DSV2_CHECK(span <= kMaxSafe, kShape, name << ": shape " << shape_str(t.shape) << " is too large");
  Napi::Value data = o.Get("data");
  DSV2_CHECK(data.IsTypedArray(), kDisposed,
             name << ": tensor has no data (disposed, or not a dsv2 Tensor)");
  Napi::TypedArray ta = data.As<Napi::TypedArray>();
  napi_typedarray_type want = array_type(t.dtype);
  DSV2_CHECK(ta.TypedArrayType() == want, kDtype,
             name << ": dtype " << dtype_name(t.dtype) << " needs its data in a " << array_name(want)
                  << ", got " << array_name(ta.TypedArrayType()));
  DSV2_CHECK(static_cast<double>(ta.ElementLength()) == numel, kShape,
             name << ": shape " << shape_str(t.shape) << " holds " << static_cast<int64_t>(numel)
                  << " elements but data has " << ta.ElementLength());
  // The worker reads the data after this call returns: memory that can move or shrink under
  // it (a resizable ArrayBuffer) or be written concurrently (a SharedArrayBuffer) is refused.
  Napi::Value buffer = ta.Get("buffer");
  DSV2_CHECK(!(buffer.IsObject() && buffer.As<Napi::Object>().Get("resizable").ToBoolean().Value()), kArg,
             name << ": data is backed by a resizable ArrayBuffer, which an op cannot safely read asynchronously");
  DSV2_CHECK(buffer.IsArrayBuffer(), kArg, name << ": data must be backed by a plain ArrayBuffer (not a SharedArrayBuffer)");
  t.nbytes = ta.ByteLength();
  t.data = static_cast<char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  keep_.push_back(ta);
  return t;
}

bool Call::optional_tensor(size_t i, const char* name, TensorView* out) {
  if (info_[i].IsUndefined() || info_[i].IsNull()) return false;
  *out = tensor(i, name);
  return true;
}

double Call::number(size_t i, const char* name) {
  DSV2_CHECK(info_[i].IsNumber(), kArg, name << " must be a number");
  return info_[i].As<Napi::Number>().DoubleValue();
}

bool Call::boolean(size_t i, const char* name) {
  DSV2_CHECK(info_[i].IsBoolean(), kArg, name << " must be a boolean");
  return info_[i].As<Napi::Boolean>().Value();
}

std::string Call::string(size_t i, const char* name) {
  DSV2_CHECK(info_[i].IsString(), kArg, name << " must be a string");
  return info_[i].As<Napi::String>().Utf8Value();
}

Napi::Object Call::object(size_t i, const char* name) {
  DSV2_CHECK(info_[i].IsObject(), kArg, name << " must be an object");
  return info_[i].As<Napi::Object>();
}

Impl Call::impl(size_t i) {
  if (info_[i].IsUndefined() || info_[i].IsNull()) return Impl::kAuto;
  std::string s = string(i, "impl");
  if (s == "auto") return Impl::kAuto;
  if (s == "reference") return Impl::kReference;
  if (s == "fast") return Impl::kFast;
  DSV2_FAIL(kArg, "impl '" << s << "' is not one of auto, reference, fast");
}

std::vector<void*> Call::outputs(const std::vector<OutSpec>& specs) {
  std::vector<void*> ptrs;
  for (const OutSpec& s : specs) {
    double nd = 1, span = 1;
    for (int64_t d : s.shape) {
      nd *= static_cast<double>(d);
      span *= d > 0 ? static_cast<double>(d) : 1.0;
    }
    // Every op indexes its output with products of these dims: bound them all (a zero dim
    // must not hide a huge one), and the bytes by what an ArrayBuffer can hold.
    DSV2_CHECK(span <= kMaxSafe && nd * dtype_size(s.dtype) <= kMaxOutputBytes, kRange,
               "the output of shape " << shape_str(s.shape) << " " << dtype_name(s.dtype) << " is too large");
    const size_t n = static_cast<size_t>(nd);
    const size_t bytes = n * dtype_size(s.dtype);
    Napi::ArrayBuffer buf;
    try {
      buf = Napi::ArrayBuffer::New(env_, bytes);
    } catch (const Napi::Error&) {
      DSV2_FAIL(kOom, "could not allocate " << bytes << " bytes for an output of shape " << shape_str(s.shape)
                                            << " " << dtype_name(s.dtype));
    }
    Napi::TypedArray arr;
    switch (array_type(s.dtype)) {
      case napi_float32_array: arr = Napi::Float32Array::New(env_, n, buf, 0); break;
      case napi_uint16_array: arr = Napi::Uint16Array::New(env_, n, buf, 0); break;
      case napi_int32_array: arr = Napi::Int32Array::New(env_, n, buf, 0); break;
      case napi_bigint64_array: arr = Napi::BigInt64Array::New(env_, n, buf, 0); break;
      case napi_int8_array: arr = Napi::Int8Array::New(env_, n, buf, 0); break;
      default: arr = Napi::Uint8Array::New(env_, n, buf, 0); break;
    }
    Napi::Array shape = Napi::Array::New(env_, s.shape.size());
    for (size_t k = 0; k < s.shape.size(); ++k) shape.Set(k, Napi::Number::New(env_, static_cast<double>(s.shape[k])));
    Napi::Object o = Napi::Object::New(env_);
    o.Set("dtype", dtype_name(s.dtype));
    o.Set("shape", shape);
    o.Set("data", arr);
    outs_.push_back(o);
    ptrs.push_back(buf.Data());
  }
  return ptrs;
}

// DSV2_INLINE_OPS=0 sends every op to a worker thread, however small.
static bool inline_ops_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DSV2_INLINE_OPS");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

const void* Call::snapshot(const void* data, size_t bytes) {
  auto copy = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(data),
                                                     static_cast<const uint8_t*>(data) + bytes);
  snapshots_.push_back(copy);
  return copy->data();
}

Napi::Value Call::start(std::function<void()> work, bool resolve_undefined, double cost) {
  if (!snapshots_.empty()) work = [work = std::move(work), keep = snapshots_] { work(); };
  if (cost < kInlineCost && inline_ops_enabled()) {
    work();  // a dsv2::Error here becomes a rejected promise in run_op / rejecting()
    auto d = Napi::Promise::Deferred::New(env_);
    if (resolve_undefined) {
      d.Resolve(env_.Undefined());
    } else if (outs_.size() == 1) {
      d.Resolve(outs_[0]);
    } else {
      Napi::Array a = Napi::Array::New(env_, outs_.size());
      for (size_t i = 0; i < outs_.size(); ++i) a.Set(i, outs_[i]);
      d.Resolve(a);
    }
    return d.Promise();
  }
  Job::Finish finish = nullptr;
  if (resolve_undefined) finish = [](Napi::Env env) -> Napi::Value { return env.Undefined(); };
  auto* job = new Job(env_, std::move(work), finish);
  for (auto& o : keep_) job->keep(o);
  for (auto& o : outs_) job->result(o);
  return job->start();
}

Napi::Value run_op(const Napi::CallbackInfo& info, const std::function<Napi::Value(Call&)>& body) {
  Call call(info);
  return rejecting(info.Env(), [&] { return body(call); });
}

}  // namespace dsv2::addon
