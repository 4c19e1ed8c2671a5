// Dense row-wise kernels of the forward pass: embedding, rms_norm, rope, silu_mul, softmax
// (params as the CPU ops in dsv2/dense.h; device pointers). Same formulas as the CPU, in f32
// with block reductions; results agree to f32 rounding (reduction orders differ).
#include <cfloat>

#include "common.cuh"
#include "cuda_ops.h"
#include "../core/dtype.h"

namespace dsv2::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t iget(const void* p, DType t, int64_t i) {
  return t == DType::kI64 ? static_cast<const int64_t*>(p)[i] : static_cast<const int32_t*>(p)[i];
}

// Block-wide reduction (sum or max) of one value per thread; every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float part[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  __syncthreads();  // `part` may still be read from a previous call
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  float r = part[0];
  for (int i = 1; i < kThreads / 32; ++i) r = kMax ? fmaxf(r, part[i]) : r + part[i];
  return r;
}

__global__ void embedding_kernel(EmbeddingParams p) {
  const int64_t t = blockIdx.x;
  const int64_t id = iget(p.ids, p.ids_dtype, t);  // checked on the host
  for (int64_t j = threadIdx.x; j < p.hidden; j += blockDim.x) p.out[t * p.hidden + j] = load_weight(p.table, p.table_dtype, id * p.hidden + j);
}

__global__ void __launch_bounds__(kThreads) rms_norm_kernel(RmsNormParams p) {
  const int64_t r = blockIdx.x;
  const float* x = p.x + r * (p.x_stride ? p.x_stride : p.dim);
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) ss = fmaf(x[j], x[j], ss);
  ss = block_reduce<false>(ss);
  const float inv = rsqrtf(ss / p.dim + p.eps);
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) p.y[r * p.dim + j] = load_weight(p.w, p.w_dtype, j) * (x[j] * inv);
}

__global__ void rope_kernel(RopeParams p) {
  const int64_t t = blockIdx.x;
  const int64_t half = p.dim / 2;
  const int64_t pos = iget(p.positions, p.positions_dtype, t);  // checked on the host
  for (int64_t x = threadIdx.x; x < p.n_heads * half; x += blockDim.x) {
    const int64_t h = x / half, i = x % half;
    const float* in = p.x + (t * p.n_heads + h) * (p.x_stride ? p.x_stride : p.dim);
    float* out = p.out + (t * p.n_heads + h) * (p.out_stride ? p.out_stride : p.dim);
    const float a = p.interleaved ? in[2 * i] : in[i];
    const float b = p.interleaved ? in[2 * i + 1] : in[i + half];
    const float c = p.cos[pos * half + i], s = p.sin[pos * half + i];
    out[i] = a * c - b * s;
    out[i + half] = b * c + a * s;
  }
}

__global__ void silu_mul_kernel(SiluMulParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.rows * p.inter) return;
  const int64_t r = i / p.inter, j = i % p.inter;
  const float g = p.gate[r * p.gate_stride + j];
  p.out[i] = g / (1.0f + expf(-g)) * p.up[r * p.up_stride + j];
}

__global__ void __launch_bounds__(kThreads) softmax_kernel(SoftmaxParams p) {
  const int64_t r = blockIdx.x;
  const float* x = p.x + r * p.n;
  float* y = p.y + r * p.n;
  float mx = -INFINITY;
  int nan = 0;
  for (int64_t j = threadIdx.x; j < p.n; j += blockDim.x) {
    const float v = p.scale * x[j];
    nan |= isnan(v);
    mx = fmaxf(mx, v);
  }
  mx = block_reduce<true>(mx);
  const bool any_nan = block_reduce<false>(static_cast<float>(nan)) > 0.0f;
  if (any_nan || mx == -INFINITY) {  // as the CPU op: a NaN, or an all -inf row, gives NaN
    for (int64_t j = threadIdx.x; j < p.n; j += blockDim.x) y[j] = NAN;
    return;
  }
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < p.n; j += blockDim.x) sum += expf(p.scale * x[j] - mx);
  sum = block_reduce<false>(sum);
  const float inv = 1.0f / sum;
  for (int64_t j = threadIdx.x; j < p.n; j += blockDim.x) y[j] = expf(p.scale * x[j] - mx) * inv;
}

}  // namespace

void embedding(const EmbeddingParams& p, void* stream) {
  if (p.n_tokens == 0) return;
  DSV2_LAUNCH(embedding_kernel, static_cast<unsigned>(p.n_tokens), 128, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void rms_norm(const RmsNormParams& p, void* stream) {
  if (p.rows == 0) return;
  DSV2_LAUNCH(rms_norm_kernel, static_cast<unsigned>(p.rows), kThreads, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void rope(const RopeParams& p, void* stream) {
  if (p.n_tokens == 0) return;
  DSV2_LAUNCH(rope_kernel, static_cast<unsigned>(p.n_tokens), 128, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void silu_mul(const SiluMulParams& p, void* stream) {
  if (p.rows * p.inter == 0) return;
  DSV2_LAUNCH(silu_mul_kernel, ceil_div(p.rows * p.inter, 256), 256, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void softmax(const SoftmaxParams& p, void* stream) {
  if (p.rows == 0 || p.n == 0) return;
  DSV2_LAUNCH(softmax_kernel, static_cast<unsigned>(p.rows), kThreads, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
