#!/usr/bin/env node
/*
 * npm install hook: make sure a loadable addon exists, preferring the CUDA build.
 *  - nvcc on PATH (or DSV2_BUILD_FROM_SOURCE=1): build from source with cmake-js, CUDA kernels
 *    included; a compile error fails the install.
 *  - otherwise, a prebuild or an existing build that loads is used as is;
 *  - otherwise build from source (CPU-only without nvcc).
 * DSV2_CUDA=OFF forces a CPU-only source build. Plain JS: it runs before TypeScript is compiled.
 */
'use strict';
const { execSync, spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function loads() {
  try {
    require('node-gyp-build')(root);
    return true;
  } catch {
    return false;
  }
}

const cudaOff = /^(0|off|false|no)$/i.test(process.env.DSV2_CUDA || '');
const fromSource = process.env.DSV2_BUILD_FROM_SOURCE === '1' || (has('nvcc') && !cudaOff);

if (!fromSource && loads()) {
  console.error('dsv2: using the existing addon (prebuild or build/); set DSV2_BUILD_FROM_SOURCE=1 to rebuild');
  process.exit(0);
}
const args = ['cmake-js', 'compile', ...(cudaOff ? ['--CDDSV2_CUDA=OFF'] : [])];
console.error(`dsv2: building the addon from source (${args.join(' ')})`);
try {
  execSync(args.join(' '), { cwd: root, stdio: 'inherit' });
} catch {
  console.error('dsv2: the native build failed (see above). It needs cmake >= 3.20 and a C++17 compiler; nvcc adds CUDA.');
  process.exit(1);
}
