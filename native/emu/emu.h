// dsv2 CUDA emulator, internals: the fibers and the block scheduler (fiber.cc), used by the
// runtime (runtime.cc) and the PTX instructions (ptx.cc).
//
// Execution model. A grid's blocks run one after another on the launching host thread (under one
// device lock: one kernel at a time). A block's threads are fibers with their own stacks; a fiber
// runs until it reaches a synchronisation point (__syncthreads, a warp-wide operation) or exits,
// and the scheduler then resumes a fiber chosen at random (seeded: DSV2_EMU_SEED) among the
// runnable ones, so the order of threads between barriers changes with the seed and a missing
// __syncthreads shows up as a wrong result. Checks the hardware would not report clearly become
// faults that name the kernel, block and thread: a barrier or warp operation that not every
// required thread reaches (instead of a hang), misaligned vector / cp.async / ldmatrix addresses,
// lanes outside a warp operation's mask. Shared memory starts as NaN (0xff bytes) in every block.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

namespace dsv2emu {

// 32-bit .shared addresses: static shared memory from kStaticBase, dynamic from kDynBase.
constexpr uint32_t kStaticBase = 0x100;
constexpr uint32_t kDynBase = 0x1000000;

struct CpCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};

enum class FiberState : uint8_t { kReady, kBarrier, kWarp, kDone };

struct Fiber {
  ThreadVars vars;
  void* sp = nullptr;
  char* stack = nullptr;  // lowest address (a guard page), stack_size bytes
  size_t stack_size = 0;
  FiberState state = FiberState::kReady;
  int index = 0, warp = 0, lane = 0;
  const char* wait_op = nullptr;
  std::vector<CpCopy> cp_open;               // issued, not committed
  std::deque<std::vector<CpCopy>> cp_groups;  // committed, not waited for (oldest first)
  void* asan_fake = nullptr;
};

struct WarpGroup {
  unsigned mask = 0, arrived = 0;
  const char* op = nullptr;
  void* args[32] = {};
};

// One grid to run: the kernel body (the kernel called with its arguments) for every thread.
struct GridRun {
  const char* kernel = "";
  dim3 grid, block;
  size_t dyn_smem = 0;
  const std::function<void()>* body = nullptr;
  uint64_t seed = 0;
};

// Runs every block of the grid; returns "" or the fault that stopped it.
std::string run_grid(const GridRun& g);
// The fiber running now (nullptr outside a kernel), for ptx.cc.
Fiber* current_fiber();
// The seed of fiber order (DSV2_EMU_SEED, default 1), mixed with a launch counter by the runtime.
uint64_t base_seed();
// Completes copies of one cp.async group (ptx.cc).
void complete_copies(std::vector<CpCopy>& g);

}  // namespace dsv2emu
