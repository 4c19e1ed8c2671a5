/**
 * Self-tests of the float64 forward reference (test/reference/forward.ts): hand-computed
 * values of its pieces (YaRN frequencies, softmax scale, e4m3 grid, RoPE de-interleave),
 * invariants of the whole pass (causality, cache rounding only touches the latent), and that
 * its allowance is small but not zero, so a model test failure is blamed on the library.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTiny, ops, writeSafetensors, Tensor } from '../../lib';
import { checkEqual } from './compare';
import {
  e4m3Of, forwardF64, loadReference, readSafetensors, referenceLogits, refConfig, softmaxScale, isMoeLayer, ropeTables, type RefModel,
} from './forward';
import { Rng } from './rng';
import { randomPrompt, rmDir, tmpDir } from '../model/util';

const root = tmpDir('ref-forward');
afterAll(() => rmDir(root));

describe('pieces', () => {
  test('e4m3: exact values, ties to even, subnormals, saturation', () => {
    const cases: [number, number][] = [
      [1, 1], [1.0625, 1] /* tie between 1 and 1.125 → even mantissa 0 */, [1.1875, 1.25] /* tie → even (m=2) */,
      [1.07, 1.125], [448, 448], [500, 448], [-1e9, -448], [464, 448] /* tie between 448 and (unrepresentable) 480: saturates */,
      [2 ** -9, 2 ** -9] /* smallest subnormal */, [2 ** -10, 0] /* tie with 0 → even */, [3 * 2 ** -10, 2 ** -8] /* tie 1 vs 2 units → 2 */,
      [2 ** -6, 2 ** -6], [0.3, 0.3125], [-0.3, -0.3125], [240, 240], [250, 256],
    ];
    for (const [x, want] of cases) expect([x, e4m3Of(x)]).toEqual([x, want]);
  });

  test('softmax scale of the published V2 config: 192^-0.5 · (0.1·0.707·ln 40 + 1)²', () => {
    const c = refConfig(JSON.parse(fs.readFileSync(path.resolve(__dirname, '../fixtures/configs/deepseek-v2.json'), 'utf8')));
    // mscale = 1.26080378, squared 1.58962617; 192^-0.5 = 0.07216878 → 0.11472139
    expect(softmaxScale(c)).toBeCloseTo(0.11472139, 8);
    // the layer rule: layer 0 dense (first_k_dense_replace = 1), every later layer MoE
    expect([0, 1, 2, 59].map((l) => isMoeLayer(c, l))).toEqual([false, true, true, true]);
  });

  test('YaRN frequencies of the tiny config (dR = 8, factor 40, original 4096, β 32 / 1)', () => {
    // correction dims: 8·ln(4096 / (32·2π)) / (2 ln 10⁴) = 1.31 → floor 1; for β = 1: 2.81 → ceil 3;
    // ramp over i = 0..3: (i − 1) / 2 clamped = [0, 0, 0.5, 1]; mask = 1 − ramp = [1, 1, 0.5, 0]:
    // inv_freq = [1, 0.1, 0.5·0.01 + 0.5·0.01/40, 0.001/40].
    const c = refConfig({ vocab_size: 10, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 1, kv_lora_rank: 4, qk_nope_head_dim: 4,
      qk_rope_head_dim: 8, v_head_dim: 4, intermediate_size: 8,
      rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 } });
    const { cosT, sinT } = ropeTables(c, 3, false);
    const inv = [1, 0.1, 0.5 * 0.01 + (0.5 * 0.01) / 40, 0.001 / 40];
    for (let i = 0; i < 4; i++) {
      expect(cosT[i]).toBe(1); // position 0
      expect(sinT[4 + i]).toBeCloseTo(Math.sin(inv[i]), 14);
      expect(cosT[8 + i]).toBeCloseTo(Math.cos(2 * inv[i]), 14);
    }
  });
});

