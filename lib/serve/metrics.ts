/**
 * Prometheus metrics of one server (prom-client), in a registry of its own so that servers
 * in one process (tests) do not share counts. Served as text at GET /metrics.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface MetricsSources {
  queued(): number;
  running(): number;
  pagesUsed(): number;
  pagesFree(): number;
  /** Pages the prefix cache keeps for later prompts (part of pagesUsed), and its hit rate. */
  prefixPages(): number;
  prefixHitRate(): number;
  /** The model's batched decode steps and the tokens they made (tokens / steps: the mean batch). */
  decodeSteps(): number;
  decodeTokens(): number;
}

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'endpoint' | 'status'>;
  readonly promptTokens: Counter;
  readonly generatedTokens: Counter;
  readonly timeToFirstToken: Histogram;
  readonly interTokenLatency: Histogram;
  readonly requestDuration: Histogram<'endpoint'>;

  constructor(src: MetricsSources) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'dsv2_requests_total', help: 'HTTP requests answered, by endpoint and status (499: the client went away first)',
      labelNames: ['endpoint', 'status'], registers,
    });
    this.promptTokens = new Counter({ name: 'dsv2_prompt_tokens_total', help: 'Prompt tokens of the generation requests that ran', registers });
    this.generatedTokens = new Counter({ name: 'dsv2_generated_tokens_total', help: 'Tokens generated', registers });
    new Gauge({ name: 'dsv2_queue_length', help: 'Generation requests admitted and waiting for a slot (KV pages, batch)', registers, collect() { this.set(src.queued()); } });
    new Gauge({ name: 'dsv2_running_sequences', help: 'Generation requests running on the model', registers, collect() { this.set(src.running()); } });
    new Gauge({ name: 'dsv2_kv_pages_used', help: 'KV cache pages in use', registers, collect() { this.set(src.pagesUsed()); } });
    new Gauge({ name: 'dsv2_kv_pages_free', help: 'KV cache pages free', registers, collect() { this.set(src.pagesFree()); } });
    new Gauge({ name: 'dsv2_prefix_cache_pages', help: 'KV pages the prefix cache keeps for later prompts (counted in dsv2_kv_pages_used)', registers, collect() { this.set(src.prefixPages()); } });
    new Gauge({ name: 'dsv2_prefix_cache_hit_rate', help: 'Prompt tokens found in the prefix cache / prompt tokens looked up', registers, collect() { this.set(src.prefixHitRate()); } });
    new Gauge({ name: 'dsv2_decode_steps', help: 'Batched decode steps the model ran (a count since load)', registers, collect() { this.set(src.decodeSteps()); } });
    new Gauge({ name: 'dsv2_decode_step_tokens', help: 'Tokens those decode steps made (a count since load; / dsv2_decode_steps = the mean batch)', registers, collect() { this.set(src.decodeTokens()); } });
    this.timeToFirstToken = new Histogram({
      name: 'dsv2_time_to_first_token_seconds', help: 'From a generation request\'s arrival to its first token (queueing and prefill included)', registers,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    });
    this.interTokenLatency = new Histogram({
      name: 'dsv2_inter_token_latency_seconds', help: 'Time between consecutive tokens of a generation', registers,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    });
    this.requestDuration = new Histogram({
      name: 'dsv2_request_duration_seconds', help: 'Generation request duration, arrival to the last byte', labelNames: ['endpoint'], registers,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    });
  }
}
