/**
 * Model.load(dir, { weights: 'int8' | 'fp8' }): the native CPU engine quantises every linear
 * weight at load to 8-bit codes with one f32 scale per 128 × 128 block. Checked on the tiny
 * checkpoints against the float64 reference (test/reference/forward.ts) run on weights that
 * this file quantises and dequantises itself with the documented rule — per block amax over
 * the finite |w|, scale = fl32(amax / 127 | 448) (1 for amax 0), code = w / scale rounded to
 * nearest even (i8 clamped to ±127; e4m3 saturating) — applied to exactly the weights the
 * engine quantises, as the engine holds them:
 *   q_proj | q_a_proj and q_b_proj, kv_a_proj_with_mqa, o_proj, the dense MLP's [gate ; up]
 *   (gate rows then up rows, ONE matrix: its 128-row blocks span the seam) and down, each
 *   routed expert's [gate ; up] and down, the shared experts' [gate ; up] and down, lm_head.
 * Left as stored: kv_b_proj (and its absorbed halves), the router gate and its bias, the
 * norms, the embedding. Weights already FP8 in the checkpoint (V3's routed experts when
 * moe_intermediate_size % 128 == 0) keep their own codes.
 * Agreement is within the allowance the bf16 engine-vs-reference tests use (expectLogitsMatch),
 * so a weight quantised that should not be (or not quantised, or by another rule) shows: a
 * quantisation step moves logits by ~1e-2, the allowance is ~1e-5.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error, Model, info, makeTiny } from '../../lib';
import type { TinyKind } from '../../lib/model/tiny';
import { tinyConfig, writeRandomCheckpoint } from '../../lib/model/tiny';
import { bf16BitsToF32, f32ToBf16Bits } from '../reference/dtype';
import { e4m3Decode } from '../reference/fp8';
import { quantDequant as refQuantDequant } from '../reference/quant';
import {
  forwardF64, isMoeLayer, loadReference, refConfig, referenceLogits, top2,
  type RefConfig, type RefLogits, type RefModel, type RefTensor,
} from '../reference/forward';
import { expectLogitsMatch, randomPrompt, readSt, rmDir, tmpDir } from './util';

const { abs, ceil, floor, fround, max } = Math;
const B = 128;
const KINDS: readonly TinyKind[] = ['v2', 'v2-lite', 'v3'];
const SEED: Record<TinyKind, number> = { v2: 301, 'v2-lite': 302, v3: 303 };
const T = 12;
type Fmt = 'int8' | 'fp8';

const root = tmpDir('wquant');
afterAll(() => rmDir(root));

// ---------------------------------------------------------------------------------------
// The quantisation rule, written here (independent of the library).

/** W [n, k] (exact values) → the dequantised values code · scale, per 128 × 128 block (test/reference/quant.ts). */
function quantDequant(w: Float64Array, n: number, k: number, fmt: Fmt): Float64Array {
  return refQuantDequant(w, n, k, fmt === 'int8' ? 'i8' : 'fp8_e4m3');
}

/**
 * The matrices the engine quantises, each as the checkpoint tensors whose rows it stacks
 * (one entry: the tensor alone). `experts`: false leaves the routed experts out.
 */
function quantGroups(c: RefConfig, experts = true): string[][] {
  const g: string[][] = [];
  for (let l = 0; l < c.L; l++) {
    const a = `model.layers.${l}.self_attn`;
    if (c.qLora === null) g.push([`${a}.q_proj.weight`]);
    else g.push([`${a}.q_a_proj.weight`], [`${a}.q_b_proj.weight`]);
    g.push([`${a}.kv_a_proj_with_mqa.weight`], [`${a}.o_proj.weight`]);
    const m = `model.layers.${l}.mlp`;
    const pair = (p: string) => { g.push([`${p}.gate_proj.weight`, `${p}.up_proj.weight`], [`${p}.down_proj.weight`]); };
    if (isMoeLayer(c, l)) {
      if (experts) for (let e = 0; e < (c.nRouted as number); e++) pair(`${m}.experts.${e}`);
      if (c.nShared > 0) pair(`${m}.shared_experts`);
    } else {
      pair(m);
    }
  }
  if (!c.tie) g.push(['lm_head.weight']);
  return g;
}

function withTensors(ref: RefModel, tensors: Map<string, RefTensor>): RefModel {
  return {
    dir: ref.dir,
    cfg: ref.cfg,
    tensors,
    w(name: string): Float64Array {
      const t = tensors.get(name);
      if (!t) throw new Error(`reference: tensor ${name} missing`);
      return t.values;
    },
  };
}