/** A one-layer dense model with hand-chosen sizes, written with the library's writer (format only). */
async function microModel(dir: string, o: { dC: number; dR: number }): Promise<RefModel> {
  const rng = new Rng({ micro: o });
  const H = 8;
  const nh = 2;
  const dN = 4;
  const dV = 4;
  const V = 16;
  const cfg = { model_type: 'deepseek_v2', vocab_size: V, hidden_size: H, num_hidden_layers: 1, num_attention_heads: nh, q_lora_rank: null,
    kv_lora_rank: o.dC, qk_nope_head_dim: dN, qk_rope_head_dim: o.dR, v_head_dim: dV, intermediate_size: 12, n_routed_experts: null,
    rms_norm_eps: 1e-6, rope_theta: 10000, rope_scaling: null, tie_word_embeddings: true };
  const t = (shape: number[], std: number) => Tensor.from(rng.normalF32(shape.reduce((a, b) => a * b, 1), std), shape);
  const ones = (n: number) => Tensor.from(new Float32Array(n).fill(1), [n]);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  await writeSafetensors(path.join(dir, 'model.safetensors'), {
    'model.embed_tokens.weight': t([V, H], 1),
    'model.layers.0.input_layernorm.weight': ones(H),
    'model.layers.0.post_attention_layernorm.weight': ones(H),
    'model.layers.0.self_attn.q_proj.weight': t([nh * (dN + o.dR), H], 0.5),
    'model.layers.0.self_attn.kv_a_proj_with_mqa.weight': t([o.dC + o.dR, H], 0.5),
    'model.layers.0.self_attn.kv_a_layernorm.weight': ones(o.dC),
    'model.layers.0.self_attn.kv_b_proj.weight': t([nh * (dN + dV), o.dC], 0.5),
    'model.layers.0.self_attn.o_proj.weight': t([H, nh * dV], 0.5),
    'model.layers.0.mlp.gate_proj.weight': t([12, H], 0.5),
    'model.layers.0.mlp.up_proj.weight': t([12, H], 0.5),
    'model.layers.0.mlp.down_proj.weight': t([H, 12], 0.5),
    'model.norm.weight': ones(H),
  });
  return loadReference(dir);
}

