/**
 * Whether CUDA kernels can run here, probed synchronously (jest needs it when it collects
 * tests). GPU suites use it to skip with the reason in their title, visibly.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');

function probe(): { usable: boolean; reason: string; device: string; emulated: boolean } {
  // The addon lib/native.ts loads: DSV2_ADDON when set (e.g. the emulated device's build-emu addon).
  const code = `(process.env.DSV2_ADDON ? require(process.env.DSV2_ADDON) : require('node-gyp-build')(${JSON.stringify(ROOT)})).cudaInfo().then((i) => console.log(JSON.stringify(i)))`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  try {
    const i = JSON.parse(r.stdout) as { unavailable: string | null; emulated?: boolean; devices: { name: string }[] };
    return { usable: i.unavailable === null, reason: i.unavailable ?? '', device: i.devices[0]?.name ?? '', emulated: i.emulated === true };
  } catch {
    return { usable: false, reason: `the CUDA probe failed: ${r.stderr.trim().split('\n')[0]}`, device: '', emulated: false };
  }
}

export const CUDA = probe();

/** A suite title that says why it is skipped when CUDA is not usable. */
export function gpuTitle(title: string): string {
  return CUDA.usable ? `${title} [${CUDA.device}]` : `${title} [SKIPPED: no usable CUDA device — ${CUDA.reason}]`;
}

export const gpuDescribe: jest.Describe = CUDA.usable ? describe : describe.skip;

/**
 * The emulated device (the DSV2_CUDA_EMULATOR addon, `npm run test:cuda-emu`) runs every thread of a
 * grid on a CPU core: cases whose real grid is too big for CI take a smaller shape there. `scaled`
 * picks the shape; a scaled case says so in its name with EMU_TAG, and each suite's header lists them.
 */
export const EMULATED = CUDA.usable && CUDA.emulated;
export function scaled<T>(real: T, emulated: T): T {
  return EMULATED ? emulated : real;
}
export const EMU_TAG = EMULATED ? ' (scaled for the emulated device)' : '';
