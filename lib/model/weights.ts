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
import { Tensor, type HostData } from '../tensor';
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
  experts: { gateUp: Tensor; down: Tensor; gateUpScale?: Tensor; downScale?: Tensor };
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

/** Concatenates same-dtype tensors along dim 0 (a fresh buffer). */
function concat(ts: Tensor[], shape: number[]): Tensor {
  const dtype = ts[0].dtype;
  const total = ts.reduce((a, t) => a + t.numel, 0);
  const out = Tensor.zeros(shape, dtype);
  const dst = out.data as Exclude<HostData, BigInt64Array>;
  let o = 0;
  for (const t of ts) {
    if (t.dtype !== dtype) throw new Dsv2Error('E_CHECKPOINT', `tensors to stack differ in dtype: ${t.dtype} vs ${dtype}`);
    dst.set(t.data as Exclude<HostData, BigInt64Array>, o);
    o += t.numel;
  }
  if (o !== total) throw new Dsv2Error('E_INTERNAL', 'concat size mismatch');
  return out;
}

/** Per head h: rows [h·(dNope+dV), h·(dNope+dV)+dNope) of kv_b transposed → [h, dC, dNope]; the next dV rows → [h, dV, dC]. */
function splitKvB(kvB: Tensor, h: number, dNope: number, dV: number, dC: number): { wUkT: Tensor; wUv: Tensor } {
  const src = kvB.data as Exclude<HostData, BigInt64Array>;
  const wUkT = Tensor.zeros([h, dC, dNope], kvB.dtype);
  const wUv = Tensor.zeros([h, dV, dC], kvB.dtype);
  const uk = wUkT.data as Exclude<HostData, BigInt64Array>;
  const uv = wUv.data as Exclude<HostData, BigInt64Array>;
  const row = dNope + dV;
  for (let hh = 0; hh < h; hh++) {
    for (let r = 0; r < dNope; r++) {
      const s = (hh * row + r) * dC;
      for (let c = 0; c < dC; c++) uk[(hh * dC + c) * dNope + r] = src[s + c];
    }
    uv.set(src.subarray((hh * row + dNope) * dC, (hh * row + row) * dC), hh * dV * dC);
  }
  return { wUkT, wUv };
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
}

