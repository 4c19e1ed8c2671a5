/**
 * Shared helpers of the model tests: temporary checkpoints, prompt choice, and comparing
 * library logits with the float64 reference (test/reference/forward.ts) so that a failure
 * names the row, the allowance, and any routing near-tie that could explain it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Tensor } from '../../lib';
import { checkClose } from '../reference/compare';
import { forwardF64, referenceLogits, top2, type CacheKind, type RefLogits, type RefModel } from '../reference/forward';
import { Rng } from '../reference/rng';

const math = Math;

/** The tiny checkpoints' BOS / EOS ids (tokenizer.json added tokens, config.json). */
export const BOS = 256;
export const EOS = 257;

/** A fresh temporary directory under the OS temp dir (remove it with rmDir in afterAll). */
export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `dsv2-${tag}-`));
}

export function rmDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** BOS then n − 1 byte tokens drawn from a seeded stream. */
export function randomPrompt(seed: object | string, n: number): number[] {
  const rng = new Rng(seed);
  return [BOS, ...rng.ints(n - 1, 0, 256)];
}

/**
 * A prompt whose reference evaluation has no routing near-tie (every expert / group choice's
 * margin exceeds its estimated f32 error): the first of seeds 0, 1, … . Deterministic, so it
 * picks the same prompt on every run; the tests then compare strictly.
 */
export function routingSafePrompt(ref: RefModel, tag: string, n: number, cache: CacheKind = 'f32'): { tokens: number[]; r: RefLogits } {
  for (let s = 0; s < 20; s++) {
    const tokens = randomPrompt({ tag, s }, n);
    const r = referenceLogits(ref, tokens, { cache });
    if (r.nearTies.length === 0) return { tokens, r };
  }
  throw new Error(`no routing-safe prompt of ${n} tokens for ${tag} in 20 tries`);
}

export interface RowStats {
  /** max over rows of max|lib − ref| / shadowDev (how the library's f32 error compares with the shadow's) */
  ratio: number;
  maxErr: number;
}

/** max over rows of |lib − ref|_∞ / shadowDev, for the calibration notes. */
export function errorRatio(lib: Float32Array, r: RefLogits): RowStats {
  let ratio = 0;
  let maxErr = 0;
  for (let t = 0; t < r.T; t++) {
    let e = 0;
    for (let v = 0; v < r.V; v++) e = math.max(e, math.abs(lib[t * r.V + v] - r.logits[t * r.V + v]));
    maxErr = math.max(maxErr, e);
    if (r.shadowDev[t] > 0) ratio = math.max(ratio, e / r.shadowDev[t]);
  }
  return { ratio, maxErr };
}

/** Set DSV2_TEST_VERBOSE=1 to print the calibration numbers (error ratios, ambiguities). */
export const VERBOSE = process.env.DSV2_TEST_VERBOSE === '1';

export function note(msg: string): void {
  if (VERBOSE) process.stderr.write(`${msg}\n`);
}

/**
 * Library logits [T, V] against the reference with its allowance. On failure the message
 * lists the routing near-ties and ambiguous cache roundings the reference found, so a
 * disagreement caused by a choice within rounding is reported as such.
 */
