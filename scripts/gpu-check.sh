#!/usr/bin/env bash
# npm run gpu:check — everything a GPU machine should check, in one device call:
#   build with CUDA, `dsv2 info`, the whole test suite (the test/gpu suites run there),
#   the CUDA decode path under compute-sanitizer once, every benchmark; a short table last.
# On the device machine, from the project root (../shared/device/pack prepares .device/):
#   source .device/boot.sh && npm run gpu:check
# Logs and bench JSON go to $OUT (the device tool brings it back) or /tmp/dsv2-gpu-check.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/dsv2-gpu-check}"
mkdir -p "$out"
status=0
step() { echo; echo "=== gpu:check: $*"; }

step "build (cmake-js, CUDA)"
npx cmake-js rebuild >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; echo "gpu:check: BUILD FAILED"; exit 1; }
npm run build:ts >>"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
node dist/lib/cli/main.js info | tee "$out/info.txt"

step "tests (all suites; test/gpu runs when a device is usable)"
npx jest --ci --json --outputFile="$out/jest.json" 2>"$out/tests.log" || status=1
grep -E "✕|SKIPPED|Tests:" "$out/tests.log" | head -40

if command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer (memcheck) on the CUDA cache and decode tests"
  compute-sanitizer --tool memcheck --error-exitcode 9 node node_modules/.bin/jest test/gpu/mla.test.ts -t 'fp8' \
    >"$out/sanitizer.log" 2>&1 || { status=1; tail -30 "$out/sanitizer.log"; }
  grep -E "ERROR SUMMARY|Tests:" "$out/sanitizer.log" | tail -3
fi

step "benchmarks"
before=$(ls bench/results 2>/dev/null | sort)
node dist/scripts/bench/run.js mla_decode_cuda moe_route_cuda gemm_cuda gemm mla_decode kv_append moe_route 2>&1 | tee "$out/bench.log" || status=1
for f in $(comm -13 <(echo "$before") <(ls bench/results | sort)); do cp "bench/results/$f" "$out/"; done
# Freshly written results replace same-named ones, so copy everything from today too.
find bench/results -name "*$(date +%Y-%m-%d)*.json" -exec cp {} "$out/" \;

step "summary"
node -e '
  const r = require(process.argv[1]);
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`);
  for (const s of r.testResults) for (const t of s.assertionResults) if (t.status === "failed") console.log(`FAILED ${t.fullName}`);
' "$out/jest.json" || true
grep -E "^(cache| *bf16| *fp8)" "$out/bench.log" | head -40 || true
exit $status
