#!/usr/bin/env node
/*
 * Adds lock entries for optional platform binaries that this registry mirror does not
 * serve (it has only the linux builds of e.g. @unrs/resolver-binding-*, a jest 30
 * dependency). npm install then leaves them out of package-lock.json, and `npm ci` refuses
 * the lock ("Missing: ... from lock file"). Each added entry carries os/cpu/libc taken from
 * its name, so npm ci skips it on this platform without fetching anything.
 * Run after any `npm install` that changes the lock: node scripts/fix-lockfile.js
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const file = path.join(__dirname, '..', 'package-lock.json');
const lock = JSON.parse(fs.readFileSync(file, 'utf8'));
const pkgs = lock.packages;

const OS = ['android', 'darwin', 'freebsd', 'linux', 'openharmony', 'win32', 'sunos', 'aix', 'netbsd', 'openbsd'];
const CPU = { 'arm-eabi': 'arm', arm: 'arm', arm64: 'arm64', x64: 'x64', ia32: 'ia32', loong64: 'loong64',
  ppc64: 'ppc64', riscv64: 'riscv64', s390x: 's390x', wasm32: 'wasm32' };

function platformOf(name) {
  const base = name.split('/').pop();
  const parts = base.split('-');
  const out = {};
  const os = parts.find((p) => OS.includes(p));
  if (os) out.os = [os];
  const cpu = parts.find((p) => CPU[p]);
  if (cpu) out.cpu = [CPU[cpu]];
  if (/-(musl|musleabihf)$/.test(base)) out.libc = ['musl'];
  else if (/-(gnu|gnueabihf)$/.test(base)) out.libc = ['glibc'];
  return out;
}

let added = 0;
for (const [where, meta] of Object.entries(pkgs)) {
  for (const [dep, range] of Object.entries(meta.optionalDependencies || {})) {
    const key = `${where ? `${where}/` : ''}node_modules/${dep}`;
    const hoisted = `node_modules/${dep}`;
    if (pkgs[key] || pkgs[hoisted]) continue;
    const p = platformOf(dep);
    if (!p.os && !p.cpu) continue; // not a platform binary: leave it to npm
    pkgs[hoisted] = { version: range.replace(/^[\^~=]/, ''), dev: meta.dev || undefined, optional: true, ...p };
    added++;
  }
}
const sorted = Object.fromEntries(Object.entries(pkgs).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a.localeCompare(b))));
lock.packages = sorted;
fs.writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`fix-lockfile: added ${added} platform stub entr${added === 1 ? 'y' : 'ies'}`);
