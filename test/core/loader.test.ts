/** The loader: the override variable, and a failure that explains itself. */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Dsv2Error } from '../../lib/errors';

const ROOT = path.resolve(__dirname, '../..');

describe('loadAddon', () => {
  const saved = process.env.DSV2_ADDON;
  afterEach(() => {
    if (saved === undefined) delete process.env.DSV2_ADDON;
    else process.env.DSV2_ADDON = saved;
  });

  test('a bad DSV2_ADDON gives E_LOAD listing what was tried and the fixes', () => {
    process.env.DSV2_ADDON = '/nonexistent/dsv2.node';
    jest.isolateModules(() => {
      const { loadAddon } = require('../../lib/native') as typeof import('../../lib/native');
      const { Dsv2Error: IsolatedError } = require('../../lib/errors') as typeof import('../../lib/errors');
      let err: unknown;
      try {
        loadAddon();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(IsolatedError);
      const e = err as Dsv2Error;
      expect(e.code).toBe('E_LOAD');
      expect(e.message).toContain('/nonexistent/dsv2.node (DSV2_ADDON)');
      expect(e.message).toContain('Possible solutions');
      expect(e.message).toContain('npm run build:native');
    });
  });

  test('DSV2_ADDON loads the named file', () => {
    let first = '';
    jest.isolateModules(() => {
      first = (require('../../lib/native') as typeof import('../../lib/native')).loadAddon().path;
    });
    process.env.DSV2_ADDON = first;
    jest.isolateModules(() => {
      const again = (require('../../lib/native') as typeof import('../../lib/native')).loadAddon();
      expect(again.path).toBe(first);
      expect(typeof again.binding.gemm).toBe('function');
    });
  });

  test('the addon loads in a worker thread too (context-aware)', () => {
    const root = JSON.stringify(ROOT);
    const inWorker = `const b = require('node-gyp-build')(${root}); require('node:worker_threads').parentPort.postMessage(b.buildInfo().version);`;
    const code = `
      const { Worker } = require('node:worker_threads');
      const w = new Worker(${JSON.stringify(inWorker)}, { eval: true });
      w.on('message', (v) => { console.log('worker:' + v); });
      w.on('error', (e) => { console.error(e); process.exit(1); });
      require('node-gyp-build')(${root});
    `;
    const r = spawnSync(process.execPath, ['-e', code], { cwd: ROOT, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^worker:\d+\.\d+\.\d+/);
  });
});
