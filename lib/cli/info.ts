/** `dsv2 info [--json]`: version, addon, CPU, CUDA build and devices, and why CUDA is not used. */
import type { Command } from 'commander';
import { Dsv2Error } from '../errors';
import { info, type Info } from '../info';
import { modelMemory, type ModelMemory } from '../model/memory';

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

export function formatInfo(i: Info): string {
  const lines = [
    `dsv2 ${i.version}`,
    `addon        ${i.addon}`,
    `node         ${i.node} (${i.platform})`,
    `cpu          ${i.cpu.threads} threads, ${i.cpu.isa} kernels, built with ${i.cpu.compiler}`,
    `cuda build   ${i.cuda.compiled ? `yes, for ${i.cuda.archs.join(' ')} (runtime ${i.cuda.runtime}, static)` : 'no (CPU-only addon)'}`,
    `cuda driver  ${i.cuda.driver ?? 'none'}`,
  ];
  for (const d of i.cuda.devices) {
    lines.push(`device ${d.index}     ${d.name}, sm_${d.computeCapability.replace('.', '')}, ${gib(d.totalMemory)} ` +
      `(${gib(d.freeMemory)} free), ${d.multiprocessors} SMs, ${d.kernelOk ? 'kernels run' : `kernels fail: ${d.kernelError}`}`);
  }
  lines.push(`cuda in use  ${i.cuda.usable ? 'yes' : `no: ${i.cuda.reason}`}`);
  return lines.join('\n');
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function formatModel(m: ModelMemory): string {
  return [
    `model        ${m.architecture}, ${m.layers} layers, ${(m.params / 1e6).toFixed(2)} M parameters (${(m.activeParams / 1e6).toFixed(2)} M active per token)`,
    `weights      ${mib(m.diskBytes)} on disk, ${mib(m.loadedBytes)} loaded (cpu)`,
    `kv cache     per token: bf16 ${m.kvCache.bf16.bytesPerToken} B, fp8 ${m.kvCache.fp8.bytesPerToken} B, f32 ${m.kvCache.f32.bytesPerToken} B (all layers)`,
    ...(m.runtime ? [
      `runtime      ${m.runtime.device} engine, ${m.runtime.weightFormat} weights, ${m.runtime.kvCache} cache of ${m.runtime.maxTokens} tokens: ${mib(m.runtime.total)} = ` +
        `weights ${mib(m.runtime.weights)} + cache ${mib(m.runtime.cache)} + workspace ${mib(m.runtime.workspace)}`,
    ] : []),
  ].join('\n');
}

export function infoCommand(program: Command): void {
  program
    .command('info')
    .description('show the build, the CPU and the CUDA devices, and whether CUDA is used (and why not)')
    .option('--model <dir>', 'also account a checkpoint\'s memory: parameters, weight bytes, KV cache per token')
    .option('--device <device>', 'with --model: account the engine on auto (cuda when usable), cpu or cuda', 'auto')
    .option('--max-tokens <n>', 'with --model: KV cache capacity in tokens', (v: string) => Number(v), 4096)
    .option('--kv-cache <dtype>', 'with --model: bf16, fp8 or f32', 'bf16')
    .option('--weights <format>', 'with --model: linear weights bf16 (as stored), int8 or fp8 (quantised at load)', 'bf16')
    .option('--json', 'print one JSON object on stdout')
    .action(async (opts: { json?: boolean; model?: string; device: string; maxTokens: number; kvCache: string; weights: string }) => {
      const i = await info();
      if (!['auto', 'cpu', 'cuda'].includes(opts.device)) throw new Dsv2Error('E_ARG', `--device '${opts.device}' must be auto, cpu or cuda`);
      if (!['bf16', 'fp8', 'f32'].includes(opts.kvCache)) throw new Dsv2Error('E_ARG', `--kv-cache '${opts.kvCache}' must be bf16, fp8 or f32`);
      if (!['bf16', 'int8', 'fp8'].includes(opts.weights)) throw new Dsv2Error('E_ARG', `--weights '${opts.weights}' must be bf16, int8 or fp8`);
      if (!Number.isSafeInteger(opts.maxTokens) || opts.maxTokens < 1) throw new Dsv2Error('E_RANGE', `--max-tokens ${opts.maxTokens} must be a positive integer`);
      if (opts.device === 'cuda' && !i.cuda.usable) throw new Dsv2Error('E_UNSUPPORTED', `--device cuda: CUDA is not usable here (${i.cuda.reason})`);
      const device = opts.device === 'auto' ? (i.cuda.usable ? 'cuda' : 'cpu') : (opts.device as 'cpu' | 'cuda');
      const m = opts.model ? await modelMemory(opts.model, { device, maxTokens: opts.maxTokens, kvCache: opts.kvCache as 'bf16', weights: opts.weights as 'bf16' }) : undefined;
      if (opts.json) process.stdout.write(`${JSON.stringify(m ? { ...i, model: m } : i, null, 2)}\n`);
      else process.stdout.write(`${formatInfo(i)}\n${m ? `${formatModel(m)}\n` : ''}`);
    });
}