/** Reads every weight the config implies and arranges it for the runtime. */
export async function loadWeights(ck: Checkpoint, opts: LoadOptions = {}): Promise<ModelWeights> {
  const c = ck.config;
  const want = expectedTensors(c);
  const total = [...want.keys()].reduce((a, n) => a + ((ck.entries.get(n)?.end ?? 0) - (ck.entries.get(n)?.begin ?? 0)), 0);
  let done = 0;
  const read = async (name: string): Promise<Tensor> => {
    throwIfAborted(opts.signal, `loading ${ck.dir}`);
    let t = await ck.read(name);
    const e = ck.entries.get(name)!;
    done += e.end - e.begin;
    if (t.dtype === 'fp8_e4m3') t = await dequantFp8Block(t, await ck.read(scaleName(name)), c.fp8WeightBlock!);
    opts.onProgress?.(done, total);
    return t;
  };
  // FP8 routed experts kept as codes: their stacked 128×128 block scales are exact when the
  // gate/up boundary (I) falls on a block edge.
  const keepFp8 = (opts.keepFp8Experts ?? true) && c.fp8WeightBlock !== null && c.fp8WeightBlock[0] === 128 &&
    c.fp8WeightBlock[1] === 128 && c.moeIntermediateSize % 128 === 0;
  const readRaw = async (name: string): Promise<{ codes: Tensor; scale: Tensor | null }> => {
    throwIfAborted(opts.signal, `loading ${ck.dir}`);
    const t = await ck.read(name);
    const e = ck.entries.get(name)!;
    done += e.end - e.begin;
    opts.onProgress?.(done, total);
    if (t.dtype !== 'fp8_e4m3') return { codes: t, scale: null };
    const sc = await ck.read(scaleName(name));
    const scale = sc.dtype === 'f32' ? sc : await ops.cast(sc, 'f32');
    (scale.data as Float32Array).forEach((v, k) => {
      if (!(Number.isFinite(v) && v > 0)) throw new Dsv2Error('E_CHECKPOINT', `${scaleName(name)}[${k}] = ${v} must be finite and > 0`);
    });
    return { codes: t, scale };
  };
  const H = c.hiddenSize;
  const embed = await read('model.embed_tokens.weight');
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const kvB = await read(`${a}.kv_b_proj.weight`);
    const { wUkT, wUv } = splitKvB(kvB, c.numHeads, c.qkNopeHeadDim, c.vHeadDim, c.kvLoraRank);
    let mlp: DenseMlp | MoeMlp;
    if (isMoeLayer(c, i)) {
      const E = c.nRoutedExperts as number;
      const I = c.moeIntermediateSize;
      const gu: Tensor[] = [];
      const dn: Tensor[] = [];
      const guScale: Tensor[] = [];
      const dnScale: Tensor[] = [];
      const ex = (e: number, w: string) => `${p}.mlp.experts.${e}.${w}_proj.weight`;
      const fp8Experts = keepFp8 && ck.entries.get(ex(0, 'gate'))?.dtype === 'fp8_e4m3';
      for (let e = 0; e < E; e++) {
        if (fp8Experts) {
          for (const w of ['gate', 'up', 'down']) {
            const r = await readRaw(ex(e, w));
            if (!r.scale) throw new Dsv2Error('E_CHECKPOINT', `${ck.dir}: ${ex(e, w)} is ${r.codes.dtype}, but expert 0's gate_proj is F8_E4M3 (the experts take one dtype)`);
            (w === 'down' ? dn : gu).push(r.codes);
            (w === 'down' ? dnScale : guScale).push(r.scale);
          }
        } else {
          gu.push(await read(ex(e, 'gate')), await read(ex(e, 'up')));
          dn.push(await read(ex(e, 'down')));
        }
      }
      let shared: MoeMlp['shared'] = null;
      if (c.nSharedExperts > 0) {
        const Is = I * c.nSharedExperts;
        const sg = await read(`${p}.mlp.shared_experts.gate_proj.weight`);
        const su = await read(`${p}.mlp.shared_experts.up_proj.weight`);
        shared = { gateUp: concat([sg, su], [2 * Is, H]), down: await read(`${p}.mlp.shared_experts.down_proj.weight`) };
      }
      const bias = c.topkMethod === 'noaux_tc' ? await ops.cast(await read(`${p}.mlp.gate.e_score_correction_bias`), 'f32') : null;
      mlp = {
        kind: 'moe',
        gate: await read(`${p}.mlp.gate.weight`),
        bias,
        experts: fp8Experts
          ? {
            gateUp: concat(gu, [E, 2 * I, H]), down: concat(dn, [E, H, I]),
            gateUpScale: concat(guScale, [E, (2 * I) / 128, Math.ceil(H / 128)]),
            downScale: concat(dnScale, [E, Math.ceil(H / 128), Math.ceil(I / 128)]),
          }
          : { gateUp: concat(gu, [E, 2 * I, H]), down: concat(dn, [E, H, I]) },
        shared,
      };
    } else {
      const g = await read(`${p}.mlp.gate_proj.weight`);
      const u = await read(`${p}.mlp.up_proj.weight`);
      mlp = { kind: 'dense', gateUp: concat([g, u], [2 * c.intermediateSize, H]), down: await read(`${p}.mlp.down_proj.weight`) };
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
  const norm = await read('model.norm.weight');
  const lmHead = c.tieWordEmbeddings ? embed : await read('lm_head.weight');
  return { embed, layers, norm, lmHead };
}

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
