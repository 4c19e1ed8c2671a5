/**
 * Our own safetensors reader and writer (format: an 8-byte little-endian header length N,
 * N bytes of UTF-8 JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`
 * beginning with `{` and possibly padded with trailing spaces, then the data; offsets are
 * relative to the end of the header).
 *
 * Written by hand rather than taken from a library because the checks are the point: the
 * header length is bounded, the header is UTF-8 JSON with unique names, `__metadata__` maps
 * strings to strings, every dtype is a supported string, every tensor's byte range matches
 * dtype × shape, and — the format's own rule — the tensors' bytes fill the data section
 * exactly: contiguous, in offset order, the first at offset 0 and the last ending at the end
 * of the file (zero-size tensors take no bytes and may sit at any offset in it). So a header
 * length off by its padding, bytes appended, gaps and overlaps are all refused; each failure
 * is an E_CHECKPOINT naming the file, the tensor and the values that disagree. Reads are
 * asynchronous (the event loop stays live).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error, showValue as show } from '../errors';
import { Tensor, type DType } from '../tensor';

/** Safetensors dtypes dsv2 reads, and the dsv2 dtype each becomes. */
export const ST_DTYPES: Readonly<Record<string, { dtype: DType; size: number }>> = {
  F32: { dtype: 'f32', size: 4 },
  BF16: { dtype: 'bf16', size: 2 },
  F16: { dtype: 'f16', size: 2 },
  F8_E4M3: { dtype: 'fp8_e4m3', size: 1 },
  I32: { dtype: 'i32', size: 4 },
  I64: { dtype: 'i64', size: 8 },
  I8: { dtype: 'i8', size: 1 },
};

const ST_NAME: Record<DType, string> = { f32: 'F32', bf16: 'BF16', f16: 'F16', fp8_e4m3: 'F8_E4M3', i32: 'I32', i64: 'I64', i8: 'I8' };

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


/**
 * The keys of the top-level object of `text`, in order, duplicates included (JSON.parse keeps
 * the last of duplicate keys silently: two entries for one tensor name). `text` must already
 * have parsed as a JSON object.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) { // a string: find its end
      let j = i + 1;
      while (j < text.length && text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c ? 2 : 1;
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(i, j + 1)) as string);
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b || c === 0x5b) { // { [
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === 0x7d || c === 0x5d) { // } ]
      depth--;
    } else if (c === 0x2c && depth === 1) { // , between members
      expectKey = true;
    }
  }
  return keys;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parses and checks a header (`hb`, the N header bytes) against `dataLen` data bytes; offsets in the result are absolute. */
