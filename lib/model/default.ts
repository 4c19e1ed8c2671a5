/**
 * The built-in default model: `models/kjv-demo`, shipped in the package — a small model with
 * every structural feature of DeepSeek-V2 (MLA with q-LoRA and decoupled RoPE + YaRN, a dense
 * first layer, DeepSeekMoE with 2 shared + 16 routed experts under device-limited routing),
 * trained on the King James Bible by scripts/train-demo/. It writes KJV-style English.
 * The random-weight tiny models stay available from `dsv2 make-tiny` / tinyModelDir().
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Dsv2Error } from '../errors';
import { PACKAGE_ROOT } from '../paths';
import { makeTiny } from './tiny';

function log(msg: string): void {
  process.stderr.write(`dsv2: ${msg}\n`);
}

/** The trained demo model's directory (in the package). */
export const DEMO_MODEL_DIR = path.join(PACKAGE_ROOT, 'models', 'kjv-demo');

/** Where made-once files live: $DSV2_CACHE_DIR, else $XDG_CACHE_HOME/dsv2, else ~/.cache/dsv2. */
export function cacheDir(): string {
  return process.env.DSV2_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'dsv2');
}

/**
 * The built-in default model's directory (what every command uses without --model): the
 * trained demo model shipped in the package. `quiet` skips the stderr line.
 */
export async function defaultModelDir(opts: { quiet?: boolean } = {}): Promise<string> {
  if (!fs.existsSync(path.join(DEMO_MODEL_DIR, 'config.json'))) {
    throw new Dsv2Error('E_CHECKPOINT', `the built-in demo model is missing from this installation (${DEMO_MODEL_DIR}); reinstall dsv2 or pass --model`);
  }
  if (!opts.quiet) log(`using the built-in demo model (DeepSeek-V2 architecture, 5.7 M parameters, trained on the King James Bible): ${DEMO_MODEL_DIR}`);
  return DEMO_MODEL_DIR;
}

/** A small V2-shaped model with RANDOM weights, made once and cached in cacheDir() (tests, smoke runs). */
export async function tinyModelDir(opts: { quiet?: boolean } = {}): Promise<string> {
  const dir = path.join(cacheDir(), 'default-v2-tiny');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    if (!opts.quiet) log(`creating a tiny DeepSeek-V2-shaped model with RANDOM weights in ${dir}`);
    const tmp = `${dir}.tmp-${process.pid}`;
    await makeTiny(tmp, { kind: 'v2', seed: 0 });
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    try {
      fs.renameSync(tmp, dir);
    } catch {
      fs.rmSync(tmp, { recursive: true, force: true }); // another process made it first
    }
  }
  return dir;
}
