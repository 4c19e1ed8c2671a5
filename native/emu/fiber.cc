// dsv2 CUDA emulator: fibers, the block scheduler, barriers and warp-wide operations (see emu.h).
#include "emu.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define DSV2EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace dsv2emu {

// Static shared memory of every kernel (cuda_runtime.h: __shared__ is `static __thread`): this host
// thread's copy lies between the markers of smem_begin.cc and smem_end.cc.
extern __attribute__((visibility("hidden"))) __thread char smem_begin[1];
extern __attribute__((visibility("hidden"))) __thread char smem_end[1];

// The running block, fiber and thread's built-in variables: plain globals, not thread-locals — one
// block runs at a time in the whole process (runtime.cc's device lock), and a thread-local would
// have to be initial-exec to be as fast, which dlopen refuses for a module whose TLS block holds
// the kernels' static shared memory (~120 KB: "cannot allocate memory in static TLS block").
__attribute__((visibility("hidden"))) ThreadVars* t_vars = nullptr;

namespace {

// The fault of a kernel, thrown inside a fiber and caught at its entry.
struct Fault {
  std::string msg;
};

struct Block {
  const GridRun* grid = nullptr;
  std::vector<Fiber>* fibers = nullptr;
  std::vector<Fiber*> ready;
  std::vector<std::vector<WarpGroup>> warps;
  std::vector<unsigned> warp_exists, warp_done;  // lane masks
  int n = 0, done = 0, bar_arrived = 0;
  uint64_t rng = 0;
  std::string error;
  char* dyn = nullptr;
  size_t dyn_bytes = 0;
  char* smem = nullptr;  // static shared memory (this host thread's copy: static_smem())
  size_t smem_bytes = 0;
  void* sched_sp = nullptr;
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#if !defined(__x86_64__)
  ucontext_t sched_ctx;
#endif
};

Block* t_block = nullptr;  // see t_vars
Fiber* t_fiber = nullptr;

// This host thread's static shared memory [p, p + bytes): checked once per thread to hold none of
// the other thread-locals of the module (a wrong link order would otherwise poison them).
struct StaticSmem {
  char* p;
  size_t bytes;
};
StaticSmem static_smem() {
  char* b = smem_begin;
  char* e = smem_end;
  static thread_local bool checked = false;
  if (!checked) {
    checked = true;
    const auto inside = [&](const void* v) { return static_cast<const char*>(v) >= b && static_cast<const char*>(v) < e; };
    if (e < b || inside(&checked)) {
      fprintf(stderr, "dsv2emu: static shared memory markers out of order (native/emu/smem_begin.cc and smem_end.cc must be "
                      "linked right before and after the kernel objects)\n");
      abort();
    }
  }
  return {b, static_cast<size_t>(e - b)};
}

uint64_t next_rand(uint64_t& s) {  // splitmix64
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string where(const Block& b, const Fiber* f) {
  std::ostringstream o;
  o << "kernel " << b.grid->kernel;
  if (f) {
    const ThreadVars& v = f->vars;
    o << ", block (" << v.bid.x << "," << v.bid.y << "," << v.bid.z << "), thread (" << v.tid.x
      << "," << v.tid.y << "," << v.tid.z << ")";
  }
  return o.str();
}

std::string lanes_str(unsigned m) {
  std::ostringstream o;
  bool first = true;
  for (int i = 0; i < 32; ++i) {
    if (!(m >> i & 1)) continue;
    int j = i;
    while (j + 1 < 32 && (m >> (j + 1) & 1)) ++j;
    o << (first ? "" : ",") << i;
    if (j > i) o << "-" << j;
    first = false;
    i = j;
  }
  return first ? "none" : o.str();
}

// ---- stacks ----------------------------------------------------------------------------------
#if defined(DSV2EMU_ASAN)
constexpr size_t kDefaultStack = 1024 * 1024;
#else
constexpr size_t kDefaultStack = 256 * 1024;
#endif

struct StackPool {
  std::vector<char*> stacks;
  size_t size = 0;
  StackPool() {
    const char* e = getenv("DSV2_EMU_STACK_KB");
    size = e ? static_cast<size_t>(atol(e)) * 1024 : kDefaultStack;
    size = std::max<size_t>(size, 64 * 1024) & ~static_cast<size_t>(4095);
  }
  char* get(size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      mprotect(p, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
      stacks.push_back(static_cast<char*>(p));
    }
    return stacks[i];
  }
};
StackPool& stack_pool() {
  static StackPool pool;
  return pool;
}

// ---- context switch --------------------------------------------------------------------------
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, and
// continues on stack `to` (which was saved the same way). MXCSR and the x87 control word are
// not switched: nothing in a kernel changes them.
asm(R"(
  .text
  .p2align 4
  .type dsv2emu_ctx_switch,@function
dsv2emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dsv2emu_ctx_switch,.-dsv2emu_ctx_switch
)");
extern "C" void dsv2emu_ctx_switch(void** save, void* to) asm("dsv2emu_ctx_switch");
#endif

void fiber_entry();

void asan_start(void** fake, const void* bottom, size_t size) {
#if defined(DSV2EMU_ASAN)
  __sanitizer_start_switch_fiber(fake, bottom, size);
#endif
}
void asan_finish(void* fake, const void** bottom, size_t* size) {
#if defined(DSV2EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, bottom, size);
#endif
}

#if !defined(__x86_64__)
std::vector<ucontext_t> g_ctx;  // per fiber (the ucontext fallback of non-x86-64 hosts)
#endif

std::string describe_stall(const Block& b);

// What runs next after a fiber blocks or exits: a runnable fiber picked at random (releasing a
// completed barrier first), or nullptr when the block is finished, faulted or stuck (then
// b.error says why, unless every thread is done).
Fiber* pick(Block& b) {
  for (;;) {
    if (!b.error.empty()) return nullptr;
    if (!b.ready.empty()) {
      const size_t i = next_rand(b.rng) % b.ready.size();
      Fiber* f = b.ready[i];
      b.ready[i] = b.ready.back();
      b.ready.pop_back();
      return f;
    }
    if (b.done == b.n) return nullptr;
    std::vector<Fiber>& fs = *b.fibers;
    auto block = [&] {
      return "block (" + std::to_string(fs[0].vars.bid.x) + "," + std::to_string(fs[0].vars.bid.y) + "," +
             std::to_string(fs[0].vars.bid.z) + ")";
    };
    if (b.bar_arrived > 0 && b.bar_arrived + b.done == b.n) {
      bool warp_waiting = false;
      for (auto& w : b.warps) warp_waiting = warp_waiting || !w.empty();
      if (b.done > 0 || warp_waiting) {
        b.error = "__syncthreads() not reached by every thread of the block: " + describe_stall(b) + " (" +
                  where(b, nullptr) + ", " + block() + ")";
        return nullptr;
      }
      b.bar_arrived = 0;
      for (Fiber& f : fs)
        if (f.state == FiberState::kBarrier) {
          f.state = FiberState::kReady;
          b.ready.push_back(&f);
        }
      continue;
    }
    b.error = "deadlock: " + describe_stall(b) + " (" + where(b, nullptr) + ", " + block() + ")";
    return nullptr;
  }
}

// Leaves `from` (a fiber, or the scheduler when nullptr) for `to` (a fiber, or the scheduler).
void switch_to(Block& b, Fiber* from, Fiber* to) {
  void** save = from ? &from->sp : &b.sched_sp;
  void* target = to ? to->sp : b.sched_sp;
  t_fiber = to;
  t_vars = to ? &to->vars : nullptr;
  void** fake = from ? (from->state == FiberState::kDone ? nullptr : &from->asan_fake) : &b.sched_fake;
  if (to) asan_start(fake, to->stack + 4096, to->stack_size - 4096);
  else asan_start(fake, b.sched_bottom, b.sched_size);
#if defined(__x86_64__)
  dsv2emu_ctx_switch(save, target);
#else
  swapcontext(from ? &g_ctx[from->index] : &b.sched_ctx, to ? &g_ctx[to->index] : &b.sched_ctx);
  (void)save;
  (void)target;
#endif
  asan_finish(from ? from->asan_fake : b.sched_fake, nullptr, nullptr);
}

// Fiber f stops here (blocked, or done for good) and the next one runs; returns when f is resumed.
void suspend(Block& b, Fiber* f) {
  Fiber* next = pick(b);
  if (next == f) {  // runnable again at once (a barrier it completed)
    t_fiber = f;
    t_vars = &f->vars;
    return;
  }
  switch_to(b, f, next);
}

void init_fiber_stack(Fiber& f) {
#if defined(DSV2EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(f.stack + 4096, f.stack_size - 4096);
#endif
#if defined(__x86_64__)
  // Stacks are stack_size apart; shifting each top by a few cache lines keeps the fibers' hot
  // frames out of one cache set.
  uint64_t* top = reinterpret_cast<uint64_t*>(
      (reinterpret_cast<uintptr_t>(f.stack + f.stack_size - 64 * (f.index % 61))) & ~uintptr_t{15});
  top[-1] = 0;                                            // no return from fiber_entry
  top[-2] = reinterpret_cast<uint64_t>(&fiber_entry);     // where `ret` goes
  for (int i = 3; i <= 8; ++i) top[-i] = 0;               // rbp, rbx, r12..r15
  f.sp = top - 8;
#else
  ucontext_t& c = g_ctx[f.index];
  getcontext(&c);
  c.uc_stack.ss_sp = f.stack + 4096;
  c.uc_stack.ss_size = f.stack_size - 4096;
  c.uc_link = nullptr;
  makecontext(&c, fiber_entry, 0);
#endif
}

void block_on(Block& b, Fiber* f, FiberState st, const char* op) {
  f->state = st;
  f->wait_op = op;
  suspend(b, f);
  // resumed: the operation completed
}

void release(Block& b, Fiber* f) {
  f->state = FiberState::kReady;
  f->wait_op = nullptr;
  b.ready.push_back(f);
}

[[noreturn]] void raise(const std::string& msg) {
  if (!t_block) throw std::runtime_error("dsv2 emulator: " + msg);
  throw Fault{msg + " (" + where(*t_block, t_fiber) + ")"};
}

void finish_copies(Fiber* f) {
  while (!f->cp_groups.empty()) {
    complete_copies(f->cp_groups.front());
    f->cp_groups.pop_front();
  }
  complete_copies(f->cp_open);
}

void fiber_entry() {
  Block& b = *t_block;
  Fiber* f = t_fiber;
  asan_finish(nullptr, nullptr, nullptr);
  try {
    (*b.grid->body)();
    finish_copies(f);  // copies never waited for still land
    // Lanes of this warp waiting in an operation whose mask holds this lane would wait forever.
    for (const WarpGroup& g : b.warps[f->warp])
      if (g.mask >> f->lane & 1)
        raise(std::string("thread exited without reaching ") + g.op + " (mask 0x" +
              [&] { char s[16]; snprintf(s, sizeof s, "%08x", g.mask); return std::string(s); }() +
              ") that lanes " + lanes_str(g.arrived) + " of its warp wait in");
  } catch (Fault& e) {
    if (b.error.empty()) b.error = e.msg;
  } catch (std::exception& e) {
    if (b.error.empty()) b.error = std::string(e.what()) + " (" + where(b, f) + ")";
  } catch (...) {
    if (b.error.empty()) b.error = "unknown exception (" + where(b, f) + ")";
  }
  f->state = FiberState::kDone;
  b.done++;
  b.warp_done[f->warp] |= 1u << f->lane;
  suspend(b, f);
  __builtin_unreachable();
}

__attribute__((no_sanitize("address"))) void poison(char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(0xff);
}

std::string describe_stall(const Block& b) {
  std::ostringstream o;
  int at_bar = 0;
  for (const Fiber& f : *b.fibers)
    if (f.state == FiberState::kBarrier) ++at_bar;
  o << at_bar << " of " << b.n << " threads wait at __syncthreads(), " << b.done << " exited";
  for (size_t w = 0; w < b.warps.size(); ++w)
    for (const WarpGroup& g : b.warps[w]) {
      char m[16];
      snprintf(m, sizeof m, "%08x", g.mask);
      o << "; warp " << w << ": lanes " << lanes_str(g.arrived) << " wait in " << g.op << " (mask 0x" << m
        << "), lanes " << lanes_str(g.mask & ~g.arrived) << " never came";
    }
  return o.str();
}

void run_block(Block& b) {
  std::vector<Fiber>& fs = *b.fibers;
  b.ready.clear();
  for (Fiber& f : fs) b.ready.push_back(&f);
  // The fibers pass control among themselves (suspend); the scheduler gets it back when the
  // block is finished, faulted or stuck.
  if (Fiber* f = pick(b)) switch_to(b, nullptr, f);
}

}  // namespace

Fiber* current_fiber() { return t_fiber; }

uint64_t base_seed() {
  static const uint64_t s = [] {
    const char* e = getenv("DSV2_EMU_SEED");
    return e ? strtoull(e, nullptr, 0) : 1ull;
  }();
  return s;
}

std::string run_grid(const GridRun& g) {
  const int n = static_cast<int>(g.block.x * g.block.y * g.block.z);
  static std::vector<Fiber> fibers;  // under the device lock: one grid at a time
  fibers.assign(n, Fiber{});
#if !defined(__x86_64__)
  g_ctx.resize(n);
#endif
  StackPool& pool = stack_pool();
  for (int i = 0; i < n; ++i) {
    fibers[i].index = i;
    fibers[i].warp = i / 32;
    fibers[i].lane = i % 32;
    fibers[i].stack = pool.get(i);
    fibers[i].stack_size = pool.size;
  }
  Block b;
  b.grid = &g;
  b.fibers = &fibers;
  b.n = n;
  const int n_warps = (n + 31) / 32;
  b.warps.assign(n_warps, {});
  b.warp_exists.assign(n_warps, 0);
  for (int i = 0; i < n; ++i) b.warp_exists[i / 32] |= 1u << (i % 32);
  std::unique_ptr<char[]> dyn;
  if (g.dyn_smem) {
    dyn.reset(new (std::align_val_t(128)) char[g.dyn_smem]);
    b.dyn = dyn.get();
    b.dyn_bytes = g.dyn_smem;
  }
  struct DynFree {
    char* p;
    ~DynFree() { if (p) ::operator delete[](p, std::align_val_t(128)); }
  } dyn_free{dyn.release()};
  const StaticSmem ss = static_smem();
  char* s0 = ss.p;
  const size_t s_bytes = ss.bytes;
  b.smem = s0;
  b.smem_bytes = s_bytes;
#if defined(DSV2EMU_ASAN)
  {
    pthread_attr_t attr;
    void* addr = nullptr;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      pthread_attr_getstack(&attr, &addr, &size);
      pthread_attr_destroy(&attr);
    }
    b.sched_bottom = addr;
    b.sched_size = size;
  }
#endif
  Block* saved = t_block;
  t_block = &b;
  std::string err;
  for (unsigned bz = 0; bz < g.grid.z && err.empty(); ++bz)
    for (unsigned by = 0; by < g.grid.y && err.empty(); ++by)
      for (unsigned bx = 0; bx < g.grid.x && err.empty(); ++bx) {
        poison(s0, s_bytes);
        if (b.dyn) poison(b.dyn, b.dyn_bytes);
        b.done = 0;
        b.bar_arrived = 0;
        b.error.clear();
        for (auto& w : b.warps) w.clear();
        std::fill(b.warp_done.begin(), b.warp_done.end(), 0u);
        b.warp_done.assign(n_warps, 0u);
        b.rng = g.seed ^ (0x9e3779b97f4a7c15ull * (1 + bx + 65536ull * (by + 65536ull * bz)));
        for (int i = 0; i < n; ++i) {
          Fiber& f = fibers[i];
          f.vars.tid = {static_cast<unsigned>(i % g.block.x), static_cast<unsigned>((i / g.block.x) % g.block.y),
                              static_cast<unsigned>(i / (g.block.x * g.block.y))};
          f.vars.bid = {bx, by, bz};
          f.vars.bdim = g.block;
          f.vars.gdim = g.grid;
          f.state = FiberState::kReady;
          f.wait_op = nullptr;
          f.cp_open.clear();
          f.cp_groups.clear();
          f.asan_fake = nullptr;
          init_fiber_stack(f);
        }
        run_block(b);
        err = b.error;
      }
  t_block = saved;
  return err;
}