function parseHeader(file: string, hb: Uint8Array, dataLen: number): { metadata: Record<string, string>; entries: Map<string, TensorEntry> } {
  const headerLen = hb.length;
  const dataStart = 8 + headerLen;
  let text: string;
  try {
    text = utf8.decode(hb);
  } catch {
    fail(file, `header (${headerLen} bytes) is not valid UTF-8`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    fail(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(file, `header is not a JSON object but ${show(header)}`);
  if (hb[0] !== 0x7b) fail(file, `header begins with byte 0x${hb[0].toString(16).padStart(2, '0')}, not '{' (padding may only follow the JSON)`);
  const h = header as Record<string, unknown>;
  const keys = topLevelKeys(text);
  if (keys.length !== Object.keys(h).length) {
    const seen = new Set<string>();
    const dup = keys.find((k) => (seen.has(k) ? true : (seen.add(k), false)));
    fail(file, `${dup === '__metadata__' ? 'key' : 'tensor'} ${JSON.stringify(dup)} appears more than once in the header (JSON.parse would keep the last silently)`);
  }
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(h)) {
    if (name === '__metadata__') {
      if (v === null) continue; // the reference reader takes null as no metadata
      if (typeof v !== 'object' || Array.isArray(v)) fail(file, `__metadata__ = ${show(v)} must be an object of strings`);
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
        if (typeof x !== 'string') fail(file, `__metadata__.${k} = ${show(x)} must be a string`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(file, `tensor ${name}: entry ${show(v)} must be an object {dtype, shape, data_offsets}`);
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e.dtype !== 'string') fail(file, `tensor ${name}: dtype ${show(e.dtype)} must be a string (${Object.keys(ST_DTYPES).join(', ')})`);
    const st = Object.hasOwn(ST_DTYPES, e.dtype) ? ST_DTYPES[e.dtype] : undefined;
    if (!st) fail(file, `tensor ${name}: dtype ${JSON.stringify(e.dtype)} is not supported (${Object.keys(ST_DTYPES).join(', ')})`);
    if (!Array.isArray(e.shape) || e.shape.length > 8 || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(file, `tensor ${name}: shape ${show(e.shape)} is not a list of at most 8 non-negative integers`);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0]) {
      fail(file, `tensor ${name}: data_offsets ${show(off)} must be [begin, end] with 0 <= begin <= end`);
    }
    const shape = e.shape as number[];
    // In BigInt: a product of safe integers need not be one.
    const want = shape.reduce((a, b) => a * BigInt(b), BigInt(st.size));
    if (BigInt(off[1] - off[0]) !== want) {
      fail(file, `tensor ${name}: data_offsets [${off[0]}, ${off[1]}] hold ${off[1] - off[0]} bytes but ${e.dtype} [${shape.join(', ')}] needs ${want}`);
    }
    if (off[1] > dataLen) fail(file, `tensor ${name}: data_offsets end ${off[1]} is past the ${dataLen} data bytes of the file`);
    entries.set(name, { name, stDtype: e.dtype, dtype: st.dtype, shape, begin: dataStart + off[0], end: dataStart + off[1], file });
  }
  // The layout: the non-empty tensors fill [0, dataLen) exactly, in offset order. Overlaps are
  // reported first (the more specific fault), then gaps and bytes left over.
  const rel = (x: number) => x - dataStart;
  const sorted = [...entries.values()].filter((x) => x.end > x.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    const [a, b] = [sorted[i - 1], sorted[i]];
    if (b.begin < a.end) fail(file, `tensors ${a.name} [${rel(a.begin)}, ${rel(a.end)}) and ${b.name} [${rel(b.begin)}, ${rel(b.end)}) overlap`);
  }
  let at = 0;
  let prev: TensorEntry | null = null;
  for (const x of sorted) {
    if (rel(x.begin) > at) {
      fail(file, `data bytes [${at}, ${rel(x.begin)}) ${prev ? `between tensors ${prev.name} and ${x.name}` : `before the first tensor ${x.name}`} ` +
        'belong to no tensor (the tensors must fill the data section contiguously from offset 0)');
    }
    at = rel(x.end);
    prev = x;
  }
  if (at !== dataLen) {
    fail(file, `${dataLen - at} bytes follow ${prev ? `the last tensor ${prev.name} (data_offsets end ${at})` : 'a header of no non-empty tensor'}: ` +
      `the data section is ${dataLen} bytes (file size − 8 − header length ${headerLen}) and must end where the last tensor ends ` +
      '(a wrong header length, or bytes appended)');
  }
  return { metadata, entries };
}

/** Reads buf.length bytes at `pos` (E_CHECKPOINT when the file ends first). */
async function readFully(fh: fs.promises.FileHandle, buf: Uint8Array, pos: number, file: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, pos + done);
    if (bytesRead === 0) fail(file, `file ended after ${pos + done} bytes, reading ${buf.length} at ${pos}`);
    done += bytesRead;
  }
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
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not a safetensors file' : (e as Error).message;
      throw new Dsv2Error('E_CHECKPOINT', `${file}: cannot open (${why})`, { cause: e });
    }
    try {
      const stat = await fh.stat();
      if (stat.isDirectory()) throw new Dsv2Error('E_CHECKPOINT', `${file}: is a directory, not a safetensors file`);
      if (!stat.isFile()) throw new Dsv2Error('E_CHECKPOINT', `${file}: is not a regular file`);
      const size = stat.size;
      if (size < 8) fail(file, `file is ${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      await readFully(fh, lenBuf, 0, file);
      const n = lenBuf.readBigUInt64LE(0);
      if (n > BigInt(MAX_HEADER_BYTES)) fail(file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
      const headerLen = Number(n);
      if (8 + headerLen > size) fail(file, `header length ${headerLen} runs past the end of the ${size}-byte file`);
      const hb = Buffer.alloc(headerLen);
      await readFully(fh, hb, 8, file);
      const { metadata, entries } = parseHeader(file, hb, size - 8 - headerLen);
      return new SafetensorsFile(file, size, metadata, entries, fh);
    } catch (e) {
      await fh.close().catch(() => {});
      if (e instanceof Dsv2Error) throw e;
      throw new Dsv2Error('E_CHECKPOINT', `${file}: cannot read (${(e as Error).message})`, { cause: e });
    }
  }

  /**
   * Reads one tensor's bytes into `dst` (exactly its size): the stacked buffers of a layer's
   * experts are filled in place, with no copy on the JS thread.
   */
  async readInto(name: string, dst: Uint8Array, onChunk?: (bytes: number) => void): Promise<void> {
    const e = this.entries.get(name);
    if (!e) fail(this.file, `no tensor named ${name}`);
    if (!this.#fh) throw new Dsv2Error('E_DISPOSED', `${this.file}: the file was closed`);
    if (dst.byteLength !== e.end - e.begin) {
      throw new Dsv2Error('E_INTERNAL', `${this.file}: tensor ${name} is ${e.end - e.begin} bytes, the destination ${dst.byteLength}`);
    }
    let done = 0;
    while (done < dst.byteLength) {
      // In chunks of ≤ 16 MiB, so that progress moves within big tensors.
      const { bytesRead } = await this.#fh.read(dst, done, Math.min(dst.byteLength - done, 16 * 2 ** 20), e.begin + done);
      if (bytesRead === 0) fail(this.file, `tensor ${name}: file ended after ${done} of ${dst.byteLength} bytes`);
      done += bytesRead;
      onChunk?.(bytesRead);
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
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8); // keep the data 8-byte aligned, as the reference writer does (in bytes: names may be non-ASCII)
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
