/**
 * The GPU sampler (the CUDA engine's on-device sampling, reached by ops.sample with device
 * 'cuda') against the CPU op, which test/ops checks against a float64 reference.
 * - Greedy: identical (argmax, lowest id on ties) — including ties and -inf entries.
 * - Temperature / top-k / top-p: the same definition of the draw, but the GPU sums in a
 *   different (parallel) order and its double exp may differ from the host's by an ulp, so a
 *   draw (or a top-p cut) within rounding (~1e-15 relative) of a boundary can land on the
 *   neighbouring token. Such a row is rare — about (kept tokens) · 1e-15 per row, so ~1e-11 over
 *   these suites — hence we allow at most ONE differing row per case (a wrong tie rule, top-p
 *   cut or scan shows up as many), and every GPU token must lie inside the CPU's kept set
 *   (top-k / top-p computed here in float64).
 * - Ties (quantised logits, +0 next to -0), logits a few ulps apart (keys equal but for their
 *   last one or two bytes: the radix select's low digits, long runs of equal keys cut by id),
 *   -inf entries, top-k 1 / = vocab / > vocab, top-p tiny, vocab 1, vocabularies that are not
 *   a multiple of the 1024 threads and 102 400.
 * - NaN / +inf / all -inf rows are E_RANGE, naming the lowest such row.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 * On the emulated device (test:cuda-emu) the 2000-row cases take 200 rows: "(scaled ...)".
 */
import { Tensor } from '../../lib';
import * as ops from '../../lib/ops';
import { Rng } from '../reference/rng';
import { EMU_TAG, gpuDescribe, gpuTitle, scaled } from './cuda';

/** Ids kept by top-k then top-p (descending logit, lower id first on ties), in float64. */
function keptSet(l: Float32Array, T: number, topK: number, topP: number): Set<number> {
  const order = Array.from(l.keys()).sort((a, b) => l[b] - l[a] || a - b);
  const k = topK > 0 && topK < l.length ? topK : l.length;
  const top = order.slice(0, k);
  if (topP >= 1) return new Set(top);
  const mx = l[top[0]];
  const w = top.map((i) => Math.exp((l[i] - mx) / T));
  const tot = w.reduce((a, b) => a + b, 0);
  let cum = 0;
  const kept: number[] = [];
  for (let j = 0; j < top.length; j++) {
    cum += w[j];
    kept.push(top[j]);
    if (cum >= topP * tot) break;
  }
  // The boundary itself is subject to rounding: allow the next tie-free neighbour too.
  if (kept.length < top.length) kept.push(top[kept.length]);
  return new Set(kept);
}

/**
 * Samples every row on the CPU and the GPU with the same seed; throws if a GPU token falls
 * outside the kept set; returns how many rows drew a different token.
 */
async function differingRows(l: Float32Array, rows: number, V: number, T: number, topK: number, topP: number, seed: bigint): Promise<number> {
  const t = Tensor.from(l, [rows, V]);
  const cpu = (await ops.sample(t, { temperature: T, topK, topP, seed })).data as Int32Array;
  const gpu = (await ops.sample(t, { temperature: T, topK, topP, seed, device: 'cuda' })).data as Int32Array;
  let differ = 0;
  for (let r = 0; r < rows; r++) {
    if (cpu[r] !== gpu[r]) differ++;
    const kept = keptSet(l.subarray(r * V, (r + 1) * V), T, topK, topP);
    if (!kept.has(gpu[r])) throw new Error(`row ${r}: gpu token ${gpu[r]} is outside the kept set (cpu ${cpu[r]})`);
  }
  return differ;
}

