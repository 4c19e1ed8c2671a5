// N-API entry points of the dense ops: read arguments, check once, allocate outputs, queue.
// Argument order and types mirror lib/native.ts (the typed raw binding) exactly.
#include <memory>

#include "bindings.h"
#include "call.h"
#include "dsv2/ops.h"
#include "dsv2/status.h"
#include "job.h"
#include "../src/ops_cuda.h"

namespace dsv2::addon {
namespace {

// Optional trailing device argument: 'cpu' (default) or 'cuda'.
Device device_arg(const Napi::CallbackInfo& info, Call& c, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return Device::kCpu;
  const std::string d = c.string(i, "device");
  DSV2_CHECK(d == "cpu" || d == "cuda", kArg, "device '" << d << "' must be cpu or cuda");
  return d == "cuda" ? Device::kCuda : Device::kCpu;
}

double cost_on(Device d, double cpu_cost) { return d == Device::kCuda ? 1e300 : cpu_cost; }

// embedding(ids, table, impl)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    EmbeddingParams p;
    auto outs = c.outputs(ops::check_embedding(c.tensor(0, "ids"), c.tensor(1, "table"), &p));
    p.out = static_cast<float*>(outs[0]);
    p.ids = c.snapshot(p.ids, p.n_tokens * dtype_size(p.ids_dtype));
    Impl impl = c.impl(2);
    p.device = device_arg(info, c, 3);
    return c.start([p, impl] { ops::embedding(p, impl); }, false, cost_on(p.device, 2.0 * p.n_tokens * p.hidden));
  });
}

// rmsNorm(x, weight, eps, impl)
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    RmsNormParams p;
    auto outs = c.outputs(ops::check_rms_norm(c.tensor(0, "x"), c.tensor(1, "weight"), c.number(2, "eps"), &p));
    p.y = static_cast<float*>(outs[0]);
    Impl impl = c.impl(3);
    p.device = device_arg(info, c, 4);
    return c.start([p, impl] { ops::rms_norm(p, impl); }, false, cost_on(p.device, 4.0 * p.rows * p.dim));
  });
}

// ropeTable({dim, maxPositions, theta, yarn?}) -> [cos, sin]
Napi::Value RopeTable(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    Napi::Object o = c.object(0, "options");
    RopeTableParams p;
    p.dim = get_integer(o, "dim", "dim", -1);
    p.max_pos = get_integer(o, "maxPositions", "maxPositions", -1);
    p.theta = get_number(o, "theta", "theta", 10000);
    if (has(o, "yarn")) {
      DSV2_CHECK(o.Get("yarn").IsObject(), kArg, "yarn must be an object");
      Napi::Object y = o.Get("yarn").As<Napi::Object>();
      p.yarn.enabled = true;
      p.yarn.factor = get_number(y, "factor", "yarn.factor", 1);
      p.yarn.original_max_position_embeddings =
          get_number(y, "originalMaxPositionEmbeddings", "yarn.originalMaxPositionEmbeddings", 4096);
      p.yarn.beta_fast = get_number(y, "betaFast", "yarn.betaFast", 32);
      p.yarn.beta_slow = get_number(y, "betaSlow", "yarn.betaSlow", 1);
      p.yarn.mscale = get_number(y, "mscale", "yarn.mscale", 1);
      p.yarn.mscale_all_dim = get_number(y, "mscaleAllDim", "yarn.mscaleAllDim", 0);
    }
    auto outs = c.outputs(ops::check_rope_table(&p));
    p.cos = static_cast<float*>(outs[0]);
    p.sin = static_cast<float*>(outs[1]);
    return c.start([p] { ops::rope_table(p); });
  });
}

// rope(x, positions, cos, sin, interleaved, impl)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    RopeParams p;
    auto outs = c.outputs(ops::check_rope(c.tensor(0, "x"), c.tensor(1, "positions"), c.tensor(2, "cos"),
                                          c.tensor(3, "sin"), c.boolean(4, "interleaved"), &p));
    p.out = static_cast<float*>(outs[0]);
    p.positions = c.snapshot(p.positions, p.n_tokens * dtype_size(p.positions_dtype));
    Impl impl = c.impl(5);
    p.device = device_arg(info, c, 6);
    return c.start([p, impl] { ops::rope(p, impl); }, false, cost_on(p.device, 6.0 * p.n_tokens * p.n_heads * p.dim));
  });
}

