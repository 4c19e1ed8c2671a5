// KvCache: a JS class (ObjectWrap) owning the paged latent cache of every layer and its
// page allocator. Memory is calloc'ed (pages the OS hands out lazily, zero-filled), freed by
// dispose() or the GC finalizer once no in-flight op still uses it.
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "bindings.h"
#include "call.h"
#include "dsv2/ops.h"
#include "dsv2/status.h"
#include "job.h"
#include "kv_cache.h"
#include "../src/cpu/cpu_ops.h"
#include "../src/ops_cuda.h"

namespace dsv2::addon {

KvStorage::~KvStorage() {
  if (device == Device::kCuda) ops::device_free(data);
  else std::free(data);
}

namespace {

// Per-environment data (the addon is context-aware): the class constructor, to check that
// an argument really is a KvCache before unwrapping it.
struct EnvData {
  Napi::FunctionReference kv_cache;
};

class KvCacheWrap : public Napi::ObjectWrap<KvCacheWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvCache",
                       {InstanceMethod("stats", &KvCacheWrap::Stats),
                        InstanceMethod("allocPages", &KvCacheWrap::AllocPages),
                        InstanceMethod("freePages", &KvCacheWrap::FreePages),
                        InstanceMethod("append", &KvCacheWrap::Append),
                        InstanceMethod("read", &KvCacheWrap::Read),
                        InstanceMethod("readRawPage", &KvCacheWrap::ReadRawPage),
                        InstanceMethod("poison", &KvCacheWrap::Poison),
                        InstanceMethod("dispose", &KvCacheWrap::Dispose)});
  }

  explicit KvCacheWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvCacheWrap>(info) {
    Napi::Env env = info.Env();
    try {
      DSV2_CHECK(info[0].IsObject(), kArg, "options must be an object");
      Napi::Object o = info[0].As<Napi::Object>();
      KvLayout L;
      L.d_c = get_integer(o, "dC", "dC", -1);
      L.d_r = get_integer(o, "dR", "dR", -1);
      L.page_size = get_integer(o, "pageSize", "pageSize", 64);
      L.pow2_scales = o.Get("pow2Scales").ToBoolean().Value();
      std::string dt = o.Get("dtype").IsString() ? o.Get("dtype").As<Napi::String>().Utf8Value() : "";
      if (dt == "fp8") dt = "fp8_e4m3";
      DSV2_CHECK(parse_dtype(dt, &L.dtype), kDtype, "dtype '" << dt << "' must be f32, bf16 or fp8");
      const double layers = get_number(o, "layers", "layers", -1), pages = get_number(o, "pages", "pages", -1);
      DSV2_CHECK(layers == static_cast<int64_t>(layers) && pages == static_cast<int64_t>(pages), kRange,
                 "layers = " << layers << " and pages = " << pages << " must be integers");
      ops::check_kv_layout(L, static_cast<int64_t>(layers), static_cast<int64_t>(pages));
      auto s = std::make_shared<KvStorage>();
      s->layout = L;
      s->layers = static_cast<int64_t>(layers);
      s->pages = static_cast<int64_t>(pages);
      const double bytes = layers * pages * static_cast<double>(L.page_bytes());
      DSV2_CHECK(bytes <= 281474976710656.0, kOom,  // 2^48 bytes: beyond any machine, and no int64 overflow below
                 "a KV cache of " << layers << " layers × " << pages << " pages × " << L.page_bytes() << " bytes is too large");
      const std::string dev = o.Get("device").IsString() ? o.Get("device").As<Napi::String>().Utf8Value() : "cpu";
      DSV2_CHECK(dev == "cpu" || dev == "cuda", kArg, "device '" << dev << "' must be cpu or cuda");
      if (dev == "cuda") {
        s->device = Device::kCuda;
        s->data = static_cast<uint8_t*>(ops::device_alloc_zeroed(static_cast<size_t>(s->layers * s->pages * L.page_bytes())));
      } else {
        s->data = static_cast<uint8_t*>(std::calloc(static_cast<size_t>(s->layers * s->pages), L.page_bytes()));
      }
      DSV2_CHECK(s->data != nullptr, kOom,
                 "could not allocate the KV cache: " << layers << " layers × " << pages << " pages × "
                                                     << L.page_bytes() << " bytes = " << bytes / (1 << 20) << " MiB");
      storage_ = s;
      used_.assign(s->pages, 0);
      free_.reserve(s->pages);
      for (int64_t p = s->pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));  // pop gives 0, 1, ...
    } catch (const Error& e) {
      throw make_error(env, e.code(), e.what());
    } catch (const std::bad_alloc&) {
      throw make_error(env, Code::kOom, "out of host memory creating the KV cache");
    }
  }

  std::shared_ptr<KvStorage> storage(const char* name) const {
    DSV2_CHECK(storage_ != nullptr, kDisposed, name << ": the KV cache was disposed");
    return storage_;
  }

 private:
  // Runs fn, turning a dsv2::Error into a JS exception with its code (synchronous methods).
  template <class F>
  Napi::Value sync(Napi::Env env, F&& fn) {
    try {
      return fn();
    } catch (const Error& e) {
      throw make_error(env, e.code(), e.what());
    } catch (const std::bad_alloc&) {
      throw make_error(env, Code::kOom, "out of host memory in a KvCache method");
    }
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    return sync(info.Env(), [&]() -> Napi::Value {
      auto s = storage("cache");
      Napi::Env env = info.Env();
      Napi::Object o = Napi::Object::New(env);
      o.Set("bytesPerToken", static_cast<double>(s->layout.bytes_per_token()));
      o.Set("pageBytes", static_cast<double>(s->layout.page_bytes()));
      o.Set("bytes", static_cast<double>(s->layers * s->pages * s->layout.page_bytes()));
      o.Set("pagesFree", static_cast<double>(free_.size()));
      o.Set("pagesUsed", static_cast<double>(s->pages - static_cast<int64_t>(free_.size())));
      o.Set("device", s->device == Device::kCuda ? "cuda" : "cpu");
      return o;
    });
  }

  Napi::Value AllocPages(const Napi::CallbackInfo& info) {
    return sync(info.Env(), [&]() -> Napi::Value {
      auto s = storage("cache");
      Call c(info);
      const double n = c.number(0, "n");
      DSV2_CHECK(n >= 0 && n == static_cast<int64_t>(n), kRange, "n = " << n << " must be a non-negative integer");
      DSV2_CHECK(n <= static_cast<double>(free_.size()), kOom,
                 "KV cache full: " << n << " pages requested, " << free_.size() << " of " << s->pages << " free ("
                                   << s->layout.page_size << " tokens each)");
      auto out = Napi::Int32Array::New(info.Env(), static_cast<size_t>(n));
      for (size_t i = 0; i < out.ElementLength(); ++i) {
        out[i] = free_.back();
        free_.pop_back();
        used_[out[i]] = 1;
      }
      return out;
    });
  }

  Napi::Value FreePages(const Napi::CallbackInfo& info) {
    return sync(info.Env(), [&]() -> Napi::Value {
      auto s = storage("cache");
      DSV2_CHECK(info[0].IsTypedArray() && info[0].As<Napi::TypedArray>().TypedArrayType() == napi_int32_array, kArg,
                 "ids must be an Int32Array");
      auto ids = info[0].As<Napi::Int32Array>();
      // Check all first: a bad id frees nothing.
      std::vector<uint8_t> seen(s->pages, 0);
      for (size_t i = 0; i < ids.ElementLength(); ++i) {
        const int32_t p = ids[i];
        DSV2_CHECK(p >= 0 && p < s->pages && used_[p] && !seen[p], kRange,
                   "ids[" << i << "] = " << p << " is not an allocated page (pages are [0, " << s->pages
                          << "); freed twice or never allocated)");
        seen[p] = 1;
      }
      for (size_t i = 0; i < ids.ElementLength(); ++i) {
        used_[ids[i]] = 0;
        free_.push_back(ids[i]);
      }
      return info.Env().Undefined();
    });
  }

  // append(layer, cKv, kPe, slots, impl) -> Promise<void>
  Napi::Value Append(const Napi::CallbackInfo& info) {
    Call c(info);
    return rejecting(info.Env(), [&] {
      auto s = storage("cache");
      KvAppendParams p;
      c.outputs(ops::check_kv_append(kv_layer_of(*s, info[0]), c.tensor(1, "cKv"), c.tensor(2, "kPe"),
                                     c.tensor(3, "slots"), &p));
      p.slots = c.snapshot(p.slots, p.n_tokens * dtype_size(p.slots_dtype));
      Impl impl = c.impl(4);
      const double cost = s->device == Device::kCuda ? 1e300 : 8.0 * p.n_tokens * (s->layout.d_c + s->layout.d_r);
      return c.start([p, impl, s] { ops::kv_append(p, impl); }, /*resolve_undefined=*/true, cost);
    });
  }

  // read(layer, slots, impl) -> Promise<[cKv, kPe]>
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Call c(info);
    return rejecting(info.Env(), [&] {
      auto s = storage("cache");
      KvReadParams p;
      auto outs = c.outputs(ops::check_kv_read(kv_layer_of(*s, info[0]), c.tensor(1, "slots"), &p));
      p.slots = c.snapshot(p.slots, p.n_tokens * dtype_size(p.slots_dtype));
      p.c_kv = static_cast<float*>(outs[0]);
      p.k_pe = static_cast<float*>(outs[1]);
      Impl impl = c.impl(2);
      return c.start([p, impl, s] { ops::kv_read(p, impl); });
    });
  }

  // readRawPage(layer, page) -> Uint8Array (a copy)
  Napi::Value ReadRawPage(const Napi::CallbackInfo& info) {
    return sync(info.Env(), [&]() -> Napi::Value {
      auto s = storage("cache");
      KvCacheView v = kv_layer_of(*s, info[0]);
      Call c(info);
      const double page = c.number(1, "page");
      DSV2_CHECK(page >= 0 && page < s->pages && page == static_cast<int64_t>(page), kRange,
                 "page = " << page << " is outside [0, " << s->pages << ")");
      const size_t n = s->layout.page_bytes();
      auto out = Napi::Uint8Array::New(info.Env(), n);
      if (v.device == Device::kCuda) ops::kv_read_raw_cuda(v, static_cast<int64_t>(page), out.Data());
      else std::memcpy(out.Data(), v.data + static_cast<int64_t>(page) * n, n);
      return out;
    });
  }

  // poison() -> Promise<void>: NaN encodings everywhere (a testing aid, FlashMLA style).
  Napi::Value Poison(const Napi::CallbackInfo& info) {
    Call c(info);
    return rejecting(info.Env(), [&] {
      auto s = storage("cache");
      return c.start([s] {
        for (int64_t l = 0; l < s->layers; ++l) {
          if (s->device == Device::kCuda) ops::kv_poison_cuda(s->layer(l));
          else cpu::kv_poison(s->layer(l));
        }
      }, true);
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    storage_.reset();
    free_.clear();
    used_.clear();
    return info.Env().Undefined();
  }

  std::shared_ptr<KvStorage> storage_;
  std::vector<int32_t> free_;
  std::vector<uint8_t> used_;
};

}  // namespace

std::shared_ptr<KvStorage> kv_storage_of(Napi::Env env, Napi::Value v, const char* name) {
  EnvData* d = env.GetInstanceData<EnvData>();
  DSV2_CHECK(v.IsObject() && d && v.As<Napi::Object>().InstanceOf(d->kv_cache.Value()), kArg,
             name << " must be a KvCache");
  return KvCacheWrap::Unwrap(v.As<Napi::Object>())->storage(name);
}

KvCacheView kv_layer_of(const KvStorage& s, Napi::Value layer) {
  DSV2_CHECK(layer.IsNumber(), kArg, "layer must be a number");
  const double l = layer.As<Napi::Number>().DoubleValue();
  DSV2_CHECK(l >= 0 && l < s.layers && l == static_cast<int64_t>(l), kRange,
             "layer = " << l << " is outside the cache's layers [0, " << s.layers << ")");
  return s.layer(static_cast<int64_t>(l));
}

void register_kv_cache(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = KvCacheWrap::Define(env);
  auto* d = new EnvData();
  d->kv_cache = Napi::Persistent(ctor);
  env.SetInstanceData<EnvData>(d);
  exports.Set("KvCache", ctor);
}

}  // namespace dsv2::addon
