#!/usr/bin/env node
/**
 * The `dsv2` command line. Results go to stdout (`--json`: one JSON document and nothing
 * else); logs and errors go to stderr. Exit codes: 0 ok, 1 a Dsv2Error (its code is printed),
 * 2 bad usage. A closed stdout (EPIPE: `dsv2 ... | head`) ends the command quietly with 0.
 */
import { Command, CommanderError } from 'commander';
import { Dsv2Error } from '../errors';
import { VERSION } from '../paths';
import { benchCommands } from './bench';
import { infoCommand } from './info';
import { modelCommands } from './model-commands';
import { serveCommand } from './serve';

export function program(): Command {
  const cmd = new Command('dsv2')
    .description('DeepSeek-V2 inference for Node.js (MLA latent KV cache, device-limited MoE, FP8 KV)')
    .version(VERSION, '-V, --version')
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    // Before adding commands: subcommands inherit it, so no path of commander calls
    // process.exit() (main() turns its errors into exit codes).
    .exitOverride();
  infoCommand(cmd);
  modelCommands(cmd);
  benchCommands(cmd);
  serveCommand(cmd);
  return cmd;
}

export async function main(argv: string[]): Promise<number> {
  const cmd = program();
  try {
    await cmd.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'dsv2.usage') process.stderr.write(`dsv2: ${e.message}\n(run dsv2 --help for usage)\n`);
      return e.exitCode === 0 ? 0 : 2;
    }
    if (e instanceof Dsv2Error) {
      process.stderr.write(`dsv2: ${e.code}: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`dsv2: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  // `dsv2 generate ... | head -c 5`: the reader has gone, which is no error of ours — exit
  // quietly (status 0) instead of printing an EPIPE stack trace.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    process.stderr.write(`dsv2: cannot write to stdout (${e.code ?? e.message})\n`);
    process.exit(1);
  });
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
