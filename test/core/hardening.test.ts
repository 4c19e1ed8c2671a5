/**
 * Inputs that once could crash the process or corrupt results (found in review): each is now
 * a coded error or the documented result, and the process survives.
 */
import { KvCache } from '../../lib/kv-cache';
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { expectRejects } from '../ops/util';

describe('hardening', () => {
  test('outputs whose size overflows are refused before anything runs', async () => {
    // [2^40 + 1, 0] · [2^24, 0]ᵀ would be a [2^40 + 1, 2^24] output: 2^64 elements.
    for (const impl of ['reference', 'fast'] as const) {
      await expectRejects(() => ops.gemm(Tensor.zeros([2 ** 40 + 1, 0]), Tensor.zeros([2 ** 24, 0]), { impl }), 'E_RANGE', ['too large']);
    }
    await expectRejects(() => ops.headsGemm(Tensor.zeros([2 ** 40 + 1, 1, 0]), Tensor.zeros([1, 2 ** 24, 0])), 'E_RANGE', ['too large']);
    // a shape whose non-zero dims multiply past 2^53 is refused even with a zero dim
    expect(() => Tensor.zeros([0, 2 ** 30, 2 ** 30])).not.toThrow(); // the Tensor itself is empty
    await expectRejects(() => ops.softmax(Tensor.zeros([0, 2 ** 30, 2 ** 30])), 'E_SHAPE', ['too large']);
  });

  test('mlaPrefill refuses head dims whose products overflow', async () => {
    const cache = await KvCache.create({ layers: 1, pages: 1, dC: 1, dR: 2 });
    await expectRejects(() => ops.mlaPrefill(Tensor.zeros([0, 2048, 2]), cache, 0, Tensor.from(Int32Array.of(0), [1, 1]),
      Tensor.from(Int32Array.of(0)), Tensor.from(Int32Array.of(0, 0)), Tensor.zeros([0, 1]), { scale: 1, dNope: 0, dV: 2 ** 53 }), 'E_RANGE', ['dV']);
    cache.dispose();
  });

  test('resizable and shared buffers are refused (ops read them after the call returns)', () => {
    const rab = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(16, { maxByteLength: 32 });
    expect(() => new Tensor('f32', [4], new Float32Array(rab))).toThrow(expect.objectContaining({ code: 'E_ARG' }));
    expect(() => new Tensor('f32', [4], new Float32Array(new SharedArrayBuffer(16)))).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  });

  test('an append that names a slot twice is E_RANGE and writes nothing', async () => {
    const cache = await KvCache.create({ layers: 1, pages: 1, dC: 4, dR: 2, dtype: 'f32', pageSize: 4 });
    const before = cache.readRawPage(0, 0);
    await expectRejects(() => cache.append(0, Tensor.from(new Float32Array(8).fill(1), [2, 4]), Tensor.from(new Float32Array(4).fill(1), [2, 2]),
      Tensor.from(Int32Array.of(3, 3))), 'E_RANGE', ['slots[0]', 'slots[1]']);
    expect(Array.from(cache.readRawPage(0, 0))).toEqual(Array.from(before));
    cache.dispose();
  });

  test('freePages refuses ids that int32 conversion would wrap', async () => {
    const cache = await KvCache.create({ layers: 1, pages: 2, dC: 4, dR: 2 });
    const pages = cache.allocPages(2);
    expect(() => cache.freePages([2 ** 32 + 1])).toThrow(expect.objectContaining({ code: 'E_RANGE' }));
    expect(cache.pagesUsed).toBe(2); // nothing freed
    cache.freePages(pages);
    expect(cache.pagesFree).toBe(2);
    cache.dispose();
  });

  test('sampling with a subnormal temperature picks the most likely token (as greedy)', async () => {
    const t = await ops.sample(Tensor.from([0, 5, 1, 2, -1], [1, 5]), { temperature: 1e-310, seed: 3 });
    expect(Array.from(t.data as Int32Array)).toEqual([1]);
  });
});
