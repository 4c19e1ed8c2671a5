/**
 * The whole model on the GPU (`device: 'cuda'`: the native engine on the CUDA backend)
 * against the CPU forward, for every tiny kind with bf16 and fp8 caches.
 *
 * Tolerance of the logits: the CUDA path rounds activations to bf16 where tensor cores
 * multiply (gemm for M ≥ the tensor-core threshold, MoE experts, prefill attention: q, K, V,
 * P; decode: q and P), a 2^-8 relative error per rounding (bf16's unit roundoff), compounded over the
 * 2 + 4·layers matmuls of the tiny models and through the softmax/routing. Allowance: 3% of
 * the row's largest |logit| plus 1e-3 — several times that budget for the 2-layer tiny models, far below the differences a
 * wrong kernel makes (the logits of different tokens differ by O(1)). Routing can flip where
 * two experts' scores are within that error, so greedy continuations are compared only while
 * the CPU's top-2 logit gap exceeds twice the allowance.
 *
 * Per tiny kind (v2, v2-lite, v3) and cache (bf16, fp8): prefill and cached decode logits,
 * greedy generation alone and as concurrent requests sharing decode steps (continuous
 * batching), each against the CPU engine; decode replayed as CUDA graphs against the same
 * steps launched one by one (DSV2_CUDA_GRAPHS=0), bit for bit.
 *
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Dsv2Error, KvCache, Model, makeTiny, type Tensor } from '../../lib';
import { binding } from '../../lib/native';
import type { TinyKind } from '../../lib/model/tiny';
import { randomPrompt } from '../model/util';
import { rmDir, tmpDir } from '../model/util';
import { EMU_TAG, EMULATED, gpuDescribe, gpuTitle } from './cuda';

const KINDS: readonly TinyKind[] = ['v2', 'v2-lite', 'v3'];
const CACHES = ['bf16', 'fp8'] as const;
const root = tmpDir('gpu-model');
afterAll(() => rmDir(root));

function allowance(row: Float32Array): number {
  let m = 0;
  for (const v of row) m = Math.max(m, Math.abs(v));
  return 0.03 * m + 1e-3;
}

function expectClose(cpu: Tensor, gpu: Tensor, label: string): void {
  expect(gpu.shape).toEqual(cpu.shape);
  const V = cpu.shape[1];
  const a = cpu.data as Float32Array;
  const b = gpu.data as Float32Array;
  for (let r = 0; r < cpu.shape[0]; r++) {
    const ra = a.subarray(r * V, (r + 1) * V);
    const rb = b.subarray(r * V, (r + 1) * V);
    const tol = allowance(ra);
    let worst = 0;
    let at = 0;
    for (let v = 0; v < V; v++) {
      const e = Math.abs(ra[v] - rb[v]);
      if (!(e <= worst)) {
        worst = e;
        at = v;
      }
    }
    if (!(worst <= tol)) throw new Error(`${label}: row ${r}, logit ${at}: cpu ${ra[at]} cuda ${rb[at]} (|diff| ${worst} > ${tol})`);
  }
}

/**
 * `got` (greedy tokens of the CUDA engine for `prompt`) against the CPU engine's greedy tokens,
 * step by step while the CPU's top-2 logit gap exceeds twice the allowance (past a near tie the
 * two may rightly part); returns how many steps were compared.
 */
async function expectGreedyAsCpu(cpu: Model, prompt: readonly number[], got: readonly number[], n: number, label: string): Promise<number> {
  const want = (await cpu.generate({ tokens: [...prompt], maxNewTokens: n }).result).tokens;
  const seq = [...prompt];
  let i = 0;
  for (; i < want.length; i++) {
    const l = await cpu.logits(seq);
    const V = l.shape[1];
    const last = (l.data as Float32Array).subarray((seq.length - 1) * V);
    if (top2Gap(last) <= 2 * allowance(last)) break;
    expect([label, i, got[i]]).toEqual([label, i, want[i]]);
    seq.push(want[i]);
  }
  return i;
}

/**
 * Random prompts of the given lengths whose next token is clear on the CPU (top-2 gap over twice
 * the allowance), so that a greedy comparison compares something: the tiny random models' logits
 * are flat, and many prompts start at a near tie.
 */
async function clearPrompts(cpu: Model, label: string, lens: readonly number[]): Promise<number[][]> {
  const out: number[][] = [];
  for (let s = 0; out.length < lens.length && s < 200; s++) {
    const p = randomPrompt(`${label}-${s}`, lens[out.length]);
    const l = await cpu.logits(p);
    const V = l.shape[1];
    const last = (l.data as Float32Array).subarray((p.length - 1) * V);
    if (top2Gap(last) > 2 * allowance(last)) out.push(p);
  }
  expect(out.length).toBe(lens.length);
  return out;
}