/** A copy of `ref` whose `groups` are quantised and dequantised (each group stacked by rows, as the engine holds it). */
function quantisedRef(ref: RefModel, fmt: Fmt, groups: string[][]): RefModel {
  const tensors = new Map(ref.tensors);
  for (const names of groups) {
    const parts = names.map((nm) => {
      const t = ref.tensors.get(nm);
      if (!t || t.shape.length !== 2) throw new Error(`reference: ${nm} missing or not 2-D`);
      return t;
    });
    const k = parts[0].shape[1];
    const n = parts.reduce((s, t) => s + t.shape[0], 0);
    const all = new Float64Array(n * k);
    let o = 0;
    for (const t of parts) {
      all.set(t.values, o);
      o += t.values.length;
    }
    const dq = quantDequant(all, n, k, fmt);
    o = 0;
    names.forEach((nm, i) => {
      const t = parts[i];
      tensors.set(nm, { dtype: 'F64', shape: t.shape, values: dq.slice(o, o + t.values.length) });
      o += t.values.length;
    });
  }
  return withTensors(ref, tensors);
}

/** Bytes an 8-bit engine saves on `groups` over 16-bit weights: per matrix 2·n·k − (n·k codes + 4 bytes per 128 × 128 block). */
function savedBytes(ref: RefModel, groups: string[][]): number {
  let saved = 0;
  for (const names of groups) {
    const k = ref.tensors.get(names[0])!.shape[1];
    const n = names.reduce((s, nm) => s + ref.tensors.get(nm)!.shape[0], 0);
    saved += n * k - 4 * ceil(n / B) * ceil(k / B);
  }
  return saved;
}

/** max over the elements of |a − b|. */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = max(d, abs(a[i] - b[i]));
  return d;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    const m = await p;
    await (m as Model | undefined)?.dispose?.();
    return 'resolved';
  } catch (e) {
    return e instanceof Dsv2Error ? `${e.code}: ${e.message}` : `not a Dsv2Error: ${String(e)}`;
  }
}

// ---------------------------------------------------------------------------------------

