/**
 * The tensors a DeepSeek-V2/V3 config implies (names and shapes of the published
 * checkpoints), their checks, and loading them into the layout the runtime computes with:
 * - routed experts stacked per layer as gateUp [E, 2I, H] (gate rows, then up rows) and
 *   down [E, H, I]; the shared experts as one [2·Is, H] / [H, Is] SwiGLU;
 * - kv_b_proj kept for prefill and split per head for absorbed decode: W_UKᵀ [h, dC, dNope]
 *   (q_nope · W_UK) and W_UV [h, dV, dC];
 * - FP8 block-scaled weights (V3) dequantized to bf16 once at load.
 */
import { Dsv2Error, throwIfAborted } from '../errors';
import * as ops from '../ops';
import { DTYPE_SIZE, Tensor, type DType, type HostData } from '../tensor';
import type { Checkpoint } from './checkpoint';
import { isMoeLayer, qHeadDim, type DeepSeekConfig } from './config';

export interface DenseMlp {
  kind: 'dense';
  gateUp: Tensor; // [2I, H]
  down: Tensor; // [H, I]
}

export interface MoeMlp {
  kind: 'moe';
  gate: Tensor; // [E, H], router
  bias: Tensor | null; // [E] f32, e_score_correction_bias (V3)
  /**
   * [E, 2I, H], [E, H, I]; FP8 checkpoints keep the routed experts' e4m3 codes with their
   * block scales ([E, 2I/128, ceil(H/128)], [E, ceil(H/128), ceil(I/128)]) when I % 128 == 0
   * and the blocks are 128×128 (the stacked scales are then exact); otherwise bf16.
   */
  experts: { gateUp: Tensor; down: Tensor; gateUpScale?: Tensor; downScale?: Tensor; streamed?: true };
  shared: { gateUp: Tensor; down: Tensor } | null;
}

export interface LayerWeights {
  inputNorm: Tensor;
  postNorm: Tensor;
  qProj: Tensor | null; // [h·qHead, H] without q_lora
  qA: Tensor | null; // [qLora, H]
  qANorm: Tensor | null; // [qLora]
  qB: Tensor | null; // [h·qHead, qLora]
  kvA: Tensor; // [dC + dR, H]
  kvANorm: Tensor; // [dC]
  kvB: Tensor; // [h·(dNope + dV), dC]
  wUkT: Tensor; // [h, dC, dNope]
  wUv: Tensor; // [h, dV, dC]
  oProj: Tensor; // [H, h·dV]
  mlp: DenseMlp | MoeMlp;
}

export interface ModelWeights {
  embed: Tensor; // [V, H]
  layers: LayerWeights[];
  norm: Tensor; // [H]
  lmHead: Tensor; // [V, H]
}

