// N-API entry points of the MLA, FP8 and MoE ops (argument order as in lib/native.ts).
#include <algorithm>
#include <cmath>
#include <memory>

#include "bindings.h"
#include "call.h"
#include "dsv2/ops.h"
#include "dsv2/status.h"
#include "job.h"
#include "kv_cache.h"
#include "../src/ops_cuda.h"

namespace dsv2::addon {
namespace {

Fp8Granularity granularity(const std::string& s) {
  if (s == "tensor") return Fp8Granularity::kTensor;
  if (s == "token") return Fp8Granularity::kToken;
  if (s == "tile") return Fp8Granularity::kTile;
  DSV2_FAIL(kArg, "granularity '" << s << "' is not one of tensor, token, tile");
}

int64_t integer(Call& c, size_t i, const char* name) {
  const double v = c.number(i, name);
  DSV2_CHECK(v == std::floor(v) && std::fabs(v) <= 9007199254740991.0, kRange, name << " = " << v << " must be an integer");
  return static_cast<int64_t>(v);
}

// headsGemm(x, weight, impl)
Napi::Value HeadsGemm(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    HeadsGemmParams p;
    auto outs = c.outputs(ops::check_heads_gemm(c.tensor(0, "x"), c.tensor(1, "weight"), &p));
    p.y = static_cast<float*>(outs[0]);
    Impl impl = c.impl(2);
    return c.start([p, impl] { ops::heads_gemm(p, impl); }, false, 2.0 * p.t * p.h * p.n * p.k);
  });
}

// mlaDecode(q, cache, layer, blockTable, seqlens, scale, splitTokens, impl) -> [out, lse]
Napi::Value MlaDecode(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    auto s = kv_storage_of(info.Env(), info[1], "cache");
    MlaDecodeParams p;
    auto outs = c.outputs(ops::check_mla_decode(c.tensor(0, "q"), kv_layer_of(*s, info[2]), c.tensor(3, "blockTable"),
                                                c.tensor(4, "seqlens"), c.number(5, "scale"),
                                                integer(c, 6, "splitTokens"), &p));
    p.out = static_cast<float*>(outs[0]);
    p.lse = static_cast<float*>(outs[1]);
    p.block_table = static_cast<const int32_t*>(c.snapshot(p.block_table, p.b * p.max_blocks * sizeof(int32_t)));
    p.seqlens = static_cast<const int32_t*>(c.snapshot(p.seqlens, p.b * sizeof(int32_t)));
    Impl impl = c.impl(7);
    double keys = 0;  // keys actually read (seqlens are host data, checked again by the op)
    for (int64_t i = 0; i < p.b; ++i) keys += std::max<int32_t>(0, p.seqlens[i]);
    const double cost = s->device == Device::kCuda ? 1e300 : 4.0 * p.s_q * p.h_q * (p.d_c + p.d_r) * keys;
    return c.start([p, impl, s] { ops::mla_decode(p, impl); }, false, cost);
  });
}

// mlaPrefill(q, cache, layer, blockTable, seqlens, cuSeqlensQ, kvB, scale, dNope, dV, impl)
Napi::Value MlaPrefill(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    auto s = kv_storage_of(info.Env(), info[1], "cache");
    MlaPrefillParams p;
    auto outs = c.outputs(ops::check_mla_prefill(
        c.tensor(0, "q"), kv_layer_of(*s, info[2]), c.tensor(3, "blockTable"), c.tensor(4, "seqlens"),
        c.tensor(5, "cuSeqlensQ"), c.tensor(6, "kvB"), c.number(7, "scale"), integer(c, 8, "dNope"),
        integer(c, 9, "dV"), &p));
    p.out = static_cast<float*>(outs[0]);
    p.block_table = static_cast<const int32_t*>(c.snapshot(p.block_table, p.b * p.max_blocks * sizeof(int32_t)));
    p.seqlens = static_cast<const int32_t*>(c.snapshot(p.seqlens, p.b * sizeof(int32_t)));
    p.cu_seqlens_q = static_cast<const int32_t*>(c.snapshot(p.cu_seqlens_q, (p.b + 1) * sizeof(int32_t)));
    Impl impl = c.impl(10);
    return c.start([p, impl, s] { ops::mla_prefill(p, impl); });
  });
}

