/** The OpenAI-compatible HTTP server of `dsv2 serve` (see server.ts). */
export { createServer, type Dsv2Server, type ListenInfo, type ServableModel, type ServerOptions } from './server';
export { ServerMetrics } from './metrics';
export { ApiError } from './openai';
