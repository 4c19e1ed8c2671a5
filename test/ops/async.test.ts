/**
 * The ops run off the JS thread: a long gemm leaves the event loop live, many ops can be in
 * flight at once and all come back right, and an input disposed while its op is in flight
 * does not disturb the op.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as ref from '../reference/ops';
import { expectClose, expectEqual } from '../reference/compare';
import { Rng } from '../reference/rng';
import { F32_MIN_NORMAL, U32, f32, f32Data, floatTensor, ids } from './util';

describe('event loop stays live during a long op', () => {
  // An f32 gemm M x 8192 x 8192 (M = 64 first: 4.3 G multiply-adds), grown (M = 256, 1024)
  // until one call takes >= 200 ms, so the check means something on fast machines too.
  // Data on a grid (x in multiples of 1/2 in [-1, 1], w multiples of 1/8 in [-3/8, 3/8]) so
  // every partial sum is a multiple of 1/16 below 3072: exact in f32, any order (tolerance 0).
  const N = 8192;
  const K = 8192;

  test('a 10 ms setInterval keeps ticking while gemm M=64.. N=8192 K=8192 runs', async () => {
    const w = new Float32Array(N * K);
    for (let n = 0; n < N; n++) {
      const base = n * K;
      for (let k = 0; k < K; k++) w[base + k] = (((n + 2 * k) % 7) - 3) * 0.125;
    }
    const wt = f32(w, [N, K]);

    let M = 0;
    let x = new Float32Array(0);
    let y: Tensor | undefined;
    let info = { M, elapsedMs: 0, syncMs: 0, ticks: 0 };
    for (M of [64, 256, 1024]) {
      x = new Float32Array(M * K);
      for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) x[m * K + k] = (((m * 3 + k) % 5) - 2) * 0.5;
      let ticks = 0;
      const timer = setInterval(() => {
        ticks++;
      }, 10);
      try {
        const t0 = performance.now();
        const p = ops.gemm(f32(x, [M, K]), wt);
        const syncPart = performance.now() - t0;
        y = await p;
        info = { M, elapsedMs: performance.now() - t0, syncMs: syncPart, ticks };
      } finally {
        clearInterval(timer);
      }
      if (info.elapsedMs >= 200) break;
    }
    const { elapsedMs, syncMs, ticks } = info;
    // the call returns at once; the work happens off the JS thread
    if (!(syncMs < Math.max(50, elapsedMs / 4))) throw new Error(`gemm blocked the caller: ${JSON.stringify(info)}`);
    // a live loop ticks about every 10 ms; demand a third of that (timers are coarse under load)
    const want = Math.max(3, Math.floor(elapsedMs / 10 / 3));
    if (!(ticks >= want)) throw new Error(`only ${ticks} ticks (want >= ${want}): ${JSON.stringify(info)}`);

    // and the result is right: rows 0 and M-1 in full, plus 200 random entries
    const got = f32Data(y as Tensor, [M, N], info);
    const rng = new Rng('event loop gemm check');
    const picks: [number, number][] = [];
    for (const m of [0, M - 1]) for (let n = 0; n < N; n++) picks.push([m, n]);
    for (let i = 0; i < 200; i++) picks.push([rng.int(0, M), rng.int(0, N)]);
    const gv = new Float64Array(picks.length);
    const wv = new Float64Array(picks.length);
    picks.forEach(([m, n], i) => {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      wv[i] = s;
      gv[i] = got[m * N + n];
    });
    expectClose(gv, wv, { abs: 0, label: 'large gemm (exact grid)', ctx: info });
  });
});

describe('many ops in flight at once', () => {
  test('Promise.all of 24 mixed ops, all correct', async () => {
    const rng = new Rng('concurrency');
    const checks: Promise<void>[] = [];

    for (const [i, wdtype] of (['f32', 'bf16', 'f16', 'f32', 'bf16'] as const).entries()) {
      const Mx = 3 + i;
      const Nw = 33 + 16 * i;
      const K = 127 + 1000 * i;
      const x = rng.normalF32(Mx * K);
      const W = floatTensor(rng.normalF32(Nw * K, 0.05), [Nw, K], wdtype);
      checks.push(
        ops.gemm(f32(x, [Mx, K]), W.t, { impl: i % 2 ? 'fast' : 'reference' }).then((y) => {
          const want = ref.gemm(x, Mx, K, W.exact, Nw);
          const gamma = (K * U32) / (1 - K * U32); // see gemm.test.ts
          expectClose(f32Data(y, [Mx, Nw]), want.y, { abs: F32_MIN_NORMAL, bound: want.absDot.map((a) => gamma * a), label: `gemm #${i}` });
        }),
      );
    }
    for (let i = 0; i < 3; i++) {
      const D = [7, 512, 5120][i];
      const x = rng.normalF32(4 * D);
      const w = rng.normalF32(D, 0.5, 1);
      checks.push(
        ops.rmsNorm(f32(x, [4, D]), f32(w, [D]), { eps: 1e-6 }).then((y) => {
          expectClose(f32Data(y, [4, D]), ref.rmsNorm(x, D, w, 1e-6), { rel: (D / 2 + 8) * U32, abs: F32_MIN_NORMAL, label: `rmsNorm #${i}` });
        }),
      );
    }
    for (let i = 0; i < 3; i++) {
      const n = [3, 1000, 4099][i];
      const x = rng.normalF32(5 * n, 2);
      checks.push(
        ops.softmax(f32(x, [5, n]), { scale: 0.5 }).then((y) => {
          let A = 0;
          for (const v of x) A = Math.max(A, Math.abs(0.5 * v));
          expectClose(f32Data(y, [5, n]), ref.softmax(x, n, 0.5), { rel: (8 * A + n + 20) * U32, abs: F32_MIN_NORMAL, label: `softmax #${i}` });
        }),
      );
    }
    for (let i = 0; i < 3; i++) {
      const I = [17, 1407, 4099][i];
      const g = rng.normalF32(3 * I, 3);
      const u = rng.normalF32(3 * I);
      checks.push(
        ops.siluMul(f32(g, [3, I]), f32(u, [3, I]), { impl: i % 2 ? 'fast' : 'reference' }).then((y) => {
          expectClose(f32Data(y, [3, I]), ref.siluMul(g, u), { rel: 16 * U32, abs: F32_MIN_NORMAL, label: `siluMul #${i}` });
        }),
      );
    }
    for (let i = 0; i < 2; i++) {
      const T = 9;
      const H = 4;
      const d = 64;
      const tb = ref.ropeTable({ dim: d, maxPositions: 64 });
      const cos = Float32Array.from(tb.cos);
      const sin = Float32Array.from(tb.sin);
      const x = rng.normalF32(T * H * d);
      const pos = rng.ints(T, 0, 64);
      checks.push(
        ops.rope(f32(x, [T, H, d]), ids(pos, [T], 'i32'), { cos: f32(cos, [64, 32]), sin: f32(sin, [64, 32]) }, { interleaved: i === 0 }).then((y) => {
          const want = ref.rope(x, T, H, d, pos, { half: 32, cos: Float64Array.from(cos), sin: Float64Array.from(sin) }, i === 0);
          // 3u(|a c| + |b s|) per element (see rope.test.ts); |a c| + |b s| <= |a| + |b| <= 2 max|x| here
          let mx = 0;
          for (const v of x) mx = Math.max(mx, Math.abs(v));
          expectClose(f32Data(y, [T, H, d]), want, { abs: 3 * U32 * 2 * mx + F32_MIN_NORMAL, label: `rope #${i}` });
        }),
      );
    }
    for (let i = 0; i < 2; i++) {
      const V = 50;
      const H = 33;
      const T = floatTensor(rng.normalF32(V * H), [V, H], i ? 'bf16' : 'f32');
      const idv = rng.ints(11, 0, V);
      checks.push(
        ops.embedding(ids(idv, [11], i ? 'i64' : 'i32'), T.t).then((y) => {
          expectClose(f32Data(y, [11, H]), ref.embedding(idv, T.exact, V, H), { abs: 0, label: `embedding #${i}` });
        }),
      );
    }
    for (let i = 0; i < 2; i++) {
      const V = 1000;
      const l = rng.normalF32(6 * V, 2);
      const opts = { temperature: 0.9, topK: 50, topP: 0.9, seed: 1000 + i };
      checks.push(
        ops.sample(f32(l, [6, V]), opts).then((y) => {
          expectEqual(y.data as Int32Array, ref.sample(l, 6, V, opts), { label: `sample #${i}` });
        }),
      );
    }
    for (let i = 0; i < 2; i++) {
      const v = rng.normalF32(4099, 1000);
      const to = i ? 'f16' : 'bf16';
      checks.push(
        ops.cast(f32(v, [4099]), to).then((y) => {
          expectEqual(y.data as Uint16Array, ref.cast(v, to) as Uint16Array, { label: `cast #${i}`, hex: true });
        }),
      );
    }
    expect(checks.length).toBeGreaterThanOrEqual(20);
    await Promise.all(checks);
  });

  test('the same op 20 times concurrently on shared inputs gives 20 identical, correct results', async () => {
    const rng = new Rng('shared inputs');
    const K = 4099;
    const x = rng.normalF32(5 * K);
    const W = floatTensor(rng.normalF32(65 * K, 0.05), [65, K], 'bf16');
    const xt = f32(x, [5, K]);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => ops.gemm(xt, W.t, { impl: i % 2 ? 'fast' : 'reference' })));
    const want = ref.gemm(x, 5, K, W.exact, 65);
    const gamma = (K * U32) / (1 - K * U32);
    const bound = want.absDot.map((a) => gamma * a);
    for (const [i, y] of results.entries()) expectClose(f32Data(y, [5, 65]), want.y, { abs: F32_MIN_NORMAL, bound, label: `gemm run ${i}` });
    // each impl is deterministic run to run
    for (let i = 2; i < 20; i++) expect(results[i].data).toEqual(results[i % 2].data);
  });
});

describe('disposal while in flight', () => {
  test('disposing inputs right after the call does not disturb the op', async () => {
    const rng = new Rng('dispose in flight');
    const K = 4096;
    const x = rng.normalF32(8 * K);
    const w = rng.normalF32(257 * K, 0.05);
    const xt = f32(x, [8, K]);
    const wt = f32(w, [257, K]);
    const p = ops.gemm(xt, wt);
    xt.dispose();
    wt.dispose();
    const y = await p;
    const want = ref.gemm(x, 8, K, w, 257);
    const gamma = (K * U32) / (1 - K * U32);
    expectClose(f32Data(y, [8, 257]), want.y, { abs: F32_MIN_NORMAL, bound: want.absDot.map((a) => gamma * a), label: 'gemm after dispose' });
  });
});
