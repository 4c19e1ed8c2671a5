#!/usr/bin/env bash
# npm run test:package — the package as a user gets it: `npm pack` here, then in a new project,
# with a PATH that holds node and npm only (no compiler, no cmake, no nvcc):
#   npm install <tarball> must finish in well under a minute without compiling; the CLI runs;
#   CommonJS require() works; a TypeScript ESM consumer (module/moduleResolution node16)
#   type-checks and runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say() { echo "check-package: $*"; }

npm pack --pack-destination "$work" >"$work/pack.log" 2>&1 || { cat "$work/pack.log"; exit 1; }
tgz="$(ls "$work"/dsv2-*.tgz)"
say "packed $(basename "$tgz") ($(du -h "$tgz" | cut -f1))"
tar -tzf "$tgz" > "$work/files.txt"; grep -qx 'package/prebuilds/linux-x64/dsv2.node' "$work/files.txt" || { say "the tarball has no prebuilds/linux-x64/dsv2.node"; exit 1; }

# A PATH with node, npm and npx only — and sh, through which npm runs install scripts (every
# machine has one; it compiles nothing).
mkdir -p "$work/bin" "$work/app"
for t in node npm npx sh; do ln -s "$(command -v "$t")" "$work/bin/$t"; done
userpath="$work/bin"
for t in cc gcc g++ c++ cmake make nvcc python3; do
  if PATH="$userpath" command -v "$t" >/dev/null 2>&1; then say "PATH still finds $t"; exit 1; fi
done
# Everything from here runs as the user would, with that PATH.
user() { PATH="$userpath" "$@"; }
cd "$work/app"
user npm init -y >/dev/null
export DSV2_CACHE_DIR="$work/cache"
start=$(date +%s.%N)
user npm install "$tgz" @types/node@20 --no-audit --no-fund --prefer-offline 2>&1 | tee "$work/install.log"
secs=$(node -e "console.log((Date.now() / 1000 - $start).toFixed(1))")
say "npm install took ${secs} s"
if grep -q 'building the addon from source' "$work/install.log"; then say "the install compiled"; exit 1; fi
node -e "if ($secs >= 60) { console.error('check-package: install took $secs s (limit 60)'); process.exit(1); }"

user npx dsv2 info --json > info.json
node -e '
  const i = require("./info.json");
  if (!i.addon.includes("/prebuilds/")) { console.error("check-package: loaded", i.addon, "not the prebuild"); process.exit(1); }
  if (!i.cuda.compiled) { console.error("check-package: the prebuild has no CUDA kernels"); process.exit(1); }
  console.log("check-package: prebuild", i.addon, "| CUDA", i.cuda.archs.join(" "), "| usable:", i.cuda.usable);
'
user npx dsv2 generate --prompt "Hello" --max-new-tokens 8
user npx dsv2 tokenize --text "Hello" --json

# CommonJS
user node -e '
  const { Tensor, ops, Dsv2Error } = require("dsv2");
  ops.rmsNorm(Tensor.from(Float32Array.of(1, 2, 3, 4), [1, 4]), Tensor.from(Float32Array.of(1, 1, 1, 1)), { eps: 1e-6 })
    .then((y) => { if (!(y instanceof Tensor) || y.shape.join() !== "1,4") throw new Error("bad result"); console.log("check-package: CJS require ok"); });
  try { Tensor.from(Float32Array.of(1), [2]); } catch (e) { if (!(e instanceof Dsv2Error)) throw e; }
'

# TypeScript ESM consumer (node16 resolution), type-checked with this repo's compiler.
cat > tsconfig.json <<'JSON'
{ "compilerOptions": { "module": "node16", "moduleResolution": "node16", "target": "ES2022", "strict": true,
  "outDir": "out", "types": ["node"], "lib": ["ES2022", "ESNext.Disposable"], "skipLibCheck": false }, "files": ["main.mts"] }
JSON
cat > main.mts <<'TS'
import { Model, Tensor, ops, Dsv2Error, info, defaultModelDir, type GenerateOptions, type GenerateResult } from 'dsv2';
const i = await info();
const opts: GenerateOptions = { prompt: 'Hello', maxNewTokens: 4 };
const dir: string = await defaultModelDir();
const m = await Model.load(dir, { device: 'cpu' });
const r: GenerateResult = await m.generate(opts).result;
await m.dispose();
const y = await ops.softmax(Tensor.from(Float32Array.of(1, 2, 3), [1, 3]));
try {
  await m.generate(opts).result;
} catch (e) {
  if (!(e instanceof Dsv2Error) || e.code !== 'E_DISPOSED') throw e;
}
console.log(`check-package: ESM TypeScript ok (${i.platform}, ${r.tokens.length} tokens, softmax ${y.shape.join('x')})`);
TS
user node "$repo/node_modules/typescript/bin/tsc" -p tsconfig.json || { say "the TypeScript consumer does not type-check"; exit 1; }
user node out/main.mjs
say "ok"
