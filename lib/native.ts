/**
 * Loads the native addon and types its raw binding exactly. Nothing here validates
 * arguments: the public API in ops/ does, and the addon checks again in C++.
 *
 * Load order: the file named by `DSV2_ADDON` if set; else node-gyp-build, which takes
 * build/Release/dsv2.node (a local cmake-js build, with CUDA when nvcc was present) and
 * falls back to prebuilds/<platform>-<arch>/dsv2.node.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error } from './errors';
import type { YarnConfig } from './ops/rope';
import { PACKAGE_ROOT } from './paths';

/** A tensor as the addon sees it: host data in a typed array. */
export interface RawTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Uint16Array | Uint8Array | Int32Array | BigInt64Array | Int8Array;
  device?: 'cpu' | 'cuda';
}

export type RawImpl = 'auto' | 'reference' | 'fast';
export type RawDevice = 'cpu' | 'cuda';

/** YaRN settings as the addon reads them (the public YarnConfig). */
export type RawYarn = YarnConfig;

export interface RawBuildInfo {
  version: string;
  cuda: boolean;
  cudaArchs: string;
  threads: number;
  cpuIsa: 'avx512' | 'avx2' | 'scalar';
  compiler: string;
}

export interface RawCudaDevice {
  index: number;
  name: string;
  computeCapability: string;
  totalMemory: number;
  freeMemory: number;
  multiprocessors: number;
  kernelOk: boolean;
  kernelError: string | null;
}

export interface RawCudaInfo {
  compiled: boolean;
  archs: string;
  runtimeVersion: number;
  driverVersion: number;
  unavailable: string | null;
  devices: RawCudaDevice[];
}

/** The native KvCache object (native/addon/kv_cache_binding.cc). */
export interface RawKvCache {
  stats(): { bytesPerToken: number; pageBytes: number; bytes: number; pagesFree: number; pagesUsed: number };
  allocPages(n: number): Int32Array;
  freePages(ids: Int32Array): void;
  append(layer: number, cKv: RawTensor, kPe: RawTensor, slots: RawTensor, impl?: RawImpl): Promise<void>;
  read(layer: number, slots: RawTensor, impl?: RawImpl): Promise<[RawTensor, RawTensor]>;
  readRawPage(layer: number, page: number): Uint8Array;
  poison(): Promise<void>;
  dispose(): void;
}

export interface RawKvCacheOptions {
  layers: number;
  pages: number;
  dC: number;
  dR: number;
  dtype: 'f32' | 'bf16' | 'fp8';
  pageSize: number;
  pow2Scales: boolean;
  device: 'cpu' | 'cuda';
}

/** Options of the native model engine (native/addon/engine_binding.cc). */
export interface RawEngineOptions {
  device: 'cpu' | 'cuda';
  dims: Record<string, number | string | boolean | boolean[]>;
  cache: RawKvCache;
  maxTokens: number;
  maxSeqs: number;
  maxSeqlen: number;
  /** 8-bit linear weights (Engine::set_weight_quantization). */
  weights?: 'i8' | 'fp8_e4m3';
}

export interface RawEngineStep {
  tokens: Int32Array;
  positions: Int32Array;
  slots: Int32Array;
  seqlens: Int32Array;
  cuQ: Int32Array;
  blockTable: Int32Array;
  maxBlocks: number;
  decode: boolean;
  logits: 'none' | 'last' | 'all';
  sample?: { temperature: number; topK: number; topP: number; seeds: BigUint64Array };
}

export interface RawEngine {
  /** With first/rows: t holds rows [first, first + t.shape[0]) of a weight whose dim 0 is rows. */
  setWeight(layer: number, name: string, t: RawTensor, first?: number, rows?: number): Promise<void>;
  setRope(cos: RawTensor, sin: RawTensor): Promise<void>;
  randomWeights(seed: number, dtype: 'bf16' | 'f32'): Promise<void>;
  step(input: RawEngineStep): Promise<{ logits: Float32Array | null; tokens: Int32Array | null }>;
  memory(): { weights: number; cache: number; workspace: number; device: string; graphs: { captured: number; failed: number; launches: number } };
  setProfiling(on: boolean): void;
  profile(reset: boolean): { op: string; calls: number; seconds: number }[];
  dispose(): void;
}

