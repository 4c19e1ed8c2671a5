/**
 * The emulated CUDA device (native/emu, issue 12) as the package sees it: its own unit tests
 * (build-emu/dsv2_emu_test: PTX instruction semantics from the ISA tables, barriers, warp
 * operations, divergence and deadlock detection, runtime limits, graphs), `dsv2 info` saying
 * plainly that the device is emulated, and a kernel fault surfacing as a coded error.
 * Runs under `npm run test:cuda-emu` (DSV2_ADDON = the emulator build); skipped with the reason
 * in the title elsewhere.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { formatInfo } from '../../lib/cli/info';
import { info } from '../../lib/info';
import { binding } from '../../lib/native';
import { CUDA, EMULATED } from '../gpu/cuda';

const ROOT = path.resolve(__dirname, '../..');
const emuDescribe: jest.Describe = EMULATED ? describe : describe.skip;
const title = EMULATED ? 'emulated CUDA device' : `emulated CUDA device [SKIPPED: DSV2_ADDON is not the emulator build — ${CUDA.reason || CUDA.device || 'run npm run test:cuda-emu'}]`;

emuDescribe(title, () => {
  test('the emulator unit tests pass (PTX ISA tables, barriers, warp ops, runtime, graphs)', () => {
    const exe = path.join(ROOT, 'build-emu', 'dsv2_emu_test');
    expect(fs.existsSync(exe)).toBe(true);
    const r = spawnSync(exe, [], { encoding: 'utf8' });
    expect(r.stdout).toMatch(/emulator unit tests: \d+ checks, 0 failed/);
    expect(r.status).toBe(0);
  });

  test('the tests also pass with another fiber order (DSV2_EMU_SEED)', () => {
    const exe = path.join(ROOT, 'build-emu', 'dsv2_emu_test');
    const r = spawnSync(exe, [], { encoding: 'utf8', env: { ...process.env, DSV2_EMU_SEED: '12345' } });
    expect(r.status).toBe(0);
  });

  test('dsv2 info says plainly that the device is emulated', async () => {
    const i = await info();
    expect(i.cuda.usable).toBe(true);
    expect(i.cuda.archs.join(' ')).toContain('emulated');
    expect(i.cuda.devices[0].name).toMatch(/emulated/);
    expect(i.cuda.devices[0].multiprocessors).toBe(132);
    expect(i.cuda.devices[0].computeCapability).toBe('9.0');
    expect(formatInfo(i)).toMatch(/device 0 +dsv2 emulated CUDA device/);
    const raw = await binding().cudaInfo() as unknown as { emulated: boolean };
    expect(raw.emulated).toBe(true);
  });

  test('a bad launch configuration is a coded, recoverable error (E_CUDA)', async () => {
    await expect(binding().cudaTestError()).rejects.toMatchObject({ code: 'E_CUDA', message: expect.stringMatching(/cudaErrorInvalidConfiguration/) });
  });
});
