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

  /** Reads and parses `dir/config.json` (E_CHECKPOINT when missing or malformed). */
  static readConfig(dirOrFile: string): DeepSeekConfig {
    const file = fs.existsSync(dirOrFile) && fs.statSync(dirOrFile).isDirectory() ? path.join(dirOrFile, 'config.json') : dirOrFile;
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `${file}: cannot read config.json (${(e as Error).message})`, { cause: e });
    }
    try {
      return parseConfig(JSON.parse(text) as Record<string, unknown>);
    } catch (e) {
      if (e instanceof Dsv2Error) throw e;
      throw new Dsv2Error('E_CHECKPOINT', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
  }

  static async open(dir: string): Promise<Checkpoint> {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
      throw new Dsv2Error('E_CHECKPOINT', `${dir}: not a checkpoint directory`);
    }
    const config = Checkpoint.readConfig(dir);
    const index = path.join(dir, 'model.safetensors.index.json');
    let names: string[];
    if (fs.existsSync(index)) {
      let map: Record<string, string>;
      try {
        map = (JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
      } catch (e) {
        throw new Dsv2Error('E_CHECKPOINT', `${index}: not a valid index (${(e as Error).message})`, { cause: e });
      }
      if (!map || typeof map !== 'object') throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map is missing`);
      names = [...new Set(Object.values(map))].sort();
      for (const n of names) {
        if (typeof n !== 'string' || n.includes('/') || n.includes('\\') || n === '..' || !n.endsWith('.safetensors')) {
          throw new Dsv2Error('E_CHECKPOINT', `${index}: weight_map names ${JSON.stringify(n)}, not a .safetensors file in the checkpoint directory`);
        }
      }
    } else if (fs.existsSync(path.join(dir, 'model.safetensors'))) {
      names = ['model.safetensors'];
    } else {
      names = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
      if (names.length === 0) throw new Dsv2Error('E_CHECKPOINT', `${dir}: no model.safetensors, index or *.safetensors file`);
    }
    const files: SafetensorsFile[] = [];
    try {
      for (const n of names) files.push(await SafetensorsFile.open(path.join(dir, n)));
      return new Checkpoint(dir, config, files);
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

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}
