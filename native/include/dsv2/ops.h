// Entry points of the core: validate once, then dispatch to an implementation.
//
// Each op has two halves so the addon can allocate outputs in between:
//   check_<op>(inputs..., params*)  validates shapes, dtypes, devices and attributes, throws
//                                   dsv2::Error naming the offending argument, fills the
//                                   params (all but output pointers), returns the outputs;
//   <op>(params, impl)              does the work; throws only for data-dependent problems
//                                   (an out-of-range token id, a NaN logit).
#pragma once
#include <string>
#include <vector>

#include "dsv2/dense.h"
#include "dsv2/tensor.h"

namespace dsv2::ops {

std::vector<OutSpec> check_embedding(const TensorView& ids, const TensorView& table, EmbeddingParams* p);
void embedding(const EmbeddingParams& p, Impl impl);

std::vector<OutSpec> check_rms_norm(const TensorView& x, const TensorView& w, double eps, RmsNormParams* p);
void rms_norm(const RmsNormParams& p, Impl impl);

std::vector<OutSpec> check_rope_table(RopeTableParams* p);  // p: dim, max_pos, theta, yarn set
void rope_table(const RopeTableParams& p);

std::vector<OutSpec> check_rope(const TensorView& x, const TensorView& positions, const TensorView& cos,
                                const TensorView& sin, bool interleaved, RopeParams* p);
void rope(const RopeParams& p, Impl impl);

// up may be null: then gate is [..., 2 * inter] holding gate then up.
std::vector<OutSpec> check_silu_mul(const TensorView& gate, const TensorView* up, SiluMulParams* p);
void silu_mul(const SiluMulParams& p, Impl impl);

std::vector<OutSpec> check_gemm(const TensorView& x, const TensorView& w, GemmParams* p);
void gemm(const GemmParams& p, Impl impl);

std::vector<OutSpec> check_softmax(const TensorView& x, double scale, SoftmaxParams* p);
void softmax(const SoftmaxParams& p, Impl impl);

std::vector<OutSpec> check_sample(const TensorView& logits, SampleParams* p);  // p: options set
void sample(const SampleParams& p, Impl impl);

std::vector<OutSpec> check_cast(const TensorView& x, DType to, CastParams* p);
void cast(const CastParams& p, Impl impl);

// Multi-threaded memcpy of `bytes` bytes, `iters` times: the machine's copy bandwidth, the
// roofline the benchmarks report against. Returns seconds per copy (best of iters).
double copy_bandwidth_seconds(size_t bytes, int iters);

}  // namespace dsv2::ops
