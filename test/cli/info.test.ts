/**
 * `dsv2 info`: the CLI contract (clean JSON on stdout, help everywhere, exit codes) and what
 * it must say on this machine: CUDA compiled in (nvcc is present wherever CI runs) but no
 * device, with the reason.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from './run';

const ROOT = path.resolve(__dirname, '../..');
const BIN = path.join(ROOT, 'dist/lib/cli/main.js');
const hasNvcc = spawnSync('sh', ['-c', 'command -v nvcc'], { stdio: 'ignore' }).status === 0;
const hasGpu = spawnSync('sh', ['-c', 'nvidia-smi -L'], { stdio: 'ignore' }).status === 0;


describe('dsv2 info', () => {
  test('--json prints one parseable object and nothing else on stdout', async () => {
    const r = await run(['info', '--json']);
    expect(r.code).toBe(0);
    const i = JSON.parse(r.out);
    expect(i.version).toBe(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
    expect(fs.existsSync(i.addon)).toBe(true);
    expect(i.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(['avx512', 'avx2', 'scalar']).toContain(i.cpu.isa);
    expect(Array.isArray(i.cuda.devices)).toBe(true);
  });

  (hasNvcc ? test : test.skip)('says CUDA is compiled in (nvcc is on PATH here)', async () => {
    const i = JSON.parse((await run(['info', '--json'])).out);
    expect(i.cuda.compiled).toBe(true);
    expect(i.cuda.archs).toEqual(expect.arrayContaining(['80-real', '90a-real', '90-virtual']));
    expect(i.cuda.runtime).toMatch(/^\d+\.\d+$/);
  });

  (hasGpu ? test.skip : test)('with no GPU: no device, CUDA not in use, and a reason', async () => {
    const i = JSON.parse((await run(['info', '--json'])).out);
    expect(i.cuda.devices).toEqual([]);
    expect(i.cuda.usable).toBe(false);
    expect(typeof i.cuda.reason).toBe('string');
    expect(i.cuda.reason.length).toBeGreaterThan(10);
  });

  test('human output names the build and the reason CUDA is not used', async () => {
    const r = await run(['info']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^dsv2 \d+\.\d+\.\d+/);
    expect(r.out).toMatch(/cuda in use {2}(yes|no: .+)/);
  });

  test('--help everywhere; unknown commands exit 2 with usage on stderr', async () => {
    for (const argv of [['--help'], ['info', '--help'], ['help', 'info']]) {
      const r = await run(argv);
      expect(r.code).toBe(0);
      expect(r.out).toContain('Usage: dsv2');
    }
    const bad = await run(['no-such-command']);
    expect(bad.code).toBe(2);
    expect(bad.out).toBe('');
    expect(bad.err).toContain("unknown command 'no-such-command'");
  });
});

// The installed bin (dist/, built by `npm ci`'s prepare step): the shebang and wiring work.
(fs.existsSync(BIN) ? describe : describe.skip)('the dsv2 bin (dist/)', () => {
  test('dsv2 info --json from a child process', () => {
    const r = spawnSync(process.execPath, [BIN, 'info', '--json'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).cuda.compiled).toBe(hasNvcc);
  });
});

describe('dsv2 info --model (memory accounting from the headers)', () => {
  const os = require('node:os') as typeof import('node:os');
  const dir = path.join(os.tmpdir(), `dsv2-info-model-${process.pid}`);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('parameters, bytes and KV per token agree with the files and config.json', async () => {
    const { makeTiny } = require('../../lib') as typeof import('../../lib');
    await makeTiny(dir, { kind: 'v2', seed: 2 });
    const r = await run(['info', '--model', dir, '--json']);
    expect(r.code).toBe(0);
    const m = JSON.parse(r.out).model;
    // Independently: sum the header's shapes and byte ranges.
    const buf = fs.readFileSync(path.join(dir, 'model.safetensors'));
    const header = JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString('utf8'));
    delete header.__metadata__;
    let params = 0;
    let bytes = 0;
    for (const e of Object.values(header) as { shape: number[]; data_offsets: [number, number] }[]) {
      params += e.shape.reduce((a, b) => a * b, 1);
      bytes += e.data_offsets[1] - e.data_offsets[0];
    }
    expect(m.params).toBe(params);
    expect(m.diskBytes).toBe(bytes);
    expect(m.loadedBytes).toBe(bytes); // bf16 checkpoint: loaded as stored
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const dc = cfg.kv_lora_rank;
    const dr = cfg.qk_rope_head_dim;
    expect(m.kvCache.bf16.bytesPerTokenPerLayer).toBe(2 * (dc + dr));
    expect(m.kvCache.fp8.bytesPerTokenPerLayer).toBe(dc + 4 * Math.ceil(dc / 128) + 2 * dr);
    expect(m.kvCache.fp8.bytesPerToken).toBe(m.kvCache.fp8.bytesPerTokenPerLayer * cfg.num_hidden_layers);
    expect(m.activeParams).toBeLessThan(m.params); // 6 of 160 experts per MoE layer
    const human = await run(['info', '--model', dir]);
    expect(human.out).toMatch(/kv cache {5}per token: bf16 \d+ B/);
  });

  test('the runtime accounting equals what the engine allocates (cpu engine; --max-tokens, --kv-cache)', async () => {
    const { Model } = require('../../lib') as typeof import('../../lib');
    for (const [maxTokens, kv] of [[4096, 'bf16'], [300, 'fp8']] as const) {
      const r = await run(['info', '--model', dir, '--json', '--device', 'cpu', '--max-tokens', String(maxTokens), '--kv-cache', kv]);
      expect(r.code).toBe(0);
      const rt = JSON.parse(r.out).model.runtime;
      const m = await Model.load(dir, { device: 'cpu', maxTokens, kvCache: kv });
      try {
        const got = m.memory()!;
        expect({ weights: rt.weights, cache: rt.cache, workspace: rt.workspace }).toEqual({ weights: got.weights, cache: got.cache, workspace: got.workspace });
        expect(rt.total).toBe(got.weights + got.cache + got.workspace);
        expect(rt).toMatchObject({ device: 'cpu', kvCache: kv, maxTokens });
      } finally {
        await m.dispose();
      }
    }
    const human = await run(['info', '--model', dir, '--device', 'cpu']);
    expect(human.out).toMatch(/runtime {6}cpu engine, bf16 weights, bf16 cache of 4096 tokens: [\d.]+ MiB = weights/);
    expect((await run(['info', '--model', dir, '--kv-cache', 'int4'])).code).toBe(1);
  });
});