// ---- what kernels call -----------------------------------------------------------------------

void fault(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  raise(buf);
}

void syncthreads() {
  Fiber* f = t_fiber;
  if (!f) raise("__syncthreads() outside a kernel");
  Block& b = *t_block;
  b.bar_arrived++;
  block_on(b, f, FiberState::kBarrier, "__syncthreads");
}

void warp_collective(unsigned mask, const char* op, void* arg, void (*fn)(unsigned, void**)) {
  Fiber* f = t_fiber;
  if (!f) raise(std::string(op) + " outside a kernel");
  Block& b = *t_block;
  if (!(mask >> f->lane & 1) || (mask & ~b.warp_exists[f->warp]) || (mask & b.warp_done[f->warp])) {
    char m[16];
    snprintf(m, sizeof m, "%08x", mask);
    if (!(mask >> f->lane & 1)) raise(std::string(op) + ": the calling lane is not in its mask 0x" + m);
    if (mask & ~b.warp_exists[f->warp])
      raise(std::string(op) + ": mask 0x" + m + " names lanes that do not exist in this block (lanes " +
            lanes_str(mask & ~b.warp_exists[f->warp]) + ")");
    raise(std::string(op) + ": mask 0x" + m + " names lanes that have exited (lanes " +
          lanes_str(mask & b.warp_done[f->warp]) + ")");
  }
  std::vector<WarpGroup>& groups = b.warps[f->warp];
  WarpGroup* g = nullptr;
  for (WarpGroup& x : groups) {
    if (x.mask == mask) {
      g = &x;
    } else if (x.mask & mask) {
      char m[16], m2[16];
      snprintf(m, sizeof m, "%08x", mask);
      snprintf(m2, sizeof m2, "%08x", x.mask);
      raise(std::string("divergent warp: this lane is in ") + op + " with mask 0x" + m + " while lanes " +
            lanes_str(x.arrived) + " wait in " + x.op + " with the overlapping mask 0x" + m2);
    }
  }
  if (g && g->op != op && strcmp(g->op, op) != 0)
    raise(std::string("divergent warp: this lane is in ") + op + " while lanes " + lanes_str(g->arrived) +
          " of the same mask wait in " + g->op);
  if (g && (g->arrived >> f->lane & 1)) raise(std::string(op) + ": lane arrived twice");  // cannot happen
  if (!g) {
    groups.push_back(WarpGroup{});
    g = &groups.back();
    g->mask = mask;
    g->op = op;
  }
  g->args[f->lane] = arg;
  g->arrived |= 1u << f->lane;
  if (g->arrived != mask) {
    block_on(b, f, FiberState::kWarp, op);
    return;
  }
  fn(mask, g->args);
  groups.erase(groups.begin() + (g - groups.data()));
  std::vector<Fiber>& fs = *b.fibers;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1) && l != f->lane) release(b, &fs[f->warp * 32 + l]);
}