export interface RawMoeRouteOptions {
  topK: number;
  method: string;
  scoring: string;
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  device: 'cpu' | 'cuda';
}

/** The addon's exports (native/addon/*_binding.cc), argument for argument. */
export interface Binding {
  embedding(ids: RawTensor, table: RawTensor, impl?: RawImpl, device?: RawDevice): Promise<RawTensor>;
  rmsNorm(x: RawTensor, weight: RawTensor, eps: number, impl?: RawImpl, device?: RawDevice): Promise<RawTensor>;
  ropeTable(opts: { dim: number; maxPositions: number; theta: number; yarn?: RawYarn | null }): Promise<[RawTensor, RawTensor]>;
  rope(x: RawTensor, positions: RawTensor, cos: RawTensor, sin: RawTensor, interleaved: boolean, impl?: RawImpl, device?: RawDevice): Promise<RawTensor>;
  siluMul(gate: RawTensor, up: RawTensor | null, impl?: RawImpl, device?: RawDevice): Promise<RawTensor>;
  gemm(x: RawTensor, weight: RawTensor, impl?: RawImpl, device?: 'cpu' | 'cuda', scale?: RawTensor): Promise<RawTensor>;
  quantizeWeight(weight: RawTensor, dtype: string): Promise<[RawTensor, RawTensor]>;
  benchGemmCuda(x: RawTensor, weight: RawTensor, iters: number, scale?: RawTensor): Promise<{ ms: number; kernel: string }>;
  softmax(x: RawTensor, scale: number, impl?: RawImpl, device?: RawDevice): Promise<RawTensor>;
  sample(logits: RawTensor, opts: { temperature: number; topK: number; topP: number; seed: bigint; device?: 'cpu' | 'cuda' }, impl?: RawImpl): Promise<RawTensor>;
  cast(x: RawTensor, dtype: string, impl?: RawImpl): Promise<RawTensor>;
  copyBandwidth(bytes: number, iters: number, read?: boolean): Promise<number>;
  KvCache: new (opts: RawKvCacheOptions) => RawKvCache;
  Engine: new (opts: RawEngineOptions) => RawEngine;
  planEngineMemory(opts: Omit<RawEngineOptions, 'cache'> & { cache: { dC: number; dR: number; pageSize: number; dtype: string } }): number;
  headsGemm(x: RawTensor, weight: RawTensor, impl?: RawImpl): Promise<RawTensor>;
  mlaDecode(q: RawTensor, cache: RawKvCache, layer: number, blockTable: RawTensor, seqlens: RawTensor, scale: number,
    splitTokens: number, impl?: RawImpl): Promise<[RawTensor, RawTensor]>;
  mlaPrefill(q: RawTensor, cache: RawKvCache, layer: number, blockTable: RawTensor, seqlens: RawTensor,
    cuSeqlensQ: RawTensor, kvB: RawTensor, scale: number, dNope: number, dV: number, impl?: RawImpl): Promise<RawTensor>;
  fp8Quantize(x: RawTensor, granularity: string, tileSize: number, pow2Scale: boolean, impl?: RawImpl,
    scales?: RawTensor | null): Promise<[RawTensor, RawTensor]>;
  fp8Dequantize(codes: RawTensor, scales: RawTensor, granularity: string, tileSize: number, impl?: RawImpl): Promise<RawTensor>;
  moeRoute(logits: RawTensor, opts: RawMoeRouteOptions, bias: RawTensor | null, impl?: RawImpl): Promise<[RawTensor, RawTensor, RawTensor, RawTensor]>;
  benchMlaDecodeCuda(q: RawTensor, cache: RawKvCache, layer: number, blockTable: RawTensor, seqlens: RawTensor, scale: number,
    splitTokens: number, iters: number): Promise<{ ms: number; items: number; kernel: string }>;
  benchMlaPrefillCuda(q: RawTensor, cache: RawKvCache, layer: number, blockTable: RawTensor, seqlens: RawTensor,
    cuSeqlensQ: RawTensor, kvB: RawTensor, scale: number, dNope: number, dV: number, iters: number,
    gemmSize: number): Promise<{ ms: number; attendMs: number; gemmMs: number; kernel: string; gemmKernel: string }>;
  cudaCopyBandwidth(bytes: number, iters: number): Promise<number>;
  benchMoeRouteCuda(logits: RawTensor, opts: RawMoeRouteOptions & { unfused?: boolean }, bias: RawTensor | null,
    iters: number): Promise<{ us: number; kernel: string }>;
  benchMoeExpertsCuda(shape: { t: number; hidden: number; inter: number; nExperts: number; topK: number; interShared: number;
    seed: number; fp8?: boolean; i8?: boolean }, iters: number): Promise<{ ms: number; kernel: string; expertsHit: number; weightBytes: number; flops: number;
    gemmMs: number; gemmKernel: string; gemmFlops: number }>;
  moeExperts(x: RawTensor, ids: RawTensor, weights: RawTensor, gateUp: RawTensor, down: RawTensor,
    sharedGateUp: RawTensor | null, sharedDown: RawTensor | null, impl?: RawImpl, device?: 'cpu' | 'cuda',
    gateUpScale?: RawTensor | null, downScale?: RawTensor | null): Promise<RawTensor>;
  buildInfo(): RawBuildInfo;
  cudaInfo(): Promise<RawCudaInfo>;
  /** Rejects with E_CUDA from a deliberately invalid launch (tests of the error path). */
  cudaTestError(): Promise<void>;
}


