/**
 * The README's code runs as written: every ```js block is saved as an ES module in a fresh
 * project whose node_modules/dsv2 is this package (its built dist/), and run with this Node
 * (CI: the README's minimum major, 20) — no TypeScript, no `await using`, only what plain JS
 * on that Node has.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rmDir, tmpDir } from './model/util';

const ROOT = path.resolve(__dirname, '..');
const blocks = [...fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const root = tmpDir('readme');
afterAll(() => rmDir(root));

beforeAll(() => {
  fs.mkdirSync(path.join(root, 'node_modules'), { recursive: true });
  fs.symlinkSync(ROOT, path.join(root, 'node_modules', 'dsv2'), 'dir');
});

test('the README has its API examples as js blocks', () => {
  expect(blocks.length).toBeGreaterThanOrEqual(2);
});

test.each(blocks.map((b, i) => [i, b] as const))('README js block %i runs (exit 0, no stderr error)', (i, code) => {
  const file = path.join(root, `block${i}.mjs`);
  fs.writeFileSync(file, code);
  const r = spawnSync(process.execPath, [file], {
    cwd: root, encoding: 'utf8', timeout: 120_000,
    env: { ...process.env, DSV2_CACHE_DIR: path.join(root, 'cache'), DSV2_MODEL: '' }, // '': the default model
  });
  expect({ status: r.status, stderr: r.stderr.includes('Error') ? r.stderr : '' }).toEqual({ status: 0, stderr: '' });
  if (code.includes('E_RANGE')) {
    expect(r.stdout).toMatch(/^true E_RANGE$/m);
    expect(r.stdout).toMatch(/^(length|eos|stop): \d+ prompt \+ \d+ new tokens$/m);
  }
});
