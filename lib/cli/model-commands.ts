/**
 * The model commands: generate, logits, tokenize, kv-table, make-tiny. Their flags and JSON shapes are
 * a stable contract (scripts depend on them).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { Dsv2Error } from '../errors';
import { Checkpoint } from '../model/checkpoint';
import type { DeepSeekConfig } from '../model/config';
import { makeTiny, TINY_KINDS, type TinyKind } from '../model/tiny';
import { choiceOpt, collect, defaultModelDir, floatOpt, intOpt, loadModel, log, out, tokensOpt, usage } from './common';
import { Tokenizer } from '../model/tokenizer';
import { perplexity } from '../model/perplexity';

const KV = ['bf16', 'fp8', 'f32'] as const;
const DEVICES = ['auto', 'cpu', 'cuda'] as const;
const WEIGHTS = ['bf16', 'int8', 'fp8'] as const;

function modelOptions(cmd: Command): Command {
  return cmd
    .option('--model <dir>', 'checkpoint directory (config.json, *.safetensors, tokenizer.json); default: the built-in tiny model')
    .option('--kv-cache <dtype>', 'KV cache storage: bf16, fp8 or f32', choiceOpt('--kv-cache', KV), 'bf16')
    .option('--device <device>', 'auto, cpu or cuda', choiceOpt('--device', DEVICES), 'auto')
    .option('--weights <format>', 'linear weights: bf16 (as stored), int8 or fp8 (quantised at load, 128x128 block scales; CPU)', choiceOpt('--weights', WEIGHTS), 'bf16');
}

export function modelCommands(program: Command): void {
  modelOptions(program.command('generate'))
    .description('generate text; streams it to stdout (--json: one object {"tokens", "text", "finishReason", "promptTokens"})')
    .option('--prompt <text>', 'plain text prompt')
    .option('--chat <text>', 'a user message, formatted with the checkpoint\'s chat template')
    .option('--system <text>', 'a system message before --chat\'s user message')
    .option('--tokens <ids>', 'prompt token ids, e.g. 1,2,3', tokensOpt)
    .option('--max-new-tokens <n>', 'tokens to generate at most', intOpt('--max-new-tokens'), 64)
    .option('--temperature <t>', '0 is greedy', floatOpt('--temperature', 0), 0)
    .option('--top-k <k>', 'keep the k most likely tokens (0: all)', intOpt('--top-k'), 0)
    .option('--top-p <p>', 'keep the smallest set with probability >= p', (v: string) => { const n = Number(v); if (!(n > 0 && n <= 1)) throw new InvalidArgumentError('--top-p must be a number in (0, 1]'); return n; }, 1)
    .option('--seed <s>', 'seed of the sampling draws', intOpt('--seed'), 0)
    .option('--stop <text>', 'stop when the text contains this (repeatable; the stop text is not printed)', collect)
    .option('--stop-token-id <id>', 'stop at this token id (repeatable)', (v: string, prev: number[] = []) => [...prev, intOpt('--stop-token-id')(v)])
    .option('--ignore-eos', 'keep generating past EOS')
    .option('--repetition-penalty <p>', 'HF repetition penalty (1: off)', floatOpt('--repetition-penalty', Number.MIN_VALUE, 1e6))
    .option('--presence-penalty <p>', 'OpenAI presence penalty in [-2, 2]', floatOpt('--presence-penalty', -2, 2))
    .option('--frequency-penalty <p>', 'OpenAI frequency penalty in [-2, 2]', floatOpt('--frequency-penalty', -2, 2))
    .option('--min-p <p>', 'min-p in [0, 1]', floatOpt('--min-p', 0, 1))
    .option('--logit-bias <id=bias>', 'add bias (in [-100, 100]) to a token\'s logit (repeatable)', (v: string, prev: Record<number, number> = {}) => {
      const m = /^(\d+)=(-?[\d.]+(?:e-?\d+)?)$/.exec(v);
      if (!m || !(Math.abs(Number(m[2])) <= 100)) throw new InvalidArgumentError('--logit-bias takes id=bias with bias in [-100, 100], e.g. 42=-5');
      return { ...prev, [Number(m[1])]: Number(m[2]) };
    })
    .option('--logprobs <k>', 'with --json: each token\'s log-probability and the k most likely (0..20)', intOpt('--logprobs'))
    .option('--json', 'print one JSON object instead of streaming text')
    .action(async (o) => {
      const given = [o.prompt !== undefined, o.chat !== undefined, o.tokens !== undefined].filter(Boolean).length;
      if (given !== 1) usage('generate needs exactly one of --prompt, --chat or --tokens');
      if (o.system !== undefined && o.chat === undefined) usage('--system goes with --chat');
      if (o.logprobs !== undefined && !o.json) usage('--logprobs goes with --json');
      const model = await loadModel(o);
      try {
        const ac = new AbortController();
        const onSig = () => ac.abort();
        process.once('SIGINT', onSig);
        try {
          const messages = o.chat === undefined ? undefined
            : [...(o.system !== undefined ? [{ role: 'system' as const, content: o.system as string }] : []), { role: 'user' as const, content: o.chat as string }];
          const gen = model.generate({
            prompt: o.prompt, messages, tokens: o.tokens, stop: o.stop, stopTokenIds: o.stopTokenId, ignoreEos: o.ignoreEos,
            repetitionPenalty: o.repetitionPenalty, presencePenalty: o.presencePenalty, frequencyPenalty: o.frequencyPenalty,
            minP: o.minP, logitBias: o.logitBias, logprobs: o.logprobs,
            maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed, signal: ac.signal,
          });
          const t0 = Date.now();
          let n = 0;
          if (o.json) {
            const logprobs: { token: number; logprob: number; top?: { token: number; logprob: number }[] }[] = [];
            for await (const c of gen) {
              if (c.token !== null && c.logprob !== undefined) logprobs.push({ token: c.token, logprob: c.logprob, ...(c.topLogprobs ? { top: c.topLogprobs } : {}) });
            }
            const r = await gen.result;
            n = r.tokens.length;
            await out(`${JSON.stringify({ tokens: r.tokens, text: r.text, finishReason: r.finishReason, promptTokens: r.promptTokens,
              ...(o.logprobs !== undefined ? { logprobs } : {}) })}\n`);
          } else {
            for await (const c of gen) {
              if (c.text) await out(c.text);
              if (c.token !== null) n++;
            }
            await out('\n');
          }
          const s = (Date.now() - t0) / 1000;
          log(`${n} tokens in ${s.toFixed(2)} s (${(n / Math.max(s, 1e-9)).toFixed(1)} tokens/s)`);
        } finally {
          process.removeListener('SIGINT', onSig);
        }
      } finally {
        await model.dispose();
      }
    });

  modelOptions(program.command('logits'))
    .description('logits for every position: {"logits": [[vocab floats] per position]}')
    .requiredOption('--tokens <ids>', 'token ids, e.g. 1,2,3', tokensOpt)
    .option('--mode <mode>', 'prefill: all tokens in one pass; decode: the first prefilled, each later one through the KV cache',
      choiceOpt('--mode', ['prefill', 'decode'] as const), 'prefill')
    .option('--json', 'print JSON (the contract); without it, the top 5 tokens per position')
    .action(async (o) => {
      const model = await loadModel(o);
      try {
        const l = await model.logits(o.tokens, { mode: o.mode });
        const V = model.config.vocabSize;
        const data = l.data as Float32Array;
        const row = (i: number) => Array.from(data.subarray(i * V, (i + 1) * V));
        if (o.json) {
          // Row by row: one JSON string of T × vocab numbers can pass V8's string limit
          // (515 × 102,400 does); the bytes are those of JSON.stringify({logits}).
          await out('{"logits":[');
          for (let i = 0; i < o.tokens.length; i++) await out(`${i ? ',' : ''}${JSON.stringify(row(i))}`);
          await out(']}\n');
        } else {
          for (let i = 0; i < o.tokens.length; i++) {
            const top = row(i).map((v, id) => [v, id]).sort((a, b) => b[0] - a[0]).slice(0, 5);
            await out(`${i}\t${o.tokens[i]}\t${top.map(([v, id]) => `${id}:${v.toFixed(3)}`).join(' ')}\n`);
          }
        }
      } finally {
        await model.dispose();
      }
    });

  modelOptions(program.command('perplexity'))
    .description('perplexity of a text file over non-overlapping windows (llama-perplexity\'s measure): {"tokens", "nll", "perplexity", "vocabSize", "kvCache", ...}')
    .requiredOption('--file <path>', 'UTF-8 text to score')
    .option('--context <n>', 'tokens per window (each window scores its tokens after the first)', intOpt('--context', 2), 512)
    .option('--bos', 'start every window with BOS (then every text token is scored)')
    .option('--mode <mode>', 'prefill: each window in one pass; decode: token by token through the KV cache',
      choiceOpt('--mode', ['prefill', 'decode'] as const), 'prefill')
    .option('--json', 'print one JSON object')
    .action(async (o) => {
      let text: string;
      try {
        text = fs.readFileSync(o.file, 'utf8');
      } catch (e) {
        throw new Dsv2Error('E_IO', `cannot read --file ${o.file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { cause: e });
      }
      const model = await loadModel({ ...o, maxTokens: Math.max(4096, o.context) });
      try {
        const ac = new AbortController();
        const onSig = () => ac.abort();
        process.once('SIGINT', onSig);
        try {
          const t0 = Date.now();
          const r = await perplexity(model, text, {
            context: o.context, bos: Boolean(o.bos), mode: o.mode, signal: ac.signal,
            onProgress: o.json ? undefined : (d, n) => log(`window ${d}/${n}`),
          });
          const s = (Date.now() - t0) / 1000;
          if (o.json) await out(`${JSON.stringify(r)}\n`);
          else {
            await out(`perplexity ${r.perplexity.toFixed(4)} (nll ${r.nll.toFixed(5)} nats/token) over ${r.tokens} tokens in ${r.windows} windows of ${r.context}; ` +
              `KV cache ${r.kvCache} (${r.kvBytesPerToken} bytes/token)\n`);
          }
          log(`${r.tokens} tokens scored in ${s.toFixed(2)} s (${(r.tokens / Math.max(s, 1e-9)).toFixed(1)} tokens/s)`);
        } finally {
          process.removeListener('SIGINT', onSig);
        }
      } finally {
        await model.dispose();
      }
    });

  program.command('tokenize')
    .description('token ids of a text or a chat prompt, as the checkpoint\'s tokenizer and chat template give them (special tokens included)')
    .option('--model <dir>', 'checkpoint directory (tokenizer.json, tokenizer_config.json); default: the built-in model')
    .option('--text <text>', 'plain text (BOS added as the tokenizer config says)')
    .option('--chat <text>', 'a user message, rendered with the chat template (generation prompt appended)')
    .option('--system <text>', 'a system message before --chat\'s user message')
    .option('--json', 'print {"tokens": [...]}; without it, the ids comma-separated (what --tokens takes)')
    .action(async (o: { model?: string; text?: string; chat?: string; system?: string; json?: boolean }) => {
      if ((o.text === undefined) === (o.chat === undefined)) usage('tokenize needs exactly one of --text or --chat');
      if (o.system !== undefined && o.chat === undefined) usage('--system goes with --chat');
      const dir = o.model ?? (await defaultModelDir());
      const tok = Tokenizer.load(dir);
      const ids = o.text !== undefined ? tok.encode(o.text)
        : tok.encodeChat([...(o.system !== undefined ? [{ role: 'system' as const, content: o.system }] : []), { role: 'user' as const, content: o.chat! }]);
      await out(o.json ? `${JSON.stringify({ tokens: ids })}\n` : `${ids.join(',')}\n`);
    });

  program.command('kv-table')
    .description('the paper\'s Table 1 for a config: KV cache per token for MHA, GQA, MQA and MLA (bf16, fp8)')
    .requiredOption('--model <dir|config.json>', 'checkpoint directory or config.json')
    .option('--context <n>', 'tokens for the whole-model totals', intOpt('--context', 1), 4096)
    .option('--json', 'print one JSON object')
    .action(async (o) => {
      const c = Checkpoint.readConfig(o.model);
      const t = kvTable(c, o.context);
      if (o.json) {
        process.stdout.write(`${JSON.stringify(t, null, 2)}\n`);
        return;
      }
      process.stdout.write(`KV cache per token (${c.numLayers} layers, ${c.numHeads} heads, d_h = ${t.dH}, d_c = ${c.kvLoraRank}, d_R = ${c.qkRopeHeadDim}), context ${o.context}\n`);
      const rows = t.rows.map((r) => [r.mechanism, String(r.elementsPerTokenPerLayer), String(r.bytesPerTokenPerLayer),
        String(r.bytesPerToken), `${(r.bytesAtContext / 2 ** 30).toFixed(3)} GiB`, `${r.reductionVsMha.toFixed(1)}x`]);
      const head = ['mechanism', 'elements/token/layer', 'bytes/token/layer', 'bytes/token', `at ${o.context} tokens`, 'vs MHA'];
      const w = head.map((h, k) => Math.max(h.length, ...rows.map((r) => r[k].length)));
      for (const r of [head, ...rows]) process.stdout.write(`${r.map((x, k) => (k ? x.padStart(w[k]) : x.padEnd(w[k]))).join('  ')}\n`);
    });

  program.command('make-tiny')
    .description('write a small random-weight checkpoint in the real layout (config, safetensors, tokenizer)')
    .requiredOption('--out <dir>', 'directory to write')
    .option('--kind <kind>', `${TINY_KINDS.join(', ')}`, choiceOpt('--kind', TINY_KINDS), 'v2')
    .option('--seed <s>', 'weights seed', intOpt('--seed'), 0)
    .option('--dtype <dtype>', 'weight dtype: bf16, f32, or fp8 (V3 layout: e4m3 + 128×128 block scales)', choiceOpt('--dtype', ['bf16', 'f32', 'fp8'] as const), 'bf16')
    .option('--shards <n>', 'safetensors shards (with an index when > 1)', intOpt('--shards', 1), 1)
    .action(async (o: { out: string; kind: TinyKind; seed: number; dtype: 'bf16' | 'f32' | 'fp8'; shards: number }) => {
      await makeTiny(o.out, { kind: o.kind, seed: o.seed, dtype: o.dtype, shards: o.shards });
      const files = fs.readdirSync(o.out).sort();
      log(`wrote a tiny ${o.kind} checkpoint to ${path.resolve(o.out)}: ${files.join(', ')}`);
    });
}

export interface KvTableRow {
  mechanism: string;
  elementsPerTokenPerLayer: number;
  bytesPerTokenPerLayer: number;
  bytesPerToken: number;
  bytesAtContext: number;
  reductionVsMha: number;
}

/**
 * Table 1 of the DeepSeek-V2 paper for config c: per token and layer, MHA caches 2·n_h·d_h
 * elements, GQA 2·n_g·d_h, MQA 2·d_h, MLA d_c + d_R (d_h = qk_nope_head_dim, the per-head
 * dim the paper compares with). Bytes: 2 per element (bf16); MLA fp8 is the cache's real
 * token size (e4m3 latent + f32 tile scales + bf16 RoPE key).
 */
