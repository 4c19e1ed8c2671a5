/**
 * KvCache: the byte layout of every dtype, bit-exact against the reference token encoder
 * (fp8 codes and f32 tile scales from the reference e4m3 quantizer, bf16 by RNE), reads
 * (dequantized values, exact), poison, the page allocator, disposal and bad inputs.
 *
 * Tolerance: none. Layout, codes, scales and the values read back are all exact functions of
 * the f32 inputs (one f32 division per value, one RNE rounding, one f32 product).
 */
import { KvCache } from '../../lib/kv-cache';
import { Tensor } from '../../lib/tensor';
import { bf16BitsToF32 } from '../reference/dtype';
import { bytesPerToken, encodeToken, storedValues, type CacheDType } from '../reference/kv';
import { expectEqual } from '../reference/compare';
import { Rng } from '../reference/rng';
import { caseName, expectRejects, implOpts, table, type ImplName } from '../ops/util';
import { expectThrowsCode, i32, shuffle } from './util';

// Math aliased at module scope: global lookups are slow in jest's vm context (hot loops here).
const math = Math;
const numIsNaN = Number.isNaN;

interface LayoutCase {
  dtype: CacheDType;
  dC: number;
  dR: number;
  pageSize: number;
  pow2Scales: boolean;
  /** 'normal' Gaussian rows; 'special' NaN / ±inf / -0 / zero tiles / tiny / huge values */
  data: 'normal' | 'special';
  slotDtype: 'i32' | 'i64';
  impl: ImplName;
}

const layoutCases: LayoutCase[] = [];
{
  let rot = 0;
  const impls: ImplName[] = ['reference', 'fast', 'default'];
  for (const dtype of ['f32', 'bf16', 'fp8'] as CacheDType[]) {
    for (const [dC, dR] of [[512, 64], [130, 6], [64, 2], [300, 0]]) {
      for (const data of ['normal', 'special'] as const) {
        layoutCases.push({
          dtype, dC, dR, pageSize: [64, 16, 3][rot % 3], pow2Scales: dtype === 'fp8' && rot % 2 === 1, data,
          slotDtype: rot % 4 === 3 ? 'i64' : 'i32', impl: impls[rot % 3],
        });
        rot++;
      }
    }
  }
  // both scale rules on the V2 shape explicitly
  layoutCases.push({ dtype: 'fp8', dC: 512, dR: 64, pageSize: 64, pow2Scales: true, data: 'special', slotDtype: 'i32', impl: 'fast' });
  layoutCases.push({ dtype: 'fp8', dC: 512, dR: 64, pageSize: 64, pow2Scales: false, data: 'special', slotDtype: 'i64', impl: 'reference' });
}

/** Token data: Gaussian rows of varying magnitude, or rows full of special values. */
function tokenData(c: LayoutCase, rng: Rng, T: number): { cKv: Float32Array; kPe: Float32Array } {
  const { dC, dR } = c;
  const cKv = new Float32Array(T * dC);
  const kPe = rng.normalF32(T * dR, 2);
  for (let t = 0; t < T; t++) {
    const mag = 10 ** rng.int(-6, 7); // tokens of different magnitudes: scales differ per token
    for (let i = 0; i < dC; i++) cKv[t * dC + i] = rng.normal() * mag * (1 + (i >> 7)); // tiles differ too
  }
  if (c.data === 'special') {
    const specials = [NaN, Infinity, -Infinity, -0, 0, 1e-40, -1e-42, 3e38, -3e38, 2 ** -126, 448, -448, 1e-30];
    for (let t = 0; t < T; t++) {
      const kind = t % 6;
      const row = cKv.subarray(t * dC, (t + 1) * dC);
      if (kind === 0) row.fill(0); // all-zero token: scale 1, codes 0
      else if (kind === 1) row.fill(-0); // signed zeros
      else if (kind === 2) for (let i = 0; i < dC; i++) row[i] = specials[rng.int(0, specials.length)];
      else if (kind === 3) row.fill(NaN, 0, math.min(dC, 128)); // first tile has no finite value
      else if (kind === 4) for (let i = 0; i < dC; i++) row[i] = rng.normal() * 1e-30; // tiny amax: scale ~5e-33, values in the e4m3 subnormals
      else row[rng.int(0, dC)] = Infinity; // one inf among normal values
      if (dR > 0) kPe[t * dR] = [NaN, -0, Infinity, 1e-40, -3e38, 65504][kind];
    }
  }
  return { cKv, kPe };
}

