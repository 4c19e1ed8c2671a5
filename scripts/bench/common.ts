/**
 * Benchmark plumbing: timing, the machine's measured roofline, result tables and JSON.
 * Benchmarks report physics (time, bytes, FLOPs, % of measured bandwidth); they never
 * assert — tests check correctness.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { copyBandwidth } from '../../lib/bench';
import { info } from '../../lib/info';
import { PACKAGE_ROOT } from '../../lib/paths';

export interface Timing {
  /** Median seconds per call. */
  median: number;
  /** Fastest call, seconds. */
  min: number;
  iters: number;
}

/** Times `fn` after one warm-up call: at least `minIters` calls and about `budgetS` seconds. */
export async function time(fn: () => Promise<unknown>, budgetS = 0.5, minIters = 5): Promise<Timing> {
  await fn();
  const samples: number[] = [];
  const start = process.hrtime.bigint();
  while (samples.length < minIters || Number(process.hrtime.bigint() - start) / 1e9 < budgetS) {
    const t0 = process.hrtime.bigint();
    await fn();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e9);
    if (samples.length >= 1000) break;
  }
  samples.sort((a, b) => a - b);
  return { median: samples[Math.floor(samples.length / 2)], min: samples[0], iters: samples.length };
}

export interface Machine {
  host: string;
  cpu: string;
  threads: number;
  isa: string;
  /** Copy bandwidth measured in this run, bytes/s (read + write). */
  copyBandwidth: number;
}

export async function machine(): Promise<Machine> {
  const i = await info();
  const bw = await copyBandwidth(512 * 2 ** 20, 5);
  return { host: os.hostname(), cpu: os.cpus()[0]?.model ?? 'unknown', threads: i.cpu.threads, isa: i.cpu.isa, copyBandwidth: bw };
}

/** Prints rows as an aligned table on stdout. */
export function table(rows: Record<string, string | number>[]): void {
  if (rows.length === 0) return;
  const cols = Object.keys(rows[0]);
  const cell = (v: string | number) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 3 : 1)) : v);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padStart(width[i])).join('  ');
  console.log(line(cols));
  for (const r of rows) console.log(line(cols.map((c) => cell(r[c]))));
}

/** Writes bench/results/<name>-<device>-<date>.json and returns its path. */
export function writeResults(name: string, device: string, payload: unknown): string {
  const dir = path.join(PACKAGE_ROOT, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const slug = device.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  const file = path.join(dir, `${name}-${slug}-${date}.json`);
  fs.writeFileSync(file, `${JSON.stringify(payload, null, 2)}\n`);
  return file;
}

/** Deterministic uniform values in [-scale, scale) (an LCG: fast, and the same on every run). */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return a;
}