export function kvTable(c: DeepSeekConfig, context: number): { dH: number; context: number; rows: KvTableRow[] } {
  const dH = c.qkNopeHeadDim || c.vHeadDim;
  const L = c.numLayers;
  const row = (mechanism: string, elements: number, bytesPerLayer: number): KvTableRow => ({
    mechanism, elementsPerTokenPerLayer: elements, bytesPerTokenPerLayer: bytesPerLayer, bytesPerToken: bytesPerLayer * L,
    bytesAtContext: bytesPerLayer * L * context, reductionVsMha: 0,
  });
  const rows = [row(`MHA (${c.numHeads} heads)`, 2 * c.numHeads * dH, 2 * 2 * c.numHeads * dH)];
  for (const g of [8, 4, 2]) {
    if (g < c.numHeads && c.numHeads % g === 0) rows.push(row(`GQA (${g} groups)`, 2 * g * dH, 2 * 2 * g * dH));
  }
  rows.push(row('MQA', 2 * dH, 2 * 2 * dH));
  const mla = c.kvLoraRank + c.qkRopeHeadDim;
  rows.push(row('MLA bf16', mla, 2 * mla));
  const fp8 = c.kvLoraRank + 4 * Math.ceil(c.kvLoraRank / 128) + 2 * c.qkRopeHeadDim;
  rows.push(row('MLA fp8', mla, fp8));
  for (const r of rows) r.reductionVsMha = rows[0].bytesPerTokenPerLayer / r.bytesPerTokenPerLayer;
  return { dH, context, rows };
}
