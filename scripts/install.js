#!/usr/bin/env node
/*
 * npm install hook: make sure a loadable addon exists, without compiling when it need not.
 *  - An installed package (from the registry or a tarball) carries a prebuilt addon for
 *    linux-x64 with the CUDA kernels in it (prebuilds/, made by `npm pack`'s prepack): when it
 *    loads, nothing is compiled, whether or not nvcc is on PATH.
 *  - It is built from source (cmake-js; CUDA kernels included when nvcc is on PATH) when
 *    DSV2_BUILD_FROM_SOURCE=1, when no prebuild or build loads here, or in a git checkout
 *    (developers build what they edit; DSV2_BUILD_FROM_SOURCE=0 skips it when an addon loads).
 * DSV2_CUDA=OFF makes a source build CPU-only. Plain JS: it runs before TypeScript is compiled.
 */
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

/** The addon file node-gyp-build would load here, or null when none loads. */
function loadable() {
  // A child process: a prebuild that fails to load (wrong glibc, say) must not poison this one.
  const r = spawnSync(process.execPath, ['-e', `
    const p = require('node-gyp-build').path(${JSON.stringify(root)});
    require(p);
    process.stdout.write(p);
  `], { cwd: root, encoding: 'utf8' });
  return r.status === 0 ? r.stdout : null;
}

const cudaOff = /^(0|off|false|no)$/i.test(process.env.DSV2_CUDA || '');
const env = process.env.DSV2_BUILD_FROM_SOURCE;
const checkout = fs.existsSync(path.join(root, '.git'));
const fromSource = env === '1' || (checkout && env !== '0');

if (!fromSource) {
  const found = loadable();
  if (found) {
    console.error(`dsv2: using ${path.relative(root, found)} (no compiling; DSV2_BUILD_FROM_SOURCE=1 builds from source)`);
    process.exit(0);
  }
  console.error('dsv2: no prebuilt addon loads on this machine; building from source');
}
const args = ['compile', ...(cudaOff ? ['--CDDSV2_CUDA=OFF'] : [])];
console.error(`dsv2: building the addon from source (cmake-js ${args.join(' ')})`);
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, ...args], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  console.error('dsv2: the native build failed (see above). Building from source needs cmake >= 3.20 and a C++17 compiler; nvcc adds CUDA.');
  process.exit(1);
}
