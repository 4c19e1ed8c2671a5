/** `dsv2 bench e2e`: whole-model speed with random weights made on the device (lib/bench-e2e.ts). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { benchE2e, type E2eResult } from '../bench-e2e';
import { Dsv2Error } from '../errors';
import { info } from '../info';
import { PRESET_NAMES } from '../model/presets';
import { choiceOpt, intOpt, log } from './common';

function listOpt(name: string) {
  return (v: string): number[] => {
    const xs = v.split(',').map((s) => Number(s.trim()));
    if (xs.length === 0 || xs.some((x) => !Number.isSafeInteger(x) || x < 1)) throw new Dsv2Error('E_ARG', `${name} '${v}' must be a comma-separated list of positive integers`);
    return xs;
  };
}

export function formatE2e(r: E2eResult): string {
  const lines = [
    `e2e ${r.config} (${r.layers} layers) on ${r.deviceName}, ${r.kvCache} cache; copy bandwidth ${(r.copyBandwidth / 1e9).toFixed(1)} GB/s; ` +
      `weights ${(r.memory.weights / 2 ** 30).toFixed(2)} GiB, cache ${(r.memory.cache / 2 ** 30).toFixed(2)} GiB, workspace ${(r.memory.workspace / 2 ** 30).toFixed(2)} GiB`,
    'phase    size        ms      tok/s     GB/s  %roofline  TFLOP/s',
  ];
  for (const x of r.rows) {
    lines.push(`${x.phase.padEnd(8)} ${String(x.size).padStart(5)} ${x.ms.toFixed(3).padStart(9)} ${x.tokensPerS.toFixed(1).padStart(10)} ` +
      `${(x.gbPerS?.toFixed(1) ?? '-').padStart(8)} ${(x.pctRoofline?.toFixed(1) ?? '-').padStart(10)} ${(x.tflops?.toFixed(2) ?? '-').padStart(8)}`);
  }
  return lines.join('\n');
}

export function benchCommands(program: Command): void {
  const bench = program.command('bench').description('benchmarks');
  bench
    .command('e2e')
    .description('prefill and decode speed of a whole model with random weights made on the device (no checkpoint)')
    .option('--config <name>', `model shape: ${[...PRESET_NAMES, 'tiny'].join(', ')}`, choiceOpt('--config', [...PRESET_NAMES, 'tiny'] as const), 'v2-lite')
    .option('--layers <n>', 'keep only the first n layers (full V2 does not fit one GPU)', intOpt('--layers', 1))
    .option('--random-weights', 'random weights generated on the device (required: checkpoint benchmarks are `npm run bench -- e2e`)')
    .option('--device <device>', 'auto, cpu or cuda', choiceOpt('--device', ['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--kv-cache <dtype>', 'bf16 or fp8', choiceOpt('--kv-cache', ['bf16', 'fp8'] as const), 'bf16')
    .option('--prefill <lengths>', 'prompt lengths timed', listOpt('--prefill'), [1024, 4096])
    .option('--batch <sizes>', 'decode batch sizes timed', listOpt('--batch'), [1, 8, 64])
    .option('--context <n>', 'tokens cached per sequence before decode is timed', intOpt('--context', 1), 512)
    .option('--decode-steps <n>', 'decode steps timed per batch size', intOpt('--decode-steps', 1), 32)
    .option('--seed <n>', 'seed of the random weights', intOpt('--seed'), 1)
    .option('--out <file>', 'also write the JSON result to this file')
    .option('--json', 'print one JSON object on stdout')
    .action(async (o) => {
      if (!o.randomWeights) throw new Dsv2Error('E_ARG', 'bench e2e needs --random-weights (the weights are made on the device; no checkpoint is read)');
      const i = await info();
      const device = o.device === 'auto' ? (i.cuda.usable ? 'cuda' : 'cpu') : o.device;
      const r = await benchE2e({
        config: o.config, layers: o.layers, device, kvCache: o.kvCache, prefill: o.prefill, batch: o.batch,
        context: o.context, decodeSteps: o.decodeSteps, seed: o.seed, onLog: log,
      });
      const doc = { ...r, date: new Date().toISOString(), version: i.version };
      if (o.out) {
        fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
        fs.writeFileSync(o.out, `${JSON.stringify(doc, null, 2)}\n`);
        log(`wrote ${o.out}`);
      }
      process.stdout.write(o.json ? `${JSON.stringify(doc, null, 2)}\n` : `${formatE2e(r)}\n`);
    });
}
