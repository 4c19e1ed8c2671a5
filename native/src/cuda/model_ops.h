// CUDA kernels of the native model engine (model_kernels.cu), callable from plain C++: the
// glue between the core kernels of cuda_ops.h — strided column copies, the residual add fused
// with RMSNorm, the per-head projections around absorbed decode, and on-device sampling.
// All pointers are device memory; `stream` is a cudaStream_t.
#pragma once
#include "dsv2/mla.h"
#include "dsv2/engine_ops.h"

namespace dsv2::cuda {

void copy_cols(const CopyColsParams& p, void* stream);
void add_rms_norm(const AddRmsNormParams& p, void* stream);
// y[t, h, :] = x[t, h, :] · w[h]ᵀ, one warp per output column, the weight read once per 8 rows.
void heads_gemm(const HeadsGemmParams& p, void* stream);
// One block per row; the same definition of the draw as the CPU op (dense.h SampleParams):
// logits / T, top-k, top-p (descending logit, lower id first on ties), then the first kept id
// whose cumulative weight exp((l - max) / T) exceeds u · total. Sums are parallel reductions
// in double, so a draw that falls within rounding of a boundary may pick a neighbour of the
// CPU's choice; greedy is exact. Writes p.bad[0] = 1 + a row that could not be sampled.
void sample(const SampleBatchParams& p, void* stream);
// random_value at every index, as f32 or bf16 (the CPU backend's values, bit for bit).
void fill_random(const FillRandomParams& p, void* stream);
// CUDA graphs of a stream's work: begin capturing (relaxed mode), end (an instantiated
// executable graph, or nullptr when the capture was invalidated by an op that cannot be
// captured — the error is cleared), launch, destroy.
void graph_capture_begin(void* stream);
void* graph_capture_end(void* stream) noexcept;
void graph_launch(void* exec, void* stream);
void graph_destroy(void* exec) noexcept;
// Launches a kernel with an invalid configuration (4096 threads per block): the E_CUDA path,
// for tests that a CUDA error is a coded, recoverable error.
void provoke_launch_error(void* stream);

}  // namespace dsv2::cuda
