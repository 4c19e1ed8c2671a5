// Internals shared by the absorbed-MLA decode kernels (mla_decode.cu: plan, generic kernel,
// combine, dispatch; mla_decode_mma.cu: the tensor-core kernel for d_c = 512, d_r = 64).
//
// The split plan lives in the caller's workspace and is written on the device by
// mla_decode_plan_kernel from the device seqlens, so a decode step never synchronises with the
// host. Work is measured in 64-key blocks plus kPlanSeqOverhead blocks per sequence (loading
// q, the pipeline fill and the epilogue cost about as much as two key blocks); the batch's
// work line is cut into n_parts equal parts and every part boundary that falls inside a
// sequence's key blocks cuts that sequence there. Hence:
//   - every sequence has ≥ 1 item (an empty sequence has one empty item, which writes out 0 /
//     lse +inf), items start at multiples of 64 keys, and items ≤ b + n_parts - 1;
//   - items are numbered in (sequence, key) order, and their parts are non-decreasing, so the
//     items of part p are [part_item_begin[p], part_item_begin[p + 1]);
//   - a sequence with one item is written straight to out / lse by the attention kernel; one
//     with several ("split", at most n_parts - 1 of them, listed in split_seq) gets per-item
//     partials (normalised out, natural-log lse or -inf) merged by the combine kernel.
#pragma once
#include <cstdint>

#include "dsv2/mla.h"

namespace dsv2::cuda::mla {

constexpr int kPlanBlockKeys = 64;    // key granularity of the cuts
constexpr int kPlanSeqOverhead = 2;   // per-sequence cost, in key blocks

struct Plan {
  int32_t* item_seq = nullptr;         // [capacity]
  int32_t* item_t0 = nullptr;          // [capacity]  keys [t0, t1) of the item's sequence
  int32_t* item_t1 = nullptr;          // [capacity]
  int32_t* item_part = nullptr;        // [capacity]
  int32_t* seq_item_begin = nullptr;   // [b + 1]
  int32_t* part_item_begin = nullptr;  // [n_parts + 1]
  int32_t* split_seq = nullptr;        // [n_parts]
  int32_t* counts = nullptr;           // [0] n_items, [1] n_split
  float* part_lse = nullptr;           // [capacity, s_q · h_q]
  float* part_out = nullptr;           // [capacity, s_q · h_q, d_c]
  int64_t capacity = 0, n_parts = 0;
};

// Tensor-core kernel (mla_decode_mma.cu). Block keys 64 (H100: 217 KiB of shared memory for
// bf16, 227 KiB for fp8) or 32 (A100's 163 KiB); 0 = does not fit this device.
size_t mma_smem_bytes(int block_keys, bool fp8);
// Grid: n_parts · ceil(s_q · h_q / 64) CTAs of 256 threads.
void launch_mma(const MlaDecodeParams& p, const Plan& plan, int block_keys, void* stream);

}  // namespace dsv2::cuda::mla
