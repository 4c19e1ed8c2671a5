/**
 * `dsv2 serve`: the OpenAI-compatible HTTP server (lib/serve) over one model. Prints
 * `dsv2: serving on http://HOST:PORT` on stderr once it listens; SIGTERM or SIGINT closes it
 * gracefully (running requests get --grace seconds, then are aborted; a second signal aborts
 * them at once) and the command exits 0.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { Dsv2Error } from '../errors';
import { Model } from '../model/model';
import { createServer } from '../serve';
import { choiceOpt, defaultModelDir, intOpt, log } from './common';

const KV = ['bf16', 'fp8', 'f32'] as const;
const DEVICES = ['auto', 'cpu', 'cuda'] as const;

function portOpt(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('--port must be an integer in [0, 65535] (0: any free port)');
  return n;
}

function secondsOpt(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('--grace must be a number of seconds >= 0');
  return n;
}

interface ServeOpts {
  model?: string;
  modelName?: string;
  host: string;
  port: number;
  maxBatch: number;
  maxTokens?: number;
  maxQueue: number;
  defaultMaxTokens: number;
  apiKey?: string;
  kvCache: (typeof KV)[number];
  device: (typeof DEVICES)[number];
  weights: 'bf16' | 'int8' | 'fp8';
  grace: number;
}

export function serveCommand(program: Command): void {
  program.command('serve')
    .description('an OpenAI-compatible HTTP server: POST /v1/chat/completions, /v1/completions (JSON or SSE); GET /v1/models, /health, /metrics')
    .option('--model <dir>', 'checkpoint directory (config.json, *.safetensors, tokenizer.json); default: the built-in tiny model')
    .option('--model-name <name>', 'the model\'s name in /v1/models and responses; default: the basename of the model directory')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'port to listen on (0: any free port)', portOpt, 8000)
    .option('--max-batch <n>', 'requests running at once (their decode steps are batched); the rest wait', intOpt('--max-batch', 1), 16)
    .option('--max-tokens <n>', 'KV cache capacity in tokens, over all running requests (default 4096)', intOpt('--max-tokens', 1))
    .option('--max-queue <n>', 'requests waiting or running at most; past it 429', intOpt('--max-queue', 1), 256)
    .option('--default-max-tokens <n>', 'max_tokens of a request that gives none', intOpt('--default-max-tokens', 1), 1024)
    .option('--api-key <key>', 'require Authorization: Bearer <key> on /v1 routes (default: $DSV2_API_KEY; none: open)')
    .option('--kv-cache <dtype>', 'KV cache storage: bf16, fp8 or f32', choiceOpt('--kv-cache', KV), 'bf16')
    .option('--device <device>', 'auto, cpu or cuda', choiceOpt('--device', DEVICES), 'auto')
    .option('--weights <format>', 'linear weights: bf16 (as stored), int8 or fp8 (quantised at load; CPU)', choiceOpt('--weights', ['bf16', 'int8', 'fp8'] as const), 'bf16')
    .option('--grace <seconds>', 'on SIGTERM/SIGINT, how long running requests may finish before they are aborted', secondsOpt, 10)
    .action(async (o: ServeOpts) => {
      const apiKey = o.apiKey ?? (process.env.DSV2_API_KEY || undefined);
      const dir = o.model ?? (await defaultModelDir());
      const ac = new AbortController();
      const onSig = () => ac.abort();
      process.once('SIGINT', onSig);
      process.once('SIGTERM', onSig);
      let model: Model;
      try {
        const t0 = Date.now();
        model = await Model.load(dir, { device: o.device, kvCache: o.kvCache, maxTokens: o.maxTokens, maxBatch: o.maxBatch, weights: o.weights, signal: ac.signal });
        log(`loaded ${dir} (${model.config.architecture}, ${model.config.numLayers} layers) on ${model.device} in ${((Date.now() - t0) / 1000).toFixed(2)} s; ` +
          `KV cache ${o.kvCache}, ${model.cache.pages * model.cache.pageSize} tokens; ${o.weights} weights`);
      } catch (e) {
        if (ac.signal.aborted && !(e instanceof Dsv2Error)) throw new Dsv2Error('E_ABORTED', 'loading was aborted');
        throw e;
      } finally {
        process.removeListener('SIGINT', onSig);
        process.removeListener('SIGTERM', onSig);
      }
      if (ac.signal.aborted) {
        await model.dispose();
        return; // a signal during the load: nothing to serve
      }
      try {
        const server = createServer(model, {
          modelName: o.modelName, apiKey, maxQueue: o.maxQueue, maxRunning: o.maxBatch, defaultMaxTokens: o.defaultMaxTokens,
          graceMs: Math.round(o.grace * 1000),
        });
        let url: string;
        try {
          ({ url } = await server.listen(o.host, o.port));
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          throw new Dsv2Error('E_IO', `cannot listen on ${o.host}:${o.port} (${err.code ?? err.message})`, { cause: e });
        }
        log(`serving on ${url}`);
        log(`model ${server.modelName}, context ${server.contextLength} tokens, ${o.maxBatch} running at once, queue ${o.maxQueue}${apiKey ? ', API key required' : ''}`);
        let stop: (sig: NodeJS.Signals) => void = () => {};
        try {
          await new Promise<void>((resolve, reject) => {
            let signals = 0;
            stop = (sig) => {
              signals++;
              if (signals === 1) {
                log(`${sig}: shutting down (running requests have ${o.grace} s to finish; signal again to abort them)`);
                server.close().then(resolve, reject);
              } else {
                log(`${sig}: aborting the running requests`);
                void server.close({ graceMs: 0 });
              }
            };
            process.on('SIGTERM', stop);
            process.on('SIGINT', stop);
          });
        } finally {
          process.removeListener('SIGTERM', stop);
          process.removeListener('SIGINT', stop);
        }
        log('stopped');
      } finally {
        await model.dispose();
      }
    });
}