export function expectLogitsMatch(lib: Tensor, r: RefLogits, ctx: object, label: string): RowStats {
  if (lib.dtype !== 'f32') throw new Error(`${label}: dtype ${lib.dtype}, expected f32`);
  if (lib.shape.length !== 2 || lib.shape[0] !== r.T || lib.shape[1] !== r.V) {
    throw new Error(`${label}: shape [${lib.shape.join(', ')}], expected [${r.T}, ${r.V}]`);
  }
  const data = lib.data as Float32Array;
  const msg = checkClose(data, r.logits, { bound: r.tol, ctx, label });
  const stats = errorRatio(data, r);
  note(`${label} ${JSON.stringify(ctx)}: max err ${stats.maxErr.toExponential(2)}, err/shadowDev ${stats.ratio.toFixed(2)}, ` +
    `ambiguous roundings ${r.ambiguous.length}, min routing margin/est ${r.minRoutingRatio.toExponential(2)}`);
  if (msg !== null) {
    const row = firstBadRow(data, r);
    const extra = [
      `  row ${row}: shadow deviation ${r.shadowDev[row]}, allowance ${r.tol[row * r.V]}`,
      r.nearTies.length
        ? `  routing near-ties (margin within the estimated f32 error; the library may choose differently): ${JSON.stringify(r.nearTies)}`
        : '  no routing near-ties: every expert/group choice has margin > its estimated error',
      `  ambiguous cache roundings (already in the allowance): ${r.ambiguous.length}`,
    ];
    throw new Error(`${msg}\n${extra.join('\n')}`);
  }
  return stats;
}

function firstBadRow(lib: Float32Array, r: RefLogits): number {
  for (let t = 0; t < r.T; t++) {
    for (let v = 0; v < r.V; v++) {
      const i = t * r.V + v;
      if (!(math.abs(lib[i] - r.logits[i]) <= r.tol[i])) return t;
    }
  }
  return 0;
}

/**
 * The reference's greedy continuation of `prompt` (float64, `cache` rounding), stopping at
 * EOS; also the smallest top-1/top-2 logit gap met on the way.
 */
export function referenceGreedy(ref: RefModel, prompt: readonly number[], n: number, cache: CacheKind): { tokens: number[]; minGap: number; eos: boolean } {
  const seq = [...prompt];
  const out: number[] = [];
  let minGap = Infinity;
  const V = ref.cfg.V;
  for (let i = 0; i < n; i++) {
    const l = forwardF64(ref, seq, cache).logits;
    const { best, gap } = top2(l, (seq.length - 1) * V, V);
    minGap = math.min(minGap, gap);
    if (best === EOS) return { tokens: out, minGap, eos: true };
    out.push(best);
    seq.push(best);
  }
  return { tokens: out, minGap, eos: false };
}

/**
 * Writes a large checkpoint fast (for load-time tests, not numerics): every tensor `raw`
 * implies, in bf16, filled by repeating one block of small random values (std 0.02; norms 1),
 * streamed to disk so the writer holds only that block. Returns the weight bytes.
 */
export async function writeBigCheckpoint(dir: string, raw: Record<string, unknown>): Promise<number> {
  const { parseConfig } = await import('../../lib/model/config');
  const { expectedTensors } = await import('../../lib/model/weights');
  fs.mkdirSync(dir, { recursive: true });
  const cfg = parseConfig(raw);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  const list = [...expectedTensors(cfg)];
  for (const [name, shape] of list) {
    const n = shape.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: 'BF16', shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const BLOCK = 1 << 20;
  const rng = new Rng('big-checkpoint');
  const bf16 = (x: number) => (new Uint32Array(new Float32Array([x]).buffer)[0] >>> 16);
  const block = new Uint16Array(BLOCK / 2);
  for (let i = 0; i < block.length; i++) block[i] = bf16(0.02 * rng.normal());
  const ones = new Uint16Array(BLOCK / 2).fill(bf16(1));
  const fh = await fs.promises.open(path.join(dir, 'model.safetensors'), 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    await fh.write(len);
    await fh.write(Buffer.from(json));
    for (const [name, shape] of list) {
      let left = shape.reduce((a, b) => a * b, 1) * 2;
      const src = name.endsWith('norm.weight') ? ones : block;
      while (left > 0) {
        const k = Math.min(left, BLOCK);
        await fh.write(new Uint8Array(src.buffer, 0, k));
        left -= k;
      }
    }
  } finally {
    await fh.close();
  }
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(raw, null, 2));
  return off;
}

/** A safetensors file read independently of the library: its header (no __metadata__) and data section. */
export function readSt(file: string): { header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; data: Buffer } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  delete header.__metadata__;
  return { header, data: buf.subarray(8 + n) };
}