// siluMul(gate, up | null, impl)
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    SiluMulParams p;
    TensorView up;
    TensorView gate = c.tensor(0, "gate");
    bool has_up = c.optional_tensor(1, "up", &up);
    auto outs = c.outputs(ops::check_silu_mul(gate, has_up ? &up : nullptr, &p));
    p.out = static_cast<float*>(outs[0]);
    Impl impl = c.impl(2);
    p.device = device_arg(info, c, 3);
    return c.start([p, impl] { ops::silu_mul(p, impl); }, false, cost_on(p.device, 20.0 * p.rows * p.inter));
  });
}

// gemm(x, weight, impl, device = 'cpu' | 'cuda')
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    GemmParams p;
    TensorView scale;
    const bool scaled = c.optional_tensor(4, "scale", &scale);
    auto outs = c.outputs(ops::check_gemm(c.tensor(0, "x"), c.tensor(1, "weight"), &p, scaled ? &scale : nullptr));
    p.y = static_cast<float*>(outs[0]);
    Impl impl = c.impl(2);
    p.device = device_arg(info, c, 3);
    return c.start([p, impl] { ops::gemm(p, impl); }, false, cost_on(p.device, 2.0 * p.m * p.n * p.k));
  });
}

// benchGemmCuda(x, weight, iters, scale?) -> {ms, kernel}: kernel-only, x and W (and the
// 8-bit weights' block scales) resident on the device.
Napi::Value BenchGemmCuda(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) -> Napi::Value {
    GemmParams p;
    TensorView scale;
    const bool scaled = c.optional_tensor(3, "scale", &scale);
    c.outputs(ops::check_gemm(c.tensor(0, "x"), c.tensor(1, "weight"), &p, scaled ? &scale : nullptr));
    const int iters = static_cast<int>(c.number(2, "iters"));
    auto r = std::make_shared<ops::GemmBench>();
    auto* job = new Job(info.Env(), [p, iters, r] { *r = ops::gemm_cuda_bench(p, iters); },
                        [r](Napi::Env env) -> Napi::Value {
                          Napi::Object o = Napi::Object::New(env);
                          o.Set("ms", r->ms);
                          o.Set("kernel", r->kernel);
                          return o;
                        });
    job->keep(info[0].As<Napi::Object>());
    job->keep(info[1].As<Napi::Object>());
    if (scaled) job->keep(info[3].As<Napi::Object>());
    return job->start();
  });
}

// softmax(x, scale, impl)
Napi::Value Softmax(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    SoftmaxParams p;
    auto outs = c.outputs(ops::check_softmax(c.tensor(0, "x"), c.number(1, "scale"), &p));
    p.y = static_cast<float*>(outs[0]);
    Impl impl = c.impl(2);
    p.device = device_arg(info, c, 3);
    return c.start([p, impl] { ops::softmax(p, impl); }, false, cost_on(p.device, 20.0 * p.rows * p.n));
  });
}

// sample(logits, {temperature, topK, topP, seed: bigint}, impl)
Napi::Value Sample(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    Napi::Object o = c.object(1, "options");
    SampleParams p;
    p.temperature = get_number(o, "temperature", "temperature", 0);
    double k = get_number(o, "topK", "topK", 0);
    DSV2_CHECK(k == static_cast<double>(static_cast<int64_t>(k)), kRange, "topK = " << k << " must be an integer");
    p.top_k = static_cast<int64_t>(k);
    p.top_p = get_number(o, "topP", "topP", 1);
    Napi::Value seed = o.Get("seed");
    if (seed.IsBigInt()) {
      bool lossless = true;
      p.seed = seed.As<Napi::BigInt>().Uint64Value(&lossless);
      DSV2_CHECK(lossless, kRange, "seed must fit in 64 unsigned bits");
    } else {
      DSV2_CHECK(seed.IsUndefined(), kArg, "seed must be a bigint");
    }
    auto outs = c.outputs(ops::check_sample(c.tensor(0, "logits"), &p));
    p.out = static_cast<int32_t*>(outs[0]);
    Impl impl = c.impl(2);
    const Napi::Value dev = o.Get("device");
    DSV2_CHECK(dev.IsUndefined() || (dev.IsString() && (dev.As<Napi::String>().Utf8Value() == "cpu" ||
                                                        dev.As<Napi::String>().Utf8Value() == "cuda")),
               kArg, "device must be cpu or cuda");
    if (dev.IsString() && dev.As<Napi::String>().Utf8Value() == "cuda") return c.start([p] { ops::sample_cuda(p); });
    return c.start([p, impl] { ops::sample(p, impl); }, false, 40.0 * p.rows * p.vocab);
  });
}

