/**
 * DeepSeek-V3's FP8 weight format: linear weights as F8_E4M3 with an f32 weight_scale_inv per
 * 128×128 block. The loader dequantizes them once (w = e4m3(code) · scale_inv[row/128, col/128])
 * and rounds to bf16 — except the routed experts when moe_intermediate_size % 128 == 0, kept as
 * codes + scales and decoded in f32 by the experts op. Checked independently: the test decodes the same file with its own
 * safetensors reading and e4m3 decoder, writes those values as a bf16 checkpoint, and the two
 * models must give bit-identical logits (the same weights, the same computation).
 * Also: static-scale fp8Quantize codes equal the reference encoder's.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model, makeTiny, writeSafetensors } from '../../lib';
import { modelMemory } from '../../lib/model/memory';
import { tinyConfig, writeRandomCheckpoint } from '../../lib/model/tiny';
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { f32ToBf16Bits } from '../reference/dtype';
import { e4m3Decode, e4m3Encode } from '../reference/fp8';
import { readSt, rmDir, tmpDir } from './util';

const root = tmpDir('fp8w');
afterAll(() => rmDir(root));

describe('FP8 block-scaled weights (DeepSeek-V3 layout)', () => {
  test('static-scale fp8Quantize codes equal the reference encoder', async () => {
    const x = Float32Array.from({ length: 3 * 130 }, (_, i) => Math.sin(i * 1.7) * (1 + (i % 11)));
    const scales = Float32Array.from({ length: 3 * 2 }, (_, i) => 0.01 + i * 0.003);
    const { codes, scales: back } = await ops.fp8Quantize(Tensor.from(x, [3, 130]), { granularity: 'tile', tileSize: 128, scales: Tensor.from(scales, [3, 2]) });
    expect(Array.from(back.data as Float32Array)).toEqual(Array.from(scales));
    const c = codes.data as Uint8Array;
    for (let i = 0; i < x.length; i++) {
      const s = scales[Math.floor(i / 130) * 2 + Math.floor((i % 130) / 128)];
      expect(c[i]).toBe(e4m3Encode(Math.fround(x[i] / s)));
    }
    await expect(ops.fp8Quantize(Tensor.from(x, [3, 130]), { granularity: 'tile', scales: Tensor.from(new Float32Array(6), [3, 2]) }))
      .rejects.toMatchObject({ code: 'E_RANGE' });
  });

  // moe_intermediate_size 16: every F8 weight is widened to bf16 at load. 128: the routed experts
  // stay e4m3 codes + block scales (their stacked scales are exact) and the experts op decodes
  // them in f32 — so the independent copy stores those as f32 (one rounding of code · scale)
  // and everything else as bf16.
  test.each([[16, 'widened to bf16'], [128, 'routed experts kept in FP8']])('a V3 checkpoint in FP8 (moe_intermediate_size %i: %s) loads to the same model as its independently dequantized copy', async (inter) => {
    const keep = inter % 128 === 0;
    const fp8Dir = path.join(root, `v3-fp8-${inter}`);
    const bf16Dir = path.join(root, `v3-dequant-${inter}`);
    await writeRandomCheckpoint(fp8Dir, { ...tinyConfig('v3'), moe_intermediate_size: inter }, { seed: 7, dtype: 'fp8' });
    const cfg = JSON.parse(fs.readFileSync(path.join(fp8Dir, 'config.json'), 'utf8'));
    expect(cfg.quantization_config.weight_block_size).toEqual([128, 128]);
    // Independent dequantization of every F8 tensor.
    const st = readSt(path.join(fp8Dir, 'model.safetensors'));
    const tensors: Record<string, Tensor> = {};
    let nFp8 = 0;
    for (const [name, e] of Object.entries(st.header)) {
      if (name.endsWith('_scale_inv')) continue;
      const bytes = st.data.subarray(e.data_offsets[0], e.data_offsets[1]);
      if (e.dtype === 'F8_E4M3') {
        nFp8++;
        const s = st.header[`${name}_scale_inv`];
        const sb = st.data.subarray(s.data_offsets[0], s.data_offsets[1]);
        const scale = new Float32Array(sb.buffer.slice(sb.byteOffset, sb.byteOffset + sb.length));
        const [r, c] = e.shape;
        const sc = s.shape[1];
        const f32 = keep && /\.mlp\.experts\.\d+\./.test(name);
        const out = new Float32Array(r * c);
        for (let i = 0; i < r; i++) {
          for (let j = 0; j < c; j++) {
            out[i * c + j] = Math.fround(e4m3Decode(bytes[i * c + j]) * scale[Math.floor(i / 128) * sc + Math.floor(j / 128)]);
          }
        }
        tensors[name] = f32 ? new Tensor('f32', e.shape, out) : new Tensor('bf16', e.shape, Uint16Array.from(out, f32ToBf16Bits));
      } else {
        const copy = new Uint8Array(bytes.length);
        copy.set(bytes);
        const dt = e.dtype === 'BF16' ? 'bf16' : 'f32';
        tensors[name] = new Tensor(dt, e.shape, dt === 'bf16' ? new Uint16Array(copy.buffer) : new Float32Array(copy.buffer));
      }
    }
    expect(nFp8).toBeGreaterThan(10);
    fs.mkdirSync(bf16Dir, { recursive: true });
    const { quantization_config: _q, ...plain } = cfg;
    fs.writeFileSync(path.join(bf16Dir, 'config.json'), JSON.stringify(plain));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(fp8Dir, f), path.join(bf16Dir, f));
    await writeSafetensors(path.join(bf16Dir, 'model.safetensors'), tensors);

    const toks = [256, 104, 101, 108, 108, 111, 44, 32, 119];
    for (const engine of ['native'] as const) {
      const a = await Model.load(fp8Dir, { kvCache: 'f32' });
      const b = await Model.load(bf16Dir, { kvCache: 'f32' });
      try {
        if (engine === 'native') {
          // kept experts: codes (1 byte) + scales instead of f32 weights (4 bytes) or bf16 (2)
          if (keep) expect(a.memory()!.weights).toBeLessThan(b.memory()!.weights / 2);
          else expect(a.memory()!.weights).toBe(b.memory()!.weights);
          // and `dsv2 info --model` accounts for it exactly
          expect((await modelMemory(fp8Dir, { device: 'cpu' })).runtime!.weights).toBe(a.memory()!.weights);
        }
        for (const mode of ['prefill', 'decode'] as const) {
          const la = (await a.logits(toks, { mode })).data as Float32Array;
          const lb = (await b.logits(toks, { mode })).data as Float32Array;
          expect(la.every(Number.isFinite)).toBe(true);
          expect([engine, mode, Array.from(la)]).toEqual([engine, mode, Array.from(lb)]); // same weights, same computation: bit-identical
        }
      } finally {
        await a.dispose();
        await b.dispose();
      }
    }
  });

  test('an F8 tensor without its scale_inv is E_CHECKPOINT naming it', async () => {
    const dir = path.join(root, 'v3-noscale');
    await makeTiny(dir, { kind: 'v3', seed: 1, dtype: 'fp8' });
    const st = readSt(path.join(dir, 'model.safetensors'));
    const victim = Object.keys(st.header).find((n) => n.endsWith('o_proj.weight_scale_inv'))!;
    const tensors: Record<string, Tensor> = {};
    for (const [name, e] of Object.entries(st.header)) {
      if (name === victim) continue;
      const bytes = st.data.subarray(e.data_offsets[0], e.data_offsets[1]);
      const copy = new Uint8Array(bytes.length);
      copy.set(bytes);
      const dt = e.dtype === 'BF16' ? 'bf16' : e.dtype === 'F8_E4M3' ? 'fp8_e4m3' : 'f32';
      tensors[name] = new Tensor(dt, e.shape, dt === 'bf16' ? new Uint16Array(copy.buffer) : dt === 'f32' ? new Float32Array(copy.buffer) : copy);
    }
    await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    await expect(Model.load(dir)).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringContaining(victim) });
  });
});
