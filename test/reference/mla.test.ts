/**
 * Self-tests of the MLA references: hand values, the no-key convention, absorption as exact
 * algebra (absorbed == expanded in double), the latent form as the special case W_UK = W_UV = I,
 * and the row bookkeeping of decode (s_q new tokens at the end) and prefill (varlen, chunked).
 */
import * as mla from './mla';
import { Rng } from './rng';

const seqFrom = (c: number[][], k: number[][]): mla.LatentSeq => ({
  n: c.length,
  c: Float64Array.from(c.flat()),
  k: Float64Array.from(k.flat()),
});

function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (scale || 1));
  return worst;
}

describe('mlaLatent', () => {
  test('one key: out = c_0, lse = score_0', () => {
    const seq = seqFrom([[1, -2]], [[0.5]]);
    const q = [3, 1, 4]; // dC = 2, dR = 1
    const r = mla.mlaLatent(q, 1, 1, 2, 1, [seq], [0], [1], 0.5);
    expect(Array.from(r.out)).toEqual([1, -2]);
    expect(r.lse[0]).toBeCloseTo(0.5 * (3 - 2 + 2), 14);
  });

  test('two keys by hand: scores ln 1 and ln 3 -> weights 1/4, 3/4', () => {
    // dC = 1, dR = 1; q = [1, 1], scale 1: score_t = c_t + k_t
    const seq = seqFrom([[0], [4]], [[0], [Math.log(3) - 4]]);
    const r = mla.mlaLatent([1, 1], 1, 1, 1, 1, [seq], [0], [2], 1);
    expect(r.out[0]).toBeCloseTo(0.75 * 4, 14);
    expect(r.lse[0]).toBeCloseTo(Math.log(4), 14);
    expect(r.stats.absOut[0]).toBeCloseTo(3, 14);
  });

  test('no visible key: out 0, lse +inf; visibility limits the keys', () => {
    const seq = seqFrom([[1], [100]], [[0], [0]]);
    const r = mla.mlaLatent([1, 0, 1, 0], 2, 1, 1, 1, [seq], [0, 0], [0, 1], 1);
    expect(r.out[0]).toBe(0);
    expect(r.lse[0]).toBe(Infinity);
    expect(r.out[1]).toBe(1); // sees only key 0 although key 1 scores higher
  });

  test('identical keys: out is the key, lse = score + ln n', () => {
    const rng = new Rng('identical keys');
    const c = Array.from({ length: 6 }, () => rng.normal());
    const k = [rng.normal(), rng.normal()];
    const seq = seqFrom(Array(5).fill(c), Array(5).fill(k));
    const q = Array.from({ length: 8 }, () => rng.normal());
    const r = mla.mlaLatent(q, 1, 1, 6, 2, [seq], [0], [5], 0.3);
    for (let d = 0; d < 6; d++) expect(r.out[d]).toBeCloseTo(c[d], 13);
    let s = 0;
    for (let i = 0; i < 6; i++) s += q[i] * c[i];
    s += q[6] * k[0] + q[7] * k[1];
    expect(r.lse[0]).toBeCloseTo(0.3 * s + Math.log(5), 12);
  });
});

function randomProblem(seed: string, h: number, dNope: number, dR: number, dV: number, dC: number, lens: number[]) {
  const rng = new Rng(seed);
  const seqs = lens.map((n) => ({ n, c: Float64Array.from(rng.normalF32(n * dC)), k: Float64Array.from(rng.normalF32(n * dR)) }));
  const kvB = Float64Array.from(rng.normalF32(h * (dNope + dV) * dC, 0.2));
  return { rng, seqs, kvB };
}

