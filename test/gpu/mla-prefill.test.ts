/**
 * The CUDA MLA prefill (ops.mlaPrefill on a cuda cache) against the CPU op (which test/mla
 * checks against float64 references):
 *   - DeepSeek-V2 dims (dC 512, dR 64, dNope 128, dV 128): the tensor-core flash kernel, which
 *     rounds K, V and P to bf16 — inputs here are bf16 values (q, kv_b, a bf16 cache), so the
 *     rounding of K, V and P is the only difference (an fp8 cache's dequantized latent is also
 *     rounded to bf16 by the expansion gemm; tolerances below);
 *   - small and odd dims: the generic all-f32 kernel (FlashMLA's f32 tolerance).
 * Varlen batches mixing cached-prefix lengths 0/1/63/64/65 with n_q 1/7/64/65/300, h 1/3/16/128,
 * bf16 and fp8 caches, permuted page tables with junk past each sequence's end, NaN-poisoned
 * unused pages, sequences with no queries and with no keys, an empty batch.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 * On the emulated device (test:cuda-emu) every case with 16 or 128 heads takes n_q 100 where the
 * real grid has 300 (still a full 64-row query tile and a partial one, after each prefix; the
 * 1- and 3-head cases keep all 25 pairs at full length), 16 heads become 8 and 128 become 12
 * (heads are the grid's y, and the expansion gemm's N = (d_nope + d_v)·h, which is what costs
 * most there): "(scaled ...)".
 * Everything else runs as on a GPU.
 */
import { KvCache, type KvCacheDtype } from '../../lib/kv-cache';
import * as ops from '../../lib/ops';
import { benchMlaPrefillCuda } from '../../lib/ops/mla';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { EMU_TAG, gpuDescribe, gpuTitle, scaled } from './cuda';
import { permutation } from './util';

interface Dims { dC: number; dR: number; dNope: number; dV: number }
const V2: Dims = { dC: 512, dR: 64, dNope: 128, dV: 128 };
const SMALL: Dims = { dC: 32, dR: 8, dNope: 16, dV: 16 };
const ODD: Dims = { dC: 130, dR: 6, dNope: 10, dV: 12 };
const NEAR_V2: Dims = { dC: 512, dR: 64, dNope: 128, dV: 64 }; // one dim off: must take the generic kernel
const PAGE = 64;
const FLASH = 'flash_mma_bf16_qk192_v128';
const GENERIC = 'generic_simt_f32';

interface Seq { prefix: number; nq: number }
interface Case { dtype: KvCacheDtype; dims: Dims; h: number; seqs: Seq[]; kvB: 'bf16' | 'f32'; emu?: boolean }

const PREFIXES = [0, 1, 63, 64, 65];
const NQ = [1, 7, 64, 65, 300];
/** NQ of the wide V2 cases on the emulated device (see the header). */
const NQ_EMU = [1, 7, 64, 65, 100];

/** Batch k of 5: sequence i has prefix PREFIXES[i] and n_q nq[(i + k) % 5], so the 5 batches cover all 25 pairs. */
function rotation(k: number, nq = NQ): Seq[] {
  return PREFIXES.map((prefix, i) => ({ prefix, nq: nq[(i + k) % nq.length] }));
}

/** A case with h heads: with 16 or more, scaled on the emulated device (see the header). */
function wide(dtype: KvCacheDtype, dims: Dims, h: number, k: number, kvB: 'bf16' | 'f32'): Case {
  if (h < 16) return { dtype, dims, h, seqs: rotation(k), kvB };
  return { dtype, dims, h: scaled(h, h === 128 ? 12 : 8), seqs: rotation(k, scaled(NQ, NQ_EMU)), kvB, ...scaled({}, { emu: true }) };
}