describe.each(KINDS)('tiny %s', (kind) => {
  const dir = path.join(root, kind);
  let ref: RefModel;
  const qref = {} as Record<Fmt, RefModel>;
  const r = {} as Record<Fmt | 'bf16', RefLogits>;
  let prompt: number[];
  const models = {} as Record<Fmt | 'bf16', Model>;

  beforeAll(async () => {
    await makeTiny(dir, { kind, seed: SEED[kind], dtype: 'bf16' });
    ref = loadReference(dir);
    for (const fmt of ['int8', 'fp8'] as const) qref[fmt] = quantisedRef(ref, fmt, quantGroups(ref.cfg));
    // A prompt with no routing near-tie in any of the three references (deterministic seeds).
    for (let s = 0; s < 20 && !prompt; s++) {
      const tokens = randomPrompt({ tag: `wquant-${kind}`, s }, T);
      const rs = { bf16: referenceLogits(ref, tokens), int8: referenceLogits(qref.int8, tokens), fp8: referenceLogits(qref.fp8, tokens) };
      if (Object.values(rs).every((x) => x.nearTies.length === 0)) {
        prompt = tokens;
        Object.assign(r, rs);
      }
    }
    if (!prompt) throw new Error(`no routing-safe prompt for ${kind}`);
    for (const w of ['bf16', 'int8', 'fp8'] as const) models[w] = await Model.load(dir, { weights: w, device: 'cpu', kvCache: 'f32' });
  });
  afterAll(async () => {
    for (const m of Object.values(models)) await m.dispose();
  });

  test.each(['int8', 'fp8', 'bf16'] as const)('weights %s: prefill and decode logits match the float64 reference on the same (de)quantised weights', async (w) => {
    for (const mode of ['prefill', 'decode'] as const) {
      expectLogitsMatch(await models[w].logits(prompt, { mode }), r[w], { kind, weights: w, mode }, `${kind} weights ${w} ${mode}`);
    }
    if (w !== 'bf16') {
      // The comparison can tell: the 8-bit model is far outside the allowance of the
      // unquantised reference (the quantisation is really there, and big next to the allowance).
      const lib = (await models[w].logits(prompt)).data as Float32Array;
      expect(maxDiff(lib, r.bf16.logits)).toBeGreaterThan(50 * max(...r.bf16.tol));
    }
  });

  test('greedy generation: int8 and fp8 give bf16\'s tokens wherever the quantisation cannot change the argmax', async () => {
    // Criterion: along the bf16 model's greedy continuation, at each step the float64
    // references of the bf16 and the 8-bit weights differ by δ = max_v |Δlogit|; where the
    // bf16 reference's top-1 / top-2 gap exceeds 2δ + 1e-3 (1e-3: ≫ the engines' ~1e-5 f32
    // error against their references), the 8-bit argmax is the same token, so the 8-bit
    // greedy tokens must equal bf16's up to the first step without that margin. The prompt
    // is the first (seeded) one whose first token is decided this way for both formats (fp8's
    // δ is ~0.2–0.35 on these models, int8's ~0.05), so the test always checks something.
    const V = ref.cfg.V;
    const rowOf = (l: Float64Array, row: number) => l.subarray(row * V, (row + 1) * V);
    let gp: number[] | null = null;
    for (let s = 0; s < 60 && !gp; s++) {
      const tokens = randomPrompt({ tag: `wquant-greedy-${kind}`, s }, 6);
      const row = tokens.length - 1;
      const lb = forwardF64(ref, tokens).logits;
      const { gap } = top2(lb, row * V, V);
      if (gap < 0.3) continue; // cannot exceed 2δ for fp8: skip the 8-bit forwards
      let d = 0;
      for (const fmt of ['int8', 'fp8'] as const) d = max(d, maxDiff(rowOf(lb, row), rowOf(forwardF64(qref[fmt], tokens).logits, row)));
      if (gap > 2 * d + 1e-3) gp = tokens;
    }
    if (!gp) throw new Error(`${kind}: no prompt with a decisive first token in 60 seeds`);
    const n = 8;
    const g = await models.bf16.generate({ tokens: gp, maxNewTokens: n, temperature: 0 }).result;
    const seq = [...gp, ...g.tokens];
    const lb = forwardF64(ref, seq).logits;
    for (const fmt of ['int8', 'fp8'] as const) {
      const lq = forwardF64(qref[fmt], seq).logits;
      let sure = 0;
      for (let i = 0; i < g.tokens.length; i++) {
        const row = gp.length - 1 + i;
        const { best, gap } = top2(lb, row * V, V);
        if (best !== g.tokens[i] || !(gap > 2 * maxDiff(rowOf(lb, row), rowOf(lq, row)) + 1e-3)) break;
        sure++;
      }
      expect({ fmt, sure: sure >= 1 }).toEqual({ fmt, sure: true });
      const q = await models[fmt].generate({ tokens: gp, maxNewTokens: n, temperature: 0 }).result;
      expect({ fmt, sure, tokens: q.tokens.slice(0, sure) }).toEqual({ fmt, sure, tokens: g.tokens.slice(0, sure) });
    }
  });

  test('memory().weights: 8-bit saves n·k − 4·blocks bytes per quantised matrix over bf16', () => {
    const saved = savedBytes(ref, quantGroups(ref.cfg));
    const b = models.bf16.memory()!.weights;
    expect(saved).toBeGreaterThan(0);
    expect(b - models.int8.memory()!.weights).toBe(saved);
    expect(b - models.fp8.memory()!.weights).toBe(saved);
  });
});

