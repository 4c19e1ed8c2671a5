// Engine: the native model engine (src/model/engine.h) as a JS class. Weights are copied to
// the engine's backend (device memory for cuda) one tensor at a time, on a worker thread;
// step() runs a whole forward step on a worker thread and resolves to the logits rows asked
// for and/or the sampled tokens. The engine holds the KvCache's storage alive.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "call.h"
#include "dsv2/status.h"
#include "job.h"
#include "kv_cache.h"
#include "../src/model/engine.h"

namespace dsv2::addon {
namespace {

using model::Engine;

template <class F>
auto coded(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    throw make_error(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw make_error(env, Code::kOom, "out of host memory in the model engine");
  }
}

int64_t int_prop(Napi::Object o, const char* key, double fallback = -1) { return get_integer(o, key, key, fallback); }

MoeMethod parse_method(const std::string& s) {
  if (s == "greedy") return MoeMethod::kGreedy;
  if (s == "group_limited_greedy") return MoeMethod::kGroupLimitedGreedy;
  if (s == "noaux_tc") return MoeMethod::kNoauxTc;
  throw Error(Code::kArg, "dims.topkMethod '" + s + "' must be greedy, group_limited_greedy or noaux_tc");
}

std::string str_prop(Napi::Object o, const char* key, const char* fallback) {
  Napi::Value v = o.Get(key);
  return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string(fallback);
}

// A private copy of an Int32Array property (E_ARG naming it otherwise).
std::vector<int32_t> i32_prop(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  DSV2_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array, kArg,
             "step." << key << " must be an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

model::ModelDims parse_dims(Napi::Object d) {
  model::ModelDims m;
  m.vocab = int_prop(d, "vocab");
  m.hidden = int_prop(d, "hidden");
  m.inter = int_prop(d, "inter", 0);
  m.moe_inter = int_prop(d, "moeInter", 0);
  m.layers = int_prop(d, "layers");
  m.heads = int_prop(d, "heads");
  m.q_lora = int_prop(d, "qLora", 0);
  m.d_c = int_prop(d, "dC");
  m.d_nope = int_prop(d, "dNope");
  m.d_r = int_prop(d, "dR");
  m.d_v = int_prop(d, "dV");
  m.n_experts = int_prop(d, "nExperts", 0);
  m.top_k = int_prop(d, "topK", 0);
  m.n_group = int_prop(d, "nGroup", 1);
  m.topk_group = int_prop(d, "topkGroup", 1);
  m.inter_shared = int_prop(d, "interShared", 0);
  m.method = parse_method(str_prop(d, "topkMethod", "greedy"));
  const std::string sc = str_prop(d, "scoring", "softmax");
  DSV2_CHECK(sc == "softmax" || sc == "sigmoid", kArg, "dims.scoring '" << sc << "' must be softmax or sigmoid");
  m.scoring = sc == "sigmoid" ? MoeScoring::kSigmoid : MoeScoring::kSoftmax;
  m.norm_topk_prob = d.Get("normTopkProb").ToBoolean().Value();
  m.routed_scaling_factor = static_cast<float>(get_number(d, "routedScalingFactor", "dims.routedScalingFactor", 1));
  m.eps = static_cast<float>(get_number(d, "eps", "dims.eps", 1e-6));
  m.softmax_scale = static_cast<float>(get_number(d, "softmaxScale", "dims.softmaxScale", -1));
  DSV2_CHECK(d.Get("moeLayers").IsArray(), kArg, "dims.moeLayers must be an array of booleans");
  Napi::Array ml = d.Get("moeLayers").As<Napi::Array>();
  for (uint32_t i = 0; i < ml.Length(); ++i) m.moe_layer.push_back(ml.Get(i).ToBoolean().Value() ? 1 : 0);
  return m;
}

model::Limits parse_limits(Napi::Object o) {
  model::Limits lim;
  lim.max_tokens = int_prop(o, "maxTokens");
  lim.max_seqs = int_prop(o, "maxSeqs", 1);
  lim.max_seqlen = int_prop(o, "maxSeqlen");
  DSV2_CHECK(lim.max_tokens <= (1 << 20) && lim.max_seqs <= 4096 && lim.max_seqlen <= (1 << 24), kRange,
             "engine limits maxTokens = " << lim.max_tokens << " (≤ 2^20), maxSeqs = " << lim.max_seqs
                                          << " (≤ 4096), maxSeqlen = " << lim.max_seqlen << " (≤ 2^24)");
  return lim;
}

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("setWeight", &EngineWrap::SetWeight),
                        InstanceMethod("setRope", &EngineWrap::SetRope),
                        InstanceMethod("randomWeights", &EngineWrap::RandomWeights),
                        InstanceMethod("step", &EngineWrap::Step),
                        InstanceMethod("memory", &EngineWrap::Memory),
                        InstanceMethod("setProfiling", &EngineWrap::SetProfiling),
                        InstanceMethod("profile", &EngineWrap::Profile),
                        InstanceMethod("dispose", &EngineWrap::Dispose)});
  }

  // new Engine({device, dims, cache, maxTokens, maxSeqs, maxSeqlen})
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    coded(env, [&] {
      DSV2_CHECK(info[0].IsObject(), kArg, "options must be an object");
      Napi::Object o = info[0].As<Napi::Object>();
      DSV2_CHECK(o.Get("dims").IsObject(), kArg, "options.dims must be an object");
      const model::ModelDims m = parse_dims(o.Get("dims").As<Napi::Object>());
      const std::string dev = str_prop(o, "device", "cpu");
      DSV2_CHECK(dev == "cpu" || dev == "cuda", kArg, "device '" << dev << "' must be cpu or cuda");
      auto storage = kv_storage_of(env, o.Get("cache"), "options.cache");
      const Device want = dev == "cuda" ? Device::kCuda : Device::kCpu;
      DSV2_CHECK(storage->device == want, kDevice,
                 "options.cache lives on " << (storage->device == Device::kCuda ? "cuda" : "cpu") << " but the engine runs on " << dev);
      DSV2_CHECK(storage->layers == m.layers, kArg,
                 "options.cache has " << storage->layers << " layers but the model " << m.layers);
      const model::Limits lim = parse_limits(o);
      auto be = want == Device::kCuda ? model::make_cuda_backend() : model::make_cpu_backend();
      engine_ = std::make_shared<Engine>(std::move(be), m, storage->layout, storage->pages, storage->data,
                                         std::static_pointer_cast<void>(storage), lim);
      // weights: 'i8' | 'fp8_e4m3' stores the linear layers as 8-bit codes (Engine::set_weight_quantization).
      const std::string q = str_prop(o, "weights", "");
      DSV2_CHECK(q.empty() || q == "i8" || q == "fp8_e4m3", kArg, "options.weights '" << q << "' must be i8 or fp8_e4m3 (or absent)");
      if (!q.empty()) engine_->set_weight_quantization(q == "i8" ? DType::kI8 : DType::kFP8E4M3);
      return 0;
    });
  }

 private:
  std::shared_ptr<Engine> engine(const char* what) const {
    DSV2_CHECK(engine_ != nullptr, kDisposed, what << ": the engine was disposed");
    return engine_;
  }

  // setWeight(layer, name, tensor[, first, rows]) -> Promise<void>: layer -1 for embed, norm,
  // lm_head. With first/rows: `tensor` is rows [first, first + tensor.shape[0]) of a weight
  // whose dim 0 is `rows` (Engine::set_weight's parts).
  Napi::Value SetWeight(const Napi::CallbackInfo& info) {
    return run_op(info, [&](Call& c) -> Napi::Value {
      auto e = engine("setWeight");
      const double layer = c.number(0, "layer");
      DSV2_CHECK(layer == static_cast<int64_t>(layer), kRange, "layer = " << layer << " must be an integer");
      const std::string name = c.string(1, "name");
      TensorView t = c.tensor(2, name.c_str());
      int64_t first = -1;
      std::vector<int64_t> shape = t.shape;
      if (info.Length() > 3 && !info[3].IsUndefined()) {
        const double f = c.number(3, "first"), rows = c.number(4, "rows");
        DSV2_CHECK(f == static_cast<int64_t>(f) && f >= 0 && rows == static_cast<int64_t>(rows) && rows >= 1 && !shape.empty(), kRange,
                   "setWeight part: first = " << f << ", rows = " << rows << " must be integers >= 0 and >= 1 (and the tensor not a scalar)");
        first = static_cast<int64_t>(f);
        shape[0] = static_cast<int64_t>(rows);
      }
      return c.start([e, layer, name, t, shape, first] { e->set_weight(static_cast<int64_t>(layer), name, t.dtype, shape, t.data, t.nbytes, first); },
                     /*resolve_undefined=*/true);
    });
  }

  // setRope(cos, sin) -> Promise<void>: f32 [maxPos, dR / 2] each.
  Napi::Value SetRope(const Napi::CallbackInfo& info) {
    return run_op(info, [&](Call& c) -> Napi::Value {
      auto e = engine("setRope");
      TensorView cs = c.tensor(0, "cos"), sn = c.tensor(1, "sin");
      const int64_t half = e->dims().d_r / 2;
      for (const TensorView* t : {&cs, &sn})
        DSV2_CHECK(t->dtype == DType::kF32 && t->rank() == 2 && t->shape[1] == half && t->shape == cs.shape, kShape,
                   "rope tables must be f32 [maxPos, " << half << "] (got " << dtype_name(t->dtype) << " " << shape_str(t->shape) << ")");
      return c.start([e, cs, sn] { e->set_rope(static_cast<const float*>(cs.data), static_cast<const float*>(sn.data), cs.shape[0]); },
                     true);
    });
  }

  // randomWeights(seed, dtype) -> Promise<void>: every weight random, made in the engine's memory.
  Napi::Value RandomWeights(const Napi::CallbackInfo& info) {
    return run_op(info, [&](Call& c) -> Napi::Value {
      auto e = engine("randomWeights");
      const double seed = c.number(0, "seed");
      DSV2_CHECK(seed >= 0 && seed == static_cast<double>(static_cast<uint64_t>(seed)), kRange, "seed = " << seed << " must be a non-negative integer");
      DType dt;
      const std::string ds = c.string(1, "dtype");
      DSV2_CHECK(parse_dtype(ds, &dt), kDtype, "dtype '" << ds << "' must be bf16 or f32");
      return c.start([e, seed, dt] { e->random_weights(static_cast<uint64_t>(seed), dt); }, true);
    });
  }

  // step({tokens, positions, slots, seqlens, cuQ, blockTable, maxBlocks, decode, logits, sample})
  //   -> Promise<{logits: Float32Array | null, tokens: Int32Array | null}>
  Napi::Value Step(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return rejecting(env, [&]() -> Napi::Value {
      auto e = engine("step");
      DSV2_CHECK(info[0].IsObject(), kArg, "step input must be an object");
      Napi::Object o = info[0].As<Napi::Object>();
      struct Data {
        std::vector<int32_t> tokens, positions, slots, seqlens, cu_q, table;
        std::vector<uint64_t> seeds;
        model::StepInput in;
        model::StepOutput out;
      };
      auto d = std::make_shared<Data>();
      d->tokens = i32_prop(o, "tokens");
      d->positions = i32_prop(o, "positions");
      d->slots = i32_prop(o, "slots");
      d->seqlens = i32_prop(o, "seqlens");
      d->cu_q = i32_prop(o, "cuQ");
      d->table = i32_prop(o, "blockTable");
      model::StepInput& in = d->in;
      in.n_tokens = static_cast<int64_t>(d->tokens.size());
      in.b = static_cast<int64_t>(d->seqlens.size());
      in.max_blocks = get_integer(o, "maxBlocks", "step.maxBlocks", -1);
      DSV2_CHECK(d->positions.size() == d->tokens.size() && d->slots.size() == d->tokens.size(), kShape,
                 "step: tokens, positions and slots must have the same length (" << d->tokens.size() << ", "
                                                                                 << d->positions.size() << ", " << d->slots.size() << ")");
      DSV2_CHECK(d->cu_q.size() == d->seqlens.size() + 1, kShape,
                 "step.cuQ has " << d->cu_q.size() << " entries for " << d->seqlens.size() << " sequences (needs b + 1)");
      DSV2_CHECK(in.b >= 1 && in.max_blocks >= 1 && static_cast<int64_t>(d->table.size()) == in.b * in.max_blocks, kShape,
                 "step.blockTable has " << d->table.size() << " entries; needs " << in.b << " × maxBlocks " << in.max_blocks);
      in.tokens = d->tokens.data();
      in.positions = d->positions.data();
      in.slots = d->slots.data();
      in.seqlens = d->seqlens.data();
      in.cu_q = d->cu_q.data();
      in.block_table = d->table.data();
      in.decode = o.Get("decode").ToBoolean().Value();
      const std::string lg = str_prop(o, "logits", "last");
      DSV2_CHECK(lg == "none" || lg == "last" || lg == "all", kArg, "step.logits '" << lg << "' must be none, last or all");
      in.logits = lg == "all" ? model::LogitsRows::kAll : lg == "none" ? model::LogitsRows::kNone : model::LogitsRows::kLast;
      Napi::Value sv = o.Get("sample");
      if (sv.IsObject()) {
        Napi::Object s = sv.As<Napi::Object>();
        in.sample = true;
        in.temperature = get_number(s, "temperature", "sample.temperature", 0);
        in.top_k = get_integer(s, "topK", "sample.topK", 0);
        in.top_p = get_number(s, "topP", "sample.topP", 1);
        Napi::Value seeds = s.Get("seeds");
        DSV2_CHECK(seeds.IsTypedArray() && seeds.As<Napi::TypedArray>().TypedArrayType() == napi_biguint64_array, kArg,
                   "sample.seeds must be a BigUint64Array");
        auto a = seeds.As<Napi::TypedArray>();
        DSV2_CHECK(a.ElementLength() == static_cast<size_t>(in.b), kShape,
                   "sample.seeds has " << a.ElementLength() << " entries for " << in.b << " sequences");
        const uint64_t* p = reinterpret_cast<const uint64_t*>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
        d->seeds.assign(p, p + in.b);
        in.seeds = d->seeds.data();
      }
      auto* job = new Job(
          env, [e, d] { d->out = e->step(d->in); },
          [d](Napi::Env env) -> Napi::Value {
            Napi::Object r = Napi::Object::New(env);
            if (d->in.logits != model::LogitsRows::kNone) {
              auto a = Napi::Float32Array::New(env, d->out.logits.size());
              std::memcpy(a.Data(), d->out.logits.data(), d->out.logits.size() * sizeof(float));
              r.Set("logits", a);
            } else {
              r.Set("logits", env.Null());
            }
            if (d->in.sample) {
              auto a = Napi::Int32Array::New(env, d->out.tokens.size());
              std::memcpy(a.Data(), d->out.tokens.data(), d->out.tokens.size() * sizeof(int32_t));
              r.Set("tokens", a);
            } else {
              r.Set("tokens", env.Null());
            }
            return r;
          });
      return job->start();
    });
  }

  Napi::Value Memory(const Napi::CallbackInfo& info) {
    return coded(info.Env(), [&]() -> Napi::Value {
      auto e = engine("memory");
      const model::MemoryReport m = e->memory();
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("weights", static_cast<double>(m.weights));
      o.Set("cache", static_cast<double>(m.cache));
      o.Set("workspace", static_cast<double>(m.workspace));
      o.Set("device", e->backend().name());
      Napi::Object g = Napi::Object::New(info.Env());
      g.Set("captured", static_cast<double>(m.graphs_captured));
      g.Set("failed", static_cast<double>(m.graphs_failed));
      g.Set("launches", static_cast<double>(m.graph_launches));
      o.Set("graphs", g);
      return o;
    });
  }

  // setProfiling(on): time every op of the steps that follow (Engine::set_profiling).
  Napi::Value SetProfiling(const Napi::CallbackInfo& info) {
    return coded(info.Env(), [&]() -> Napi::Value {
      DSV2_CHECK(info[0].IsBoolean(), kArg, "setProfiling(on): on must be a boolean");
      engine("setProfiling")->set_profiling(info[0].As<Napi::Boolean>().Value());
      return info.Env().Undefined();
    });
  }

  // profile(reset) -> [{op, calls, seconds}] since the last reset.
  Napi::Value Profile(const Napi::CallbackInfo& info) {
    return coded(info.Env(), [&]() -> Napi::Value {
      const bool reset = info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
      const auto ops = engine("profile")->profile(reset);
      Napi::Array a = Napi::Array::New(info.Env(), ops.size());
      for (size_t i = 0; i < ops.size(); ++i) {
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("op", ops[i].op);
        o.Set("calls", static_cast<double>(ops[i].calls));
        o.Set("seconds", ops[i].seconds);
        a.Set(static_cast<uint32_t>(i), o);
      }
      return a;
    });
  }

  // Drops this object's reference; the memory goes when in-flight steps finish.
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    engine_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<Engine> engine_;
};

