/** The built-in default model: where it lives, and making it on first use. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeTiny } from './tiny';

function log(msg: string): void {
  process.stderr.write(`dsv2: ${msg}\n`);
}

/** Where the built-in default model lives: $DSV2_CACHE_DIR, else $XDG_CACHE_HOME/dsv2, else ~/.cache/dsv2. */
export function cacheDir(): string {
  return process.env.DSV2_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'dsv2');
}

/**
 * The built-in default model's directory (what the CLI uses without --model): a small V2-shaped
 * model with random weights, made once and cached in cacheDir(). `quiet` skips the stderr line.
 */
export async function defaultModelDir(opts: { quiet?: boolean } = {}): Promise<string> {
  const dir = path.join(cacheDir(), 'default-v2-tiny');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    if (!opts.quiet) log(`creating the built-in default model (a tiny DeepSeek-V2-shaped model with RANDOM weights) in ${dir}`);
    const tmp = `${dir}.tmp-${process.pid}`;
    await makeTiny(tmp, { kind: 'v2', seed: 0 });
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    try {
      fs.renameSync(tmp, dir);
    } catch {
      fs.rmSync(tmp, { recursive: true, force: true }); // another process made it first
    }
  } else {
    if (!opts.quiet) log(`using the built-in default model (tiny, RANDOM weights) in ${dir}`);
  }
  return dir;
}

