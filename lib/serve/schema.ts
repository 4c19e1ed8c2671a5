/**
 * JSON schemas of the OpenAI request bodies (fastify validates them with ajv before a handler
 * runs: no type coercion, so "max_tokens": "5" is a 400, not a 5). What a schema cannot say
 * (n must be 1, logit_bias keys are token ids in the vocabulary, top_logprobs needs logprobs)
 * is checked in openai.ts. Every optional field also takes null (some clients send null for
 * "not given"). Unknown fields are ignored, as OpenAI's own API ignores most of them.
 */

const nullable = (t: string | string[]) => ({ type: [...(Array.isArray(t) ? t : [t]), 'null'] });
const num = (extra: Record<string, unknown> = {}) => ({ ...nullable('number'), ...extra });
const int = (extra: Record<string, unknown> = {}) => ({ ...nullable('integer'), ...extra });
const bool = () => nullable('boolean');

/** Sampling parameters shared by /v1/chat/completions and /v1/completions (OpenAI's and the vLLM-style extensions). */
const sampling = {
  model: nullable('string'),
  max_tokens: int({ minimum: 1 }),
  temperature: num({ minimum: 0, maximum: 2 }),
  top_p: num({ exclusiveMinimum: 0, maximum: 1 }),
  // OpenAI takes any 64-bit integer; it is reduced mod 2^64 for the sampler.
  seed: int(),
  stop: {
    anyOf: [
      { type: 'string' },
      { type: 'array', items: { type: 'string' }, maxItems: 4 },
      { type: 'null' },
    ],
  },
  n: int({ minimum: 1 }),
  stream: bool(),
  stream_options: {
    anyOf: [
      { type: 'object', properties: { include_usage: bool() } },
      { type: 'null' },
    ],
  },
  user: nullable('string'),
  presence_penalty: num({ minimum: -2, maximum: 2 }),
  frequency_penalty: num({ minimum: -2, maximum: 2 }),
  logit_bias: {
    anyOf: [
      { type: 'object', additionalProperties: { type: 'number', minimum: -100, maximum: 100 } },
      { type: 'null' },
    ],
  },
  // Extensions (vLLM's names): top_k -1 or 0 is off.
  top_k: int({ minimum: -1 }),
  min_p: num({ minimum: 0, maximum: 1 }),
  repetition_penalty: num({ exclusiveMinimum: 0 }),
  ignore_eos: bool(),
  stop_token_ids: {
    anyOf: [
      { type: 'array', items: { type: 'integer', minimum: 0 }, maxItems: 64 },
      { type: 'null' },
    ],
  },
} as const;

// `text` is checked in openai.ts: with it required here, ajv would report a missing text
// before a wrong type (an image part), which is the more useful error.
const textPart = {
  type: 'object',
  required: ['type'],
  properties: { type: { const: 'text' }, text: { type: 'string' } },
};

const message = {
  type: 'object',
  required: ['role'],
  properties: {
    // 'developer' is OpenAI's newer name of 'system'.
    role: { enum: ['system', 'developer', 'user', 'assistant'] },
    content: {
      anyOf: [
        { type: 'string' },
        { type: 'array', items: textPart },
        { type: 'null' },
      ],
    },
    name: nullable('string'),
  },
};

export const chatBodySchema = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...sampling,
    messages: { type: 'array', minItems: 1, items: message },
    max_completion_tokens: int({ minimum: 1 }),
    logprobs: bool(),
    top_logprobs: int({ minimum: 0, maximum: 20 }),
    tools: nullable('array'),
    tool_choice: {},
    response_format: {
      anyOf: [
        { type: 'object', required: ['type'], properties: { type: { type: 'string' } } },
        { type: 'null' },
      ],
    },
  },
} as const;

export const completionBodySchema = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: 'string' },
        // One prompt as token ids (OpenAI also takes these); a batch of prompts is not served.
        { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 },
      ],
    },
    // Legacy completions: the number of top alternatives per token (0 = only the chosen token's).
    logprobs: int({ minimum: 0, maximum: 20 }),
    echo: bool(),
    best_of: int({ minimum: 1 }),
    suffix: nullable('string'),
  },
} as const;
