#!/usr/bin/env node
// ../shared/peers/llama-cpp/dsv2_run.js with Model.load's `weights` taken from DSV2_WEIGHTS
// (bf16 | int8 | fp8): the dsv2 side of scripts/bench/llamacpp.py's 8-bit phase. The peer
// runner loads dsv2 through DSV2_DIR/dist/lib/index.js; the same module is patched here first.
'use strict';
const path = require('node:path');
const dir = process.env.DSV2_DIR || path.resolve(__dirname, '../..');
const lib = require(path.join(dir, 'dist/lib/index.js'));
const weights = process.env.DSV2_WEIGHTS || 'bf16';
const load = lib.Model.load.bind(lib.Model);
lib.Model.load = (d, o = {}) => load(d, { ...o, weights });
require(process.env.DSV2_PEER_RUNNER || path.resolve(dir, '../shared/peers/llama-cpp/dsv2_run.js'));