describe('load options', () => {
  const dir = path.join(root, 'opts');
  beforeAll(async () => {
    await makeTiny(dir, { kind: 'v2-lite', seed: 304, dtype: 'bf16' });
  });

  test('an unknown format is E_ARG; the retired engine js is E_ARG; 8-bit on cuda needs a usable GPU', async () => {
    expect(await code(Model.load(dir, { weights: 'int4' as 'int8', device: 'cpu' }))).toMatch(/^E_ARG: weights 'int4'/);
    expect(await code(Model.load(dir, { weights: 'int8', device: 'cpu', engine: 'js' } as never))).toMatch(/^E_ARG: engine 'js': the TypeScript forward was retired/);
    // 8-bit weights run on both engines (the CUDA side: test/gpu/gemm-quant.test.ts); without a
    // usable GPU, cuda itself is refused — E_UNSUPPORTED, never a crash — and 'auto' is the CPU.
    const usable = (await info()).cuda.usable;
    if (!usable) {
      expect(await code(Model.load(dir, { weights: 'int8', device: 'cuda' }))).toMatch(/^E_UNSUPPORTED: /);
      expect(await code(Model.load(dir, { weights: 'fp8', device: 'cuda' }))).toMatch(/^E_UNSUPPORTED: /);
    }
    const m = await Model.load(dir, { weights: 'int8' });
    try {
      expect(m.device).toBe(usable ? 'cuda' : 'cpu');
    } finally {
      await m.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------
// A V3 checkpoint in DeepSeek's FP8 format whose routed experts stay FP8 (moe_intermediate_size
// 128): under weights 'int8' / 'fp8' those keep their own codes and scales; the other F8 weights
// are dequantised at load (fl32(e4m3 · scale_inv), rounded to bf16) and then quantised by the
// engine like any float weight — except kv_b, which stays bf16.

/** The model the loader builds from an FP8 checkpoint, read independently: kept experts as fl32(code · scale), other F8 weights bf16-rounded. */
function fp8CheckpointRef(dir: string): RefModel {
  const raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const cfg = refConfig(raw);
  const keep = cfg.moeInterm % 128 === 0;
  const st = readSt(path.join(dir, 'model.safetensors'));
  const tensors = new Map<string, RefTensor>();
  for (const [name, e] of Object.entries(st.header)) {
    if (name.endsWith('_scale_inv')) continue;
    const bytes = st.data.subarray(e.data_offsets[0], e.data_offsets[1]);
    const count = e.shape.reduce((a, b) => a * b, 1);
    const values = new Float64Array(count);
    if (e.dtype === 'F8_E4M3') {
      const s = st.header[`${name}_scale_inv`];
      const sb = st.data.subarray(s.data_offsets[0], s.data_offsets[1]);
      const scale = new Float32Array(sb.buffer.slice(sb.byteOffset, sb.byteOffset + sb.length));
      const [rows, cols] = e.shape;
      const sc = s.shape[1];
      const f32 = keep && /\.mlp\.experts\.\d+\./.test(name);
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          const v = fround(e4m3Decode(bytes[i * cols + j]) * scale[floor(i / 128) * sc + floor(j / 128)]);
          values[i * cols + j] = f32 ? v : bf16BitsToF32(f32ToBf16Bits(v));
        }
      }
    } else if (e.dtype === 'BF16') {
      for (let i = 0; i < count; i++) values[i] = bf16BitsToF32(bytes.readUInt16LE(2 * i));
    } else if (e.dtype === 'F32') {
      for (let i = 0; i < count; i++) values[i] = bytes.readFloatLE(4 * i);
    } else {
      throw new Error(`${name}: dtype ${e.dtype}`);
    }
    tensors.set(name, { dtype: e.dtype, shape: e.shape, values });
  }
  return withTensors({ dir, cfg, tensors, w: () => new Float64Array(0) }, tensors);
}

describe('a V3 FP8 checkpoint with FP8 routed experts', () => {
  const dir = path.join(root, 'v3-fp8-128');
  let ref: RefModel;
  let prompt: number[];
  const models = {} as Record<Fmt | 'bf16', Model>;

  beforeAll(async () => {
    await writeRandomCheckpoint(dir, { ...tinyConfig('v3'), moe_intermediate_size: 128, n_routed_experts: 64 }, { seed: 305, dtype: 'fp8' });
    ref = fp8CheckpointRef(dir);
    prompt = randomPrompt('wquant-v3-fp8', 10);
    for (const w of ['bf16', 'int8', 'fp8'] as const) models[w] = await Model.load(dir, { weights: w, device: 'cpu', kvCache: 'f32' });
  });
  afterAll(async () => {
    for (const m of Object.values(models)) await m.dispose();
  });

  test.each(['int8', 'fp8'] as const)('weights %s: routed experts keep their FP8 codes, every other linear weight is quantised', async (fmt) => {
    const q = quantisedRef(ref, fmt, quantGroups(ref.cfg, false));
    const rq = referenceLogits(q, prompt);
    expect(rq.nearTies).toEqual([]);
    const lib = await models[fmt].logits(prompt);
    expectLogitsMatch(lib, rq, { fmt }, `v3 fp8 checkpoint, weights ${fmt}`);
    if (fmt === 'int8') {
      // and the comparison can tell: had the experts been re-quantised to int8 (from their
      // f32 values), the logits would be far outside the allowance. (For fp8 re-quantising is
      // the identity — each block's amax is 448 · its scale — so there is nothing to tell.)
      const all = forwardF64(quantisedRef(ref, fmt, quantGroups(ref.cfg, true)), prompt).logits;
      expect(maxDiff(lib.data as Float32Array, all)).toBeGreaterThan(20 * max(...rq.tol));
    }
  });

  test('memory(): the experts are FP8 in every format; the rest saves n·k − 4·blocks per matrix', () => {
    const saved = savedBytes(ref, quantGroups(ref.cfg, false));
    const b = models.bf16.memory()!.weights;
    expect(b - models.int8.memory()!.weights).toBe(saved);
    expect(b - models.fp8.memory()!.weights).toBe(saved);
  });
});