function top2Gap(row: Float32Array): number {
  let a = -Infinity;
  let b = -Infinity;
  for (const v of row) {
    if (v > a) {
      b = a;
      a = v;
    } else if (v > b) b = v;
  }
  return a - b;
}

gpuDescribe(gpuTitle('the model on CUDA vs the CPU'), () => {
  describe.each(KINDS)('%s', (kind) => {
    const dir = path.join(root, kind);
    const cpu = {} as Record<(typeof CACHES)[number], Model>;
    const gpu = {} as Record<(typeof CACHES)[number], Model>;
    const prompt = randomPrompt(`gpu-${kind}`, 23);

    beforeAll(async () => {
      await makeTiny(dir, { kind, seed: 301, dtype: 'bf16' });
      for (const kv of CACHES) {
        cpu[kv] = await Model.load(dir, { device: 'cpu', kvCache: kv });
        gpu[kv] = await Model.load(dir, { device: 'cuda', kvCache: kv });
      }
    });
    afterAll(async () => {
      for (const m of [...Object.values(cpu), ...Object.values(gpu)]) await m.dispose();
    });

    test('runs on cuda, with its memory accounted', () => {
      expect(gpu.bf16.device).toBe('cuda');
      const m = gpu.bf16.memory()!;
      expect(m.device).toBe('cuda');
      expect(m.cache).toBe(gpu.bf16.cache.bytes);
      expect(m.weights).toBeGreaterThan(0);
    });

    test.each(CACHES)('%s cache: prefill and decode logits within the bf16 allowance of the CPU', async (kv) => {
      for (const mode of ['prefill', 'decode'] as const) {
        expectClose(await cpu[kv].logits(prompt, { mode }), await gpu[kv].logits(prompt, { mode }), `${kind} ${kv} ${mode}`);
      }
    });

    test.each(CACHES)('%s cache: greedy continuations equal the CPU while the top-2 gap is clear', async (kv) => {
      const n = 12;
      const b = await gpu[kv].generate({ tokens: prompt, maxNewTokens: n }).result;
      await expectGreedyAsCpu(cpu[kv], prompt, b.tokens, n, `${kind} ${kv}`);
    });

    // Continuous batching: three requests in flight at once share the engine's decode steps
    // (fewer steps than tokens); each request's greedy tokens are still the CPU's.
    test.each(CACHES)('%s cache: concurrent greedy requests share decode steps and equal the CPU', async (kv) => {
      const n = 8;
      const prompts = await clearPrompts(cpu[kv], `gpu-${kind}-batch`, [5, 17, 30]);
      const before = gpu[kv].batchStats();
      const outs = await Promise.all(prompts.map((p) => gpu[kv].generate({ tokens: p, maxNewTokens: n }).result));
      const after = gpu[kv].batchStats();
      expect(after.tokens - before.tokens).toBeGreaterThan(0);
      expect(after.steps - before.steps).toBeLessThan(after.tokens - before.tokens);
      let compared = 0;
      for (let i = 0; i < 3; i++) compared += await expectGreedyAsCpu(cpu[kv], prompts[i], outs[i].tokens, n, `${kind} ${kv} request ${i}`);
      expect(compared).toBeGreaterThanOrEqual(3); // each prompt's first token at least (clearPrompts)
    });

    test('sampling is reproducible per seed on the device', async () => {
      const o = { tokens: prompt, maxNewTokens: 16, temperature: 1.0, topK: 50, topP: 0.95 };
      const x = await gpu.bf16.generate({ ...o, seed: 5 }).result;
      const y = await gpu.bf16.generate({ ...o, seed: 5 }).result;
      const z = await gpu.bf16.generate({ ...o, seed: 6 }).result;
      expect(y.tokens).toEqual(x.tokens);
      expect(z.tokens).not.toEqual(x.tokens);
    });
  });

  // The eager model runs in a child process: the engine reads DSV2_CUDA_GRAPHS with getenv, and
  // jest's process.env is a copy that native code never sees (found on the emulated device:
  // setting it here left the "eager" model capturing graphs). The child loads the built package
  // (dist/, from npm ci / npm run build:ts) with the same addon.
  test.each([['v2', 'bf16'], ['v3', 'fp8']] as const)(
    '%s, %s cache: decode steps replayed as CUDA graphs give the same bits as launched one by one (DSV2_CUDA_GRAPHS=0)', async (kind, kv) => {
    const dir = path.join(root, kind); // made by the kind's describe above
    const graphs = await Model.load(dir, { device: 'cuda', kvCache: kv });
    const prompt = randomPrompt('graphs', 70); // decode crosses a 64-token page (the block table padded to 16 pages keeps one graph)
    const o = { tokens: prompt, maxNewTokens: 12, temperature: 0.9, topK: 40, seed: 3 };
    const script = `
      const { Model } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/lib'))});
      (async () => {
        const m = await Model.load(${JSON.stringify(dir)}, { device: 'cuda', kvCache: ${JSON.stringify(kv)} });
        const l = (await m.logits(${JSON.stringify(prompt)}, { mode: 'decode' })).data;
        const t = (await m.generate(${JSON.stringify(o)}).result).tokens;
        const g = m.memory().graphs;
        await m.dispose();
        process.stdout.write(JSON.stringify({ logits: Buffer.from(l.buffer, l.byteOffset, l.byteLength).toString('base64'), tokens: t, graphs: g }));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, DSV2_CUDA_GRAPHS: '0' }, maxBuffer: 1 << 28 });
    expect(r.stderr).toBe('');
    const eager = JSON.parse(r.stdout) as { logits: string; tokens: number[]; graphs: object };
    try {
      const a = (await graphs.logits(prompt, { mode: 'decode' })).data as Float32Array;
      expect(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(eager.logits, 'base64'))).toBe(true);
      expect((await graphs.generate(o).result).tokens).toEqual(eager.tokens);
      // and the graphs really were captured and replayed (a failed capture falls back silently)
      expect(graphs.memory()!.graphs).toMatchObject({ failed: 0 });
      expect(graphs.memory()!.graphs.captured).toBeGreaterThan(0);
      expect(graphs.memory()!.graphs.launches).toBeGreaterThan(graphs.memory()!.graphs.captured);
      expect(eager.graphs).toEqual({ captured: 0, failed: 0, launches: 0 });
    } finally {
      await graphs.dispose();
    }
  });

  test('a CUDA error is E_CUDA naming the CUDA error, and the process goes on', async () => {
    await expect(binding().cudaTestError()).rejects.toMatchObject({ code: 'E_CUDA', message: expect.stringMatching(/cudaErrorInvalidConfiguration/) });
    const m = await Model.load(path.join(root, 'v2'), { device: 'cuda' });
    try {
      const r = await m.generate({ tokens: [256, 1, 2], maxNewTokens: 2 }).result;
      expect(r.tokens.length).toBeGreaterThan(0);
    } finally {
      await m.dispose();
    }
  });

  test('a cache that does not fit is E_OOM with the numbers', async () => {
    const e = await KvCache.create({ layers: 60, pages: 4_000_000, dC: 512, dR: 64, dtype: 'bf16', pageSize: 64, device: 'cuda' }).catch((x) => x);
    expect(e).toBeInstanceOf(Dsv2Error);
    expect((e as Dsv2Error).code).toBe('E_OOM');
    expect((e as Dsv2Error).message).toMatch(/\d+ bytes/);
  });
});

/**
 * The published shapes (all the fast paths: d_c 512 / d_r 64 decode, 192/128 prefill, V2's
 * 160-expert group routing) with random weights made by each engine from the same seed —
 * bit-identical weights on both devices (model::random_value) — cut to 2 layers (1 dense + 1
 * MoE). Same allowance as above.
 * On the emulated device (test:cuda-emu; V2's 2 layers alone are ~9 GB of weights) the widths
 * that do not choose a kernel are cut — hidden 256, 4 heads, q_lora 128, FFN 512 / experts 64
 * wide (the vocabulary stays 102 400) — while d_c 512, d_r 64, the
 * 128/64/128 head dims and the routing geometry (160/8/3/6, 64/6) stay: "(scaled ...)".
 */
function preset(p: Record<string, unknown>, vocab?: number): Record<string, unknown> {
  if (!EMULATED) return p;
  const heads = 4;
  return {
    ...p, hidden_size: 256, intermediate_size: 512, moe_intermediate_size: 64, num_attention_heads: heads,
    num_key_value_heads: heads, ...(vocab ? { vocab_size: vocab } : {}), ...(p.q_lora_rank ? { q_lora_rank: 128 } : {}),
  };
}
gpuDescribe(gpuTitle('published shapes, 2 layers, random weights: CUDA engine vs CPU engine'), () => {
  test.each(['v2-lite', 'v2'] as const)(`%s: prefill and batched decode logits${EMU_TAG}`, async (name) => {
    const { PRESETS } = await import('../../lib/model/presets');
    const { parseConfig } = await import('../../lib/model/config');
    const { NativeEngine, ops } = await import('../../lib');
    const c = parseConfig({ ...preset(PRESETS[name]), num_hidden_layers: 2 });
    const rope = await ops.ropeTable({ dim: c.rope.dim, maxPositions: 256, theta: c.rope.theta, yarn: c.rope.yarn });
    const out: Record<string, { pre: Float32Array; dec: Float32Array }> = {};
    for (const device of ['cpu', 'cuda'] as const) {
      const cache = await KvCache.create({ layers: 2, pages: 8, dC: c.kvLoraRank, dR: c.qkRopeHeadDim, dtype: 'bf16', pageSize: 64, device });
      const e = await NativeEngine.create(c, { random: 7 }, cache, rope, device, { maxTokens: 136, maxSeqs: 2, maxSeqlen: 256 }); // a prefill step of 70 + 65 tokens
      try {
        const a = randomPrompt(`${name}-a`, 70).map((t) => t * 397);
        const b = randomPrompt(`${name}-b`, 65).map((t) => t * 211);
        const pre = await e.step([{ tokens: a, pos0: 0, pages: [3, 0] }, { tokens: b, pos0: 0, pages: [5, 6] }], 'prefill', 'last');
        const dec = await e.step([{ tokens: [17], pos0: 70, pages: [3, 0] }, { tokens: [29], pos0: 65, pages: [5, 6] }], 'decode', 'last');
        out[device] = { pre: pre.logits!, dec: dec.logits! };
      } finally {
        e.dispose();
        cache.dispose();
      }
    }
    const T = (x: Float32Array) => ({ shape: [2, c.vocabSize], data: x }) as unknown as Tensor;
    expectClose(T(out.cpu.pre), T(out.cuda.pre), `${name} prefill`);
    expectClose(T(out.cpu.dec), T(out.cuda.dec), `${name} decode`);
  }, 600_000);
});

/**
 * The engine's on-device sampling wiring: batched decode steps that sample (captured as a CUDA
 * graph on the first step of each key, replayed with new seeds and positions after) give, row
 * for row, the token ops.sample draws on the CUDA device from the step's own returned logits
 * with that row's seed (a one-row call with seed s draws as the engine's seeds[i] = s). Same
 * kernel, same logits bits: exact. (ops.sample on the device is compared with the CPU op in
 * sample.test.ts.) Vocab 102 400, 100 logits per sampler thread.
 */
gpuDescribe(gpuTitle('the CUDA engine samples as ops.sample on its logits'), () => {
  test(`v2-lite shape, 1 layer, random weights: 3 sequences × 6 sampled decode steps, 3 sampling settings${EMU_TAG}`, async () => {
    const { PRESETS } = await import('../../lib/model/presets');
    const { parseConfig } = await import('../../lib/model/config');
    const { NativeEngine, ops, Tensor } = await import('../../lib');
    const c = parseConfig({ ...preset(PRESETS['v2-lite']), num_hidden_layers: 1 });
    const rope = await ops.ropeTable({ dim: c.rope.dim, maxPositions: 256, theta: c.rope.theta, yarn: c.rope.yarn });
    const cache = await KvCache.create({ layers: 1, pages: 8, dC: c.kvLoraRank, dR: c.qkRopeHeadDim, dtype: 'bf16', pageSize: 64, device: 'cuda' });
    const e = await NativeEngine.create(c, { random: 11 }, cache, rope, 'cuda', { maxTokens: 64, maxSeqs: 3, maxSeqlen: 256 });
    try {
      const prompts = [randomPrompt('s0', 9), randomPrompt('s1', 4), randomPrompt('s2', 13)];
      const pages = [[2], [6], [0]];
      await e.step(prompts.map((p, i) => ({ tokens: p, pos0: 0, pages: pages[i] })), 'prefill', 'none');
      const V = c.vocabSize;
      const pos = prompts.map((p) => p.length);
      let next = [5, 6, 7];
      const settings = [
        { temperature: 0.8, topK: 50, topP: 0.9 },
        { temperature: 1.0, topK: 0, topP: 1 },
        { temperature: 0, topK: 0, topP: 1 },
      ];
      for (let step = 0; step < 6; step++) {
        const s = settings[step >> 1]; // each setting twice: captured, then replayed
        const seeds = [0, 1, 2].map((i) => BigInt(1000 + 7 * step + i) * 0x9e3779b97n);
        const out = await e.step(next.map((t, i) => ({ tokens: [t], pos0: pos[i], pages: pages[i] })), 'decode', 'last', { ...s, seeds });
        for (let i = 0; i < 3; i++) {
          const row = Tensor.from(out.logits!.slice(i * V, (i + 1) * V), [1, V]);
          const want = ((await ops.sample(row, { ...s, seed: seeds[i], device: 'cuda' })).data as Int32Array)[0];
          expect([step, i, out.tokens![i]]).toEqual([step, i, want]);
        }
        next = Array.from(out.tokens!);
        for (let i = 0; i < 3; i++) pos[i]++;
      }
      const g = e.memory().graphs;
      expect(g.failed).toBe(0);
      expect(g.captured).toBe(3);
      expect(g.launches).toBe(6);
    } finally {
      e.dispose();
      cache.dispose();
    }
  }, 600_000);
});
