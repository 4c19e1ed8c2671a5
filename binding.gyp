# CPU-only build of the addon for node-gyp (prebuildify and node-gyp-build's fallback).
# The CUDA build is CMakeLists.txt (cmake-js). Both read native/sources.txt.
{
  "targets": [
    {
      "target_name": "dsv2",
      "sources": ["<!@(grep -v '^#' native/sources.txt)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/include", "native/src"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "DSV2_VERSION=\"<!(node -p \"require('./package.json').version\")\""],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fvisibility=hidden"],
      "ldflags": ["-pthread"]
    }
  ]
}
