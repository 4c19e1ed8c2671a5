// dsv2 CUDA emulator: PTX instruction semantics (ptx.h), from the PTX ISA manual's text.
#include "ptx.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "emu.h"

namespace dsv2emu {

void complete_copies(std::vector<CpCopy>& g) {
  for (const CpCopy& c : g) {
    if (c.src_bytes > 0) memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
    if (c.bytes > c.src_bytes) memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
  }
  g.clear();
}

namespace ptx {

namespace {
Fiber* need_fiber(const char* op) {
  Fiber* f = current_fiber();
  if (!f) fault("%s outside a kernel", op);
  return f;
}
}  // namespace

void cp_async(uint32_t dst, const void* src, int cp_size, int src_size, CpCache cache) {
  const char* op = cache == CpCache::kCg ? "cp.async.cg" : "cp.async.ca";
  Fiber* f = need_fiber(op);
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) fault("%s: cp-size %d (must be 4, 8 or 16)", op, cp_size);
  if (cache == CpCache::kCg && cp_size != 16) fault("%s: cp-size %d (.cg takes 16 only)", op, cp_size);
  if (src_size < 0 || src_size > cp_size) fault("%s: src-size %d outside [0, %d]", op, src_size, cp_size);
  void* d = shared_ptr(dst, static_cast<size_t>(cp_size), static_cast<size_t>(cp_size), op);
  if (src_size > 0 && reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(cp_size))
    fault("%s: global source %p is not %d-byte aligned", op, src, cp_size);
  f->cp_open.push_back(CpCopy{d, src, cp_size, src_size});
}

void cp_async_commit_group() {
  Fiber* f = need_fiber("cp.async.commit_group");
  f->cp_groups.push_back(std::move(f->cp_open));
  f->cp_open.clear();
}

void cp_async_wait_group(int n) {
  Fiber* f = need_fiber("cp.async.wait_group");
  if (n < 0) fault("cp.async.wait_group %d", n);
  while (static_cast<int>(f->cp_groups.size()) > n) {
    complete_copies(f->cp_groups.front());
    f->cp_groups.pop_front();
  }
}

void cp_async_wait_all() {
  cp_async_commit_group();
  cp_async_wait_group(0);
}

// ---- ldmatrix ----------------------------------------------------------------------------------
namespace {
struct LdmArg {
  int num;
  bool trans;
  uint32_t addr;
  uint32_t* d;
};
const char* const kLdmOp[2][5] = {
    {"", "ldmatrix.m8n8.x1", "ldmatrix.m8n8.x2", "", "ldmatrix.m8n8.x4"},
    {"", "ldmatrix.m8n8.x1.trans", "ldmatrix.m8n8.x2.trans", "", "ldmatrix.m8n8.x4.trans"}};

void ldmatrix_fn(unsigned mask, void** args) {
  LdmArg* a0 = static_cast<LdmArg*>(args[0]);
  const int num = a0->num;
  const bool trans = a0->trans;
  const char* op = kLdmOp[trans][num];
  if (mask != 0xffffffffu) fault("%s: .aligned needs all 32 lanes (mask 0x%08x)", op, mask);
  // Matrix i, row r (r = 0..7): 8 b16 values at the address given by thread 8i + r.
  uint16_t m[4][8][8];
  for (int i = 0; i < num; ++i)
    for (int r = 0; r < 8; ++r) {
      const LdmArg* src = static_cast<LdmArg*>(args[8 * i + r]);
      const void* p = shared_ptr(src->addr, 16, 16, op);
      memcpy(m[i][r], p, 16);
    }
  for (int lane = 0; lane < 32; ++lane) {
    LdmArg* a = static_cast<LdmArg*>(args[lane]);
    const int row = lane / 4, col = 2 * (lane % 4);  // lane's (row, column pair) in the fragment
    for (int i = 0; i < num; ++i) {
      uint16_t lo, hi;
      if (!trans) {
        lo = m[i][row][col];
        hi = m[i][row][col + 1];
      } else {  // the matrix transposed: element [row][col] of the result is m[col][row]
        lo = m[i][col][row];
        hi = m[i][col + 1][row];
      }
      a->d[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}
}  // namespace

void ldmatrix(int num, bool trans, uint32_t* d, uint32_t addr) {
  if (num != 1 && num != 2 && num != 4) fault("ldmatrix: .num x%d (x1, x2 or x4)", num);
  LdmArg a{num, trans, addr, d};
  warp_collective(0xffffffffu, kLdmOp[trans][num], &a, ldmatrix_fn);
}

// ---- mma.sync m16n8k16 -------------------------------------------------------------------------
namespace {
struct MmaArg {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  MmaType t;
};

float b16_value(uint16_t h, MmaType t) {
  if (t == MmaType::kBF16) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  const int sign = h >> 15, e = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (e == 0x1f) v = man ? NAN : INFINITY;
  else if (e == 0) v = std::ldexp(static_cast<float>(man), -24);
  else v = std::ldexp(static_cast<float>(man | 0x400), e - 25);
  return sign ? -v : v;
}
uint16_t half_of(uint32_t reg, int i) { return static_cast<uint16_t>(i ? reg >> 16 : reg & 0xffff); }

// Fragment maps of the ISA's figures for m16n8k16, .f16/.bf16 A and B, .f32 C/D, with
// groupID = lane >> 2 and threadID_in_group = lane % 4:
//   A (16 × 16), a_i for i = 0..7 (register i / 2, half i % 2):
//     row = groupID (i = 0, 1, 4, 5) or groupID + 8 (i = 2, 3, 6, 7)
//     col = threadID_in_group · 2 + (i & 1), plus 8 for i ≥ 4
//   B (16 × 8), b_i for i = 0..3 (register i / 2, half i % 2):
//     row (k) = threadID_in_group · 2 + (i & 1), plus 8 for i ≥ 2;  col (n) = groupID
//   C, D (16 × 8), c_i for i = 0..3:
//     row = groupID (i < 2) or groupID + 8 (i ≥ 2);  col = threadID_in_group · 2 + (i & 1)
void mma_fn(unsigned mask, void** args) {
  const MmaType t = static_cast<MmaArg*>(args[0])->t;
  const char* op = t == MmaType::kBF16 ? "mma.sync.m16n8k16.f32.bf16.bf16.f32" : "mma.sync.m16n8k16.f32.f16.f16.f32";
  if (mask != 0xffffffffu) fault("%s: .aligned needs all 32 lanes (mask 0x%08x)", op, mask);
  // A[row][k], Bt[n][k] (B transposed, for a contiguous inner loop), C[row][n].
  double A[16][16], Bt[8][16], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaArg* x = static_cast<MmaArg*>(args[lane]);
    if (x->t != t) fault("%s: lanes disagree on the operand type", op);
    const int g = lane >> 2, tig = lane & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = (i == 0 || i == 1 || i == 4 || i == 5) ? g : g + 8;
      const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = b16_value(half_of(x->a[i / 2], i % 2), t);
    }
    for (int i = 0; i < 4; ++i) {
      const int k = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      Bt[g][k] = b16_value(half_of(x->b[i / 2], i % 2), t);
    }
    for (int i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][tig * 2 + (i & 1)] = x->c[i];
  }
  // D = A · B + C. Products of 16-bit floats are exact (in f32, and in double); the sum is taken
  // in double and rounded once (the hardware's internal order and precision are unspecified).
  float D[16][8];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      double s = 0;
      for (int k = 0; k < 16; ++k) s += A[r][k] * Bt[n][k];
      D[r][n] = static_cast<float>(s + C[r][n]);
    }
  for (int lane = 0; lane < 32; ++lane) {
    MmaArg* x = static_cast<MmaArg*>(args[lane]);
    const int g = lane >> 2, tig = lane & 3;
    for (int i = 0; i < 4; ++i) x->d[i] = D[i < 2 ? g : g + 8][tig * 2 + (i & 1)];
  }
}
}  // namespace

void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, MmaType t) {
  // Copy the operands: d may alias c, and every lane's d is written when the last lane arrives.
  uint32_t a_[4] = {a[0], a[1], a[2], a[3]}, b_[2] = {b[0], b[1]};
  float c_[4] = {c[0], c[1], c[2], c[3]}, d_[4];
  MmaArg x{d_, a_, b_, c_, t};
  warp_collective(0xffffffffu, t == MmaType::kBF16 ? "mma.sync.m16n8k16.bf16" : "mma.sync.m16n8k16.f16", &x, mma_fn);
  for (int i = 0; i < 4; ++i) d[i] = d_[i];
}

