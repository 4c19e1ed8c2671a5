/**
 * Batch-1 decode of one checkpoint, op by op: `npm run bench -- decode [--model DIR]
 * [--prompt N] [--tokens N] [--weights bf16|int8|fp8] [--kv-cache bf16|fp8|f32]`.
 *
 * Without --model: DeepSeek-V2-Lite's published config cut to its first 4 layers (1 dense +
 * 3 MoE; real vocabulary and widths), random weights, written once to the dsv2 cache.
 *
 * Byte model of one decode token (batch 1, every weight byte read once per token; the
 * activations are KB and stay in cache): per op, the weights it reads —
 *   attn.q       q_proj [nh·qk, H] (or q_a [q_lora, H] + q_b [nh·qk, q_lora])
 *   attn.kv_a    kv_a [dC + dR, H]
 *   attn.absorb_q  W_UKᵀ [nh, dC, dNope];   attn.absorb_o  W_UV [nh, dV, dC]
 *   attn.mla_decode  the latent cache: seqlen × (dC + dR) × cache bytes per element
 *   attn.o_proj  o_proj [H, nh·dV]
 *   mlp.dense    gate_up [2·inter, H] + down [H, inter]
 *   moe.gate     the router [E, H] (f32 logits); moe.experts (top_k + shared) × 3 × moe_inter × H
 *   lm_head      [V, H]: at V2-Lite widths 420 MB of bf16, the largest single read of a token
 * FLOPs are 2 per weight element (a multiply-add per element at M = 1): far below the
 * machine's FMA rate, so every op's roofline is its bytes over the read bandwidth measured
 * here (a multi-threaded sum over 1 GiB, `readBandwidth`).
 * Decode tok/s is timed without profiling; the per-op split comes from a second, profiled
 * run (`Model.startProfile`: each op between backend syncs; on the CPU ops are synchronous).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readBandwidth } from '../../lib/bench';
import { cacheDir } from '../../lib/cli/common';
import { info } from '../../lib/info';
import { parseConfig, type DeepSeekConfig } from '../../lib/model/config';
import { Model } from '../../lib/model/model';
import type { OpTime } from '../../lib/model/engine';
import { writeRandomCheckpoint } from '../../lib/model/tiny';
import { PACKAGE_ROOT } from '../../lib/paths';
import { table, writeResults } from './common';

function arg(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

/**
 * Weight bytes per token of each profiled op at batch 1: `bpe` bytes per element of the
 * quantisable linear weights (2 for bf16; 1 + 4/128² for 8-bit codes and their block scales),
 * 2 for what stays bf16 (the embedding row, W_UK / W_UV, the router).
 */
export function decodeOpBytes(c: DeepSeekConfig, bpe: number, seqlen: number, cacheBytesPerElem: number): Record<string, number> {
  const keep = 2;
  const H = c.hiddenSize, nh = c.numHeads, qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
  const L = c.numLayers;
  let moeLayers = 0;
  for (let l = 0; l < L; l++) if (c.nRoutedExperts && l >= c.firstKDenseReplace && l % c.moeLayerFreq === 0) moeLayers++;
  const dense = L - moeLayers;
  const q = c.qLoraRank ? c.qLoraRank * H + nh * qk * c.qLoraRank : nh * qk * H;
  return {
    embed: H * keep,
    'attn.q': L * q * bpe,
    'attn.kv_a': L * (c.kvLoraRank + c.qkRopeHeadDim) * H * bpe,
    'attn.absorb_q': L * nh * c.kvLoraRank * c.qkNopeHeadDim * keep,
    'attn.mla_decode': L * seqlen * (c.kvLoraRank + c.qkRopeHeadDim) * cacheBytesPerElem,
    'attn.absorb_o': L * nh * c.vHeadDim * c.kvLoraRank * keep,
    'attn.o_proj': L * H * nh * c.vHeadDim * bpe,
    'mlp.dense': dense * 3 * c.intermediateSize * H * bpe,
    'moe.gate': moeLayers * (c.nRoutedExperts ?? 0) * H * keep,
    'moe.experts': moeLayers * (c.numExpertsPerTok + c.nSharedExperts) * 3 * c.moeIntermediateSize * H * bpe,
    lm_head: c.vocabSize * H * bpe,
  };
}

async function defaultModel(): Promise<string> {
  const dir = path.join(cacheDir(), 'bench', 'v2-lite-4layers');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    console.error(`decode: writing the V2-Lite 4-layer random-weight checkpoint to ${dir} (once, 4.5 GB)`);
    const lite = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, '..', 'shared', 'configs', 'deepseek-v2-lite.json'), 'utf8'));
    await writeRandomCheckpoint(`${dir}.tmp`, { ...lite, num_hidden_layers: 4 });
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(`${dir}.tmp`, dir);
  }
  return dir;
}

