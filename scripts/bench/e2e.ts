/**
 * End-to-end CPU benchmark: prefill and decode tokens/s of whole models with random weights.
 *
 * Models: the built-in tiny V2 model, and DeepSeek-V2-Lite's published config cut to its
 * first 2 layers (1 dense + 1 MoE; the real vocabulary and widths) so it fits in memory —
 * written once to the dsv2 cache directory.
 * Roofline of a decode step: the weight bytes one token touches (embedding row, every
 * attention and dense weight, the router, the top-k routed experts and the shared experts of
 * each MoE layer, the final norm and lm_head) plus the KV cache it reads, over the copy
 * bandwidth measured in the same run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cacheDir } from '../../lib/cli/common';
import type { DeepSeekConfig } from '../../lib/model/config';
import { Model } from '../../lib/model/model';
import { makeTiny, writeRandomCheckpoint } from '../../lib/model/tiny';
import { expectedTensors } from '../../lib/model/weights';
import { PACKAGE_ROOT } from '../../lib/paths';
import { machine, table, writeResults } from './common';

/** Bytes of weights one decode token reads (bf16 = 2 bytes per parameter). */
export function decodeWeightBytes(c: DeepSeekConfig, bytesPerParam = 2): number {
  let params = 0;
  for (const [name, shape] of expectedTensors(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (name === 'model.embed_tokens.weight') params += c.hiddenSize; // one row
    else if (/\.mlp\.experts\.\d+\./.test(name)) params += (n * c.numExpertsPerTok) / (c.nRoutedExperts as number);
    else params += n;
  }
  return params * bytesPerParam;
}

async function ensureModel(name: string, make: (dir: string) => Promise<void>): Promise<string> {
  const dir = path.join(cacheDir(), 'bench', name);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    console.error(`e2e: writing the ${name} random-weight checkpoint to ${dir} (once)`);
    await make(`${dir}.tmp`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(`${dir}.tmp`, dir);
  }
  return dir;
}

export async function benchE2e(opts: { quick?: boolean } = {}): Promise<void> {
  const m = await machine();
  console.log(`e2e on ${m.cpu}, ${m.threads} threads; copy bandwidth ${(m.copyBandwidth / 1e9).toFixed(1)} GB/s`);
  const models: { name: string; dir: string }[] = [
    { name: 'tiny-v2', dir: await ensureModel('tiny-v2', (d) => makeTiny(d, { kind: 'v2', seed: 0 })) },
  ];
  if (!opts.quick) {
    const lite = JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, '..', 'shared', 'configs', 'deepseek-v2-lite.json'), 'utf8'));
    models.push({ name: 'v2-lite-2layers', dir: await ensureModel('v2-lite-2layers', (d) => writeRandomCheckpoint(d, { ...lite, num_hidden_layers: 2 })) });
  }
  const rows: Record<string, string | number>[] = [];
  for (const { name, dir } of models) {
    const model = await Model.load(dir, { maxTokens: 1024, kvCache: 'bf16' });
    const c = model.config;
    const prompt = Array.from({ length: opts.quick ? 64 : 256 }, (_, i) => (i * 7919 + 1) % Math.min(c.vocabSize, 256));
    const decodeTokens = opts.quick ? 8 : 32;
    // warm-up
    await model.generate({ tokens: prompt.slice(0, 8), maxNewTokens: 2 }).result;
    let t0 = process.hrtime.bigint();
    await model.logits(prompt, { mode: 'prefill' });
    const prefillS = Number(process.hrtime.bigint() - t0) / 1e9;
    t0 = process.hrtime.bigint();
    const r = await model.generate({ tokens: prompt.slice(0, 16), maxNewTokens: decodeTokens }).result;
    const genS = Number(process.hrtime.bigint() - t0) / 1e9;
    // generate = one 16-token prefill + (n - 1) decode steps; take the prefill out at the measured rate.
    const decodeS = Math.max(1e-9, genS - (prefillS * 16) / prompt.length);
    const steps = Math.max(1, r.tokens.length - 1);
    const wBytes = decodeWeightBytes(c);
    const kvBytes = (16 + steps / 2) * model.cache.bytesPerToken * c.numLayers;
    const rooflineTokS = m.copyBandwidth / (wBytes + kvBytes);
    const decodeTokS = steps / decodeS;
    rows.push({
      model: name, layers: c.numLayers, 'weights MB/token': wBytes / 1e6, 'prefill tok': prompt.length,
      'prefill tok/s': prompt.length / prefillS, 'decode tok/s': decodeTokS, 'roofline tok/s': rooflineTokS,
      '%roofline': (100 * decodeTokS) / rooflineTokS,
    });
    await model.dispose();
  }
  table(rows);
  console.log(`results: ${writeResults('e2e-cpu', m.cpu, {
    bench: 'e2e', date: new Date().toISOString(), machine: m,
    model: { roofline: 'copy bandwidth / (decode weight bytes + KV bytes read) per token', weights: 'bf16 random' }, rows,
  })}`);
}
