/**
 * Our own safetensors reader and writer (format: an 8-byte little-endian header length N,
 * N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
 * then the data; offsets are relative to the end of the header).
 *
 * Written by hand rather than taken from a library because the checks are the point: the
 * header length is bounded, every tensor's byte range lies inside the file, matches
 * dtype × shape and overlaps no other; each failure is an E_CHECKPOINT naming the file, the
 * tensor and the values that disagree. Reads are asynchronous (the event loop stays live).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error } from '../errors';
import { Tensor, type DType } from '../tensor';

/** Safetensors dtypes dsv2 reads, and the dsv2 dtype each becomes. */
export const ST_DTYPES: Readonly<Record<string, { dtype: DType; size: number }>> = {
  F32: { dtype: 'f32', size: 4 },
  BF16: { dtype: 'bf16', size: 2 },
  F16: { dtype: 'f16', size: 2 },
  F8_E4M3: { dtype: 'fp8_e4m3', size: 1 },
  I32: { dtype: 'i32', size: 4 },
  I64: { dtype: 'i64', size: 8 },
};

const ST_NAME: Record<DType, string> = { f32: 'F32', bf16: 'BF16', f16: 'F16', fp8_e4m3: 'F8_E4M3', i32: 'I32', i64: 'I64' };

/** Largest header accepted (the biggest published DeepSeek shards have ~100 KB headers). */
export const MAX_HEADER_BYTES = 64 * 2 ** 20;

export interface TensorEntry {
  name: string;
  /** Safetensors dtype string, e.g. "BF16". */
  stDtype: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
  file: string;
}

function fail(file: string, msg: string): never {
  throw new Dsv2Error('E_CHECKPOINT', `${path.basename(file)}: ${msg}`);
}

/** One .safetensors file: its validated header; tensors are read on demand. */
export class SafetensorsFile {
  readonly file: string;
  readonly size: number;
  readonly metadata: Record<string, string>;
  readonly entries: ReadonlyMap<string, TensorEntry>;
  #fh: fs.promises.FileHandle | null;

  private constructor(file: string, size: number, metadata: Record<string, string>, entries: Map<string, TensorEntry>,
    fh: fs.promises.FileHandle) {
    this.file = file;
    this.size = size;
    this.metadata = metadata;
    this.entries = entries;
    this.#fh = fh;
  }

  static async open(file: string): Promise<SafetensorsFile> {
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(file, 'r');
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `${file}: cannot open (${(e as Error).message})`, { cause: e });
    }
    try {
      const size = (await fh.stat()).size;
      if (size < 8) fail(file, `file is ${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      await fh.read(lenBuf, 0, 8, 0);
      const n = lenBuf.readBigUInt64LE(0);
      if (n > BigInt(MAX_HEADER_BYTES)) fail(file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
      const headerLen = Number(n);
      if (8 + headerLen > size) fail(file, `header length ${headerLen} runs past the end of the ${size}-byte file`);
      const hb = Buffer.alloc(headerLen);
      await fh.read(hb, 0, headerLen, 8);
      let header: Record<string, unknown>;
      try {
        header = JSON.parse(hb.toString('utf8')) as Record<string, unknown>;
      } catch (e) {
        fail(file, `header is not valid JSON (${(e as Error).message})`);
      }
      if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(file, 'header is not a JSON object');
      const dataStart = 8 + headerLen;
      const dataLen = size - dataStart;
      const entries = new Map<string, TensorEntry>();
      let metadata: Record<string, string> = {};
      for (const [name, v] of Object.entries(header)) {
        if (name === '__metadata__') {
          metadata = (v ?? {}) as Record<string, string>;
          continue;
        }
        const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        const st = ST_DTYPES[String(e?.dtype)];
        if (!st) fail(file, `tensor ${name}: dtype ${JSON.stringify(e?.dtype)} is not supported (${Object.keys(ST_DTYPES).join(', ')})`);
        if (!Array.isArray(e.shape) || e.shape.length > 8 || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
          fail(file, `tensor ${name}: shape ${JSON.stringify(e.shape)} is not a list of at most 8 non-negative integers`);
        }
        const off = e.data_offsets;
        if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0]) {
          fail(file, `tensor ${name}: data_offsets ${JSON.stringify(off)} must be [begin, end] with 0 <= begin <= end`);
        }
        const shape = e.shape as number[];
        const numel = shape.reduce((a, b) => a * b, 1);
        const want = numel * st.size;
        if (off[1] - off[0] !== want) {
          fail(file, `tensor ${name}: data_offsets [${off[0]}, ${off[1]}] hold ${off[1] - off[0]} bytes but ${e.dtype} [${shape.join(', ')}] needs ${want}`);
        }
        if (off[1] > dataLen) fail(file, `tensor ${name}: data_offsets end ${off[1]} is past the ${dataLen} data bytes of the file`);
        entries.set(name, { name, stDtype: String(e.dtype), dtype: st.dtype, shape, begin: dataStart + off[0], end: dataStart + off[1], file });
      }
      const sorted = [...entries.values()].sort((a, b) => a.begin - b.begin);
      for (let i = 1; i < sorted.length; i++) {
        if (sorted[i].begin < sorted[i - 1].end) {
          fail(file, `tensors ${sorted[i - 1].name} [${sorted[i - 1].begin - dataStart}, ${sorted[i - 1].end - dataStart}) and ${sorted[i].name} [${sorted[i].begin - dataStart}, ${sorted[i].end - dataStart}) overlap`);
        }
      }
      return new SafetensorsFile(file, size, metadata, entries, fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Reads one tensor into a new host Tensor (its own aligned buffer). */
  async read(name: string): Promise<Tensor> {
    const e = this.entries.get(name);
    if (!e) fail(this.file, `no tensor named ${name}`);
    if (!this.#fh) throw new Dsv2Error('E_DISPOSED', `${this.file}: the file was closed`);
    const bytes = e.end - e.begin;
    const t = Tensor.zeros(e.shape, e.dtype);
    const view = new Uint8Array(t.data.buffer, t.data.byteOffset, bytes);
    let done = 0;
    while (done < bytes) {
      const { bytesRead } = await this.#fh.read(view, done, bytes - done, e.begin + done);
      if (bytesRead === 0) fail(this.file, `tensor ${name}: file ended after ${done} of ${bytes} bytes`);
      done += bytesRead;
    }
    return t;
  }

  async close(): Promise<void> {
    const fh = this.#fh;
    this.#fh = null;
    await fh?.close();
  }
}

/** Writes tensors (in the given order) as one safetensors file. */
export async function writeSafetensors(file: string, tensors: Record<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: ST_NAME[t.dtype], shape: t.shape, data_offsets: [offset, offset + t.nbytes] };
    offset += t.nbytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // keep the data 8-byte aligned, as the reference writer does
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fh = await fs.promises.open(file, 'w');
  try {
    await fh.write(len);
    await fh.write(Buffer.from(json, 'utf8'));
    for (const t of Object.values(tensors)) await fh.write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.nbytes));
  } finally {
    await fh.close();
  }
}