/** Every tensor name the config implies, with its shape. */
export function expectedTensors(c: DeepSeekConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const H = c.hiddenSize;
  const h = c.numHeads;
  m.set('model.embed_tokens.weight', [c.vocabSize, H]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.input_layernorm.weight`, [H]);
    m.set(`${p}.post_attention_layernorm.weight`, [H]);
    const a = `${p}.self_attn`;
    if (c.qLoraRank === null) {
      m.set(`${a}.q_proj.weight`, [h * qHeadDim(c), H]);
    } else {
      m.set(`${a}.q_a_proj.weight`, [c.qLoraRank, H]);
      m.set(`${a}.q_a_layernorm.weight`, [c.qLoraRank]);
      m.set(`${a}.q_b_proj.weight`, [h * qHeadDim(c), c.qLoraRank]);
    }
    m.set(`${a}.kv_a_proj_with_mqa.weight`, [c.kvLoraRank + c.qkRopeHeadDim, H]);
    m.set(`${a}.kv_a_layernorm.weight`, [c.kvLoraRank]);
    m.set(`${a}.kv_b_proj.weight`, [h * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank]);
    m.set(`${a}.o_proj.weight`, [H, h * c.vHeadDim]);
    if (isMoeLayer(c, i)) {
      const E = c.nRoutedExperts as number;
      const I = c.moeIntermediateSize;
      m.set(`${p}.mlp.gate.weight`, [E, H]);
      if (c.topkMethod === 'noaux_tc') m.set(`${p}.mlp.gate.e_score_correction_bias`, [E]);
      for (let e = 0; e < E; e++) {
        m.set(`${p}.mlp.experts.${e}.gate_proj.weight`, [I, H]);
        m.set(`${p}.mlp.experts.${e}.up_proj.weight`, [I, H]);
        m.set(`${p}.mlp.experts.${e}.down_proj.weight`, [H, I]);
      }
      if (c.nSharedExperts > 0) {
        const Is = I * c.nSharedExperts;
        m.set(`${p}.mlp.shared_experts.gate_proj.weight`, [Is, H]);
        m.set(`${p}.mlp.shared_experts.up_proj.weight`, [Is, H]);
        m.set(`${p}.mlp.shared_experts.down_proj.weight`, [H, Is]);
      }
    } else {
      m.set(`${p}.mlp.gate_proj.weight`, [c.intermediateSize, H]);
      m.set(`${p}.mlp.up_proj.weight`, [c.intermediateSize, H]);
      m.set(`${p}.mlp.down_proj.weight`, [H, c.intermediateSize]);
    }
  }
  m.set('model.norm.weight', [H]);
  if (!c.tieWordEmbeddings) m.set('lm_head.weight', [c.vocabSize, H]);
  return m;
}

/** FP8 weights carry a `<name>_scale_inv` [ceil(rows/br), ceil(cols/bc)] companion. */
function scaleName(name: string): string {
  return `${name}_scale_inv`;
}

export interface CheckReport {
  /** Tensors in the checkpoint the config does not use (e.g. V3's multi-token-prediction layer). */
  extras: string[];
}

/** Checks presence, shape and dtype of every expected tensor (E_CHECKPOINT with the values). */
export function checkTensors(ck: Checkpoint): CheckReport {
  const c = ck.config;
  const want = expectedTensors(c);
  const used = new Set<string>();
  for (const [name, shape] of want) {
    const e = ck.entries.get(name);
    if (!e) throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${name} [${shape.join(', ')}] is missing (the config implies it)`);
    used.add(name);
    if (e.shape.length !== shape.length || e.shape.some((d, k) => d !== shape[k])) {
      throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${name} has shape [${e.shape.join(', ')}] but config.json implies [${shape.join(', ')}]`);
    }
    const isNormOrBias = name.endsWith('layernorm.weight') || name.endsWith('norm.weight') || name.endsWith('e_score_correction_bias');
    const ok = e.dtype === 'f32' || e.dtype === 'bf16' || e.dtype === 'f16' || (e.dtype === 'fp8_e4m3' && !isNormOrBias);
    if (!ok) throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${name} has dtype ${e.stDtype}, not a float weight dtype`);
    if (e.dtype === 'fp8_e4m3') {
      const block = c.fp8WeightBlock;
      if (!block) throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${name} is F8_E4M3 but config.json has no fp8 quantization_config`);
      const s = ck.entries.get(scaleName(name));
      const sw = [Math.ceil(shape[0] / block[0]), Math.ceil(shape[1] / block[1])];
      if (!s) throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${scaleName(name)} [${sw.join(', ')}] is missing (${name} is F8_E4M3)`);
      if (s.shape.join() !== sw.join()) throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${scaleName(name)} has shape [${s.shape.join(', ')}], expected [${sw.join(', ')}]`);
      if (s.dtype !== 'f32' && s.dtype !== 'bf16') throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${scaleName(name)} has dtype ${s.stDtype}, expected F32 or BF16`);
      used.add(scaleName(name));
    }
  }
  // The runtime stacks each layer's experts and runs gate/up and down with one dtype: every
  // routed-expert tensor of a layer (and the shared ones among themselves) must load alike.
  const loaded = (name: string) => {
    const d = ck.entries.get(name)!.dtype;
    return d === 'fp8_e4m3' ? 'bf16' : d;
  };
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}.mlp`;
    for (const group of [`${p}.experts.`, `${p}.shared_experts.`]) {
      const names = [...want.keys()].filter((n) => n.startsWith(group));
      const first = names[0];
      for (const n of names) {
        if (loaded(n) !== loaded(first)) {
          throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${n} loads as ${loaded(n)} but ${first} as ${loaded(first)}; the experts of a layer must share one dtype`);
        }
      }
    }
  }
  return { extras: [...ck.entries.keys()].filter((n) => !used.has(n)).sort() };
}

