/**
 * The CUDA MLA kernels against the CPU ops (which test/mla checks against float64
 * references): kv_cache_append (bit-exact bytes, fp8 codes and scales included), read,
 * poison, and the absorbed split-KV decode, FlashMLA-style: permuted pages, NaN-poisoned
 * caches, junk in unused block-table slots, zero-length rows, varlen batches.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import { KvCache, type KvCacheDtype } from '../../lib/kv-cache';
import * as ops from '../../lib/ops';
import { binding } from '../../lib/native';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { CUDA, EMULATED, EMU_TAG, gpuDescribe, gpuTitle } from './cuda';
import { permutation } from './util';


interface Layout { dC: number; dR: number; pageSize: number; dtype: KvCacheDtype; pow2Scales?: boolean }

async function pair(l: Layout, pages: number) {
  const cpu = await KvCache.create({ layers: 2, pages, ...l });
  const gpu = await KvCache.create({ layers: 2, pages, ...l, device: 'cuda' });
  return { cpu, gpu };
}

/** Values with the special cases the quantizer must treat like the CPU: NaN, ±inf, huge, tiny, -0. */
function specialData(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  const specials = [NaN, Infinity, -Infinity, 1e30, -1e30, 1e-40, -0, 448, -449, 2 ** -10];
  for (let i = 0; i < n; i++) a[i] = rng.uniform() < 0.02 ? specials[rng.int(0, specials.length)] : rng.normal() * (1 + (i % 7));
  return a;
}

