#!/usr/bin/env node
/*
 * npm prepack hook: puts the addon built here (build/Release/dsv2.node, the cmake-js build —
 * with the CUDA kernels when nvcc was present) into prebuilds/<platform>-<arch>/dsv2.node,
 * stripped, so that the tarball `npm pack` makes installs without a compiler: node-gyp-build
 * loads prebuilds/ when there is no build/. The CUDA runtime is linked statically, so the one
 * file runs on GPU machines and on machines with no GPU or no driver alike.
 *
 * Refuses to pack a CPU-only addon when nvcc is on PATH (a silent CPU-only prebuild would hide
 * a kernel that no longer compiles); DSV2_PACK_CPU_ONLY=1 packs one on purpose.
 * Plain JS: runs before anything else is compiled.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'dsv2.node');
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const dest = path.join(dir, 'dsv2.node');

function fail(msg) {
  console.error(`dsv2 prepack: ${msg}`);
  process.exit(1);
}

if (!fs.existsSync(built)) fail(`${built} is missing: build the addon first (npm ci, or npm run build:native)`);
// Ask the addon itself what it is (a child process: the file must load on its own).
const probe = spawnSync(process.execPath, ['-e', `
  const a = require(${JSON.stringify(built)});
  a.cudaInfo().then((c) => process.stdout.write(JSON.stringify({ compiled: c.compiled, archs: c.archs ? c.archs.split(',') : [] })));
`], { encoding: 'utf8' });
if (probe.status !== 0) fail(`${built} does not load: ${probe.stderr.trim()}`);
let cuda;
try {
  cuda = JSON.parse(probe.stdout);
} catch {
  fail(`could not read the addon's info(): ${probe.stdout} ${probe.stderr}`);
}
const hasNvcc = spawnSync('sh', ['-c', 'command -v nvcc'], { stdio: 'ignore' }).status === 0;
if (!cuda.compiled && hasNvcc && process.env.DSV2_PACK_CPU_ONLY !== '1') {
  fail('nvcc is on PATH but the addon was built without CUDA; rebuild it (npm run build:native) or set DSV2_PACK_CPU_ONLY=1');
}
fs.mkdirSync(dir, { recursive: true });
fs.copyFileSync(built, dest);
const strip = spawnSync('strip', ['--strip-unneeded', dest], { stdio: 'inherit' });
if (strip.status !== 0) console.error('dsv2 prepack: strip is not available; the prebuild keeps its symbols');
const mb = (fs.statSync(dest).size / 2 ** 20).toFixed(1);
console.error(`dsv2 prepack: ${path.relative(root, dest)} (${mb} MiB, CUDA ${cuda.compiled ? cuda.archs.join(' ') : 'not compiled'})`);
