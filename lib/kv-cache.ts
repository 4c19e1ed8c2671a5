/**
 * The paged latent KV cache of MLA: for every layer, pages of `pageSize` tokens, each token
 * holding `[c_kv (dC) ; k_pe (dR)]` after kv_a_layernorm and RoPE — the only per-token
 * attention state DeepSeek-V2 keeps (576 numbers at V2 size).
 *
 * Token byte layout (memory is [layer][page][token in page][bytesPerToken]):
 * - `f32`: dC f32 of c_kv, then dR f32 of k_pe — 4·(dC + dR) bytes.
 * - `bf16`: the same in bf16, rounded to nearest even — 2·(dC + dR) bytes.
 * - `fp8`: dC bytes of e4m3 codes of c_kv; then ceil(dC / 128) little-endian f32 scales, one
 *   per 128-element tile of c_kv (the last tile may be shorter); then dR bf16 of k_pe, not
 *   quantized. At dC = 512, dR = 64 this is FlashMLA's 656-byte token: 512 fp8 bytes, 4 f32
 *   scales, 64 bf16. Tile scale = amax / 448 over the tile's finite |values| (rounded up to a
 *   power of two with `pow2Scales`), 1 for an all-zero tile; code = e4m3 of x / scale (round
 *   to nearest even, saturating at ±448, NaN → 0x7F); it reads back as decode(code) · scale.
 *
 * A sequence's token t lives in page `blockTable[t / pageSize]` at offset `t % pageSize`; its
 * slot (what append/read take) is `page · pageSize + offset`.
 */
import { Dsv2Error, fromNative, native } from './errors';
import { binding, type RawKvCache } from './native';
import { tensorArg, implArg, type OpOptions } from './ops/args';
import { Tensor } from './tensor';

export type KvCacheDtype = 'f32' | 'bf16' | 'fp8';

export interface KvCacheOptions {
  /** Layers (config.json num_hidden_layers, or a slice). */
  layers: number;
  /** Pages per layer; every layer shares one page allocator and block table. */
  pages: number;
  /** Latent dims, config.json kv_lora_rank (512 in V2). */
  dC: number;
  /** Decoupled RoPE key dims, config.json qk_rope_head_dim (64 in V2). */
  dR: number;
  /** Storage of c_kv and k_pe; default bf16. */
  dtype?: KvCacheDtype;
  /** Tokens per page; default 64. */
  pageSize?: number;
  /** fp8: round tile scales up to a power of two (exact rescaling); default false. */
  pow2Scales?: boolean;
  /**
   * Where the pages live: host memory (default) or GPU memory. With `cuda`, append/read/
   * poison and mlaDecode run CUDA kernels (inputs and outputs stay host tensors, copied per
   * call); mlaPrefill on a cuda cache is E_UNSUPPORTED for now. E_UNSUPPORTED when CUDA is
   * not usable here (the message says why).
   */
  device?: 'cpu' | 'cuda';
}

export class KvCache {
  readonly layers: number;
  readonly pages: number;
  readonly pageSize: number;
  readonly dC: number;
  readonly dR: number;
  readonly dtype: KvCacheDtype;
  readonly pow2Scales: boolean;
  readonly device: 'cpu' | 'cuda';
  /** Bytes of one token of one layer (656 for fp8 at V2 dims, 1152 for bf16). */
  readonly bytesPerToken: number;
  /** Bytes of the whole cache: layers · pages · pageSize · bytesPerToken. */
  readonly bytes: number;
  #raw: RawKvCache | null;

  private constructor(raw: RawKvCache, o: Required<KvCacheOptions>) {
    this.#raw = raw;
    this.layers = o.layers;
    this.pages = o.pages;
    this.pageSize = o.pageSize;
    this.dC = o.dC;
    this.dR = o.dR;
    this.dtype = o.dtype;
    this.pow2Scales = o.pow2Scales;
    this.device = o.device;
    const s = raw.stats();
    this.bytesPerToken = s.bytesPerToken;
    this.bytes = s.bytes;
  }