function cases(): Case[] {
  const out: Case[] = [];
  for (const dtype of ['bf16', 'fp8'] as const) {
    for (const h of [1, 3, 16, 128]) for (let k = 0; k < 5; k++) out.push(wide(dtype, V2, h, k, 'bf16'));
    out.push(wide(dtype, V2, 16, 2, 'f32')); // f32 weights holding bf16 values
    // sequences with no queries (with and without cached keys) between real ones
    out.push({ dtype, dims: V2, h: 3, seqs: [{ prefix: 0, nq: 0 }, { prefix: 70, nq: 0 }, { prefix: 5, nq: 65 }, { prefix: 0, nq: 0 }], kvB: 'bf16' });
    for (const dims of [SMALL, ODD]) for (const h of [1, 3, 16]) for (const k of [0, 3]) out.push(wide(dtype, dims, h, k, 'bf16'));
    out.push({ dtype, dims: NEAR_V2, h: 3, seqs: rotation(1), kvB: 'bf16' });
  }
  return out;
}

/** Round to the nearest bf16 value, ties to even (finite inputs), in place. */
function bf16Values(a: Float32Array): Float32Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    u[i] = (x + 0x7fff + ((x >>> 16) & 1)) & 0xffff0000;
  }
  return a;
}

/** n values of unit variance (uniform in ±√3, fast for the large q tensors), seeded from rng. */
function unitValues(rng: Rng, n: number, std = 1): Float32Array {
  const a = new Float32Array(n);
  let s = rng.nextU32() | 1;
  const k = (2 * Math.sqrt(3) * std) / 4294967296;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = (s >>> 0) * k - Math.sqrt(3) * std;
  }
  return a;
}


/** Both caches filled with the same keys, page tables permuted, unused pages poisoned; the op's inputs. */
async function setup(c: Case) {
  const rng = new Rng(`prefill ${JSON.stringify(c)}`);
  const { dC, dR, dNope, dV } = c.dims;
  const lens = c.seqs.map((s) => s.prefix + s.nq);
  const b = lens.length;
  const perSeq = lens.map((l) => Math.ceil(l / PAGE));
  const maxBlocks = Math.max(1, ...perSeq) + 1;
  const total = perSeq.reduce((a, x) => a + x, 0) + 2; // + 2 pages nobody uses: NaN-poisoned
  const cpu = await KvCache.create({ layers: 2, pages: total, dC, dR, pageSize: PAGE, dtype: c.dtype });
  const gpu = await KvCache.create({ layers: 2, pages: total, dC, dR, pageSize: PAGE, dtype: c.dtype, device: 'cuda' });
  await cpu.poison();
  await gpu.poison();
  const order = permutation(rng, total);
  const bt = new Int32Array(b * maxBlocks).fill(2 ** 31 - 1); // junk past each sequence's end: never read
  let o = 0;
  for (let s = 0; s < b; s++) for (let k = 0; k < perSeq[s]; k++) bt[s * maxBlocks + k] = order[o++];
  const slots: number[] = [];
  for (let s = 0; s < b; s++) for (let t = 0; t < lens[s]; t++) slots.push(bt[s * maxBlocks + Math.floor(t / PAGE)] * PAGE + (t % PAGE));
  const n = slots.length;
  if (n > 0) {
    const cKv = Tensor.from(Float32Array.from({ length: n * dC }, () => rng.normal()), [n, dC]);
    const kPe = Tensor.from(Float32Array.from({ length: n * dR }, () => rng.normal()), [n, dR]);
    for (const cache of [cpu, gpu]) await cache.append(1, cKv, kPe, Tensor.from(Int32Array.from(slots)));
  }
  const T = c.seqs.reduce((a, s) => a + s.nq, 0);
  const cu = new Int32Array(b + 1);
  for (let s = 0; s < b; s++) cu[s + 1] = cu[s] + c.seqs[s].nq;
  const q = Tensor.from(bf16Values(unitValues(rng, T * c.h * (dNope + dR))), [T, c.h, dNope + dR]);
  const kvB32 = Tensor.from(bf16Values(unitValues(rng, c.h * (dNope + dV) * dC, 1 / Math.sqrt(dC))), [c.h * (dNope + dV), dC]);
  const kvB = c.kvB === 'f32' ? kvB32 : await ops.cast(kvB32, 'bf16'); // exact: the values are bf16 already
  // V2's YaRN mscale² ≈ 1.6 on top of dQk^-½; the small dims keep the plain scale.
  const scale = (c.dims === V2 ? 1.6 : 1) / Math.sqrt(dNope + dR);
  const tables = [Tensor.from(bt, [b, maxBlocks]), Tensor.from(Int32Array.from(lens)), Tensor.from(cu)] as const;
  return { cpu, gpu, q, kvB, scale, tables, T, slots, lens, cu, total };
}

