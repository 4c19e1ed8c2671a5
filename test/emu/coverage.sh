#!/usr/bin/env bash
# npm run coverage:cuda-emu — line coverage of native/src/cuda under the emulated suites (issue 12):
# builds the emulator addon with gcov instrumentation of the kernel sources (-O0 --coverage,
# DSV2_EMU_COVERAGE=ON in native/emu/emu.cmake) into build-emu-cov/, runs every test/gpu and
# test/emu suite on it, and reports the lines executed per file (the .cu files and the .cuh
# headers they include, device and host code alike) and in total, with the lines never run.
# Usage: bash test/emu/coverage.sh [jest args]   (default: test/gpu test/emu)
#   DSV2_EMU_COV_SKIP_RUN=1   report only (from the .gcda files of the last run)
#   DSV2_EMU_COV_ALL=1        list every line not run (default: the first 40 per file)
# Exits non-zero when the build or a test fails (the report is printed all the same).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
dir=build-emu-cov
status=0
if [[ "${DSV2_EMU_COV_SKIP_RUN:-0}" != 1 ]]; then
  start=$SECONDS
  npx cmake-js compile --out "$dir" --CDDSV2_CUDA_EMULATOR=ON --CDDSV2_EMU_COVERAGE=ON > /tmp/dsv2-emu-cov-build.log 2>&1 || {
    tail -30 /tmp/dsv2-emu-cov-build.log
    echo "coverage:cuda-emu: the instrumented emulator build failed (log: /tmp/dsv2-emu-cov-build.log)"
    exit 1
  }
  echo "coverage:cuda-emu: instrumented addon built ($((SECONDS - start))s)"
  find "$dir" -name '*.gcda' -delete
  if [[ $# -gt 0 ]]; then args=("$@"); else args=(test/gpu test/emu); fi
  DSV2_ADDON="$root/$dir/Release/dsv2.node" DSV2_EMU_QUIET=1 npx jest --maxWorkers=2 --ci "${args[@]}" || status=$?
  echo "coverage:cuda-emu: suites ran ($((SECONDS - start))s, jest status $status)"
fi
objdir="$(dirname "$(find "$dir" -path '*native/src/cuda/*' -name '*.cu.o' | head -1)")"
[[ -d "$objdir" ]] || { echo "coverage:cuda-emu: no instrumented objects under $dir"; exit 1; }
out="$(mktemp -d)"
# -l: one .gcov file per (object, source) pair, so a header included by several .cu files keeps
# each one's counts (merged below: a line counts as run if any object ran it).
( cd "$out" && for o in "$root/$objdir"/*.cu.o; do
    [[ -f "${o%.o}.gcda" ]] || continue
    gcov -l -o "$o" "$o" > /dev/null 2>&1 || echo "coverage:cuda-emu: gcov failed on $o" >&2
  done )
node - "$out" "$root/native/src/cuda" "${DSV2_EMU_COV_ALL:-0}" <<'JS'
const fs = require('fs'), path = require('path');
const [dir, src, all] = process.argv.slice(2);
const files = {};
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.gcov'))) {
  const text = fs.readFileSync(path.join(dir, f), 'utf8');
  const m = text.match(/^\s*-:\s*0:Source:(.*)$/m);
  if (!m) continue;
  const source = path.resolve(m[1]);
  if (!source.startsWith(src + path.sep)) continue;
  const name = path.relative(src, source);
  const lines = files[name] ?? (files[name] = new Map());
  for (const line of text.split('\n')) {
    const r = line.match(/^\s*([^:]+):\s*(\d+):/);
    if (!r) continue;
    const count = r[1].trim();
    const n = Number(r[2]);
    if (count === '-' || n === 0) continue;
    const hit = !/^(#####|=====)/.test(count);
    lines.set(n, (lines.get(n) ?? false) || hit);
  }
}
/** Line numbers as ranges: 5,6,7,9 → 5-7,9. */
function ranges(ns) {
  const out = [];
  for (let i = 0; i < ns.length; i++) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j] + 1) j++;
    out.push(i === j ? `${ns[i]}` : `${ns[i]}-${ns[j]}`);
    i = j;
  }
  return out;
}
let tot = 0, hit = 0;
const rows = [];
for (const [name, lines] of Object.entries(files).sort()) {
  const h = [...lines.values()].filter(Boolean).length;
  tot += lines.size; hit += h;
  const missed = ranges([...lines.entries()].filter(([, v]) => !v).map(([n]) => n).sort((a, b) => a - b));
  const shown = all === '1' ? missed : missed.slice(0, 40);
  rows.push(`${name.padEnd(26)} ${String(h).padStart(5)} / ${String(lines.size).padEnd(5)} ${(100 * h / Math.max(1, lines.size)).toFixed(1).padStart(5)}%` +
    (missed.length ? `  not run: ${shown.join(',')}${shown.length < missed.length ? ',…' : ''}` : ''));
}
console.log(rows.join('\n'));
console.log(`native/src/cuda: ${hit} of ${tot} lines executed (${(100 * hit / Math.max(1, tot)).toFixed(1)}%)`);
JS
exit "$status"