/** A tensor's bytes. */
function bytesOf(t: Tensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/**
 * Per head h: rows [h·(dNope+dV), h·(dNope+dV)+dNope) of kv_b transposed → [h, dC, dNope]; the
 * next dV rows → [h, dV, dC]. Yields to the event loop every few heads (V2: 128 heads of
 * 512 × 128), so no stretch of it holds the JS thread for more than a few ms.
 */
async function splitKvB(kvB: Tensor, h: number, dNope: number, dV: number, dC: number): Promise<{ wUkT: Tensor; wUv: Tensor }> {
  const src = kvB.data as Exclude<HostData, BigInt64Array>;
  const wUkT = Tensor.zeros([h, dC, dNope], kvB.dtype);
  const wUv = Tensor.zeros([h, dV, dC], kvB.dtype);
  const uk = wUkT.data as Exclude<HostData, BigInt64Array>;
  const uv = wUv.data as Exclude<HostData, BigInt64Array>;
  const row = dNope + dV;
  let work = 0;
  for (let hh = 0; hh < h; hh++) {
    for (let r = 0; r < dNope; r++) {
      const s = (hh * row + r) * dC;
      for (let c = 0; c < dC; c++) uk[(hh * dC + c) * dNope + r] = src[s + c];
    }
    uv.set(src.subarray((hh * row + dNope) * dC, (hh * row + row) * dC), hh * dV * dC);
    work += row * dC;
    if (work >= 1 << 18) { // ~1 ms of this loop
      work = 0;
      await new Promise((r) => setImmediate(r));
    }
  }
  return { wUkT, wUv };
}

/** Experts [first, first + count) of a layer's `total` routed experts, stacked as MoeMlp.experts. */
export interface ExpertPart {
  first: number;
  total: number;
  gateUp: Tensor;
  down: Tensor;
  gateUpScale?: Tensor;
  downScale?: Tensor;
}

export interface LoadOptions {
  signal?: AbortSignal;
  /** Called after each tensor with (bytes read so far, total bytes). */
  onProgress?: (done: number, total: number) => void;
  /**
   * Keep FP8 routed experts as e4m3 codes + block scales where the layout allows (see MoeMlp);
   * default true. false widens them to bf16 like every other FP8 weight.
   */
  keepFp8Experts?: boolean;
  /**
   * Streaming: each layer's weights go to this callback as soon as they are read and are not
   * kept (the returned `layers` is then empty) — peak host memory one layer, not the model.
   */
  onLayer?: (layer: number, w: LayerWeights) => Promise<void>;
  /**
   * With onLayer: a layer's routed experts go to this callback in parts of whole experts
   * (≤ 64 MiB each) as they are read, before onLayer gets the rest of the layer (whose
   * `experts` are then `streamed`, holding nothing): host memory holds one part, not a layer.
   */
  onExperts?: (layer: number, part: ExpertPart) => Promise<void>;
  /**
   * Split kv_b into W_UKᵀ / W_UV here (default true). The native engine splits it itself when
   * kv_b is set (on its worker thread): false leaves wUkT / wUv empty.
   */
  splitKvB?: boolean;
  /**
   * With onLayer: the embedding, final norm and lm_head go to this callback one at a time as
   * they are read (the returned ones are then empty): lm_head reuses the embedding's buffer.
   */
  onGlobal?: (name: 'embed' | 'norm' | 'lm_head', t: Tensor) => Promise<void>;
}

/** Bytes of routed experts per part when they are streamed. */
const EXPERT_PART_BYTES = 64 * 2 ** 20;

/** Reads every weight the config implies and arranges it for the runtime. */
export async function loadWeights(ck: Checkpoint, opts: LoadOptions = {}): Promise<ModelWeights> {
  const c = ck.config;
  const want = expectedTensors(c);
  const size = (name: string) => ck.entries.get(name)!.end - ck.entries.get(name)!.begin;
  const total = [...want.keys()].reduce((a, n) => a + (ck.entries.has(n) ? size(n) : 0), 0);
  let done = 0;
  const what = `loading ${ck.dir}`;
  const progress = (name: string) => {
    done += size(name);
    opts.onProgress?.(done, total);
  };
  const chunk = (bytes: number) => opts.onProgress?.(done + bytes, total); // within a tensor (not yet in `done`)
  const readInto = async (name: string, dst: Uint8Array) => {
    let got = 0;
    await ck.readInto(name, dst, (b) => chunk((got += b)));
  };
  // Streaming: host buffers reused from one layer (one expert part) to the next — the engine
  // has copied a layer's weights before the next is read. Fresh big allocations each time made
  // V8 run full GCs (tens of ms on the JS thread) under the external-memory pressure.
  const streaming = Boolean(opts.onLayer && opts.onExperts);
  const pool = new Map<string, ArrayBuffer>();
  const alloc = (shape: number[], dtype: DType, slot?: string): Tensor => {
    if (!streaming || !slot) return Tensor.zeros(shape, dtype);
    const n = shape.reduce((x, y) => x * y, 1);
    let b = pool.get(slot);
    if (!b || b.byteLength < n * DTYPE_SIZE[dtype]) pool.set(slot, (b = new ArrayBuffer(n * DTYPE_SIZE[dtype])));
    const View = dtype === 'f32' ? Float32Array : dtype === 'fp8_e4m3' ? Uint8Array : Uint16Array;
    return new Tensor(dtype, shape, new View(b, 0, n));
  };
  const read = async (name: string): Promise<Tensor> => {
    throwIfAborted(opts.signal, what);
    const e = ck.entries.get(name)!;
    // Streaming: into a buffer reused for the same weight of every layer.
    const slot = name === 'model.embed_tokens.weight' || name === 'lm_head.weight' ? 'vocab' : name.replace(/^model\.layers\.\d+\./, 'layer.');
    const t = alloc(e.shape, e.dtype, slot);
    await readInto(name, bytesOf(t));
    progress(name);
    return t.dtype === 'fp8_e4m3' ? dequantFp8Block(t, await ck.read(scaleName(name)), c.fp8WeightBlock!) : t;
  };
  /**
   * Tensors `names` one after another along dim 0 in one [shape] tensor. Read in place (file →
   * the stacked buffer, off the JS thread) when all are stored as they load; FP8 ones
   * (dequantized to bf16) are read, converted and copied.
   */
  const readStacked = async (names: string[], shape: number[], slot?: string): Promise<Tensor> => {
    const stored = names.map((n) => ck.entries.get(n)!.dtype);
    const loads = stored.map((d) => (d === 'fp8_e4m3' ? 'bf16' : d));
    const bad = loads.findIndex((d) => d !== loads[0]);
    if (bad >= 0) {
      throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: tensor ${names[bad]} loads as ${loads[bad]} but ${names[0]} as ${loads[0]}; tensors stacked into one weight must share a dtype`);
    }
    const direct = !stored.includes('fp8_e4m3');
    const out = alloc(shape, loads[0] as DType, slot ?? `${names[0].replace(/^model\.layers\.\d+\./, 'layer.')}+`);
    const all = bytesOf(out);
    let o = 0;
    for (const n of names) {
      if (direct) {
        throwIfAborted(opts.signal, what);
        await readInto(n, all.subarray(o, o + size(n)));
        progress(n);
        o += size(n);
      } else {
        const t = await read(n); // FP8 dequantized to bf16; the rest already bf16
        all.set(bytesOf(t), o);
        o += t.data.byteLength;
      }
    }
    if (o !== all.byteLength) throw new Dsv2Error('E_INTERNAL', `stacking ${names[0]}…: ${o} bytes for a ${all.byteLength}-byte buffer`);
    return out;
  };
  /** An FP8 scale_inv tensor as f32, each finite and > 0. */
  const readScale = async (name: string): Promise<Tensor> => {
    const sc = await ck.read(scaleName(name));
    const scale = sc.dtype === 'f32' ? sc : await ops.cast(sc, 'f32');
    (scale.data as Float32Array).forEach((v, k) => {
      if (!(Number.isFinite(v) && v > 0)) throw new Dsv2Error('E_CHECKPOINT', `${scaleName(name)}[${k}] = ${v} must be finite and > 0`);
    });
    return scale;
  };
  // FP8 routed experts kept as codes: their stacked 128×128 block scales are exact when the
  // gate/up boundary (I) falls on a block edge.
  const keepFp8 = (opts.keepFp8Experts ?? true) && c.fp8WeightBlock !== null && c.fp8WeightBlock[0] === 128 &&
    c.fp8WeightBlock[1] === 128 && c.moeIntermediateSize % 128 === 0;
  const H = c.hiddenSize;

  /** Routed experts [first, first + n) of layer p, stacked. */
  const readExperts = async (p: string, first: number, n: number, fp8: boolean): Promise<Omit<ExpertPart, 'first' | 'total'>> => {
    const I = c.moeIntermediateSize;
    const ex = (e: number, w: string) => `${p}.mlp.experts.${e}.${w}_proj.weight`;
    const ids = Array.from({ length: n }, (_, k) => first + k);
    const guNames = ids.flatMap((e) => [ex(e, 'gate'), ex(e, 'up')]);
    const dnNames = ids.map((e) => ex(e, 'down'));
    if (!fp8) return { gateUp: await readStacked(guNames, [n, 2 * I, H], 'gu'), down: await readStacked(dnNames, [n, H, I], 'dn') };
    for (const name of [...guNames, ...dnNames]) {
      if (ck.entries.get(name)!.dtype !== 'fp8_e4m3') {
        throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: ${name} is ${ck.entries.get(name)!.stDtype}, but expert 0's gate_proj is F8_E4M3 (the experts take one dtype)`);
      }
    }
    const codes = async (names: string[], shape: number[], slot: string): Promise<Tensor> => {
      const out = alloc(shape, 'fp8_e4m3', slot);
      const all = bytesOf(out);
      let o = 0;
      for (const name of names) {
        throwIfAborted(opts.signal, what);
        await readInto(name, all.subarray(o, o + size(name)));
        progress(name);
        o += size(name);
      }
      return out;
    };
    const scales = async (names: string[], shape: number[], slot: string): Promise<Tensor> => {
      const out = alloc(shape, 'f32', slot);
      const all = out.data as Float32Array;
      let o = 0;
      for (const name of names) {
        const s = (await readScale(name)).data as Float32Array;
        all.set(s, o);
        o += s.length;
      }
      return out;
    };
    return {
      gateUp: await codes(guNames, [n, 2 * I, H], 'gu'),
      down: await codes(dnNames, [n, H, I], 'dn'),
      gateUpScale: await scales(guNames, [n, (2 * I) / 128, Math.ceil(H / 128)], 'gus'),
      downScale: await scales(dnNames, [n, Math.ceil(H / 128), Math.ceil(I / 128)], 'dns'),
    };
  };

  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const kvB = await read(`${a}.kv_b_proj.weight`);
    const { wUkT, wUv } = (opts.splitKvB ?? true) ? await splitKvB(kvB, c.numHeads, c.qkNopeHeadDim, c.vHeadDim, c.kvLoraRank)
      : { wUkT: EMPTY, wUv: EMPTY };
    let mlp: DenseMlp | MoeMlp;
    if (isMoeLayer(c, i)) {
      const E = c.nRoutedExperts as number;
      const I = c.moeIntermediateSize;
      const fp8Experts = keepFp8 && ck.entries.get(`${p}.mlp.experts.0.gate_proj.weight`)?.dtype === 'fp8_e4m3';
      let experts: MoeMlp['experts'];
      if (opts.onLayer && opts.onExperts) {
        const perExpert = 3 * I * H * (fp8Experts ? 1 : 2);
        const step = Math.max(1, Math.floor(EXPERT_PART_BYTES / perExpert));
        for (let first = 0; first < E; first += step) {
          const part = await readExperts(p, first, Math.min(step, E - first), fp8Experts);
          await opts.onExperts(i, { first, total: E, ...part });
        }
        experts = { gateUp: EMPTY, down: EMPTY, streamed: true };
      } else {
        experts = await readExperts(p, 0, E, fp8Experts);
      }
      let shared: MoeMlp['shared'] = null;
      if (c.nSharedExperts > 0) {
        const Is = I * c.nSharedExperts;
        shared = {
          gateUp: await readStacked([`${p}.mlp.shared_experts.gate_proj.weight`, `${p}.mlp.shared_experts.up_proj.weight`], [2 * Is, H]),
          down: await read(`${p}.mlp.shared_experts.down_proj.weight`),
        };
      }
      const bias = c.topkMethod === 'noaux_tc' ? await ops.cast(await read(`${p}.mlp.gate.e_score_correction_bias`), 'f32') : null;
      mlp = { kind: 'moe', gate: await read(`${p}.mlp.gate.weight`), bias, experts, shared };
    } else {
      mlp = {
        kind: 'dense',
        gateUp: await readStacked([`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`], [2 * c.intermediateSize, H]),
        down: await read(`${p}.mlp.down_proj.weight`),
      };
    }
    const q = c.qLoraRank === null;
    const layer: LayerWeights = {
      inputNorm: await read(`${p}.input_layernorm.weight`),
      postNorm: await read(`${p}.post_attention_layernorm.weight`),
      qProj: q ? await read(`${a}.q_proj.weight`) : null,
      qA: q ? null : await read(`${a}.q_a_proj.weight`),
      qANorm: q ? null : await read(`${a}.q_a_layernorm.weight`),
      qB: q ? null : await read(`${a}.q_b_proj.weight`),
      kvA: await read(`${a}.kv_a_proj_with_mqa.weight`),
      kvANorm: await read(`${a}.kv_a_layernorm.weight`),
      kvB,
      wUkT,
      wUv,
      oProj: await read(`${a}.o_proj.weight`),
      mlp,
    };
    if (opts.onLayer) await opts.onLayer(i, layer);
    else layers.push(layer);
  }
  // The globals last: when streaming, the embedding and lm_head are not held through the layers.
  if (opts.onLayer && opts.onGlobal) {
    pool.clear(); // the layers' buffers are done with
    const embed = await read('model.embed_tokens.weight');
    await opts.onGlobal('embed', embed);
    if (c.tieWordEmbeddings) await opts.onGlobal('lm_head', embed);
    await opts.onGlobal('norm', await read('model.norm.weight'));
    // Into the embedding's buffer (the same [vocab, hidden] shape and slot).
    if (!c.tieWordEmbeddings) await opts.onGlobal('lm_head', await read('lm_head.weight'));
    return { embed: EMPTY, layers, norm: EMPTY, lmHead: EMPTY };
  }
  const embed = await read('model.embed_tokens.weight');
  const norm = await read('model.norm.weight');
  const lmHead = c.tieWordEmbeddings ? embed : await read('lm_head.weight');
  return { embed, layers, norm, lmHead };
}