namespace {
struct ShflArg {
  uint64_t v;
  int b, c, mode;
  uint64_t r;
};
const char* const kShflOp[4] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};

// shfl.sync (PTX ISA, "shfl.sync"): per lane, from b, c and the mode, the source lane j; a lane
// whose j is out of its segment's range keeps its own value.
void shfl_fn(unsigned mask, void** args) {
  uint64_t src[32];
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) src[l] = static_cast<ShflArg*>(args[l])->v;
  for (int lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1)) continue;
    ShflArg* a = static_cast<ShflArg*>(args[lane]);
    const int bval = a->b & 0x1f, cval = a->c & 0x1f, segmask = (a->c >> 8) & 0x1f;
    const int max_lane = (lane & segmask) | (cval & ~segmask);
    const int min_lane = lane & segmask;
    int j = lane;
    bool pval = false;
    switch (a->mode) {
      case 1: j = lane - bval; pval = j >= max_lane; break;
      case 2: j = lane + bval; pval = j <= max_lane; break;
      case 3: j = lane ^ bval; pval = j <= max_lane; break;
      default: j = min_lane | (bval & ~segmask); pval = j <= max_lane; break;
    }
    if (!pval) j = lane;
    if (!(mask >> j & 1)) {
      char m[16];
      snprintf(m, sizeof m, "%08x", mask);
      raise(std::string(kShflOp[a->mode]) + ": lane " + std::to_string(lane) + " reads lane " + std::to_string(j) +
            ", which is not in the mask 0x" + m + " (undefined on the device)");
    }
    a->r = src[j];
  }
}
}  // namespace