function slotTensor(values: ArrayLike<number>, dt: 'i32' | 'i64'): Tensor {
  return dt === 'i32'
    ? new Tensor('i32', [values.length], Int32Array.from(values))
    : new Tensor('i64', [values.length], BigInt64Array.from(Array.from(values, (v) => BigInt(v))));
}

/** Checks that the bytes of one token are a poison pattern (NaN encodings everywhere). */
function checkPoisonToken(dtype: CacheDType, bytes: Uint8Array, off: number, dC: number, dR: number): string | null {
  const dv = new DataView(bytes.buffer, bytes.byteOffset + off);
  if (dtype === 'f32') {
    for (let i = 0; i < dC + dR; i++) if (!numIsNaN(dv.getFloat32(4 * i, true))) return `f32 element ${i} not NaN`;
  } else if (dtype === 'bf16') {
    for (let i = 0; i < dC + dR; i++) if (!numIsNaN(bf16BitsToF32(dv.getUint16(2 * i, true)))) return `bf16 element ${i} not NaN`;
  } else {
    const tiles = math.ceil(dC / 128);
    for (let i = 0; i < dC; i++) if (bytes[off + i] !== 0x7f) return `fp8 code ${i} = 0x${bytes[off + i].toString(16)}, expected 0x7f`;
    for (let j = 0; j < tiles; j++) if (!numIsNaN(dv.getFloat32(dC + 4 * j, true))) return `fp8 scale ${j} not NaN`;
    for (let i = 0; i < dR; i++) if (!numIsNaN(bf16BitsToF32(dv.getUint16(dC + 4 * tiles + 2 * i, true)))) return `k_pe ${i} not NaN`;
  }
  return null;
}

describe('KvCache layout (bit-exact vs the reference encoder)', () => {
  test.each(table(layoutCases))('%s', async (_name, c) => {
    const rng = new Rng(c);
    const layers = 2;
    const pages = 5;
    const cache = await KvCache.create({ layers, pages, dC: c.dC, dR: c.dR, dtype: c.dtype, pageSize: c.pageSize, pow2Scales: c.pow2Scales });
    try {
      const bpt = bytesPerToken(c.dtype, c.dC, c.dR);
      expect(cache.bytesPerToken).toBe(bpt);
      expect(cache.bytes).toBe(layers * pages * c.pageSize * bpt);
      expect([cache.layers, cache.pages, cache.pageSize, cache.dC, cache.dR, cache.dtype]).toEqual([layers, pages, c.pageSize, c.dC, c.dR, c.dtype]);
      await cache.poison();
      // write about 1.5 pages worth of tokens at scattered slots of layer 1 (layer 0 stays poisoned)
      const nSlots = pages * c.pageSize;
      const T = math.min(nSlots - 1, math.ceil(1.5 * c.pageSize) + 1);
      const slots = shuffle(Array.from({ length: nSlots }, (_, i) => i), rng).slice(0, T);
      const { cKv, kPe } = tokenData(c, rng, T);
      await cache.append(1, new Tensor('f32', [T, c.dC], cKv), new Tensor('f32', [T, c.dR], kPe), slotTensor(slots, c.slotDtype), implOpts(c.impl));
      const written = new Map<number, number>(slots.map((s, t) => [s, t]));
      for (let p = 0; p < pages; p++) {
        for (const layer of [0, 1]) {
          const raw = cache.readRawPage(layer, p);
          expect(raw.length).toBe(c.pageSize * bpt);
          for (let o = 0; o < c.pageSize; o++) {
            const slot = p * c.pageSize + o;
            const t = layer === 1 ? written.get(slot) : undefined;
            if (t === undefined) {
              const bad = checkPoisonToken(c.dtype, raw, o * bpt, c.dC, c.dR);
              if (bad) throw new Error(`layer ${layer} page ${p} offset ${o} (unwritten): ${bad}; case ${caseName(c)}`);
            } else {
              const want = encodeToken(c.dtype, cKv.subarray(t * c.dC, (t + 1) * c.dC), kPe.subarray(t * c.dR, (t + 1) * c.dR), c.dC, c.dR, c.pow2Scales);
              const got = raw.subarray(o * bpt, (o + 1) * bpt);
              // NaN payloads may differ (f32/bf16 NaN inputs): compare per element, any NaN matching a NaN
              expectTokenBytes(c.dtype, got, want, c.dC, c.dR, { ...c, slot, layer, page: p });
            }
          }
        }
      }
      // read returns the stored (dequantized) values exactly, in slot order
      const r = await cache.read(1, slotTensor(slots, c.slotDtype), implOpts(c.impl));
      expect(r.cKv.shape).toEqual([T, c.dC]);
      expect(r.kPe.shape).toEqual([T, c.dR]);
      const wantC = new Float64Array(T * c.dC);
      const wantK = new Float64Array(T * c.dR);
      for (let t = 0; t < T; t++) {
        const st = storedValues(c.dtype, cKv.subarray(t * c.dC, (t + 1) * c.dC), kPe.subarray(t * c.dR, (t + 1) * c.dR), c.dC, c.dR, c.pow2Scales);
        wantC.set(st.c, t * c.dC);
        wantK.set(st.k, t * c.dR);
      }
      expectValuesExact(r.cKv.data as Float32Array, wantC, c, 'read cKv');
      expectValuesExact(r.kPe.data as Float32Array, wantK, c, 'read kPe');
    } finally {
      cache.dispose();
    }
  });
});