describe('the whole pass', () => {
  let v2: RefModel;
  beforeAll(async () => {
    await makeTiny(path.join(root, 'v2'), { kind: 'v2', seed: 3 });
    v2 = loadReference(path.join(root, 'v2'));
  });

  test('the safetensors reader decodes bf16 bits exactly (vs an f32 copy of the same values)', async () => {
    const rng = new Rng('st');
    const vals = rng.normalF32(37, 3);
    const file = path.join(root, 'st.safetensors');
    const t = Tensor.from(vals, [37]);
    await writeSafetensors(file, { a: t, b: await ops.cast(t, 'bf16') });
    const m = readSafetensors(file);
    expect(checkEqual(m.get('a')!.values, Float64Array.from(vals))).toBeNull();
    const b = m.get('b')!.values;
    for (let i = 0; i < 37; i++) {
      // bf16 keeps the top 16 bits: the value is within 2^-8 relative and has ≤ 8 significant bits
      expect(Math.abs(b[i] - vals[i])).toBeLessThanOrEqual(Math.abs(vals[i]) * 2 ** -8);
      expect(Math.fround(b[i])).toBe(b[i]);
    }
  });

  test('causal: the logits of a prefix are the first rows of the longer sequence, exactly', () => {
    const long = randomPrompt('causal', 10);
    const a = forwardF64(v2, long).logits;
    const b = forwardF64(v2, long.slice(0, 6)).logits;
    expect(checkEqual(b, a.subarray(0, b.length))).toBeNull();
  });

  test('a bf16 cache changes even the first token: its value vector comes from the rounded latent', () => {
    // one token: the softmax weight is 1 whatever the scores, but v = W_UV · bf16(c_kv) differs
    const one = [256];
    const f = forwardF64(v2, one, 'f32').logits;
    const b = forwardF64(v2, one, 'bf16').logits;
    expect(checkEqual(b, f)).not.toBeNull();
  });

  test('the allowance: small (≤ 1e-4 of the logit scale) but above zero; no routing near-ties on this input', () => {
    const r = referenceLogits(v2, randomPrompt('allowance', 12), { cache: 'f32' });
    let lmax = 0;
    for (const x of r.logits) lmax = Math.max(lmax, Math.abs(x));
    const tmax = Math.max(...r.tol);
    expect(tmax).toBeGreaterThan(0);
    expect(tmax / lmax).toBeLessThan(1e-4);
    expect(r.nearTies).toEqual([]);
    expect(r.minRoutingRatio).toBeGreaterThan(1);
  });

  test('bf16 cache: ambiguous roundings are found, each next to a midpoint, and they widen the allowance', () => {
    const tokens = randomPrompt('ambiguous', 24);
    const r = referenceLogits(v2, tokens, { cache: 'bf16' });
    // ~2·24·40 = 1920 rounded latent elements; with relative errors ~1e-6 against bf16's 2^-8 spacing a few land near a midpoint
    expect(r.ambiguous.length).toBeGreaterThan(0);
    for (const a of r.ambiguous) {
      const chosen = r.trace.latents[a.layer].grid[a.token * (v2.cfg.dC + v2.cfg.dR) + a.index];
      expect(a.midpoint).toBe((chosen + a.alt) / 2);
      expect(Math.abs(a.value - a.midpoint)).toBeLessThanOrEqual(a.est);
      // estimates are absolute per latent row (c_kv is RMS-normalized, k_pe O(1)): far below O(1)
      expect(a.est).toBeLessThan(1e-4);
      // the two candidates are adjacent bf16 values: their gap is one bf16 ulp (≤ 2^-7 relative)
      expect(Math.abs(a.alt - chosen) / Math.abs(chosen)).toBeLessThanOrEqual(2 ** -7);
    }
    // the allowance grows by the flips' effect: compare with the same input's shadow-only part
    let shadowOnly = 0;
    let total = 0;
    for (let t = 0; t < r.T; t++) shadowOnly += r.shadowDev[t] * 8 * r.V;
    for (const x of r.tol) total += x;
    expect(total).toBeGreaterThan(shadowOnly);
  });

  test('an independent formulation agrees: MLA attention with W_UK / W_UV absorbed (the paper\'s decode form)', async () => {
    // One layer, no MoE: logits via the reference vs a direct evaluation of the paper's eqs. (absorbed
    // q·W_UK·c and W_UV after the weighted latent sum), written here from the paper in float64.
    const m = await microModel(path.join(root, 'micro'), { dC: 6, dR: 4 });
    const toks = [1, 5, 9, 2, 14];
    const ref = forwardF64(m, toks).logits;
    const alt = absorbedForward(m, toks);
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(ref[i] - alt[i]));
    expect(worst).toBeLessThan(1e-12);
  });
});

/**
 * The micro model's forward in the paper's absorbed form (no RoPE scaling, one dense layer,
 * tied embeddings), float64: score = (q_nope·W_UK_h)·c + q_pe·k_pe, o_h = W_UV_h · Σ p c.
 * RoPE here is the DeepSeek inference code's complex form on interleaved pairs, whose
 * outputs are a permutation of HF's de-interleaved ones (the dot products agree).
 */
