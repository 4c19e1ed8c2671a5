/**
 * Typed arrays from another JS realm. Under jest (a vm context per test file) and in
 * vm/worker setups, the typed arrays the native addon returns are made by the main realm's
 * constructors, so `x instanceof Float32Array` is false in the test's realm although x is a
 * Float32Array. Tensors must accept them (and so every op result must be constructible).
 */
import * as vm from 'node:vm';
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { f32 } from './util';

describe('typed arrays from another realm', () => {
  test.each([
    ['f32', 'new Float32Array([1, 2, 3])'],
    ['bf16', 'new Uint16Array([0x3f80, 0x4000, 0x4040])'],
    ['f16', 'new Uint16Array([0x3c00, 0x4000, 0x4200])'],
    ['i32', 'new Int32Array([1, 2, 3])'],
    ['i64', 'new BigInt64Array([1n, 2n, 3n])'],
  ] as const)('Tensor(%s) accepts %s made in a new vm context', (dtype, src) => {
    const data: unknown = vm.runInNewContext(src);
    // really foreign: not an instance of this realm's constructors
    expect([Float32Array, Uint16Array, Int32Array, BigInt64Array].some((C) => data instanceof C)).toBe(false);
    const t = new Tensor(dtype, [3], data as Float32Array);
    expect(t.numel).toBe(3);
  });

  test('a foreign array of the wrong kind is still E_DTYPE', () => {
    const data = vm.runInNewContext('new Float64Array(3)') as Float32Array;
    expect(() => new Tensor('f32', [3], data)).toThrow(expect.objectContaining({ code: 'E_DTYPE' }) as unknown as Error);
  });

  test('op results come back as usable tensors', async () => {
    const y = await ops.cast(f32([1.5, -2], [2]), 'f32');
    expect(y.dtype).toBe('f32');
    expect(Array.from(y.data as Float32Array)).toEqual([1.5, -2]);
  });
});