let cached: { binding: Binding; path: string } | undefined;

function candidates(): string[] {
  const plat = `${process.platform}-${process.arch}`;
  return [
    path.join(PACKAGE_ROOT, 'build', 'Release', 'dsv2.node'),
    path.join(PACKAGE_ROOT, 'build', 'Debug', 'dsv2.node'),
    path.join(PACKAGE_ROOT, 'prebuilds', plat, 'dsv2.node'),
    path.join(PACKAGE_ROOT, 'prebuilds', plat, 'node.napi.node'),
  ];
}

/** Loads (once) and returns the addon and the file it came from. */
export function loadAddon(): { binding: Binding; path: string } {
  if (cached) return cached;
  const override = process.env.DSV2_ADDON;
  const tried: string[] = [];
  let cause: unknown;
  if (override) {
    tried.push(`${override} (DSV2_ADDON)`);
    try {
      cached = { binding: require(path.resolve(override)) as Binding, path: path.resolve(override) };
      return cached;
    } catch (e) {
      cause = e;
    }
  } else {
    try {
      // node-gyp-build resolves build/ first, then prebuilds/ for this platform and ABI.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const nodeGypBuild = require('node-gyp-build') as { (dir: string): Binding; resolve(dir: string): string };
      const file = nodeGypBuild.resolve(PACKAGE_ROOT);
      cached = { binding: require(file) as Binding, path: file };
      return cached;
    } catch (e) {
      cause = e;
      for (const c of candidates()) tried.push(`${c}${fs.existsSync(c) ? ' (exists, failed to load)' : ' (missing)'}`);
    }
  }
  const reason = cause instanceof Error ? cause.message : String(cause);
  throw new Dsv2Error(
    'E_LOAD',
    [
      `dsv2: could not load the native addon for ${process.platform}-${process.arch}, node ${process.version}.`,
      `Reason: ${reason}`,
      'Tried:',
      ...tried.map((t) => `  - ${t}`),
      'Possible solutions:',
      `  - Build it from source: (cd ${PACKAGE_ROOT} && npm run build:native)  (needs cmake >= 3.20 and a C++17 compiler; nvcc adds CUDA)`,
      '  - Reinstall the package so its install script builds it: npm rebuild dsv2',
      '  - Point DSV2_ADDON at a dsv2.node built elsewhere.',
    ].join('\n'),
    { cause },
  );
}

/** The typed raw binding (loads the addon on first use). */
export function binding(): Binding {
  return loadAddon().binding;
}