// fp8Quantize(x, granularity, tileSize, pow2, impl, scales | null) -> [codes, scales]
Napi::Value Fp8Quantize(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    Fp8QuantParams p;
    TensorView given;
    const bool has_given = c.optional_tensor(5, "scales", &given);
    auto outs = c.outputs(ops::check_fp8_quantize(c.tensor(0, "x"), granularity(c.string(1, "granularity")),
                                                  integer(c, 2, "tileSize"), c.boolean(3, "pow2Scale"),
                                                  has_given ? &given : nullptr, &p));
    p.codes = static_cast<uint8_t*>(outs[0]);
    p.scales = static_cast<float*>(outs[1]);
    Impl impl = c.impl(4);
    return c.start([p, impl] { ops::fp8_quantize(p, impl); });
  });
}

// fp8Dequantize(codes, scales, granularity, tileSize, impl)
Napi::Value Fp8Dequantize(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    Fp8DequantParams p;
    auto outs = c.outputs(ops::check_fp8_dequantize(c.tensor(0, "codes"), c.tensor(1, "scales"),
                                                    granularity(c.string(2, "granularity")), integer(c, 3, "tileSize"), &p));
    p.y = static_cast<float*>(outs[0]);
    Impl impl = c.impl(4);
    return c.start([p, impl] { ops::fp8_dequantize(p, impl); });
  });
}

// moeRoute(logits, {topK, method, scoring, nGroup, topkGroup, normTopkProb, routedScalingFactor}, bias | null, impl)
//   -> [ids, weights, tokensPerExpert, tokensPerGroup]
Napi::Value MoeRoute(const Napi::CallbackInfo& info) {
  return run_op(info, [](Call& c) {
    Napi::Object o = c.object(1, "options");
    MoeRouteParams p;
    p.top_k = get_integer(o, "topK", "topK", -1);
    p.n_group = get_integer(o, "nGroup", "nGroup", 1);
    p.topk_group = get_integer(o, "topkGroup", "topkGroup", 1);
    const std::string method = o.Get("method").IsString() ? o.Get("method").As<Napi::String>().Utf8Value() : "";
    if (method == "greedy") p.method = MoeMethod::kGreedy;
    else if (method == "group_limited_greedy") p.method = MoeMethod::kGroupLimitedGreedy;
    else if (method == "noaux_tc") p.method = MoeMethod::kNoauxTc;
    else DSV2_FAIL(kArg, "method '" << method << "' is not one of greedy, group_limited_greedy, noaux_tc");
    const std::string scoring =
        o.Get("scoring").IsString() ? o.Get("scoring").As<Napi::String>().Utf8Value() : "softmax";
    if (scoring == "softmax") p.scoring = MoeScoring::kSoftmax;
    else if (scoring == "sigmoid") p.scoring = MoeScoring::kSigmoid;
    else DSV2_FAIL(kArg, "scoring '" << scoring << "' is not one of softmax, sigmoid");
    p.norm_topk_prob = o.Get("normTopkProb").ToBoolean().Value();
    p.routed_scaling_factor = static_cast<float>(get_number(o, "routedScalingFactor", "routedScalingFactor", 1));
    const std::string device = o.Get("device").IsString() ? o.Get("device").As<Napi::String>().Utf8Value() : "cpu";
    DSV2_CHECK(device == "cpu" || device == "cuda", kArg, "device '" << device << "' must be cpu or cuda");
    p.device = device == "cuda" ? Device::kCuda : Device::kCpu;
    TensorView bias;
    const bool has_bias = c.optional_tensor(2, "bias", &bias);
    auto outs = c.outputs(ops::check_moe_route(c.tensor(0, "logits"), has_bias ? &bias : nullptr, &p));
    p.ids = static_cast<int32_t*>(outs[0]);
    p.weights = static_cast<float*>(outs[1]);
    p.tokens_per_expert = static_cast<int32_t*>(outs[2]);
    p.tokens_per_group = static_cast<int32_t*>(outs[3]);
    Impl impl = c.impl(3);
    return c.start([p, impl] { ops::moe_route(p, impl); }, false, p.device == Device::kCuda ? 1e300 : 30.0 * p.t * p.e);
  });
}

