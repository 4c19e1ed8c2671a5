/**
 * dsv2: DeepSeek-V2 inference for Node.js.
 *
 *   import { Tensor, ops, info } from 'dsv2';
 *   const y = await ops.gemm(x, w);
 */
export { Dsv2Error, ERROR_CODES, type Dsv2ErrorCode } from './errors';
export { Tensor, DTYPES, DTYPE_SIZE, type DType, type Device, type HostData } from './tensor';
export * as ops from './ops';
export { info, type Info } from './info';
export { KvCache, type KvCacheOptions, type KvCacheDtype } from './kv-cache';
export { copyBandwidth } from './bench';
export { Model, type ModelLoadOptions, type WeightFormat, type GenerateOptions, type GenerateChunk, type GenerateResult, type Generation,
  type DeviceChoice } from './model/model';
export { NativeEngine, type EngineLimits, type EngineMemory, type EngineSampling, type EngineSeq, type OpTime } from './model/engine';
export { Tokenizer, type ChatMessage } from './model/tokenizer';
export { Checkpoint } from './model/checkpoint';
export { parseConfig, type DeepSeekConfig } from './model/config';
export { defaultModelDir, tinyModelDir, cacheDir, DEMO_MODEL_DIR } from './model/default';
export { PrefixCache, type PrefixCacheStats } from './model/prefix-cache';
export { ChatSession, type ChatSendOptions } from './model/chat';
export { perplexity, type PerplexityOptions, type PerplexityResult } from './model/perplexity';
export { makeTiny, TINY_KINDS, type TinyKind, type MakeTinyOptions } from './model/tiny';
export { SafetensorsFile, writeSafetensors } from './model/safetensors';