// quantizeWeight(w [n, k] f32|bf16|f16, 'i8'|'fp8_e4m3') -> [codes [n, k], scale f32 [ceil(n/128), ceil(k/128)]]
Napi::Value QuantizeWeight(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    const TensorView w = c.tensor(0, "weight");
    const std::string to = c.string(1, "dtype");
    DType t;
    DSV2_CHECK(parse_dtype(to, &t) && (t == DType::kI8 || t == DType::kFP8E4M3), kDtype,
               "dtype '" << to << "' must be i8 or fp8_e4m3");
    DSV2_CHECK(w.device == Device::kCpu, kDevice, "weight must be a cpu tensor");
    DSV2_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kBF16 || w.dtype == DType::kF16, kDtype,
               "weight: dtype " << dtype_name(w.dtype) << " must be f32, bf16 or f16");
    DSV2_CHECK(w.shape.size() == 2, kShape, "weight: shape " << shape_str(w.shape) << " must be [n, k]");
    const int64_t n = w.shape[0], k = w.shape[1];
    auto outs = c.outputs({{t, {n, k}}, {DType::kF32, {(n + kWeightBlock - 1) / kWeightBlock, (k + kWeightBlock - 1) / kWeightBlock}}});
    const void* src = w.data;
    const DType wd = w.dtype;
    void* codes = outs[0];
    float* scales = static_cast<float*>(outs[1]);
    return c.start([=] { ops::quantize_weight(src, wd, n, k, t, codes, scales, true); }, false, 4.0 * n * k);
  });
}

// cast(x, dtype, impl)
Napi::Value Cast(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    CastParams p;
    std::string to = c.string(1, "dtype");
    DType t;
    DSV2_CHECK(parse_dtype(to, &t), kDtype, "dtype '" << to << "' is not a dsv2 dtype");
    auto outs = c.outputs(ops::check_cast(c.tensor(0, "x"), t, &p));
    p.dst = outs[0];
    Impl impl = c.impl(2);
    return c.start([p, impl] { ops::cast(p, impl); }, false, 2.0 * p.n);
  });
}

// copyBandwidth(bytes, iters[, read]) -> seconds per copy (read: seconds per read pass)
Napi::Value CopyBandwidth(const Napi::CallbackInfo& info) {
  Call c(info);
  const bool read = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  return rejecting(info.Env(), [&]() -> Napi::Value {
    double bytes = c.number(0, "bytes"), iters = c.number(1, "iters");
    DSV2_CHECK(bytes >= 1 && bytes <= 17179869184.0, kRange, "bytes = " << bytes << " must be in [1, 16 GiB]");
    auto secs = std::make_shared<double>(0);
    auto* job = new Job(
        info.Env(),
        [secs, bytes, iters, read] {
          *secs = read ? ops::read_bandwidth_seconds(static_cast<size_t>(bytes), static_cast<int>(iters))
                       : ops::copy_bandwidth_seconds(static_cast<size_t>(bytes), static_cast<int>(iters));
        },
        [secs](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *secs); });
    return job->start();
  });
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding", Napi::Function::New(env, Embedding, "embedding"));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm, "rmsNorm"));
  exports.Set("ropeTable", Napi::Function::New(env, RopeTable, "ropeTable"));
  exports.Set("rope", Napi::Function::New(env, Rope, "rope"));
  exports.Set("siluMul", Napi::Function::New(env, SiluMul, "siluMul"));
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
  exports.Set("benchGemmCuda", Napi::Function::New(env, BenchGemmCuda, "benchGemmCuda"));
  exports.Set("softmax", Napi::Function::New(env, Softmax, "softmax"));
  exports.Set("sample", Napi::Function::New(env, Sample, "sample"));
  exports.Set("cast", Napi::Function::New(env, Cast, "cast"));
  exports.Set("quantizeWeight", Napi::Function::New(env, QuantizeWeight, "quantizeWeight"));
  exports.Set("copyBandwidth", Napi::Function::New(env, CopyBandwidth, "copyBandwidth"));
}

}  // namespace dsv2::addon
