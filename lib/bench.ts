/** Measurement helpers shared by the benchmark scripts and `dsv2 info`. */
import { native } from './errors';
import { binding } from './native';

/**
 * This machine's copy bandwidth in bytes/s: a multi-threaded memcpy of `bytes` (default
 * 256 MiB, far beyond the caches), best of `iters`. Counts read + write traffic (2 × bytes),
 * the convention STREAM's Copy uses.
 */
export async function copyBandwidth(bytes = 256 * 2 ** 20, iters = 5): Promise<number> {
  const seconds = await native(binding().copyBandwidth(bytes, iters));
  return (2 * bytes) / seconds;
}

/**
 * This machine's read bandwidth in bytes/s: every thread sums its share of `bytes` (default
 * 1 GiB), best of `iters` — the roofline of a decode step, which streams its weights once.
 */
export async function readBandwidth(bytes = 1024 * 2 ** 20, iters = 5): Promise<number> {
  const seconds = await native(binding().copyBandwidth(bytes, iters, true));
  return bytes / seconds;
}

/** The GPU's device-to-device copy bandwidth in bytes/s (read + write), the decode roofline. */
export async function cudaCopyBandwidth(bytes = 1024 * 2 ** 20, iters = 20): Promise<number> {
  return native(binding().cudaCopyBandwidth(bytes, iters));
}
