/**
 * A Hugging Face checkpoint directory: config.json, model.safetensors or shards listed in
 * model.safetensors.index.json, tokenizer.json (+ tokenizer_config.json). Opens every shard,
 * checks its header, and maps tensor names to files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error } from '../errors';
import { parseConfig, type DeepSeekConfig } from './config';
import { SafetensorsFile, type TensorEntry } from './safetensors';

function exists(p: string): boolean {
  return fs.existsSync(p);
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Why a read failed, in words: the errno code's meaning where it has a common one. */
function ioReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EISDIR') return 'is a directory';
  if (code === 'EACCES') return 'permission denied';
  return (e as Error).message;
}

function show(v: unknown): string {
  const s = typeof v === 'number' ? String(v) : JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

export class Checkpoint {
  readonly dir: string;
  readonly config: DeepSeekConfig;
  readonly files: readonly SafetensorsFile[];
  readonly entries: ReadonlyMap<string, TensorEntry>;
  #byName: Map<string, SafetensorsFile>;

  private constructor(dir: string, config: DeepSeekConfig, files: SafetensorsFile[]) {
    this.dir = dir;
    this.config = config;
    this.files = files;
    this.#byName = new Map();
    const entries = new Map<string, TensorEntry>();
    for (const f of files) {
      for (const [name, e] of f.entries) {
        const prev = this.#byName.get(name);
        if (prev) throw new Dsv2Error('E_CHECKPOINT', `tensor ${name} appears in both ${path.basename(prev.file)} and ${path.basename(f.file)}`);
        this.#byName.set(name, f);
        entries.set(name, e);
      }
    }
    this.entries = entries;
  }

  /**
   * Reads and parses `dir/config.json` (or a config.json file given directly): E_CHECKPOINT
   * naming the path when it is missing, unreadable, not UTF-8 JSON, or has an invalid value.
   */
  static readConfig(dirOrFile: string): DeepSeekConfig {
    const file = isDir(dirOrFile) ? path.join(dirOrFile, 'config.json') : dirOrFile;
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `${file}: cannot read config.json (${ioReason(e)})`, { cause: e });
    }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `${file}: not valid UTF-8`, { cause: e });
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    try {
      return parseConfig(raw as Record<string, unknown>);
    } catch (e) {
      // parseConfig's messages begin "config.json: "; name the whole path instead.
      if (e instanceof Dsv2Error) throw new Dsv2Error(e.code, `${file}: ${e.message.replace(/^config\.json: /, '')}`, { cause: e });
      throw e;
    }
  }

  static async open(dir: string): Promise<Checkpoint> {
    if (!isDir(dir)) {
      throw new Dsv2Error('E_CHECKPOINT', `${dir}: not a checkpoint directory (${exists(dir) ? 'not a directory' : 'no such directory'})`);
    }
    const config = Checkpoint.readConfig(dir);
    const index = path.join(dir, 'model.safetensors.index.json');
    let names: string[];
    let weightMap: Record<string, string> | null = null;
    if (exists(index)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(fs.readFileSync(index, 'utf8'));
      } catch (e) {
        throw new Dsv2Error('E_CHECKPOINT', `${index}: not a valid index (${ioReason(e)})`, { cause: e });
      }
      const map = isObject(parsed) ? parsed.weight_map : undefined;
      if (!isObject(parsed)) throw new Dsv2Error('E_CHECKPOINT', `${index}: ${show(parsed)} is not an index object {"weight_map": {...}}`);
      if (map === undefined || map === null) throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map is missing`);
      if (!isObject(map)) throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map = ${show(map)} must be an object {tensor name: shard file}`);
      for (const [t, n] of Object.entries(map)) {
        if (typeof n !== 'string' || n.includes('/') || n.includes('\\') || n === '..' || !n.endsWith('.safetensors')) {
          throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map names ${show(n)} for tensor ${t}, not a .safetensors file in the checkpoint directory`);
        }
      }
      weightMap = map as Record<string, string>;
      names = [...new Set(Object.values(weightMap))].sort();
      if (names.length === 0) throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map names no shard`);
      for (const n of names) {
        const f = path.join(dir, n);
        if (!exists(f)) throw new Dsv2Error('E_CHECKPOINT', `${f}: shard named in model.safetensors.index.json does not exist`);
      }
    } else if (exists(path.join(dir, 'model.safetensors'))) {
      names = ['model.safetensors'];
    } else {
      let all: string[];
      try {
        all = fs.readdirSync(dir);
      } catch (e) {
        throw new Dsv2Error('E_CHECKPOINT', `${dir}: cannot list the directory (${ioReason(e)})`, { cause: e });
      }
      names = all.filter((f) => f.endsWith('.safetensors')).sort();
      if (names.length === 0) throw new Dsv2Error('E_CHECKPOINT', `${dir}: no model.safetensors, index or *.safetensors file`);
    }
    const files: SafetensorsFile[] = [];
    try {
      for (const n of names) files.push(await SafetensorsFile.open(path.join(dir, n)));
      const ck = new Checkpoint(dir, config, files);
      if (weightMap) {
        for (const [t, n] of Object.entries(weightMap)) {
          const e = ck.entries.get(t);
          if (!e || path.basename(e.file) !== n) {
            throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map puts tensor ${t} in ${n}, but ${e ? `it is in ${path.basename(e.file)}` : 'no shard holds it'}`);
          }
        }
      }
      return ck;
    } catch (e) {
      await Promise.all(files.map((f) => f.close()));
      throw e;
    }
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** Reads a tensor; E_CHECKPOINT when it is absent. */
  async read(name: string) {
    const f = this.#byName.get(name);
    if (!f) throw new Dsv2Error('E_CHECKPOINT', `${this.dir}: tensor ${name} is missing`);
    return f.read(name);
  }

  /** Reads a tensor's bytes into `dst` (exactly its size); E_CHECKPOINT when it is absent. */
  async readInto(name: string, dst: Uint8Array, onChunk?: (bytes: number) => void): Promise<void> {
    const f = this.#byName.get(name);
    if (!f) throw new Dsv2Error('E_CHECKPOINT', `${this.dir}: tensor ${name} is missing`);
    return f.readInto(name, dst, onChunk);
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}
