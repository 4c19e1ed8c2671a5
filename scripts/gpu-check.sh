#!/usr/bin/env bash
# npm run gpu:check [-- STAGE...] — everything a GPU machine should check, by stage:
#   build      cmake-js with CUDA, the TypeScript, `dsv2 info`
#   tests      the whole jest suite (the test/gpu suites run where a device is usable)
#   sanitizer  compute-sanitizer memcheck on the CUDA cache/decode/prefill tests
#   bench      every kernel benchmark (mla, moe, dense groups; CPU ones too)
#   e2e        dsv2 bench e2e --random-weights: V2-Lite (all 27 layers) and V2 (first 4 layers), and
#              transformers' DeepSeek-V2 on the same shapes where python3 has torch + transformers
#   summary    a short table of tests and results
# No stage named: all of them, in that order. Each stage fits a 10-minute device call; a
# session with little device time runs `build tests` in one call and `bench e2e summary` in
# another (the build stays on a warm machine).
# On the device machine, from the project root (../shared/device/pack prepares .device/):
#   source .device/boot.sh && npm run gpu:check
# Logs and JSON go to $OUT (the device tool brings it back) or /tmp/dsv2-gpu-check; bench JSON
# also to bench/results/ (commit them).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/dsv2-gpu-check}"
mkdir -p "$out" bench/results
status=0
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build tests sanitizer bench e2e summary)
step() { echo; echo "=== gpu:check: $*"; }
day=$(date +%Y-%m-%d)

for stage in "${stages[@]}"; do
  case "$stage" in
  build)
    step "build (cmake-js, CUDA)"
    npx cmake-js build >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "gpu:check: BUILD FAILED"; exit 1; }
    npm run build:ts >>"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
    node dist/lib/cli/main.js info | tee "$out/info.txt"
    ;;
  tests)
    step "tests (all suites; test/gpu runs when a device is usable)"
    npx jest --ci --json --outputFile="$out/jest.json" 2>"$out/tests.log" || status=1
    grep -E "✕|SKIPPED|Tests:" "$out/tests.log" | head -60
    ;;
  sanitizer)
    if command -v compute-sanitizer >/dev/null; then
      step "compute-sanitizer (memcheck) on the CUDA cache, decode and prefill tests"
      compute-sanitizer --tool memcheck --error-exitcode 9 node node_modules/.bin/jest test/gpu/mla.test.ts -t 'fp8' \
        >"$out/sanitizer.log" 2>&1 || { status=1; tail -30 "$out/sanitizer.log"; }
      grep -E "ERROR SUMMARY|Tests:" "$out/sanitizer.log" | tail -3
    else
      step "compute-sanitizer not found: skipped"
    fi
    ;;
  bench)
    step "kernel benchmarks"
    node dist/scripts/bench/run.js mla moe dense 2>&1 | tee "$out/bench.log" || status=1
    find bench/results -name "*${day}*.json" -exec cp {} "$out/" \;
    ;;
  e2e)
    step "end to end, random weights on the device (and transformers' DeepSeek-V2 on the same shape, where python3 has it)"
    dev=$(node -e "require('./dist/lib').info().then((i) => console.log(i.cuda.usable ? 'cuda' : 'cpu'))")
    hf=no
    python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null && [ "$dev" = cuda ] && hf=yes
    for spec in "v2-lite 27" "v2 4"; do
      set -- $spec
      name="e2e-$1-$2layers-${dev}-${day}"
      node dist/lib/cli/main.js bench e2e --config "$1" --layers "$2" --random-weights --device "$dev" \
        --out "bench/results/$name.json" 2>&1 | tee -a "$out/e2e.log" || status=1
      [ -f "bench/results/$name.json" ] || continue
      cp "bench/results/$name.json" "$out/"
      if [ "$hf" = yes ]; then
        node -e "console.log(JSON.stringify(require('./dist/lib/model/presets').PRESETS[process.argv[1]]))" "$1" >"$out/cfg-$1.json"
        timeout 420 python3 scripts/bench/hf_e2e.py "$out/cfg-$1.json" "$2" 1024,4096 1,8,64 512 32 "bench/results/$name-transformers.json" \
          >>"$out/e2e.log" 2>&1 || echo "transformers baseline failed or timed out" | tee -a "$out/e2e.log"
        [ -f "bench/results/$name-transformers.json" ] && cp "bench/results/$name-transformers.json" "$out/" && node -e '
          const [a, b] = process.argv.slice(1).map((f) => require(require("path").resolve(f)));
          if (b.error) { console.log(`speed-up vs transformers: baseline error: ${b.error}`); process.exit(0); }
          for (const r of a.rows) {
            const h = b.rows.find((x) => x.phase === r.phase && x.size === r.size);
            if (h) console.log(`speed-up vs transformers ${b.transformers}: ${r.phase} ${r.size}: ${(r.tokensPerS / h.tokensPerS).toFixed(1)}x (${r.tokensPerS.toFixed(0)} vs ${h.tokensPerS.toFixed(0)} tok/s)`);
          }' "bench/results/$name.json" "bench/results/$name-transformers.json" | tee -a "$out/e2e.log"
      fi
    done
    ;;
  summary)
    step "summary"
    [ -f "$out/jest.json" ] && node -e '
      const r = require(process.argv[1]);
      console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`);
      for (const s of r.testResults) for (const t of s.assertionResults) if (t.status === "failed") console.log(`FAILED ${t.fullName}`);
    ' "$out/jest.json"
    [ -f "$out/bench.log" ] && grep -E "target|%|TFLOP" "$out/bench.log" | head -40
    [ -f "$out/e2e.log" ] && grep -E "^(e2e|phase|prefill|decode|speed-up) " "$out/e2e.log"
    ;;
  *)
    echo "gpu:check: unknown stage '$stage' (build, tests, sanitizer, bench, e2e, summary)"; exit 2 ;;
  esac
done
exit $status