uint64_t shfl(unsigned mask, uint64_t v, int b, int c, int mode) {
  ShflArg a{v, b, c, mode, 0};
  warp_collective(mask, kShflOp[mode & 3], &a, shfl_fn);
  return a.r;
}

void syncwarp(unsigned mask) {
  warp_collective(mask, "__syncwarp", nullptr, [](unsigned, void**) {});
}

unsigned activemask() {
  Fiber* f = t_fiber;
  if (!f) raise("__activemask() outside a kernel");
  return t_block->warp_exists[f->warp] & ~t_block->warp_done[f->warp];
}

namespace {
struct VoteArg {
  bool pred;
  unsigned r;
};
struct RedArg {
  uint32_t v;
  int op;
  bool is_signed;
  uint32_t r;
};
}  // namespace

unsigned ballot(unsigned mask, bool pred) {
  VoteArg a{pred, 0};
  warp_collective(mask, "__ballot_sync", &a, [](unsigned m, void** args) {
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
      if ((m >> l & 1) && static_cast<VoteArg*>(args[l])->pred) r |= 1u << l;
    for (int l = 0; l < 32; ++l)
      if (m >> l & 1) static_cast<VoteArg*>(args[l])->r = r;
  });
  return a.r;
}

namespace {
const char* const kRedOp[2][3] = {{"__reduce_add_sync(unsigned)", "__reduce_min_sync(unsigned)", "__reduce_max_sync(unsigned)"},
                                  {"__reduce_add_sync(int)", "__reduce_min_sync(int)", "__reduce_max_sync(int)"}};
void reduce_fn(unsigned m, void** args) {
  RedArg* first = nullptr;
  uint32_t r = 0;
  for (int l = 0; l < 32; ++l) {
    if (!(m >> l & 1)) continue;
    RedArg* a = static_cast<RedArg*>(args[l]);
    if (!first) {
      first = a;
      r = a->v;
      continue;
    }
    if (a->op == 0) r += a->v;  // wraps, as redux.sync.add
    else if (a->is_signed) {
      const int32_t x = static_cast<int32_t>(r), y = static_cast<int32_t>(a->v);
      r = static_cast<uint32_t>(a->op == 1 ? std::min(x, y) : std::max(x, y));
    } else {
      r = a->op == 1 ? std::min(r, a->v) : std::max(r, a->v);
    }
  }
  for (int l = 0; l < 32; ++l)
    if (m >> l & 1) static_cast<RedArg*>(args[l])->r = r;
}
}  // namespace