/** Exact equality of values, -0 distinct from +0, any NaN matching any NaN. */
function expectValuesExact(got: ArrayLike<number>, want: ArrayLike<number>, ctx: unknown, label: string): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const a = got[i];
    const e = want[i];
    const ok = numIsNaN(e) ? numIsNaN(a) : Object.is(a, e);
    if (!ok) throw new Error(`${label}[${i}]: got ${Object.is(a, -0) ? '-0' : a}, expected ${Object.is(e, -0) ? '-0' : e}; case ${caseName(ctx as object)}`);
  }
}

/** Token bytes equal, except that a NaN element (f32, bf16, fp8 code) may be any NaN encoding. */
function expectTokenBytes(dtype: CacheDType, got: Uint8Array, want: Uint8Array, dC: number, dR: number, ctx: object): void {
  const g = new DataView(got.buffer, got.byteOffset, got.length);
  const w = new DataView(want.buffer, want.byteOffset, want.length);
  const fail = (what: string, a: number, e: number) => {
    throw new Error(`${what}: got 0x${a.toString(16)}, expected 0x${e.toString(16)}; case ${caseName(ctx)}`);
  };
  if (dtype === 'f32') {
    for (let i = 0; i < dC + dR; i++) {
      const a = g.getUint32(4 * i, true);
      const e = w.getUint32(4 * i, true);
      const eNaN = numIsNaN(w.getFloat32(4 * i, true));
      if (eNaN ? !numIsNaN(g.getFloat32(4 * i, true)) : a !== e) fail(`f32 element ${i}`, a, e);
    }
    return;
  }
  const bf = (off: number, n: number, what: string) => {
    for (let i = 0; i < n; i++) {
      const a = g.getUint16(off + 2 * i, true);
      const e = w.getUint16(off + 2 * i, true);
      const eNaN = numIsNaN(bf16BitsToF32(e));
      if (eNaN ? !numIsNaN(bf16BitsToF32(a)) : a !== e) fail(`${what} ${i}`, a, e);
    }
  };
  if (dtype === 'bf16') {
    bf(0, dC + dR, 'bf16 element');
    return;
  }
  // fp8: codes exact (NaN input -> 0x7F exactly, per the spec), scales exact, k_pe bf16
  const codesGot = Array.from(got.subarray(0, dC));
  const codesWant = Array.from(want.subarray(0, dC));
  expectEqual(codesGot, codesWant, { ctx, label: 'fp8 codes', hex: true });
  const tiles = math.ceil(dC / 128);
  for (let j = 0; j < tiles; j++) {
    const a = g.getUint32(dC + 4 * j, true);
    const e = w.getUint32(dC + 4 * j, true);
    if (a !== e) fail(`fp8 scale of tile ${j} (${g.getFloat32(dC + 4 * j, true)} vs ${w.getFloat32(dC + 4 * j, true)})`, a, e);
  }
  bf(dC + 4 * tiles, dR, 'k_pe bf16');
}

