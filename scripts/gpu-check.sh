#!/usr/bin/env bash
# npm run gpu:check [-- STAGE...] — everything a GPU machine should check, by stage:
#   build      cmake-js with CUDA, the TypeScript, `dsv2 info`
#   tests      the whole jest suite (the test/gpu suites run where a device is usable)
#   sanitizer  compute-sanitizer memcheck on the CUDA cache/decode/prefill tests
#   bench      every kernel benchmark (mla, moe, dense groups; CPU ones too)
#   e2e        dsv2 bench e2e --random-weights: V2-Lite (all 27 layers) and V2 (first 4 layers)
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
    step "end to end, random weights on the device"
    dev=$(node -e "require('./dist/lib').info().then((i) => console.log(i.cuda.usable ? 'cuda' : 'cpu'))")
    for args in "--config v2-lite" "--config v2 --layers 4"; do
      name="e2e-$(echo "$args" | tr -d '-' | tr ' ' '_')-${dev}-${day}.json"
      node dist/lib/cli/main.js bench e2e $args --random-weights --device "$dev" --out "bench/results/$name" 2>&1 | tee -a "$out/e2e.log" || status=1
      [ -f "bench/results/$name" ] && cp "bench/results/$name" "$out/"
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
    [ -f "$out/e2e.log" ] && grep -E "^(e2e|phase|prefill|decode) " "$out/e2e.log"
    ;;
  *)
    echo "gpu:check: unknown stage '$stage' (build, tests, sanitizer, bench, e2e, summary)"; exit 2 ;;
  esac
done
exit $status