function absorbedForward(m: RefModel, toks: number[]): Float64Array {
  const c = m.cfg;
  const { H, nh, dC, dN, dR, dV, V } = c;
  const w = (n: string) => m.w(n);
  const lin = (x: Float64Array, W: Float64Array, N: number, K: number) => {
    const y = new Float64Array(N);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) y[n] += W[n * K + k] * x[k];
    return y;
  };
  const norm = (x: Float64Array, g: Float64Array) => {
    let s = 0;
    for (const v of x) s += v * v;
    const r = 1 / Math.sqrt(s / x.length + c.eps);
    return x.map((v, i) => v * r * g[i]);
  };
  const ropeC = (x: Float64Array, p: number) => {
    const out = new Float64Array(dR);
    for (let i = 0; i < dR / 2; i++) {
      const th = p * c.theta ** ((-2 * i) / dR);
      out[2 * i] = x[2 * i] * Math.cos(th) - x[2 * i + 1] * Math.sin(th);
      out[2 * i + 1] = x[2 * i] * Math.sin(th) + x[2 * i + 1] * Math.cos(th);
    }
    return out;
  };
  const T = toks.length;
  const emb = w('model.embed_tokens.weight');
  const xs = toks.map((t) => emb.slice(t * H, (t + 1) * H));
  const kvb = w('model.layers.0.self_attn.kv_b_proj.weight');
  const cs: Float64Array[] = [];
  const kpes: Float64Array[] = [];
  const out = new Float64Array(T * V);
  const scale = softmaxScale(c);
  for (let t = 0; t < T; t++) {
    const xn = norm(xs[t], w('model.layers.0.input_layernorm.weight'));
    const kva = lin(xn, w('model.layers.0.self_attn.kv_a_proj_with_mqa.weight'), dC + dR, H);
    cs.push(norm(kva.slice(0, dC), w('model.layers.0.self_attn.kv_a_layernorm.weight')));
    kpes.push(ropeC(kva.slice(dC), t));
    const q = lin(xn, w('model.layers.0.self_attn.q_proj.weight'), nh * (dN + dR), H);
    const o = new Float64Array(nh * dV);
    for (let h = 0; h < nh; h++) {
      const qo = h * (dN + dR);
      // q̃ = W_UKᵀ q_nope: W_UK_h is rows [h(dN+dV), h(dN+dV)+dN) of kv_b_proj
      const qt = new Float64Array(dC);
      for (let j = 0; j < dC; j++) for (let i = 0; i < dN; i++) qt[j] += q[qo + i] * kvb[(h * (dN + dV) + i) * dC + j];
      const qpe = ropeC(q.slice(qo + dN, qo + dN + dR), t);
      const s = new Float64Array(t + 1);
      for (let u = 0; u <= t; u++) {
        let a = 0;
        for (let j = 0; j < dC; j++) a += qt[j] * cs[u][j];
        for (let j = 0; j < dR; j++) a += qpe[j] * kpes[u][j];
        s[u] = a * scale;
      }
      const mx = Math.max(...s);
      const e = s.map((v) => Math.exp(v - mx));
      const z = e.reduce((a, b) => a + b, 0);
      const cbar = new Float64Array(dC);
      for (let u = 0; u <= t; u++) for (let j = 0; j < dC; j++) cbar[j] += (e[u] / z) * cs[u][j];
      // o_h = W_UV_h c̄: rows [h(dN+dV)+dN, (h+1)(dN+dV)) of kv_b_proj
      for (let i = 0; i < dV; i++) for (let j = 0; j < dC; j++) o[h * dV + i] += kvb[(h * (dN + dV) + dN + i) * dC + j] * cbar[j];
    }
    const x1 = xs[t].map((v, i) => v + lin(o, w('model.layers.0.self_attn.o_proj.weight'), H, nh * dV)[i]);
    const xn2 = norm(x1, w('model.layers.0.post_attention_layernorm.weight'));
    const g = lin(xn2, w('model.layers.0.mlp.gate_proj.weight'), c.interm, H);
    const u = lin(xn2, w('model.layers.0.mlp.up_proj.weight'), c.interm, H);
    const hmid = g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]);
    const x2 = x1.map((v, i) => v + lin(hmid, w('model.layers.0.mlp.down_proj.weight'), H, c.interm)[i]);
    const xf = norm(x2, w('model.norm.weight'));
    out.set(lin(xf, emb, V, H), t * V);
  }
  return out;
}