describe('KvCache behaviour', () => {
  test('overwriting a slot: the last append wins; layers are independent', async () => {
    const cache = await KvCache.create({ layers: 3, pages: 2, dC: 8, dR: 2, dtype: 'f32', pageSize: 4 });
    try {
      const write = (layer: number, v: number, slot: number) =>
        cache.append(layer, new Tensor('f32', [1, 8], new Float32Array(8).fill(v)), new Tensor('f32', [1, 2], new Float32Array(2).fill(-v)), i32([slot], [1]));
      await write(0, 1, 5);
      await write(1, 2, 5);
      await write(0, 3, 5);
      const r0 = await cache.read(0, i32([5], [1]));
      const r1 = await cache.read(1, i32([5], [1]));
      expect(Array.from(r0.cKv.data as Float32Array)).toEqual(new Array(8).fill(3));
      expect(Array.from(r0.kPe.data as Float32Array)).toEqual([-3, -3]);
      expect(Array.from(r1.cKv.data as Float32Array)).toEqual(new Array(8).fill(2));
      // slot 5 = page 1, offset 1
      const raw = new Float32Array(cache.readRawPage(2 - 1, 1).slice().buffer);
      expect(Array.from(raw.subarray(10, 20))).toEqual([2, 2, 2, 2, 2, 2, 2, 2, -2, -2]);
    } finally {
      cache.dispose();
    }
  });

  test('T = 0 append and read are no-ops', async () => {
    const cache = await KvCache.create({ layers: 1, pages: 1, dC: 4, dR: 2, dtype: 'fp8', pageSize: 2 });
    try {
      await cache.append(0, new Tensor('f32', [0, 4], new Float32Array(0)), new Tensor('f32', [0, 2], new Float32Array(0)), i32([], [0]));
      const r = await cache.read(0, i32([], [0]));
      expect(r.cKv.shape).toEqual([0, 4]);
      expect(r.kPe.shape).toEqual([0, 2]);
    } finally {
      cache.dispose();
    }
  });

  test('page allocator: distinct ids, counters, E_OOM with the numbers, E_RANGE on a bad free (nothing freed)', async () => {
    const cache = await KvCache.create({ layers: 2, pages: 10, dC: 4, dR: 2, dtype: 'bf16', pageSize: 8 });
    try {
      expect(cache.pagesFree).toBe(10);
      expect(cache.pagesUsed).toBe(0);
      const a = cache.allocPages(4);
      expect(Object.prototype.toString.call(a)).toBe('[object Int32Array]');
      expect(a.length).toBe(4);
      const b = cache.allocPages(5);
      const all = [...Array.from(a), ...Array.from(b)];
      expect(new Set(all).size).toBe(9);
      for (const id of all) expect(id >= 0 && id < 10 && Number.isInteger(id)).toBe(true);
      expect(cache.pagesFree).toBe(1);
      expect(cache.pagesUsed).toBe(9);
      // cache full
      const err = expectThrowsCode(() => cache.allocPages(2), 'E_OOM', [/2/, /1/]);
      expect(err.message.length).toBeGreaterThan(0);
      expect(cache.pagesFree).toBe(1); // a failed allocation takes nothing
      // free a page twice in one call / a page never allocated: E_RANGE, nothing freed
      const free = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].find((p) => !all.includes(p))!;
      expectThrowsCode(() => cache.freePages([a[0], free]), 'E_RANGE');
      expect(cache.pagesFree).toBe(1);
      expectThrowsCode(() => cache.freePages([10]), 'E_RANGE');
      expectThrowsCode(() => cache.freePages([-1]), 'E_RANGE');
      cache.freePages(a);
      expect(cache.pagesFree).toBe(5);
      expect(cache.pagesUsed).toBe(5);
      expectThrowsCode(() => cache.freePages([a[1]]), 'E_RANGE'); // already free
      const c = cache.allocPages(5);
      expect(new Set([...Array.from(b), ...Array.from(c)]).size).toBe(10);
      expect(cache.pagesFree).toBe(0);
      expectThrowsCode(() => cache.allocPages(1), 'E_OOM');
    } finally {
      cache.dispose();
    }
  });

  test('dispose: idempotent; every use afterwards is E_DISPOSED', async () => {
    const cache = await KvCache.create({ layers: 1, pages: 2, dC: 4, dR: 2, dtype: 'fp8', pageSize: 2 });
    expect(cache.disposed).toBe(false);
    cache.dispose();
    cache.dispose();
    expect(cache.disposed).toBe(true);
    const x = () => new Tensor('f32', [1, 4], new Float32Array(4));
    const k = () => new Tensor('f32', [1, 2], new Float32Array(2));
    await expectRejects(() => cache.append(0, x(), k(), i32([0], [1])), 'E_DISPOSED');
    await expectRejects(() => cache.read(0, i32([0], [1])), 'E_DISPOSED');
    await expectRejects(() => cache.poison(), 'E_DISPOSED');
    expectThrowsCode(() => cache.allocPages(1), 'E_DISPOSED');
    expectThrowsCode(() => cache.freePages([0]), 'E_DISPOSED');
    expectThrowsCode(() => cache.readRawPage(0, 0), 'E_DISPOSED');
  });
});