unsigned reduce_u32(unsigned mask, unsigned v, int op) {
  RedArg a{v, op, false, 0};
  warp_collective(mask, kRedOp[0][op], &a, reduce_fn);
  return a.r;
}

int reduce_i32(unsigned mask, int v, int op) {
  RedArg a{static_cast<uint32_t>(v), op, true, 0};
  warp_collective(mask, kRedOp[1][op], &a, reduce_fn);
  return static_cast<int>(a.r);
}

void* dynamic_smem(size_t align) {
  Block* b = t_block;
  if (!b || !t_fiber) raise("dynamic shared memory outside a kernel");
  if (!b->dyn) return nullptr;  // a launch without dynamic shared memory: any access is out of bounds
  if (reinterpret_cast<uintptr_t>(b->dyn) % align) raise("dynamic shared memory misaligned");
  return b->dyn;
}

uint32_t cvta_to_shared(const void* p) {
  Block* b = t_block;
  const char* c = static_cast<const char*>(p);
  if (b && b->dyn && c >= b->dyn && c <= b->dyn + b->dyn_bytes) return kDynBase + static_cast<uint32_t>(c - b->dyn);
  if (b && c >= b->smem && c < b->smem + b->smem_bytes) return kStaticBase + static_cast<uint32_t>(c - b->smem);
  char buf[64];
  snprintf(buf, sizeof buf, "%p", p);
  raise(std::string("cvta.to.shared of ") + buf + ", which is not in this block's shared memory");
}

void* shared_ptr(uint32_t addr, size_t bytes, size_t align, const char* op) {
  Block* b = t_block;
  char buf[160];
  if (addr % align) {
    snprintf(buf, sizeof buf, "%s: .shared address 0x%x is not %zu-byte aligned", op, addr, align);
    raise(buf);
  }
  if (b && b->dyn && addr >= kDynBase && addr - kDynBase + bytes <= b->dyn_bytes) return b->dyn + (addr - kDynBase);
  if (b && addr >= kStaticBase && addr - kStaticBase + bytes <= b->smem_bytes) return b->smem + (addr - kStaticBase);
  snprintf(buf, sizeof buf, "%s: .shared address 0x%x (+%zu bytes) is outside the block's shared memory (%zu dynamic bytes)",
           op, addr, bytes, b ? b->dyn_bytes : size_t{0});
  raise(buf);
}

}  // namespace dsv2emu