gpuDescribe(gpuTitle('CUDA sampler vs CPU'), () => {
  const rng = new Rng('gpu sample');

  test('greedy is identical, ties and -inf included (vocab 1, 7, 1000, 102400)', async () => {
    for (const V of [1, 7, 1000, 102400]) {
      const rows = 16;
      const l = Float32Array.from({ length: rows * V }, () => Math.round(rng.normal() * 4) / 4); // many ties
      if (V > 1) for (let r = 0; r < rows; r++) l[r * V + (r % V)] = -Infinity; // V = 1: a row of one -inf cannot be sampled (E_RANGE)
      if (V > 1) l[3 * V + 1] = 50; // a clear max
      const t = Tensor.from(l, [rows, V]);
      const cpu = (await ops.sample(t)).data as Int32Array;
      const gpu = (await ops.sample(t, { device: 'cuda' })).data as Int32Array;
      expect([V, Array.from(gpu)]).toEqual([V, Array.from(cpu)]);
    }
  });

  test.each([
    [1.0, 0, 1.0], [0.7, 50, 1.0], [1.0, 0, 0.9], [1.3, 40, 0.8], [0.5, 1, 1.0], [1.0, 0, 1e-9],
  ])(`temperature %p, topK %p, topP %p: ≥ 99.5%% the CPU tokens, all inside the kept set${EMU_TAG}`, async (T, topK, topP) => {
    const V = 3001;
    const rows = scaled(2000, 200);
    const l = Float32Array.from({ length: rows * V }, () => rng.normal() * 3);
    expect(await differingRows(l, rows, V, T, topK, topP, 12345n)).toBeLessThanOrEqual(1); // see the header: rounding explains one row, not more
  }, 120_000);

  test.each([
    // [vocab, rows, temperature, topK, topP, logits]
    [1, 8, 1.0, 0, 0.5, 'normal'],
    [7, 256, 1.0, 3, 1.0, 'ties'],
    [1000, 256, 0.8, 1, 1.0, 'ties'],
    [1000, 256, 1.0, 1000, 0.9, 'ties'],
    [1000, 256, 1.0, 1005, 0.7, 'ties'],
    [1000, 256, 1.0, 0, 1e-12, 'ties'],
    [1025, 256, 0.7, 0, 0.95, 'ties'],
    [3001, 256, 1.0, 100, 0.5, 'ninf'],
    [3001, 256, 1e-3, 0, 0.9, 'normal'],
    [102400, 32, 1.0, 0, 1.0, 'normal'],
    [102400, 32, 0.9, 50, 0.95, 'ties'],
    [102400, 32, 1.2, 0, 0.8, 'ninf'],
    // the radix select: keys that share their high digits, long runs of equal keys
    [3001, 256, 1.0, 1000, 0.9, 'ulps'],
    [3001, 256, 1.0, 7, 1.0, 'ulps'],
    [3001, 256, 1e-4, 0, 0.6, 'ulps'],
    [102400, 16, 1.0, 50, 0.95, 'ulps'],
    [102400, 16, 0.5, 30000, 0.999999, 'ulpsWide'],
    [102400, 16, 1e-3, 0, 0.5, 'ulpsWide'],
  ] as const)('vocab %p × %p rows, temperature %p, topK %p, topP %p, %s logits: the CPU tokens', async (V, rows, T, topK, topP, kind) => {
    // ties: multiples of 1/2 (so many equal logits, and -0 beside +0); ninf: 60% -inf entries;
    // ulps: 3.0 and its next 255 floats (all keys share their top 3 bytes, ~V/256 equal keys
    // each: the radix select's last digit and the tie cut by id decide everything); ulpsWide:
    // -1.0 and the next 69 999 floats below it (the last two digits decide).
    const l = Float32Array.from({ length: rows * V }, () => {
      if (kind === 'ninf' && rng.uniform() < 0.6) return -Infinity;
      return kind === 'ties' ? Math.round(rng.normal() * 2) / 2 : rng.normal() * 3;
    });
    if (kind === 'ulps' || kind === 'ulpsWide') {
      const bits = new Int32Array(l.buffer);
      const base = new Int32Array(Float32Array.of(kind === 'ulps' ? 3.0 : -1.0).buffer)[0];
      for (let i = 0; i < bits.length; i++) bits[i] = base + rng.int(0, kind === 'ulps' ? 256 : 70000);
    }
    for (let r = 0; r < rows; r++) if (l[r * V] === -Infinity) l[r * V] = 0; // no all -inf row
    expect(await differingRows(l, rows, V, T, topK, topP, 777n)).toBeLessThanOrEqual(1);
  }, 120_000);

  test('NaN, +inf and all -inf rows are E_RANGE', async () => {
    for (const bad of [NaN, Infinity]) {
      const l = new Float32Array(10).fill(0);
      l[4] = bad;
      await expect(ops.sample(Tensor.from(l, [1, 10]), { temperature: 1, device: 'cuda' })).rejects.toMatchObject({ code: 'E_RANGE' });
    }
    await expect(ops.sample(Tensor.from(new Float32Array(5).fill(-Infinity), [1, 5]), { device: 'cuda' })).rejects.toMatchObject({ code: 'E_RANGE' });
    // several bad rows (blocks finish in any order): the lowest is named
    const l = new Float32Array(64 * 10).fill(0);
    for (const r of [50, 9, 33]) l[r * 10 + 3] = NaN;
    await expect(ops.sample(Tensor.from(l, [64, 10]), { temperature: 1, device: 'cuda' })).rejects.toMatchObject({
      code: 'E_RANGE',
      message: expect.stringMatching(/row 9 /),
    });
  });
});