  /** Allocates the cache (zero-filled). Bad sizes: E_RANGE / E_DTYPE; no memory: E_OOM. */
  static async create(opts: KvCacheOptions): Promise<KvCache> {
    const o: Required<KvCacheOptions> = {
      layers: opts?.layers, pages: opts?.pages, dC: opts?.dC, dR: opts?.dR,
      dtype: opts?.dtype ?? 'bf16', pageSize: opts?.pageSize ?? 64, pow2Scales: opts?.pow2Scales ?? false,
      device: opts?.device ?? 'cpu',
    };
    for (const k of ['layers', 'pages', 'dC', 'dR', 'pageSize'] as const) {
      if (typeof o[k] !== 'number') throw new Dsv2Error('E_ARG', `${k} must be a number, got ${typeof o[k]}`);
    }
    let raw: RawKvCache;
    try {
      raw = new (binding().KvCache)(o);
    } catch (e) {
      throw fromNative(e);
    }
    return new KvCache(raw, o);
  }

  /** @internal The native object, for the ops; E_DISPOSED after dispose(). */
  raw(name = 'cache'): RawKvCache {
    if (!this.#raw) throw new Dsv2Error('E_DISPOSED', `${name}: the KV cache was disposed`);
    return this.#raw;
  }

  get disposed(): boolean {
    return this.#raw === null;
  }

  get pagesFree(): number {
    return this.#call((r) => r.stats().pagesFree);
  }

  get pagesUsed(): number {
    return this.#call((r) => r.stats().pagesUsed);
  }

  /** Bytes one token occupies across all layers. */
  get bytesPerTokenAllLayers(): number {
    return this.bytesPerToken * this.layers;
  }

  /** Takes `n` free pages (lowest ids first). Not enough free: E_OOM with the numbers. */
  allocPages(n: number): Int32Array {
    return this.#call((r) => r.allocPages(n));
  }

  /** Returns pages to the pool. A page that is not allocated: E_RANGE (nothing is freed). */
  freePages(ids: Int32Array | readonly number[]): void {
    if (!(ids instanceof Int32Array)) {
      // Int32Array.from would wrap ids outside ±2^31 silently (2^32 + 1 would free page 1).
      ids.forEach((v, i) => {
        if (!Number.isSafeInteger(v) || v < 0 || v >= this.pages) {
          throw new Dsv2Error('E_RANGE', `ids[${i}] = ${v} is not a page of this cache [0, ${this.pages})`);
        }
      });
    }
    const arr = ids instanceof Int32Array ? ids : Int32Array.from(ids);
    this.#call((r) => r.freePages(arr));
  }

  /**
   * Writes tokens of one layer into their slots, quantizing in the same pass for fp8.
   * @param cKv f32 [T, dC]  @param kPe f32 [T, dR]  @param slots i32 | i64 [T], each in [0, pages·pageSize).
   */
  async append(layer: number, cKv: Tensor, kPe: Tensor, slots: Tensor, opts?: OpOptions): Promise<void> {
    const r = this.raw();
    await native(r.append(layer, tensorArg(cKv, 'cKv'), tensorArg(kPe, 'kPe'), tensorArg(slots, 'slots'), implArg(opts)));
  }

  /** Reads tokens back as f32 (dequantized): `{cKv: [T, dC], kPe: [T, dR]}`. */
  async read(layer: number, slots: Tensor, opts?: OpOptions): Promise<{ cKv: Tensor; kPe: Tensor }> {
    const r = this.raw();
    const [cKv, kPe] = await native(r.read(layer, tensorArg(slots, 'slots'), implArg(opts)));
    return { cKv: Tensor.fromRaw(cKv), kPe: Tensor.fromRaw(kPe) };
  }

  /** A copy of one page's bytes (pageSize · bytesPerToken), in the layout described above. */
  readRawPage(layer: number, page: number): Uint8Array {
    return this.#call((r) => r.readRawPage(layer, page));
  }

  /** Fills every page of every layer with NaN encodings (a testing aid: unread memory stays NaN). */
  async poison(): Promise<void> {
    await native(this.raw().poison());
  }

  /** Frees the memory (once in-flight ops finish). Idempotent. */
  dispose(): void {
    this.#raw?.dispose();
    this.#raw = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #call<T>(fn: (r: RawKvCache) => T): T {
    const r = this.raw();
    try {
      return fn(r);
    } catch (e) {
      throw fromNative(e);
    }
  }
}