function bytesEqual(a: Uint8Array, b: Uint8Array, what: string): void {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} vs ${b.length} bytes`);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) throw new Error(`${what}: byte ${i} differs: cpu ${a[i]} cuda ${b[i]}`);
}

gpuDescribe(gpuTitle('CUDA kv_cache_append / read / poison vs CPU'), () => {
  const layouts: Layout[] = [
    { dC: 512, dR: 64, pageSize: 64, dtype: 'fp8' }, // FlashMLA's 656-byte token
    { dC: 512, dR: 64, pageSize: 64, dtype: 'fp8', pow2Scales: true },
    { dC: 512, dR: 64, pageSize: 64, dtype: 'bf16' },
    { dC: 130, dR: 6, pageSize: 16, dtype: 'fp8' }, // a short last tile, odd offsets
    { dC: 32, dR: 8, pageSize: 1, dtype: 'f32' },
  ];
  test.each(layouts.map((l) => [JSON.stringify(l), l] as const))('%s: bytes equal after poison and append', async (_n, l) => {
    const rng = new Rng(`append ${JSON.stringify(l)}`);
    const pages = 5;
    const { cpu, gpu } = await pair(l, pages);
    await cpu.poison();
    await gpu.poison();
    for (let p = 0; p < pages; p++) bytesEqual(gpu.readRawPage(1, p), cpu.readRawPage(1, p), `poisoned page ${p}`);
    const T = Math.min(pages * l.pageSize - 3, 200);
    const slots = Int32Array.from(permutation(rng, pages * l.pageSize).slice(0, T));
    const cKv = Tensor.from(specialData(rng, T * l.dC), [T, l.dC]);
    const kPe = Tensor.from(specialData(rng, T * l.dR), [T, l.dR]);
    await cpu.append(1, cKv, kPe, Tensor.from(slots));
    await gpu.append(1, cKv, kPe, Tensor.from(slots));
    for (let p = 0; p < pages; p++) bytesEqual(gpu.readRawPage(1, p), cpu.readRawPage(1, p), `page ${p} after append`);
    const a = await cpu.read(1, Tensor.from(slots));
    const b = await gpu.read(1, Tensor.from(slots));
    bytesEqual(new Uint8Array(b.cKv.data.buffer), new Uint8Array(a.cKv.data.buffer), 'read cKv');
    bytesEqual(new Uint8Array(b.kPe.data.buffer), new Uint8Array(a.kPe.data.buffer), 'read kPe');
    cpu.dispose();
    gpu.dispose();
  });

  test('bad slots are E_RANGE and write nothing', async () => {
    const { cpu, gpu } = await pair({ dC: 16, dR: 4, pageSize: 4, dtype: 'bf16' }, 2);
    await expect(gpu.append(0, Tensor.zeros([1, 16]), Tensor.zeros([1, 4]), Tensor.from(Int32Array.of(8)))).rejects.toMatchObject({ code: 'E_RANGE' });
    cpu.dispose();
    gpu.dispose();
  });

  test('a cache larger than the device is E_OOM with the numbers', async () => {
    await expect(KvCache.create({ layers: 4096, pages: 2 ** 20, dC: 512, dR: 64, device: 'cuda' }))
      .rejects.toMatchObject({ code: 'E_OOM' });
  });
});

/** f32 values rounded to the nearest bf16 (ties to even), in place: the tensor-core decode
 * rounds q to bf16, so q is made bf16-exact and the comparison sees only the kernel's other
 * roundings. */
function roundBf16(a: Float32Array): Float32Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < u.length; i++) u[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) & 0xffff0000) >>> 0;
  return a;
}

type Dims = 'v2' | 'small';
const DIMS: Record<Dims, { dC: number; dR: number; page: number }> = {
  v2: { dC: 512, dR: 64, page: 64 }, // the tensor-core path (bf16 / fp8 caches)
  small: { dC: 130, dR: 6, page: 16 }, // the generic kernel: a short fp8 tile, odd offsets
};

interface DecodeCase {
  dims: Dims; dtype: KvCacheDtype; b: number; sQ: number; hQ: number; lens: number[];
  split?: number; pow2?: boolean;
}

/** Varlen rows cycling through `sk` with every fifth row empty. */
function varlen(b: number, sk: number[]): number[] {
  return Array.from({ length: b }, (_, i) => (i % 5 === 0 ? 0 : sk[i % sk.length]));
}

/**
 * FlashMLA's test grid, sampled: every value of every axis appears (b ∈ {1, 2, 64, 128},
 * s_q ∈ {1, 2, 4}, s_k ∈ {1, 20, 64, 65, 4096}, h_q ∈ {1, 3, 16, 63, 64, 128}) for both
 * caches and both kernels, plus the large corner b = 128, s_k = 4096, h_q = 128 — not the
 * cross product (hours of CPU reference).
 *
 * On the emulated device (test:cuda-emu) every case runs, scaled where it is big (named
 * "(scaled for the emulated device)"): at most 8 sequences, s_k above 256 cut to 256–319 (so
 * 4096 still spans several 64-key blocks, parts and items), h_q and s_q as on the GPU.
 */
function scaleDecode(c: DecodeCase): DecodeCase {
  if (!EMULATED) return c;
  const b = Math.min(c.b, 8);
  return { ...c, b, lens: c.lens.slice(0, b).map((l) => (l > 256 ? 256 + (l % 64) : l)) };
}

function decodeCases(): DecodeCase[] {
  const out: DecodeCase[] = [];
  for (const dtype of ['bf16', 'fp8'] as const) {
    const v2 = (c: Omit<DecodeCase, 'dims' | 'dtype'>) => out.push({ dims: 'v2', dtype, ...c });
    v2({ b: 1, sQ: 1, hQ: 1, lens: [1] });
    v2({ b: 2, sQ: 2, hQ: 3, lens: [20, 0] });
    v2({ b: 2, sQ: 4, hQ: 16, lens: [64, 65] });
    v2({ b: 1, sQ: 1, hQ: 63, lens: [65] });
    v2({ b: 2, sQ: 2, hQ: 20, lens: [130, 65] }); // 40 rows: the second row group has one m16 tile
    v2({ b: 2, sQ: 2, hQ: 63, lens: [1, 64] }); // s_k < s_q: query 0 of row 0 sees nothing
    v2({ b: 2, sQ: 1, hQ: 64, lens: [4096, 20] });
    v2({ b: 2, sQ: 2, hQ: 128, lens: [65, 1] });
    v2({ b: 1, sQ: 4, hQ: 128, lens: [4096] }); // one sequence spread over every part
    v2({ b: 3, sQ: 1, hQ: 16, lens: [0, 0, 0] }); // nothing to attend anywhere
    v2({ b: 64, sQ: 1, hQ: 16, lens: varlen(64, [1, 20, 64, 65, 300]) });
    v2({ b: 64, sQ: 4, hQ: 3, lens: varlen(64, [65, 20, 1, 130]) });
    v2({ b: 128, sQ: 2, hQ: 64, lens: Array.from({ length: 128 }, (_, i) => (i * 37) % 300) });
    v2({ b: 2, sQ: 4, hQ: 64, lens: [4096, 1000], split: 128 }); // many parts and items
    v2({ b: 1, sQ: 2, hQ: 16, lens: [65], split: 16 }); // items [0, 64), [64, 65): query 0 sees none of the second (partial lse -inf)
    v2({ b: 128, sQ: 1, hQ: 128, lens: Array(128).fill(4096) }); // the large corner
    const gen = (c: Omit<DecodeCase, 'dims' | 'dtype'>) => out.push({ dims: 'small', dtype, ...c });
    gen({ b: 2, sQ: 2, hQ: 3, lens: [20, 0] });
    gen({ b: 1, sQ: 4, hQ: 63, lens: [65] });
    gen({ b: 64, sQ: 1, hQ: 16, lens: varlen(64, [1, 64, 65, 20]) });
    gen({ b: 2, sQ: 1, hQ: 128, lens: [4096, 1], split: 256 });
  }
  out.push({ dims: 'v2', dtype: 'fp8', pow2: true, b: 2, sQ: 2, hQ: 64, lens: [65, 20] }); // exact bf16 dequantization
  out.push({ dims: 'v2', dtype: 'f32', b: 2, sQ: 2, hQ: 16, lens: [65, 0] }); // f32 cache: generic
  out.push({ dims: 'small', dtype: 'f32', b: 64, sQ: 2, hQ: 1, lens: varlen(64, [20, 64, 1]) });
  return out.map(scaleDecode);
}

/** A cache filled for `lens` with permuted pages; q rounded to bf16. */
async function decodeSetup(c: DecodeCase, rng: Rng) {
  const { dC, dR, page } = DIMS[c.dims];
  const perSeq = c.lens.map((l) => Math.ceil(l / page));
  const maxBlocks = Math.max(1, ...perSeq) + 1;
  const total = perSeq.reduce((a, x) => a + x, 0) + 2; // + unused pages, poisoned
  const layout: Layout = { dC, dR, pageSize: page, dtype: c.dtype, pow2Scales: c.pow2 };
  const cpu = await KvCache.create({ layers: 2, pages: total, ...layout });
  const gpu = await KvCache.create({ layers: 2, pages: total, ...layout, device: 'cuda' });
  await cpu.poison(); // NaN in unused pages and in the tails past each sequence's end
  await gpu.poison();
  const order = permutation(rng, total);
  const bt = new Int32Array(c.b * maxBlocks).fill(2 ** 31 - 1); // junk that must never be read
  let o = 0;
  for (let s = 0; s < c.b; s++) for (let k = 0; k < perSeq[s]; k++) bt[s * maxBlocks + k] = order[o++];
  const slots: number[] = [];
  for (let s = 0; s < c.b; s++) for (let t = 0; t < c.lens[s]; t++) slots.push(bt[s * maxBlocks + Math.floor(t / page)] * page + (t % page));
  // Token data from a random pool, visited in a different order per sequence (scrambled by a
  // multiplier), so the large cases stay cheap to build and mixed-up sequences still differ.
  const pool = Math.min(slots.length, 8192);
  const cPool = Float32Array.from({ length: pool * dC }, () => rng.normal());
  const pPool = Float32Array.from({ length: pool * dR }, () => rng.normal());
  let kMax = 0; // largest key norm, for the LSE tolerance
  let kSq = 0;
  for (let t = 0; t < pool; t++) {
    let n = 0;
    for (let e = 0; e < dC; e++) n += cPool[t * dC + e] ** 2;
    for (let e = 0; e < dR; e++) n += pPool[t * dR + e] ** 2;
    kMax = Math.max(kMax, Math.sqrt(n));
    kSq += n;
  }
  const kRms = Math.sqrt(kSq / Math.max(1, pool * (dC + dR)));
  const chunk = 32768;
  for (let s0 = 0; s0 < slots.length; s0 += chunk) {
    const n = Math.min(chunk, slots.length - s0);
    const cKv = new Float32Array(n * dC);
    const kPe = new Float32Array(n * dR);
    for (let t = 0; t < n; t++) {
      const src = ((s0 + t) * 7919) % pool;
      cKv.set(cPool.subarray(src * dC, (src + 1) * dC), t * dC);
      kPe.set(pPool.subarray(src * dR, (src + 1) * dR), t * dR);
    }
    const sl = Tensor.from(Int32Array.from(slots.slice(s0, s0 + n)));
    for (const cache of [cpu, gpu]) await cache.append(0, Tensor.from(cKv, [n, dC]), Tensor.from(kPe, [n, dR]), sl);
  }
  const qData = roundBf16(Float32Array.from({ length: c.b * c.sQ * c.hQ * (dC + dR) }, () => rng.normal()));
  const q = Tensor.from(qData, [c.b, c.sQ, c.hQ, dC + dR]);
  return { cpu, gpu, q, qData, bt: Tensor.from(bt, [c.b, maxBlocks]), seqlens: Tensor.from(Int32Array.from(c.lens)), kMax, kRms };
}

gpuDescribe(gpuTitle('CUDA mla_decode vs CPU'), () => {
  const scaledName = (c: DecodeCase) => (EMULATED && (c.b === 8 || c.lens.some((l) => l >= 256)) ? EMU_TAG : '');
  test.each(decodeCases().map((c) => [JSON.stringify({ ...c, lens: c.lens.length > 4 ? `${c.lens.length} rows` : c.lens }) + scaledName(c), c] as const))(
    '%s', async (_n, c) => {
      const rng = new Rng(`decode ${JSON.stringify(c)}`);
      const { dC, dR } = DIMS[c.dims];
      const d = dC + dR;
      const s = await decodeSetup(c, rng);
      const scale = 0.0723;
      const want = await ops.mlaDecode(s.q, s.cpu, 0, s.bt, s.seqlens, { scale, impl: 'fast' });
      const got = await ops.mlaDecode(s.q, s.gpu, 0, s.bt, s.seqlens, { scale, splitTokens: c.split });
      const tensorCores = c.dims === 'v2' && c.dtype !== 'f32';
      const wo = want.out.data as Float32Array;
      const go = got.out.data as Float32Array;
      const wl = want.lse.data as Float32Array;
      const gl = got.lse.data as Float32Array;
      const rows = c.b * c.sQ * c.hQ;
      // The tensor-core path rounds to bf16 (unit roundoff u = 2^-8) the softmax weights P and,
      // for a non-pow2 fp8 cache, the dequantized keys (code · scale has up to 28 significant
      // bits). With o = Σ p_t v_t / Σ p_t (the row sums keep the f32 weights):
      //  - P: each weight off by ≤ u, independently, so o_k moves by ~u/√3 · √(Σ p² v²) / l,
      //    which is of the order of u/√3 · (|o_k| + rms(o)): the error is measured against
      //    |o_k| + the row's RMS, not |o_k| alone (o_k near 0 by cancellation still carries it);
      //  - fp8 keys: each score moves by Δs_t = scale · Σ_d q_d k_d ε_d, σ_s = scale · u/√3 ·
      //    ‖q‖ · rms(k), i.e. each weight by a relative σ_s (≈ 4e-3 here, more than P's
      //    rounding); the values' own rounding adds u/√3 per term like P.
      // Bounds: per element (2^-6 + 12σ_s) · (|o_k| + rms(o)), per row L2 (2^-7 + 3σ_s) · ‖o‖,
      // LSE below. An f64 emulation of exactly these roundings on this test's data (bf16, fp8
      // and pow2-fp8 caches, 33k rows of s_k 1..4096 each) stayed under 0.5 of every bound.
      // (FlashMLA's abs 8e-4 / rel 2/128 fails there: a near-zero o_k gets the row-sized
      // error.) Any indexing, masking or merging error is of the order of the row's RMS, far
      // above these bounds.
      for (let r = 0; r < rows; r++) {
        let qn = 0;
        for (let k = 0; k < d; k++) qn += s.qData[r * d + k] ** 2;
        qn = Math.sqrt(qn);
        const sigS = tensorCores && c.dtype === 'fp8' && !c.pow2 ? scale * (2 ** -8 / Math.sqrt(3)) * qn * s.kRms : 0;
        let ss = 0;
        for (let k = 0; k < dC; k++) ss += wo[r * dC + k] ** 2;
        const rms = Math.sqrt(ss / dC);
        let dot = 0;
        let na = 0;
        let nb = 0;
        let es = 0;
        for (let k = 0; k < dC; k++) {
          const a = wo[r * dC + k];
          const b = go[r * dC + k];
          // f32 paths (the generic kernel; the CPU differs only in summation order): FlashMLA's
          // abs 8e-4 and rel 2/128.
          const tol = tensorCores ? (2 ** -6 + 12 * sigS) * (Math.abs(a) + rms) + 1e-6 : 8e-4 + (2 / 128) * Math.abs(a);
          if (!(Math.abs(a - b) <= tol)) throw new Error(`row ${r} dim ${k}: cpu ${a} cuda ${b} (tolerance ${tol})`);
          dot += a * b;
          na += a * a;
          nb += b * b;
          es += (a - b) ** 2;
        }
        if (tensorCores) {
          const bound = (2 ** -7 + 3 * sigS) * Math.sqrt(na) + 1e-6;
          if (Math.sqrt(es) > bound) throw new Error(`row ${r}: L2 error ${Math.sqrt(es)} > ${bound}`);
        } else if (na > 0 && 1 - dot / Math.sqrt(na * nb) > 5e-6) {
          throw new Error(`row ${r}: cosine difference ${1 - dot / Math.sqrt(na * nb)}`);
        }
        const la = wl[r];
        const lb = gl[r];
        if (la === Infinity) {
          if (lb !== Infinity || nb !== 0) throw new Error(`row ${r}: an empty row must give out 0 and lse +inf, got lse ${lb}`);
          continue;
        }
        // LSE. f32 paths: 1e-6 abs (the bound) plus an ulp-scale relative term.
        // Tensor cores: |Δlse| ≤ max_t |Δscore_t|, with (q bf16-exact)
        //  - bf16 cache: exact products summed in f32 over 36 k16 MMA steps, each rounding (or
        //    truncating) at ≤ 2 ulp of the running sum: |Δs| ≤ scale · 72 · 2^-23 · Σ|q_d k_d|
        //    ≤ scale · 72 · 2^-23 · ‖q‖ · max‖k‖ (Cauchy-Schwarz), ≈ 4e-4 here;
        //  - fp8 cache: the keys' dequantized values are also rounded to bf16 (relative error
        //    ε_d, |ε_d| ≤ u = 2^-8, independent): Δs has σ_s (above), and Δlse = Σ p_t Δs_t / l
        //    has σ ≤ σ_s; 8σ_s, ≈ 3e-2 here (the emulation's worst: 0.33 of this bound).
        let tol = 1e-6 + 1e-6 * Math.abs(la);
        if (tensorCores) tol += scale * 72 * 2 ** -23 * qn * s.kMax + 8 * sigS;
        if (!(Math.abs(la - lb) <= tol)) throw new Error(`row ${r}: lse cpu ${la} cuda ${lb} (tolerance ${tol})`);
      }
      s.cpu.dispose();
      s.gpu.dispose();
    }, 300_000);

  test('the kernel reported is the tensor-core one for dC = 512, dR = 64 (bf16 / fp8) and generic otherwise', async () => {
    const expectations: [DecodeCase, RegExp][] = [
      [{ dims: 'v2', dtype: 'bf16', b: 2, sQ: 1, hQ: 16, lens: [65, 3] }, /^tc_mma_bk(64|32)_bf16$/],
      [{ dims: 'v2', dtype: 'fp8', b: 2, sQ: 2, hQ: 128, lens: [65, 3] }, /^tc_mma_bk(64|32)_fp8$/],
      [{ dims: 'v2', dtype: 'f32', b: 2, sQ: 1, hQ: 16, lens: [65, 3] }, /^generic$/],
      [{ dims: 'small', dtype: 'bf16', b: 2, sQ: 1, hQ: 16, lens: [65, 3] }, /^generic$/],
      [{ dims: 'small', dtype: 'fp8', b: 2, sQ: 1, hQ: 16, lens: [65, 3] }, /^generic$/],
    ];
    for (const [c, want] of expectations) {
      const s = await decodeSetup(c, new Rng('kernel name'));
      const r = await binding().benchMlaDecodeCuda(s.q.raw('q'), s.gpu.raw(), 0, s.bt.raw('blockTable'), s.seqlens.raw('seqlens'), 0.07, 0, 1);
      expect(r.kernel).toMatch(want);
      expect(r.items).toBeGreaterThanOrEqual(c.b);
      s.cpu.dispose();
      s.gpu.dispose();
    }
  }, 60_000);
});

interface PrefillCase { dtype: KvCacheDtype; dC: number; dR: number; dNope: number; dV: number; h: number; lens: number[]; nq: number[]; kvB: 'f32' | 'bf16' }

gpuDescribe(gpuTitle('CUDA mla_prefill vs CPU'), () => {
  const cases: PrefillCase[] = [];
  for (const dtype of ['bf16', 'fp8', 'f32'] as const) {
    cases.push({ dtype, dC: 32, dR: 8, dNope: 16, dV: 16, h: 3, lens: [1, 70], nq: [1, 70], kvB: 'f32' });
    cases.push({ dtype, dC: 130, dR: 6, dNope: 10, dV: 12, h: 1, lens: [65, 0, 200], nq: [5, 0, 130], kvB: 'bf16' }); // cached prefixes
    // V2 dims (128/64/128) take the bf16 tensor-core flash kernel: test/gpu/mla-prefill.test.ts
    // covers them with bf16-exact inputs and that kernel's rounding allowance; here the generic
    // kernel's f32 sizes, at FlashMLA's f32 tolerance.
  }
  test.each(cases.map((c) => [JSON.stringify(c), c] as const))('%s', async (_n, c) => {
    const rng = new Rng(`prefill ${JSON.stringify(c)}`);
    const page = 64;
    const b = c.lens.length;
    const perSeq = c.lens.map((l) => Math.ceil(l / page));
    const maxBlocks = Math.max(1, ...perSeq) + 1;
    const total = perSeq.reduce((a, x) => a + x, 0) + 1;
    const { cpu, gpu } = await pair({ dC: c.dC, dR: c.dR, pageSize: page, dtype: c.dtype }, total);
    await cpu.poison();
    await gpu.poison();
    const order = permutation(rng, total);
    const bt = new Int32Array(b * maxBlocks).fill(2 ** 31 - 1);
    let o = 0;
    for (let s = 0; s < b; s++) for (let k = 0; k < perSeq[s]; k++) bt[s * maxBlocks + k] = order[o++];
    const slots: number[] = [];
    for (let s = 0; s < b; s++) for (let t = 0; t < c.lens[s]; t++) slots.push(bt[s * maxBlocks + Math.floor(t / page)] * page + (t % page));
    const n = slots.length;
    const cKv = Tensor.from(Float32Array.from({ length: n * c.dC }, () => rng.normal()), [n, c.dC]);
    const kPe = Tensor.from(Float32Array.from({ length: n * c.dR }, () => rng.normal()), [n, c.dR]);
    for (const cache of [cpu, gpu]) await cache.append(0, cKv, kPe, Tensor.from(Int32Array.from(slots)));
    const T = c.nq.reduce((a, x) => a + x, 0);
    const cu = Int32Array.from([0, ...c.nq.map((_, i) => c.nq.slice(0, i + 1).reduce((a, x) => a + x, 0))]);
    const q = Tensor.from(Float32Array.from({ length: T * c.h * (c.dNope + c.dR) }, () => rng.normal()), [T, c.h, c.dNope + c.dR]);
    const kvB32 = Tensor.from(Float32Array.from({ length: c.h * (c.dNope + c.dV) * c.dC }, () => rng.normal() / Math.sqrt(c.dC)), [c.h * (c.dNope + c.dV), c.dC]);
    const kvB = c.kvB === 'f32' ? kvB32 : await ops.cast(kvB32, 'bf16');
    const opts = { scale: 1 / Math.sqrt(c.dNope + c.dR), dNope: c.dNope, dV: c.dV };
    const args = [q, 0, Tensor.from(bt, [b, maxBlocks]), Tensor.from(Int32Array.from(c.lens)), Tensor.from(cu), kvB] as const;
    const want = (await ops.mlaPrefill(args[0], cpu, args[1], args[2], args[3], args[4], args[5], { ...opts, impl: 'fast' })).data as Float32Array;
    const got = (await ops.mlaPrefill(args[0], gpu, args[1], args[2], args[3], args[4], args[5], opts)).data as Float32Array;
    // As for decode: FlashMLA's abs 8e-4 / rel 2/128 (both sides f32, different summation orders).
    for (let i = 0; i < want.length; i++) {
      if (!(Math.abs(want[i] - got[i]) <= 8e-4 + (2 / 128) * Math.abs(want[i]))) throw new Error(`out[${i}]: cpu ${want[i]} cuda ${got[i]}`);
    }
    cpu.dispose();
    gpu.dispose();
  });
});

// Where CUDA is not usable, CUDA options must say why instead of crashing (not registered where
// it is usable: nothing to skip on a GPU or the emulated device).
if (!CUDA.usable) describe('without a usable CUDA device', () => {
  test('KvCache device cuda is E_UNSUPPORTED with the reason', async () => {
    await expect(KvCache.create({ layers: 1, pages: 1, dC: 8, dR: 4, device: 'cuda' }))
      .rejects.toMatchObject({ code: 'E_UNSUPPORTED', message: expect.stringContaining('CUDA') });
  });

  test('gemm and moeRoute with device cuda are E_UNSUPPORTED with the reason', async () => {
    await expect(ops.gemm(Tensor.zeros([1, 4]), Tensor.zeros([2, 4]), { device: 'cuda' }))
      .rejects.toMatchObject({ code: 'E_UNSUPPORTED', message: expect.stringContaining('CUDA') });
    await expect(ops.moeRoute(Tensor.zeros([1, 8]), { topK: 2, method: 'greedy', device: 'cuda' }))
      .rejects.toMatchObject({ code: 'E_UNSUPPORTED', message: expect.stringContaining('CUDA') });
  });
});
