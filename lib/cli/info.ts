/** `dsv2 info [--json]`: version, addon, CPU, CUDA build and devices, and why CUDA is not used. */
import type { Command } from 'commander';
import { info, type Info } from '../info';

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

export function infoCommand(program: Command): void {
  program
    .command('info')
    .description('show the build, the CPU and the CUDA devices, and whether CUDA is used (and why not)')
    .option('--json', 'print one JSON object on stdout')
    .action(async (opts: { json?: boolean }) => {
      const i = await info();
      process.stdout.write(opts.json ? `${JSON.stringify(i, null, 2)}\n` : `${formatInfo(i)}\n`);
    });
}
