/**
 * The README's code runs as written: every ```js block is saved as an ES module in a fresh
 * project whose node_modules/dsv2 is this package (its built dist/), and run with this Node
 * (CI: the README's minimum major, 20) — no TypeScript, no `await using`, only what plain JS
 * on that Node has.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rmDir, tmpDir } from './model/util';

const ROOT = path.resolve(__dirname, '..');
const blocks = [...fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
const root = tmpDir('readme');
afterAll(() => rmDir(root));

let server: ChildProcess | null = null;
let url = '';

beforeAll(async () => {
  fs.mkdirSync(path.join(root, 'node_modules'), { recursive: true });
  fs.symlinkSync(ROOT, path.join(root, 'node_modules', 'dsv2'), 'dir');
  // The Serving section's client talks to `dsv2 serve` (its own default model, port 0).
  fs.symlinkSync(path.join(ROOT, 'node_modules', 'openai'), path.join(root, 'node_modules', 'openai'), 'dir');
  server = spawn(process.execPath, [path.join(ROOT, 'dist/lib/cli/main.js'), 'serve', '--port', '0'], {
    env: { ...process.env, DSV2_CACHE_DIR: path.join(root, 'cache') }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  server.stderr!.on('data', (d) => { err += String(d); });
  const deadline = Date.now() + 60_000;
  while (!url && Date.now() < deadline) {
    url = /serving on (http:\/\/[\d.]+:\d+)/.exec(err)?.[1] ?? '';
    if (!url) await new Promise((r) => setTimeout(r, 50));
  }
  if (!url) throw new Error(`dsv2 serve did not start: ${err}`);
}, 90_000);
afterAll(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server!.on('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
});

test('the Serving section\'s curl command, as written but for the port', () => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const curl = /^(curl -s http:\/\/127\.0\.0\.1:8000[^\n]*\\\n[^\n]*)$/m.exec(readme)![1].replace('http://127.0.0.1:8000', url);
  const r = spawnSync('bash', ['-c', curl], { encoding: 'utf8' });
  expect(r.status).toBe(0);
  const j = JSON.parse(r.stdout);
  expect(j.object).toBe('chat.completion');
  expect(j.choices[0].message.role).toBe('assistant');
  expect(j.usage.completion_tokens).toBeGreaterThan(0);
});

test('the README has its API examples as js blocks', () => {
  expect(blocks.length).toBeGreaterThanOrEqual(2);
});

test.each(blocks.map((b, i) => [i, b] as const))('README js block %i runs (exit 0, no stderr error)', (i, code) => {
  const file = path.join(root, `block${i}.mjs`);
  fs.writeFileSync(file, code);
  const r = spawnSync(process.execPath, [file], {
    cwd: root, encoding: 'utf8', timeout: 120_000,
    env: { ...process.env, DSV2_CACHE_DIR: path.join(root, 'cache'), DSV2_MODEL: '', DSV2_URL: `${url}/v1` }, // '': the default model
  });
  expect({ status: r.status, stderr: r.stderr.includes('Error') ? r.stderr : '' }).toEqual({ status: 0, stderr: '' });
  if (code.includes('E_RANGE')) {
    expect(r.stdout).toMatch(/^true E_RANGE$/m);
    expect(r.stdout).toMatch(/^(length|eos|stop): \d+ prompt \+ \d+ new tokens$/m);
  }
});
