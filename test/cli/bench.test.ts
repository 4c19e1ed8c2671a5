/**
 * `dsv2 bench e2e --random-weights` on the CPU with the tiny shape: the command runs end to
 * end, its JSON has every row asked for with positive, consistent numbers, and bad usage is
 * an error. (Speed itself is measured by running the command, never asserted here.)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from './run';

describe('dsv2 bench e2e', () => {
  const out = path.join(os.tmpdir(), `dsv2-bench-${process.pid}.json`);
  afterAll(() => fs.rmSync(out, { force: true }));

  test('tiny shape on the cpu: a row per prompt length and batch size, JSON to --out too', async () => {
    const r = await run(['bench', 'e2e', '--config', 'tiny', '--random-weights', '--device', 'cpu', '--prefill', '16,33',
      '--batch', '1,3', '--context', '9', '--decode-steps', '3', '--json', '--out', out]);
    expect([r.code, r.err.split('\n').filter((l) => /E_/.test(l))]).toEqual([0, []]);
    const doc = JSON.parse(r.out);
    expect(JSON.parse(fs.readFileSync(out, 'utf8')).rows).toEqual(doc.rows);
    expect(doc).toMatchObject({ config: 'tiny', layers: 2, device: 'cpu', kvCache: 'bf16' });
    expect(doc.rows.map((x: { phase: string; size: number }) => `${x.phase} ${x.size}`)).toEqual(['prefill 16', 'prefill 33', 'decode 1', 'decode 3']);
    for (const x of doc.rows) {
      expect(x.ms).toBeGreaterThan(0);
      expect(x.tokensPerS).toBeCloseTo((x.phase === 'prefill' ? x.size : x.size) / (x.ms / 1e3), 3);
      if (x.phase === 'decode') expect(x.pctRoofline).toBeCloseTo((100 * x.gbPerS * 1e9) / doc.copyBandwidth, 6);
    }
    expect(doc.memory.weights).toBeGreaterThan(0);
  });

  test('--layers slices the model; bad usage is an error', async () => {
    const r = await run(['bench', 'e2e', '--config', 'tiny', '--layers', '1', '--random-weights', '--device', 'cpu', '--prefill', '8',
      '--batch', '2', '--context', '4', '--decode-steps', '2', '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).layers).toBe(1);
    expect((await run(['bench', 'e2e', '--config', 'tiny', '--device', 'cpu'])).err).toMatch(/needs --random-weights/);
    expect((await run(['bench', 'e2e', '--config', 'tiny', '--layers', '9', '--random-weights', '--device', 'cpu'])).err).toMatch(/E_RANGE: layers = 9/);
    expect((await run(['bench', 'e2e', '--config', 'v4', '--random-weights'])).code).toBe(2);
  });
});
