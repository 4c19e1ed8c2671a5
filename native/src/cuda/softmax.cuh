// Online (streaming) softmax state of one attention row, shared by the decode and prefill
// kernels: push() takes the next scaled score and says how to rescale the running output
// (corr) and with which weight to add the new value row (w). Output = acc / l at the end,
// LSE = m + ln l.
#pragma once
#include <cfloat>

namespace dsv2::cuda {

struct OnlineSoftmax {
  float m = -FLT_MAX, l = 0.0f;
  bool any = false;

  __device__ __forceinline__ void push(float s, float* corr, float* w) {
    const float m_new = fmaxf(m, s);
    *corr = any ? expf(m - m_new) : 0.0f;
    *w = expf(s - m_new);
    l = l * *corr + *w;
    m = m_new;
    any = true;
  }
};

// Sum of `v` over the 32 lanes of a warp (every lane gets it).
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace dsv2::cuda
