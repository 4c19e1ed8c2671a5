// DSV2_HD marks functions that compile for the host and, inside .cu files, for the device:
// the CUDA kernels share them with the CPU ops, which keeps their results bit-identical.
#pragma once

#ifdef __CUDACC__
#define DSV2_HD __host__ __device__
#else
#define DSV2_HD
#endif