// moeExperts(x, ids, weights, gateUp, down, sharedGateUp | null, sharedDown | null, impl, device,
//            gateUpScale | null, downScale | null)   (the scales: fp8_e4m3 expert weights only)
Napi::Value MoeExperts(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) {
    MoeExpertsParams p;
    TensorView sgu, sd, gus, dns;
    const bool has_sgu = c.optional_tensor(5, "shared.gateUp", &sgu);
    const bool has_sd = c.optional_tensor(6, "shared.down", &sd);
    const bool has_gus = c.optional_tensor(9, "experts.gateUpScale", &gus);
    const bool has_dns = c.optional_tensor(10, "experts.downScale", &dns);
    auto outs = c.outputs(ops::check_moe_experts(c.tensor(0, "x"), c.tensor(1, "ids"), c.tensor(2, "weights"),
                                                 c.tensor(3, "experts.gateUp"), c.tensor(4, "experts.down"),
                                                 has_sgu ? &sgu : nullptr, has_sd ? &sd : nullptr, &p,
                                                 has_gus ? &gus : nullptr, has_dns ? &dns : nullptr));
    p.y = static_cast<float*>(outs[0]);
    p.ids = static_cast<const int32_t*>(c.snapshot(p.ids, p.t * p.top_k * sizeof(int32_t)));
    Impl impl = c.impl(7);
    if (!info[8].IsUndefined() && c.string(8, "device") == "cuda") p.device = Device::kCuda;
    const double cost = p.device == Device::kCuda ? 1e300 : 6.0 * p.t * p.top_k * p.hidden * p.inter + 6.0 * p.t * p.hidden * p.inter_shared;
    return c.start([p, impl] { ops::moe_experts(p, impl); }, false, cost);
  });
}

// benchMlaDecodeCuda(q, cache, layer, blockTable, seqlens, scale, splitTokens, iters)
//   -> {ms, items, kernel}: kernel-only time, inputs resident on the device (a cuda cache).
Napi::Value BenchMlaDecodeCuda(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) -> Napi::Value {
    auto s = kv_storage_of(info.Env(), info[1], "cache");
    DSV2_CHECK(s->device == Device::kCuda, kDevice, "cache: the decode benchmark needs a cuda KV cache");
    MlaDecodeParams p;
    c.outputs(ops::check_mla_decode(c.tensor(0, "q"), kv_layer_of(*s, info[2]), c.tensor(3, "blockTable"),
                                    c.tensor(4, "seqlens"), c.number(5, "scale"), integer(c, 6, "splitTokens"), &p));
    const int iters = static_cast<int>(integer(c, 7, "iters"));
    auto r = std::make_shared<ops::DecodeBench>();
    auto* job = new Job(
        info.Env(), [p, iters, s, r] { *r = ops::mla_decode_cuda_bench(p, iters); },
        [r](Napi::Env env) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          o.Set("ms", r->ms);
          o.Set("items", static_cast<double>(r->n_items));
          o.Set("kernel", r->kernel);
          return o;
        });
    for (int k : {0, 1, 3, 4}) job->keep(info[k].As<Napi::Object>());  // info[2] is the layer number
    return job->start();
  });
}