describe('mlaNaive (expanded) vs mlaAbsorbed', () => {
  test.each([
    { h: 1, dNope: 3, dR: 2, dV: 4, dC: 5, lens: [1] },
    { h: 3, dNope: 8, dR: 4, dV: 6, dC: 16, lens: [7, 1, 12] },
    { h: 4, dNope: 16, dR: 8, dV: 16, dC: 32, lens: [20, 0, 5] },
  ])('absorption is exact algebra: %j', (c) => {
    const { rng, seqs, kvB } = randomProblem(JSON.stringify(c), c.h, c.dNope, c.dR, c.dV, c.dC, c.lens);
    const sq = 2;
    const { seqOf, nVis } = mla.decodeRows(c.lens, sq);
    const rows = seqOf.length;
    const qN = Float64Array.from(rng.normalF32(rows * c.h * c.dNope));
    const qP = Float64Array.from(rng.normalF32(rows * c.h * c.dR));
    const scale = 0.3;
    const a = mla.mlaNaive(qN, qP, rows, c.h, c.dNope, c.dR, c.dV, c.dC, kvB, seqs, seqOf, nVis, scale);
    const b = mla.mlaAbsorbed(qN, qP, rows, c.h, c.dNope, c.dR, c.dV, c.dC, kvB, seqs, seqOf, nVis, scale);
    expect(maxRelDiff(a.out, b.out)).toBeLessThan(1e-12);
    for (let i = 0; i < a.lse.length; i++) {
      if (a.lse[i] === Infinity) expect(b.lse[i]).toBe(Infinity);
      else expect(Math.abs(a.lse[i] - b.lse[i])).toBeLessThan(1e-12 * (1 + Math.abs(a.lse[i])));
    }
    // bound magnitudes dominate the values they bound
    for (let i = 0; i < a.out.length; i++) expect(a.stats.absOut[i]).toBeGreaterThanOrEqual(Math.abs(a.out[i]) * (1 - 1e-12));
    for (let i = 0; i < a.lse.length; i++) expect(a.stats.absScore[i]).toBeGreaterThanOrEqual(a.stats.maxScore[i] * (1 - 1e-12));
  });

  test('W_UK = W_UV = I: expanded attention is the latent attention', () => {
    const h = 2;
    const dC = 6;
    const dR = 2;
    const { rng, seqs } = randomProblem('identity', h, dC, dR, dC, dC, [9]);
    const kvB = new Float64Array(h * 2 * dC * dC);
    for (let hh = 0; hh < h; hh++) {
      for (let i = 0; i < dC; i++) {
        kvB[(hh * 2 * dC + i) * dC + i] = 1; // W_UK^h = I
        kvB[(hh * 2 * dC + dC + i) * dC + i] = 1; // W_UV^h = I
      }
    }
    const rows = 3;
    const seqOf = [0, 0, 0];
    const nVis = [9, 4, 1];
    const qN = Float64Array.from(rng.normalF32(rows * h * dC));
    const qP = Float64Array.from(rng.normalF32(rows * h * dR));
    const q = new Float64Array(rows * h * (dC + dR));
    for (let r = 0; r < rows * h; r++) {
      q.set(qN.subarray(r * dC, (r + 1) * dC), r * (dC + dR));
      q.set(qP.subarray(r * dR, (r + 1) * dR), r * (dC + dR) + dC);
    }
    const a = mla.mlaNaive(qN, qP, rows, h, dC, dR, dC, dC, kvB, seqs, seqOf, nVis, 0.7);
    const b = mla.mlaLatent(q, rows, h, dC, dR, seqs, seqOf, nVis, 0.7);
    expect(maxRelDiff(a.out, b.out)).toBeLessThan(1e-13);
    expect(maxRelDiff(a.lse, b.lse)).toBeLessThan(1e-13);
  });

  test('kv_b_proj layout: head h rows [h(dN+dV), h(dN+dV)+dN) are W_UK, the next dV rows W_UV', () => {
    // h = 2, dNope = 1, dV = 1, dC = 1: kvB rows = [uk0, uv0, uk1, uv1]
    const kvB = [2, 3, 5, 7];
    const seq = seqFrom([[1]], [[0]]);
    const r = mla.mlaNaive([1, 1], [0, 0], 1, 2, 1, 1, 1, 1, kvB, [seq], [0], [1], 1);
    expect(Array.from(r.out)).toEqual([3, 7]); // v^h = W_UV^h c
    expect(r.lse[0]).toBe(2); // score head 0 = q·(W_UK^0 c) = 2
    expect(r.lse[1]).toBe(5);
    expect(Array.from(mla.wUkT(kvB, 2, 1, 1, 1))).toEqual([2, 5]);
    expect(Array.from(mla.wUv(kvB, 2, 1, 1, 1))).toEqual([3, 7]);
  });
});

describe('row bookkeeping', () => {
  test('decodeRows: the s_q new tokens are the last ones, causal among themselves', () => {
    const r = mla.decodeRows([5, 0, 1], 2);
    expect(Array.from(r.seqOf)).toEqual([0, 0, 1, 1, 2, 2]);
    expect(Array.from(r.nVis)).toEqual([4, 5, 0, 0, 0, 1]);
  });

  test('prefillRows: varlen, chunked (prefix cached)', () => {
    const r = mla.prefillRows([3, 10], [0, 3, 5]);
    expect(Array.from(r.seqOf)).toEqual([0, 0, 0, 1, 1]);
    expect(Array.from(r.nVis)).toEqual([1, 2, 3, 9, 10]);
  });

  test('headsGemm: per head y = x · wᵀ', () => {
    // T = 1, h = 2, K = 2, N = 1: head 0 w = [1, 2], head 1 w = [3, 4]
    const r = mla.headsGemm([1, 1, 1, -1], 1, 2, 2, [1, 2, 3, 4], 1);
    expect(Array.from(r.y)).toEqual([3, -1]);
    expect(Array.from(r.absDot)).toEqual([3, 7]);
  });
});
