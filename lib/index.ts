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