// benchMlaPrefillCuda(q, cache, layer, blockTable, seqlens, cuSeqlensQ, kvB, scale, dNope, dV, iters, gemmSize)
//   -> {ms, attendMs, gemmMs, kernel, gemmKernel}: kernel-only times, inputs resident on the device (a cuda cache).
Napi::Value BenchMlaPrefillCuda(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) -> Napi::Value {
    auto s = kv_storage_of(info.Env(), info[1], "cache");
    DSV2_CHECK(s->device == Device::kCuda, kDevice, "cache: the prefill benchmark needs a cuda KV cache");
    MlaPrefillParams p;
    ops::check_mla_prefill(c.tensor(0, "q"), kv_layer_of(*s, info[2]), c.tensor(3, "blockTable"), c.tensor(4, "seqlens"),
                           c.tensor(5, "cuSeqlensQ"), c.tensor(6, "kvB"), c.number(7, "scale"), integer(c, 8, "dNope"),
                           integer(c, 9, "dV"), &p);  // no host output: the benchmark keeps it on the device
    const int iters = static_cast<int>(integer(c, 10, "iters"));
    const int64_t gemm_size = integer(c, 11, "gemmSize");
    auto r = std::make_shared<ops::PrefillBench>();
    auto* job = new Job(
        info.Env(), [p, iters, gemm_size, s, r] { *r = ops::mla_prefill_cuda_bench(p, iters, gemm_size); },
        [r](Napi::Env env) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          o.Set("ms", r->ms);
          o.Set("attendMs", r->attend_ms);
          o.Set("gemmMs", r->gemm_ms);
          o.Set("kernel", r->kernel);
          o.Set("gemmKernel", r->gemm_kernel);
          return o;
        });
    for (int k : {0, 1, 3, 4, 5, 6}) job->keep(info[k].As<Napi::Object>());  // info[2] is the layer number
    return job->start();
  });
}

// benchMoeRouteCuda(logits, options, bias | null, iters) -> {us, kernel}: µs per routing call
// (logits on the device); options.unfused times the one-launch-per-step baseline instead.
Napi::Value BenchMoeRouteCuda(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) -> Napi::Value {
    Napi::Object o = c.object(1, "options");
    MoeRouteParams p;
    p.top_k = static_cast<int64_t>(get_number(o, "topK", "topK", -1));
    p.n_group = static_cast<int64_t>(get_number(o, "nGroup", "nGroup", 1));
    p.topk_group = static_cast<int64_t>(get_number(o, "topkGroup", "topkGroup", 1));
    const std::string method = o.Get("method").IsString() ? o.Get("method").As<Napi::String>().Utf8Value() : "";
    p.method = method == "noaux_tc" ? MoeMethod::kNoauxTc : method == "group_limited_greedy" ? MoeMethod::kGroupLimitedGreedy : MoeMethod::kGreedy;
    p.scoring = o.Get("scoring").IsString() && o.Get("scoring").As<Napi::String>().Utf8Value() == "sigmoid" ? MoeScoring::kSigmoid : MoeScoring::kSoftmax;
    p.norm_topk_prob = o.Get("normTopkProb").ToBoolean().Value();
    p.routed_scaling_factor = static_cast<float>(get_number(o, "routedScalingFactor", "routedScalingFactor", 1));
    const bool unfused = o.Get("unfused").ToBoolean().Value();
    TensorView bias;
    const bool has_bias = c.optional_tensor(2, "bias", &bias);
    c.outputs(ops::check_moe_route(c.tensor(0, "logits"), has_bias ? &bias : nullptr, &p));
    const int iters = static_cast<int>(integer(c, 3, "iters"));
    auto us = std::make_shared<double>(0);
    auto* job = new Job(info.Env(), [p, iters, unfused, us] { *us = ops::moe_route_cuda_bench(p, iters, unfused); },
                        [us, unfused, p](Napi::Env env) -> Napi::Value {
                          Napi::Object r = Napi::Object::New(env);
                          r.Set("us", *us);
                          r.Set("kernel", unfused ? "unfused" : ops::moe_route_cuda_kernel_name(p));
                          return r;
                        });
    job->keep(info[0].As<Napi::Object>());
    if (has_bias) job->keep(info[2].As<Napi::Object>());
    return job->start();
  });
}