/** Placeholder of streamed routed experts (the engine holds them). */
const EMPTY = Tensor.zeros([0], 'bf16');

/** DeepSeek-V3 FP8 weights: w = fp8 · scale_inv[row / br, col / bc], stored as bf16. */
async function dequantFp8Block(w: Tensor, s: Tensor, block: [number, number]): Promise<Tensor> {
  const [rows, cols] = w.shape;
  const sf = (s.dtype === 'f32' ? s : await ops.cast(s, 'f32')).data as Float32Array;
  sf.forEach((v, k) => {
    if (!(Number.isFinite(v) && v > 0)) throw new Dsv2Error('E_CHECKPOINT', `weight_scale_inv[${k}] = ${v} must be finite and > 0`);
  });
  const sc = Math.ceil(cols / block[1]);
  // Expand the block scales to one per (row, 128-col tile) and reuse fp8Dequantize's tile path
  // when the block width is its tile; otherwise per element.
  const perTile = new Float32Array(rows * sc);
  for (let r = 0; r < rows; r++) for (let j = 0; j < sc; j++) perTile[r * sc + j] = sf[Math.floor(r / block[0]) * sc + j];
  const f = await ops.fp8Dequantize(w, Tensor.from(perTile, [rows, sc]), { granularity: 'tile', tileSize: block[1] });
  return ops.cast(f, 'bf16');
}