export async function benchDecode(opts: { quick?: boolean } = {}): Promise<void> {
  const dir = arg('model') ?? (await defaultModel());
  const promptLen = Number(arg('prompt', '64'));
  const steps = Number(arg('tokens', opts.quick ? '16' : '64'));
  const weights = arg('weights', 'bf16') as 'bf16' | 'int8' | 'fp8';
  const kvCache = arg('kv-cache', 'bf16') as 'bf16' | 'fp8' | 'f32';
  const i = await info();
  const bw = await readBandwidth();
  const c = parseConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')));
  console.log(`decode: ${dir} (${c.numLayers} layers), ${i.cpu.threads} threads, ${i.cpu.isa}; read bandwidth ${(bw / 1e9).toFixed(1)} GB/s`);
  const loadOpts: Record<string, unknown> = { maxTokens: 1024, kvCache };
  if (weights !== 'bf16') loadOpts.weights = weights;
  const model = await Model.load(dir, loadOpts as Parameters<typeof Model.load>[1]);
  const prompt = Array.from({ length: promptLen }, (_, k) => 300 + ((k * 7919) % Math.max(1, c.vocabSize - 300)));
  await model.generate({ tokens: prompt.slice(0, 8), maxNewTokens: 4, temperature: 0 }).result; // warm-up

  // Plain run: wall time per token after the first (prefill excluded).
  const run = async (profile: boolean): Promise<{ tokS: number; ops: OpTime[]; n: number }> => {
    let first = 0, n = 0;
    let ops: OpTime[] = [];
    const g = model.generate({ tokens: prompt, maxNewTokens: steps + 1, temperature: 0, ignoreEos: true });
    for await (const ch of g) {
      if (ch.token === null) continue;
      if (n++ === 0) {
        first = performance.now();
        if (profile) model.startProfile();
      }
    }
    const s = (performance.now() - first) / 1000;
    if (profile) ops = model.stopProfile();
    return { tokS: (n - 1) / s, ops, n: n - 1 };
  };
  const plain = [await run(false), await run(false)];
  const tokS = Math.max(...plain.map((r) => r.tokS));
  const prof = await run(true);
  const bpe = weights === 'bf16' ? 2 : 1 + 4 / 128 ** 2;
  const cacheBpe = kvCache === 'f32' ? 4 : kvCache === 'bf16' ? 2 : 1;
  const bytes = decodeOpBytes(c, bpe, promptLen + steps / 2, cacheBpe);
  const stepOp = prof.ops.find((o) => o.op === 'step');
  const tokens = stepOp?.calls ?? prof.n;
  const rows: Record<string, string | number>[] = [];
  let opSum = 0;
  let byteSum = 0;
  for (const o of prof.ops) {
    if (o.op === 'step') continue;
    opSum += o.seconds;
    const b = bytes[o.op] ?? 0;
    byteSum += b;
    const ms = (1000 * o.seconds) / tokens;
    rows.push({
      op: o.op, 'calls/token': o.calls / tokens, 'ms/token': ms, 'MB/token': b / 1e6,
      'GB/s': b ? b / 1e9 / (ms / 1000) : '-', '%roofline': b ? (100 * (b / bw)) / (ms / 1000) : '-',
    });
  }
  const stepMs = stepOp ? (1000 * stepOp.seconds) / tokens : 0;
  rows.push({ op: 'step (engine, whole)', 'calls/token': 1, 'ms/token': stepMs, 'MB/token': byteSum / 1e6, 'GB/s': byteSum / 1e9 / (stepMs / 1000), '%roofline': (100 * byteSum / bw) / (stepMs / 1000) });
  rows.push({ op: 'step − ops (checks, copies)', 'calls/token': 1, 'ms/token': stepMs - (1000 * opSum) / tokens, 'MB/token': 0, 'GB/s': '-', '%roofline': '-' });
  rows.push({ op: 'token − step (JS, scheduling)', 'calls/token': 1, 'ms/token': 1000 / prof.tokS - stepMs, 'MB/token': 0, 'GB/s': '-', '%roofline': '-' });
  table(rows);
  const rooflineTokS = bw / byteSum;
  console.log(`batch-1 decode: ${tokS.toFixed(2)} tok/s unprofiled (${prof.tokS.toFixed(2)} profiled); roofline ${rooflineTokS.toFixed(1)} tok/s ` +
    `(${(byteSum / 1e6).toFixed(0)} MB/token at ${(bw / 1e9).toFixed(1)} GB/s) → ${((100 * tokS) / rooflineTokS).toFixed(0)}% of it`);
  console.log(`results: ${writeResults(`decode-${weights}`, `cpu-${i.cpu.isa}`, {
    bench: 'decode', date: new Date().toISOString(), model: dir, layers: c.numLayers, weights, kvCache, promptLen, steps,
    threads: i.cpu.threads, isa: i.cpu.isa, readBandwidth: bw, tokS, profiledTokS: prof.tokS, rooflineTokS,
    byteModel: 'weights read once per token + latent cache; see scripts/bench/decode.ts', rows,
  })}`);
  await model.dispose();
}