// benchMoeExpertsCuda({t, hidden, inter, nExperts, topK, interShared, seed, fp8?}, iters)
//   -> {ms, kernel, expertsHit, weightBytes, flops, gemmMs, gemmKernel, gemmFlops}: kernel-only
//   moe_experts with random bf16 (fp8: block-scaled e4m3 routed) weights resident on the device
//   and seeded random routing.
Napi::Value BenchMoeExpertsCuda(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) -> Napi::Value {
    Napi::Object o = c.object(0, "shape");
    ops::MoeExpertsBenchShape b;
    b.t = get_integer(o, "t", "t", -1);
    b.hidden = get_integer(o, "hidden", "hidden", -1);
    b.inter = get_integer(o, "inter", "inter", -1);
    b.n_experts = get_integer(o, "nExperts", "nExperts", -1);
    b.top_k = get_integer(o, "topK", "topK", -1);
    b.inter_shared = get_integer(o, "interShared", "interShared", 0);
    b.seed = static_cast<uint64_t>(get_integer(o, "seed", "seed", 0));
    b.fp8 = o.Get("fp8").ToBoolean().Value();
    b.i8 = o.Get("i8").ToBoolean().Value();
    DSV2_CHECK(!(b.fp8 && b.i8), kArg, "fp8 and i8 exclude each other");
    const int iters = static_cast<int>(integer(c, 1, "iters"));
    auto r = std::make_shared<ops::MoeExpertsBench>();
    auto* job = new Job(
        info.Env(), [b, iters, r] { *r = ops::moe_experts_cuda_bench(b, iters); },
        [r](Napi::Env env) -> Napi::Value {
          Napi::Object x = Napi::Object::New(env);
          x.Set("ms", r->ms);
          x.Set("kernel", r->kernel);
          x.Set("expertsHit", r->experts_hit);
          x.Set("weightBytes", r->weight_bytes);
          x.Set("flops", r->flops);
          x.Set("gemmMs", r->gemm_ms);
          x.Set("gemmKernel", r->gemm_kernel);
          x.Set("gemmFlops", r->gemm_flops);
          return x;
        });
    return job->start();
  });
}

// cudaCopyBandwidth(bytes, iters) -> bytes/s (read + write) of device-to-device copies.
Napi::Value CudaCopyBandwidth(const Napi::CallbackInfo& info) {
  return run_op(info, [&info](Call& c) -> Napi::Value {
    const double bytes = c.number(0, "bytes");
    DSV2_CHECK(bytes >= 1 && bytes <= 68719476736.0, kRange, "bytes = " << bytes << " must be in [1, 64 GiB]");
    const int iters = static_cast<int>(integer(c, 1, "iters"));
    auto bw = std::make_shared<double>(0);
    auto* job = new Job(
        info.Env(), [bytes, iters, bw] { *bw = ops::copy_bandwidth_cuda(static_cast<size_t>(bytes), iters); },
        [bw](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *bw); });
    return job->start();
  });
}

}  // namespace

void register_mla_moe(Napi::Env env, Napi::Object exports) {
  exports.Set("headsGemm", Napi::Function::New(env, HeadsGemm, "headsGemm"));
  exports.Set("mlaDecode", Napi::Function::New(env, MlaDecode, "mlaDecode"));
  exports.Set("mlaPrefill", Napi::Function::New(env, MlaPrefill, "mlaPrefill"));
  exports.Set("fp8Quantize", Napi::Function::New(env, Fp8Quantize, "fp8Quantize"));
  exports.Set("fp8Dequantize", Napi::Function::New(env, Fp8Dequantize, "fp8Dequantize"));
  exports.Set("moeRoute", Napi::Function::New(env, MoeRoute, "moeRoute"));
  exports.Set("moeExperts", Napi::Function::New(env, MoeExperts, "moeExperts"));
  exports.Set("benchMlaDecodeCuda", Napi::Function::New(env, BenchMlaDecodeCuda, "benchMlaDecodeCuda"));
  exports.Set("benchMlaPrefillCuda", Napi::Function::New(env, BenchMlaPrefillCuda, "benchMlaPrefillCuda"));
  exports.Set("benchMoeRouteCuda", Napi::Function::New(env, BenchMoeRouteCuda, "benchMoeRouteCuda"));
  exports.Set("benchMoeExpertsCuda", Napi::Function::New(env, BenchMoeExpertsCuda, "benchMoeExpertsCuda"));
  exports.Set("cudaCopyBandwidth", Napi::Function::New(env, CudaCopyBandwidth, "cudaCopyBandwidth"));
}

}  // namespace dsv2::addon