// planEngineMemory({device, dims, cache: {dC, dR, pageSize, dtype}, maxTokens, maxSeqs, maxSeqlen})
//   -> workspace bytes an engine of these sizes would allocate (nothing is allocated).
Napi::Value PlanEngineMemory(const Napi::CallbackInfo& info) {
  return coded(info.Env(), [&]() -> Napi::Value {
    DSV2_CHECK(info[0].IsObject() && info[0].As<Napi::Object>().Get("dims").IsObject() &&
                   info[0].As<Napi::Object>().Get("cache").IsObject(),
               kArg, "planEngineMemory needs {device, dims, cache, maxTokens, maxSeqs, maxSeqlen}");
    Napi::Object o = info[0].As<Napi::Object>();
    const model::ModelDims m = parse_dims(o.Get("dims").As<Napi::Object>());
    Napi::Object c = o.Get("cache").As<Napi::Object>();
    KvLayout L;
    L.d_c = int_prop(c, "dC");
    L.d_r = int_prop(c, "dR");
    L.page_size = int_prop(c, "pageSize", 64);
    std::string dt = str_prop(c, "dtype", "bf16");
    if (dt == "fp8") dt = "fp8_e4m3";
    DSV2_CHECK(parse_dtype(dt, &L.dtype), kDtype, "cache.dtype '" << dt << "' must be f32, bf16 or fp8");
    const std::string dev = str_prop(o, "device", "cpu");
    DSV2_CHECK(dev == "cpu" || dev == "cuda", kArg, "device '" << dev << "' must be cpu or cuda");
    return Napi::Number::New(info.Env(), static_cast<double>(model::Engine::plan_workspace(
                                             dev == "cuda" ? Device::kCuda : Device::kCpu, m, L, parse_limits(o))));
  });
}

}  // namespace

void register_engine(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", EngineWrap::Define(env));
  exports.Set("planEngineMemory", Napi::Function::New(env, PlanEngineMemory, "planEngineMemory"));
}

}  // namespace dsv2::addon