gpuDescribe(gpuTitle('CUDA mla_prefill (flash and generic kernels) vs CPU'), () => {
  jest.setTimeout(120_000);

  test.each(cases().map((c) => [
    `${c.dtype} ${c.dims === V2 ? 'V2' : JSON.stringify(c.dims)} h=${c.h} kvB=${c.kvB} seqs=${c.seqs.map((s) => `${s.prefix}+${s.nq}`).join(',')}${c.emu ? EMU_TAG : ''}`, c,
  ] as const))('%s', async (_n, c) => {
    const { cpu, gpu, q, kvB, scale, tables, T, slots, lens, cu, total } = await setup(c);
    const opts = { scale, dNope: c.dims.dNope, dV: c.dims.dV };
    const want = (await ops.mlaPrefill(q, cpu, 1, ...tables, kvB, { ...opts, impl: 'fast' })).data as Float32Array;
    if (c.dims !== V2 && c.dtype === 'fp8' && c.kvB === 'bf16' && c.dims.dC % 8 === 0 && slots.length > 0) {
      // The generic kernel's one rounding: its expansion gemm (kvx = c · kv_bᵀ, M = the
      // sequence's key count, bf16 kv_b, K = d_c a multiple of 8: gemm.cu's tensor-core
      // kernels) rounds the latent c to bf16 (nearest even) when a sequence has more than 32
      // keys, and splits it exactly enough (hi + lo, 2^-16) up to 32. A bf16 cache's latent is
      // bf16 already; an fp8 cache's dequantized latent (code · scale) is not. So for those
      // sequences the reference is the CPU op on a bf16 cache holding bf16(dequantized latent):
      // the same inputs the GPU's attention sees, and the f32 tolerance below applies as is.
      const { cKv, kPe } = await cpu.read(1, Tensor.from(Int32Array.from(slots)));
      const round = await ops.cast(await ops.cast(cKv, 'bf16'), 'f32');
      const ref = await KvCache.create({ layers: 2, pages: total, dC: c.dims.dC, dR: c.dims.dR, pageSize: PAGE, dtype: 'bf16' });
      await ref.append(1, round, kPe, Tensor.from(Int32Array.from(slots)));
      const rounded = (await ops.mlaPrefill(q, ref, 1, ...tables, kvB, { ...opts, impl: 'fast' })).data as Float32Array;
      ref.dispose();
      const row = c.h * c.dims.dV;
      for (let s = 0; s < lens.length; s++) if (lens[s] > 32) want.set(rounded.subarray(cu[s] * row, cu[s + 1] * row), cu[s] * row);
    }
    const got = (await ops.mlaPrefill(q, gpu, 1, ...tables, kvB, opts)).data as Float32Array;
    expect(got.length).toBe(T * c.h * c.dims.dV);
    const dV = c.dims.dV;
    const flash = c.dims === V2;
    for (let r = 0; r < T * c.h; r++) {
      let ss = 0;
      for (let k = 0; k < dV; k++) ss += want[r * dV + k] ** 2;
      const rms = Math.sqrt(ss / dV);
      let es = 0;
      for (let k = 0; k < dV; k++) {
        const a = want[r * dV + k];
        const g = got[r * dV + k];
        const d = Math.abs(a - g);
        es += d * d;
        // flash: the GPU rounds K_nope and V (f32 products of bf16 inputs) and the unnormalised
        // probabilities P to bf16, unit roundoff u = 2^-8; the CPU keeps them f32. For an fp8
        // cache the dequantized latent (code · scale, not a bf16 value) is also rounded to bf16
        // by the expansion gemm (tensor-core gemm, M > 32), a second rounding of K_nope and V.
        // In o = Σ p_t v_t / Σ p_t, rounding v_t moves o by ~u/√3 · √(Σ p² v²) / l, rounding
        // p_t likewise, and rounding k moves each score by σ ≈ |scale| · u/√3 · ‖q‖ · rms(k)
        // (≈ 3e-3 here, ≈ 4e-3 with the fp8 latent's rounding), i.e. p_t by that factor.
        // Σ p|v| is not |o_k| when the sum cancels, so the error is taken against |o_k| + the
        // row's RMS. An f64 emulation of exactly these roundings on this test's data (45k rows
        // bf16, 210k rows fp8 of prefix 65 + 300 queries) gave at most 0.021 (bf16) / 0.030
        // (fp8) · (|o_k| + rms): 2^-4 leaves ≥ 2x.
        // generic: both sides f32 (different summation orders): FlashMLA's abs 8e-4, rel 2/128.
        const tol = flash ? 2 ** -4 * (Math.abs(a) + rms) + 1e-6 : 8e-4 + (2 / 128) * Math.abs(a);
        if (!(d <= tol)) throw new Error(`row ${r} (token ${Math.floor(r / c.h)}, head ${r % c.h}) dim ${k}: cpu ${a} cuda ${g} (tol ${tol})`);
      }
      // The row as a whole: independent roundings average out. The emulation above gave row
      // relative L2 errors ≤ 6.8e-3 (bf16 cache) and ≤ 1.03e-2 (fp8: the extra rounding of the
      // latent about doubles the error variance): bounds 2^-6 and √2 · 2^-6 leave ≥ 2x.
      const l2 = (c.dtype === 'fp8' ? Math.SQRT2 : 1) * 2 ** -6;
      if (flash && Math.sqrt(es) > l2 * Math.sqrt(ss) + 1e-6) {
        throw new Error(`row ${r}: relative L2 error ${Math.sqrt(es / ss)} > ${l2}`);
      }
    }
    cpu.dispose();
    gpu.dispose();
  });

  test('an empty batch (no sequences) and one of only empty sequences give empty outputs', async () => {
    for (const seqs of [[], [{ prefix: 0, nq: 0 }, { prefix: 3, nq: 0 }]]) {
      const c: Case = { dtype: 'bf16', dims: V2, h: 2, seqs, kvB: 'bf16' };
      const { cpu, gpu, q, kvB, scale, tables } = await setup(c);
      const got = await ops.mlaPrefill(q, gpu, 1, ...tables, kvB, { scale, dNope: 128, dV: 128 });
      expect(got.shape).toEqual([0, 2, 128]);
      cpu.dispose();
      gpu.dispose();
    }
  });

  test('V2 dims run the flash kernel; other dims the generic one (the dispatch, by name)', async () => {
    for (const [dims, name] of [[V2, FLASH], [SMALL, GENERIC], [NEAR_V2, GENERIC]] as const) {
      const c: Case = { dtype: 'bf16', dims, h: 2, seqs: [{ prefix: 3, nq: 5 }], kvB: 'bf16' };
      const { cpu, gpu, q, kvB, scale, tables } = await setup(c);
      const r = await benchMlaPrefillCuda(q, gpu, 1, ...tables, kvB, { scale, dNope: dims.dNope, dV: dims.dV, iters: 1 });
      expect(r.kernel).toBe(name);
      expect(r.ms).toBeGreaterThan(0);
      expect(r.attendMs).toBeGreaterThan(0);
      expect(r.gemmMs).toBe(0);
      cpu.dispose();
      gpu.dispose();
    }
  });

  test('bad tables are E_RANGE before anything runs', async () => {
    const c: Case = { dtype: 'bf16', dims: V2, h: 1, seqs: [{ prefix: 2, nq: 3 }], kvB: 'bf16' };
    const { cpu, gpu, q, kvB, scale, tables } = await setup(c);
    const badLens = Tensor.from(Int32Array.of(2)); // fewer keys than queries
    await expect(ops.mlaPrefill(q, gpu, 1, tables[0], badLens, tables[2], kvB, { scale, dNope: 128, dV: 128 }))
      .rejects.toMatchObject({ code: 'E_RANGE' });
    cpu.dispose();
    gpu.dispose();
  });
});