// ---- conversions -------------------------------------------------------------------------------
namespace {
// f32 → bf16 bits, round to nearest, ties to even; NaN → canonical 0x7fff.
uint16_t to_bf16_rn(float f) {
  if (std::isnan(f)) return 0x7fff;
  uint32_t u;
  memcpy(&u, &f, 4);
  const uint32_t keep = u >> 16, rest = u & 0xffff;
  uint32_t r = keep;
  if (rest > 0x8000 || (rest == 0x8000 && (keep & 1))) ++r;  // carries into the exponent (to inf) correctly
  return static_cast<uint16_t>(r);
}
}  // namespace

uint32_t cvt_rn_bf16x2_f32(float a, float b) {
  return (static_cast<uint32_t>(to_bf16_rn(a)) << 16) | to_bf16_rn(b);
}

uint32_t cvt_rn_f16x2_e4m3x2(uint16_t a) {
  uint32_t out = 0;
  for (int h = 0; h < 2; ++h) {
    const uint8_t c = static_cast<uint8_t>(a >> (8 * h));
    const int sign = c >> 7, e = (c >> 3) & 0xf, m = c & 7;
    uint16_t f16;
    if (e == 0xf && m == 7) {
      f16 = 0x7fff;  // e4m3 NaN → f16 NaN
    } else {
      // value = (e ? (8 + m) · 2^(e - 7 - 3) : m · 2^(-6 - 3)); re-encode in binary16 (exact).
      double v = e ? std::ldexp(8.0 + m, e - 10) : std::ldexp(static_cast<double>(m), -9);
      if (v == 0) f16 = 0;
      else {
        int ex;
        const double fr = std::frexp(v, &ex);  // v = fr · 2^ex, fr in [0.5, 1)
        const int E = ex - 1 + 15;             // binary16 biased exponent: ≥ 6 (e4m3's least value is 2^-9)
        f16 = static_cast<uint16_t>((E << 10) | static_cast<int>((fr * 2 - 1) * 1024));
      }
    }
    out |= static_cast<uint32_t>(f16 | (sign << 15)) << (16 * h);
  }
  return out;
}

float mul_rn_f32(float a, float b) {
  volatile float r = a * b;  // SSE: IEEE, no flush to zero (MXCSR default)
  return r;
}

void check_global_vector(const void* p, size_t bytes, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % bytes) fault("%s.v%zu: address %p is not %zu-byte aligned", op, bytes / 4, p, bytes);
}

}  // namespace ptx
}  // namespace dsv2emu