describe('KvCache bad inputs', () => {
  const mk = () => KvCache.create({ layers: 2, pages: 3, dC: 8, dR: 4, dtype: 'fp8', pageSize: 4 });
  const cT = (T: number, d = 8) => new Tensor('f32', [T, d], new Float32Array(T * d));
  const kT = (T: number, d = 4) => new Tensor('f32', [T, d], new Float32Array(T * d));

  interface Bad {
    name: string;
    code: string;
    mentions?: (string | RegExp)[];
    call: (c: KvCache) => Promise<unknown>;
  }
  const bad: Bad[] = [
    { name: 'append: layer == layers', code: 'E_RANGE', mentions: ['layer'], call: (c) => c.append(2, cT(1), kT(1), i32([0], [1])) },
    { name: 'append: layer -1', code: 'E_RANGE', mentions: ['layer'], call: (c) => c.append(-1, cT(1), kT(1), i32([0], [1])) },
    { name: 'append: slot == pages·pageSize', code: 'E_RANGE', mentions: ['slot'], call: (c) => c.append(0, cT(2), kT(2), i32([0, 12], [2])) },
    { name: 'append: negative slot', code: 'E_RANGE', mentions: ['slot'], call: (c) => c.append(0, cT(1), kT(1), i32([-1], [1])) },
    { name: 'append: i64 slot 2^40', code: 'E_RANGE', mentions: ['slot'], call: (c) => c.append(0, cT(1), kT(1), new Tensor('i64', [1], BigInt64Array.from([1n << 40n]))) },
    { name: 'append: cKv last dim != dC', code: 'E_SHAPE', mentions: ['cKv'], call: (c) => c.append(0, cT(1, 9), kT(1), i32([0], [1])) },
    { name: 'append: kPe last dim != dR', code: 'E_SHAPE', mentions: ['kPe'], call: (c) => c.append(0, cT(1), kT(1, 5), i32([0], [1])) },
    { name: 'append: kPe rows != cKv rows', code: 'E_SHAPE', mentions: ['kPe'], call: (c) => c.append(0, cT(2), kT(1), i32([0, 1], [2])) },
    { name: 'append: slots length != T', code: 'E_SHAPE', mentions: [/slots|cKv/], call: (c) => c.append(0, cT(2), kT(2), i32([0], [1])) },
    { name: 'append: cKv rank 1', code: 'E_SHAPE', mentions: ['cKv'], call: (c) => c.append(0, new Tensor('f32', [8], new Float32Array(8)), kT(1), i32([0], [1])) },
    { name: 'append: cKv bf16', code: 'E_DTYPE', mentions: ['cKv'], call: (c) => c.append(0, new Tensor('bf16', [1, 8], new Uint16Array(8)), kT(1), i32([0], [1])) },
    { name: 'append: slots f32', code: 'E_DTYPE', mentions: ['slots'], call: (c) => c.append(0, cT(1), kT(1), new Tensor('f32', [1], new Float32Array(1))) },
    { name: 'read: slot out of range', code: 'E_RANGE', mentions: ['slot'], call: (c) => c.read(0, i32([3, 100], [2])) },
    { name: 'read: layer out of range', code: 'E_RANGE', mentions: ['layer'], call: (c) => c.read(5, i32([0], [1])) },
  ];
  test.each(bad.map((b) => [`${b.code} ${b.name}`, b] as [string, Bad]))('%s', async (_n, b) => {
    const cache = await mk();
    try {
      await expectRejects(() => b.call(cache), b.code, b.mentions ?? [], { name: b.name });
    } finally {
      cache.dispose();
    }
  });

  test('readRawPage: page or layer out of range -> E_RANGE', async () => {
    const cache = await mk();
    try {
      expectThrowsCode(() => cache.readRawPage(0, 3), 'E_RANGE', ['page']);
      expectThrowsCode(() => cache.readRawPage(0, -1), 'E_RANGE', ['page']);
      expectThrowsCode(() => cache.readRawPage(2, 0), 'E_RANGE', ['layer']);
    } finally {
      cache.dispose();
    }
  });

  test.each<[string, object, string]>([
    ['dtype f16', { dtype: 'f16' }, 'E_DTYPE'],
    ['layers 0', { layers: 0 }, 'E_RANGE'],
    ['pages 0', { pages: 0 }, 'E_RANGE'],
    ['dC 0', { dC: 0 }, 'E_RANGE'],
    ['pageSize 0', { pageSize: 0 }, 'E_RANGE'],
    ['pageSize 2.5', { pageSize: 2.5 }, 'E_RANGE'],
    ['layers 1.5', { layers: 1.5 }, 'E_RANGE'],
  ])('create: %s -> %s', async (_n, o, code) => {
    await expectRejects(() => KvCache.create({ layers: 1, pages: 2, dC: 8, dR: 4, dtype: 'bf16', pageSize: 4, ...o } as never), code);
  });
});
