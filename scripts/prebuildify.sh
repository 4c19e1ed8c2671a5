#!/usr/bin/env bash
# npm run prebuildify: the CPU-only prebuild (binding.gyp) at prebuilds/<platform>-<arch>/dsv2.node,
# which node-gyp-build loads when build/ is absent. node-gyp builds in build/, so the cmake-js
# build there is set aside and put back afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
aside=""
if [[ -d build ]]; then
  aside="build.cmake-js.$$"
  mv build "$aside"
fi
restore() {
  rm -rf build
  if [[ -n "$aside" ]]; then mv "$aside" build; fi
}
trap restore EXIT
# nodedir: build against this Node's own headers instead of downloading them.
nodedir="$(dirname "$(dirname "$(command -v node)")")"
if [[ -f "$nodedir/include/node/node_api.h" ]]; then export npm_config_nodedir="$nodedir"; fi
npx prebuildify --napi --strip "$@"
ls -l prebuilds/*/
