#!/usr/bin/env bash
# Line coverage of native/src/cuda under the emulated suites (issue 12): builds the emulator
# addon with gcov instrumentation of the kernel sources (-O0 --coverage) into build-emu-cov/,
# runs every test/gpu suite on it, and reports lines executed per file and in total (gcov).
# Usage: bash test/emu/coverage.sh [jest args]   (DSV2_EMU_COV_SKIP_RUN=1: report only)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=build-emu-cov
if [[ "${DSV2_EMU_COV_SKIP_RUN:-0}" != 1 ]]; then
  npx cmake-js compile --out "$dir" --CDDSV2_CUDA_EMULATOR=ON --CDDSV2_EMU_COVERAGE=ON > /tmp/dsv2-emu-cov-build.log 2>&1 || {
    tail -30 /tmp/dsv2-emu-cov-build.log; exit 1; }
  find "$dir" -name '*.gcda' -delete
  DSV2_ADDON="$PWD/$dir/Release/dsv2.node" DSV2_EMU_QUIET=1 npx jest --maxWorkers=2 --ci ${@:-test/gpu} || true
fi
objdir="$(dirname "$(find "$dir" -name 'gemm.cu.o' | head -1)")"
out="$(mktemp -d)"
( cd "$out" && for f in "$OLDPWD"/native/src/cuda/*.cu; do gcov -o "$OLDPWD/$objdir" "$f" > /dev/null 2>&1 || true; done )
node - "$out" "$PWD/native/src/cuda" <<'JS'
const fs = require('fs'), path = require('path');
const [dir, src] = process.argv.slice(2);
const files = {};
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.gcov'))) {
  const text = fs.readFileSync(path.join(dir, f), 'utf8');
  const m = text.match(/^\s*-:\s*0:Source:(.*)$/m);
  if (!m || !m[1].startsWith(src)) continue;
  const name = path.relative(src, m[1]);
  const lines = files[name] ?? (files[name] = new Map());
  for (const line of text.split('\n')) {
    const r = line.match(/^\s*([^:]+):\s*(\d+):/);
    if (!r || r[1].trim() === '-') continue;
    const n = Number(r[2]);
    const hit = !/^#####|^=====/.test(r[1].trim());
    lines.set(n, (lines.get(n) ?? false) || hit);
  }
}
let tot = 0, hit = 0;
const rows = [];
for (const [name, lines] of Object.entries(files).sort()) {
  const h = [...lines.values()].filter(Boolean).length;
  tot += lines.size; hit += h;
  const missed = [...lines.entries()].filter(([, v]) => !v).map(([n]) => n);
  rows.push(`${name.padEnd(24)} ${String(h).padStart(5)} / ${String(lines.size).padEnd(5)} ${(100 * h / Math.max(1, lines.size)).toFixed(1).padStart(5)}%` +
    (missed.length ? `  not run: ${missed.slice(0, 12).join(',')}${missed.length > 12 ? ',…' : ''}` : ''));
}
console.log(rows.join('\n'));
console.log(`native/src/cuda: ${hit} of ${tot} lines executed (${(100 * hit / Math.max(1, tot)).toFixed(1)}%)`);
JS
