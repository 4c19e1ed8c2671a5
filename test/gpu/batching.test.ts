/**
 * Batched engine steps on CUDA: several sequences in one varlen prefill step and one batched
 * decode step give each sequence the logits of its own step. The decode split plan (and so
 * the summation order) depends on the batch, so this is a rounding-level comparison: 1e-3 of
 * the row's largest |logit| (f32 partial sums combined in another order — orders of magnitude
 * below the bf16 allowance of model.test.ts, far above f32 rounding noise of ~1e-6).
 * The dense GEMMs treat x by M, the step's token count (gemm.cu): M ≤ 32 splits x into bf16
 * hi + lo (2^-16), M > 32 rounds it to bf16 (2^-8) — a rounding, not an order, and one that
 * can flip a near-tied router choice (likely what amplified it here: a 1-token prompt alone vs
 * inside a 33-token step differed by 3.7% of the row's largest logit on the emulated device,
 * bit-identical up to 32 tokens, the same 3.7% when the 33 tokens are one prompt). So each
 * group keeps every step, alone or batched, on one side of M = 32: three prompts of 70 (two
 * non-adjacent pages), 40 and 33 tokens (all M > 32), and of 1, 9 and 20 tokens (all M ≤ 32).
 * Then continuous batching through Model: concurrent generations share decode steps.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as path from 'node:path';
import { KvCache, Model, NativeEngine, makeTiny, ops } from '../../lib';
import { Checkpoint } from '../../lib/model/checkpoint';
import { loadWeights } from '../../lib/model/weights';
import { randomPrompt, rmDir, tmpDir } from '../model/util';
import { gpuDescribe, gpuTitle } from './cuda';

const root = tmpDir('gpu-batching');
afterAll(() => rmDir(root));

function close(a: Float32Array, b: Float32Array, V: number, label: string): void {
  for (let r = 0; r < a.length / V; r++) {
    let m = 0;
    for (let v = 0; v < V; v++) m = Math.max(m, Math.abs(a[r * V + v]));
    for (let v = 0; v < V; v++) {
      const d = Math.abs(a[r * V + v] - b[r * V + v]);
      if (!(d <= 1e-3 * m + 1e-6)) throw new Error(`${label}: row ${r} logit ${v}: ${a[r * V + v]} vs ${b[r * V + v]}`);
    }
  }
}

gpuDescribe(gpuTitle('batched engine steps on CUDA'), () => {
  const dir = path.join(root, 'v2');
  beforeAll(async () => {
    await makeTiny(dir, { kind: 'v2', seed: 401, dtype: 'bf16' });
  });

  test.each([[[70, 40, 33], [[7, 2], [0], [5]]], [[1, 9, 20], [[11], [3], [4]]]] as const)(
    'varlen prefill of 3 sequences (%j tokens) and a batched decode = each sequence alone', async (lens, pages) => {
      const ck = await Checkpoint.open(dir);
      const w = await loadWeights(ck);
      await ck.close();
      const c = ck.config;
      const cache = await KvCache.create({ layers: c.numLayers, pages: 16, dC: c.kvLoraRank, dR: c.qkRopeHeadDim, dtype: 'bf16', pageSize: 64, device: 'cuda' });
      const rope = await ops.ropeTable({ dim: c.rope.dim, maxPositions: 256, theta: c.rope.theta, yarn: c.rope.yarn });
      const e = await NativeEngine.create(c, w, cache, rope, 'cuda', { maxTokens: 160, maxSeqs: 3, maxSeqlen: 256 });
      try {
        const prompts = lens.map((n, i) => randomPrompt(`g${i}`, n));
        const seqs = prompts.map((p, i) => ({ tokens: p, pos0: 0, pages: [...pages[i]] }));
        const V = c.vocabSize;
        const all = await e.step(seqs, 'prefill', 'last');
        for (let i = 0; i < 3; i++) close((await e.step([seqs[i]], 'prefill', 'last')).logits!, all.logits!.subarray(i * V, (i + 1) * V), V, `prefill ${i}`);
        const dec = [3, 4, 5].map((t, i) => ({ tokens: [t], pos0: prompts[i].length, pages: [...pages[i]] }));
        const both = await e.step(dec, 'decode', 'last');
        for (let i = 0; i < 3; i++) close((await e.step([dec[i]], 'decode', 'last')).logits!, both.logits!.subarray(i * V, (i + 1) * V), V, `decode ${i}`);
      } finally {
        e.dispose();
        cache.dispose();
      }
    });

  test('concurrent generations share decode steps', async () => {
    const m = await Model.load(dir, { device: 'cuda', maxBatch: 8 });
    try {
      const rs = await Promise.all([0, 1, 2, 3].map((i) => m.generate({ tokens: randomPrompt(`gc${i}`, 4 + i), maxNewTokens: 10 }).result));
      expect(rs.every((r) => r.tokens.length > 0)).toBe(true);
      const s = m.batchStats();
      expect(s.steps).toBeLessThan(s.tokens);
    } finally {
      await m.dispose();
    }
  });
});
