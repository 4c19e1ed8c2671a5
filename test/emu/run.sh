#!/usr/bin/env bash
# npm run test:cuda-emu: every CUDA kernel and the CUDA engine on the emulated device (issue 12).
#   1. builds the emulator flavour of the addon into build-emu/ if needed (cmake-js, incremental);
#   2. runs the emulator's own unit tests (build-emu/dsv2_emu_test: PTX semantics from the ISA,
#      barriers, warp operations, divergence detection, runtime, graphs);
#   3. runs every test/gpu suite and test/emu on the emulated device (DSV2_ADDON), and fails if
#      any test is skipped or none ran.
# Extra arguments go to jest (e.g. a suite path). DSV2_EMU_SEED changes the fibers' order.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
if [[ ! -f build-emu/Release/dsv2.node || ! -x build-emu/dsv2_emu_test || "${DSV2_EMU_REBUILD:-1}" == 1 ]]; then
  npx cmake-js compile --out build-emu --CDDSV2_CUDA_EMULATOR=ON ${DSV2_EMU_CMAKE_FLAGS:-} > /tmp/dsv2-emu-build.log 2>&1 || {
    tail -40 /tmp/dsv2-emu-build.log
    echo "test:cuda-emu: the emulator build failed (log: /tmp/dsv2-emu-build.log)"
    exit 1
  }
fi
echo "test:cuda-emu: emulated addon built ($((SECONDS - start))s)"
./build-emu/dsv2_emu_test
export DSV2_ADDON="$PWD/build-emu/Release/dsv2.node"
export DSV2_EMU_QUIET=1
out="$(mktemp -d)/jest.json"
status=0
if [[ $# -gt 0 ]]; then
  npx jest --maxWorkers=2 --ci --json --outputFile="$out" "$@" || status=$?
else
  npx jest test/gpu test/emu --maxWorkers=2 --ci --json --outputFile="$out" --reporters=default --reporters=./test/emu/progress-reporter.js || status=$?
fi
node -e '
  const r = require(process.argv[1]);
  console.log(`test:cuda-emu: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped, ${r.numTotalTestSuites} suites`);
  if (r.numPendingTests + r.numTodoTests > 0) { console.error("test:cuda-emu: tests were skipped on the emulated device"); process.exit(1); }
  if (r.numPassedTests === 0) { console.error("test:cuda-emu: no test ran"); process.exit(1); }
' "$out" || status=1
echo "test:cuda-emu: done in $((SECONDS - start))s"
exit "$status"
