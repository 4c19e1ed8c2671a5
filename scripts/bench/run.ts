/**
 * `npm run bench -- <name...> [--quick]`: runs the named benchmarks (all when none given).
 * Each prints a table and writes JSON under bench/results/.
 */
import { benchDecode } from './decode';
import { benchE2e } from './e2e';
import { benchGemm } from './gemm';
import { benchGemmCuda } from './gemm_cuda';
import { benchKvAppend, benchMlaDecode } from './mla';
import { benchMlaDecodeCuda } from './mla_cuda';
import { benchMoeExpertsCuda, benchMoeRoute, benchMoeRouteCuda } from './moe';

const BENCHES: Record<string, (o: { quick?: boolean }) => Promise<void>> = {
  gemm: benchGemm,
  mla_decode: benchMlaDecode,
  kv_append: benchKvAppend,
  moe_route: benchMoeRoute,
  e2e: benchE2e,
  decode: benchDecode,
  mla_decode_cuda: benchMlaDecodeCuda,
  gemm_cuda: benchGemmCuda,
  moe_route_cuda: benchMoeRouteCuda,
  moe_experts_cuda: benchMoeExpertsCuda,
  mla_prefill_cuda: async (o) => (await import('./mla_prefill_cuda')).benchMlaPrefillCuda(o),
};

/** Groups: each issue's benchmarks by the name its text uses (`npm run bench -- mla` on a GPU). */
const GROUPS: Record<string, string[]> = {
  mla: ['mla_decode_cuda', 'mla_prefill_cuda', 'mla_decode', 'kv_append'],
  moe: ['moe_route_cuda', 'moe_experts_cuda', 'moe_route'],
  dense: ['gemm_cuda', 'gemm'],
};

/** Options that take a value (read by the benchmark itself from process.argv). */
const VALUED = new Set(['--model', '--prompt', '--tokens', '--weights', '--kv-cache']);

async function run(argv: string[]): Promise<number> {
  const quick = argv.includes('--quick');
  const names = argv.filter((a, i) => !a.startsWith('--') && !VALUED.has(argv[i - 1])).flatMap((n) => GROUPS[n] ?? [n]);
  if (argv.includes('--help')) {
    console.log(`usage: npm run bench -- [${[...Object.keys(GROUPS), ...Object.keys(BENCHES)].join('|')}]... [--quick]\n` +
      '  decode: [--model DIR] [--prompt N] [--tokens N] [--weights bf16|int8|fp8] [--kv-cache bf16|fp8|f32]');
    return 0;
  }
  for (const n of names) {
    if (!BENCHES[n]) {
      console.error(`unknown benchmark '${n}'; known: ${Object.keys(BENCHES).join(', ')}`);
      return 2;
    }
  }
  // With no name: every CPU benchmark (the GPU ones skip themselves where CUDA is not usable).
  for (const n of names.length ? names : Object.keys(BENCHES)) await BENCHES[n]({ quick });
  return 0;
}

run(process.argv.slice(2)).then((c) => { process.exitCode = c; }, (e) => { console.error(e); process.exitCode = 1; });
